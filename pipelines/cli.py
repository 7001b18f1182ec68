"""``python -m pipelines {compile,submit,run-local}``: the pipeline from the command line.

* ``compile``: KFP IR YAML of the cluster pipeline (``pipeline.yaml`` by default).
* ``submit``: compile, then create a run on a KFP endpoint with ``kfp.Client`` (``--host`` or
  ``KFP_HOST``; a bearer token from ``--token`` or ``KFP_TOKEN``; or the client's own
  credentials: in-cluster service account, kubeconfig, IAP).
* ``run-local``: the whole pipeline on this machine with KFP's local runner (each step a
  subprocess in this Python environment, artifacts in ``OUT/kfp``, MLflow in
  ``OUT/mlflow.db``), then a list of where every result is.

Pipeline parameters: the flags below, or any parameter with ``--set name=value`` (JSON values
for numbers, booleans and mappings, e.g. ``--set training='{"epochs": 3}'``).
"""

from __future__ import annotations

import argparse
import ast
import collections
import dataclasses
import io
import json
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("runs/pipeline")
RUN_LOCAL_COMMAND = "python -m pipelines run-local"
COMPILE_COMMAND = "python -m pipelines compile"
RUNS_KIND = "pipeline runs"
STEP_OUTPUTS = {
    "preprocess": ("data", "classifiers", "summary"),
    "train": ("model",),
    "evaluate": ("report", "figures", "metrics"),
    "sample-augmentation": ("synthetic", "fitted_sampler"),
    "register": ("hub_model", "card"),
}


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def pipeline_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """Pipeline parameters from the flags; ``--sweep FILE`` is read into the ``sweep`` text.

    Raises:
        FileNotFoundError: For a sweep file that does not exist.
        ValueError: For a sweep file that is not a YAML mapping, or a ``--set`` entry without
            ``=`` or naming an unknown parameter.
    """
    from multivae.config import ConfigError, check_known_keys, locate, read_yaml
    from multivae.integrations.tune import SweepConfig

    known = set(pipeline_defaults())
    arguments: dict[str, Any] = {}
    flags = {
        "dataset": args.dataset,
        "missing_rate": args.missing_rate,
        "model_name": args.model,
        "sampler": args.sampler,
        "hub_repo": args.hub_repo,
        "mlflow_uri": args.mlflow_uri,
        "train_mode": args.train_mode,
    }
    arguments.update({k: v for k, v in flags.items() if v is not None})
    if args.epochs is not None:
        from pipelines.pipeline import TRAINING

        arguments["training"] = {**TRAINING, "epochs": args.epochs}
    if args.push:
        arguments["hub_dry_run"] = False
    if args.sweep is not None:
        path = Path(args.sweep)
        if not path.is_file():
            found = "a folder" if path.is_dir() else "nothing"
            raise FileNotFoundError(f"--sweep {path}: expected a sweep file (YAML), found {found}")
        text = path.read_text()
        try:
            document = read_yaml(text)
        except Exception as error:  # yaml.YAMLError: named with the file
            raise ValueError(f"--sweep {path}: not valid YAML ({error})") from None
        if not isinstance(document, dict):
            raise ValueError(
                f"--sweep {path}: expected a sweep file (a mapping of sweep settings), "
                f"found {document!r}"
            )
        known = [entry.name for entry in dataclasses.fields(SweepConfig)]
        try:
            check_known_keys(document, known, "sweep")
        except ConfigError as error:
            raise locate(error, f"--sweep {path}", text) from None
        arguments["sweep"] = text
    for entry in args.set or []:
        name, sep, value = entry.partition("=")
        if not sep:
            raise ValueError(f"--set: expected name=value, found {entry!r}")
        if name not in known:
            raise ValueError(f"--set: unknown pipeline parameter {name!r}; known: {sorted(known)}")
        arguments[name] = _parse_value(value)
    return arguments


def pipeline_defaults() -> dict[str, Any]:
    """Every pipeline parameter with its default, read from the pipeline's signature."""
    import inspect

    from pipelines.pipeline import build_pipeline

    parameters = inspect.signature(build_pipeline("local").pipeline_func).parameters
    return {name: parameter.default for name, parameter in parameters.items()}


def check_arguments(arguments: dict[str, Any]) -> None:
    """The preprocess step's parameter checks, run before anything is submitted or started."""
    from multivae.workflow import check_parameters

    values = {**pipeline_defaults(), **arguments}
    check_parameters(
        dataset=values["dataset"],
        missing_rate=values["missing_rate"],
        model=values["model_name"],
        model_config=values["model_config"],
        training=values["training"],
        sweep=values["sweep"],
        train_mode=values["train_mode"],
        sampler=values["sampler"],
        n_synthetic=values["n_synthetic"],
        source=values["source"],
    )


def compile_pipeline(
    path: str | os.PathLike[str], platform: str = "kubernetes", train_gpus: int = 0
) -> Path:
    """Compile the pipeline to KFP IR YAML at ``path`` (``train_gpus``: see build_pipeline).

    ``path`` follows the one output rule (:func:`multivae.io.claim_output`): a new file, or
    one this command wrote (KFP's ``# PIPELINE DEFINITION`` header), replaced atomically; never
    another file, a folder, nor a place inside a dataset or another command's output.
    """
    from kfp import compiler

    from multivae.io import atomic_write_text, claim_output
    from pipelines.pipeline import build_pipeline

    path = claim_output(path, "compiled pipeline", COMPILE_COMMAND, option="--out")
    with tempfile.TemporaryDirectory() as scratch:
        package = Path(scratch) / path.name
        compiler.Compiler().compile(build_pipeline(platform, train_gpus), package_path=str(package))
        atomic_write_text(path, _stable_header(package.read_text()))
    return path


_DEFAULT_COMMENT = re.compile(r"^(#\s+\w+: dict \[Default: )(\{.*\})(\])$")


def _stable_header(text: str) -> str:
    """The compiled YAML with the mappings of its header comment in sorted key order.

    KFP lists each parameter's default in a comment at the top of the file, writing mappings in
    the order of the protobuf ``Struct`` they were stored in, which changes from one process to
    the next; sorting them makes compiling twice give the same file.
    """
    lines = []
    for line in text.split("\n"):
        match = _DEFAULT_COMMENT.match(line)
        if match:
            value = ast.literal_eval(match.group(2))
            line = f"{match.group(1)}{_sorted_repr(value)}{match.group(3)}"
        lines.append(line)
    return "\n".join(lines)


def _sorted_repr(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_sorted_repr(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_sorted_repr(v) for v in value) + "]"
    return repr(value)


def submit(
    arguments: dict[str, Any],
    *,
    host: str | None = None,
    token: str | None = None,
    namespace: str | None = None,
    experiment: str = "multivae",
    run_name: str | None = None,
    service_account: str | None = "multivae-pipeline",
    enable_caching: bool | None = None,
    train_gpus: int = 0,
    client: Any = None,
) -> Any:
    """Compile the cluster pipeline and create a run of it on a KFP endpoint.

    Args:
        arguments: Pipeline parameters.
        host: The KFP API endpoint (``https://kubeflow.example.com/pipeline``); else
            ``KFP_HOST``.
        token: A bearer token; else ``KFP_TOKEN``; else the client's default credentials.
        namespace: The Kubeflow profile namespace (multi-user installs).
        experiment: KFP experiment (created when needed).
        run_name: Name of the run.
        service_account: The steps' Kubernetes service account (the ``rayjob`` mode creates
            RayJobs with it; see ``infra/base/rbac.yaml``).
        enable_caching: Override the compiled caching settings for every step.
        train_gpus: GPUs of the train step's pod (``train_mode=local``; see ``build_pipeline``).
        client: A ``kfp.Client`` (built from host and token by default).

    Returns:
        The client's ``RunPipelineResult`` (``run_id``, ``run_info``).
    """
    import kfp

    check_arguments(arguments)
    owned = client is None
    host = host or os.environ.get("KFP_HOST")
    if client is None:
        if not host:
            raise ValueError("expected --host or KFP_HOST (the KFP API endpoint)")
        token = token or os.environ.get("KFP_TOKEN") or None
        probe_endpoint(host, token)
        with warnings.catch_warnings(), _endpoint_errors(host), _quiet_health_checks():
            # kfp.Client warns on every construction that it needs a KFP v2 backend.
            warnings.filterwarnings("ignore", category=FutureWarning, module="kfp")
            client = kfp.Client(host=host, existing_token=token, namespace=namespace or "kubeflow")
    try:
        endpoint = host or "the client's endpoint"
        with tempfile.TemporaryDirectory() as scratch, _endpoint_errors(endpoint):
            package = compile_pipeline(Path(scratch) / "pipeline.yaml", train_gpus=train_gpus)
            result = client.create_run_from_pipeline_package(
                str(package),
                arguments=arguments,
                run_name=run_name,
                experiment_name=experiment,
                namespace=namespace,
                service_account=service_account,
                enable_caching=enable_caching,
            )
        if not result.run_id:
            raise ConnectionError(
                f"{endpoint} answered without a run id; expected a KFP API that creates "
                "the run (is it the KFP API, not its UI or a proxy's page?)"
            )
        return result
    finally:
        if owned:
            _close(client)


HEALTH_ROUTE = "/apis/v2beta1/healthz"
PROBE_TIMEOUT_S = 10.0


def probe_endpoint(host: str, token: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> None:
    """One request to the KFP API's health route before the client is built.

    ``kfp.Client`` retries its health check five times, 5 s apart, logging a traceback each
    time; this probe fails at once, in one line, on what cannot be a KFP API: a host that does
    not resolve or accept connections, a route that does not exist (404), a token refused.
    An answer asking for credentials without a token is left to the client, which may hold
    its own (service account, kubeconfig, IAP).

    Raises:
        ConnectionError: Naming the endpoint and what it answered.
    """
    import urllib.error
    import urllib.request

    from multivae.integrations.endpoints import unreachable

    request = urllib.request.Request(host.rstrip("/") + HEALTH_ROUTE)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as error:
        if error.code == 404 or (token and error.code in (401, 403)):
            hint = (
                "the token was refused (--token or KFP_TOKEN)"
                if error.code != 404
                else f"no {HEALTH_ROUTE} route there; expected the KFP API endpoint"
            )
            raise ConnectionError(
                f"the KFP API at {host} answered HTTP {error.code} {error.reason}: {hint}"
            ) from None
    except urllib.error.URLError as error:
        raise ConnectionError(
            f"could not reach the KFP API at {host}: {unreachable(error)}; expected a KFP "
            "endpoint (--host or KFP_HOST, e.g. http://localhost:8080 behind `kubectl "
            "port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`)"
        ) from None
    except (TimeoutError, OSError) as error:
        raise ConnectionError(
            f"could not reach the KFP API at {host}: no answer within {timeout:g} s "
            f"({type(error).__name__})"
        ) from None


@contextmanager
def _quiet_health_checks() -> Iterator[None]:
    """Hold back the traceback ``kfp.Client`` logs for each failed health check attempt."""
    import logging

    def drop(record: logging.LogRecord) -> bool:
        return "healthz" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


@contextmanager
def _endpoint_errors(host: str) -> Iterator[None]:
    """Turn the KFP client's network and HTTP failures into one line naming the endpoint."""
    import kfp_server_api
    import urllib3

    try:
        yield
    except TimeoutError:
        raise ConnectionError(
            f"the KFP API at {host} failed its health check 5 times; check the "
            "credentials (--token or KFP_TOKEN, a service account, kubeconfig) and the endpoint"
        ) from None
    except (urllib3.exceptions.HTTPError, OSError) as error:
        # What the probe did not catch (the connection lost since): the transport's own cause.
        cause = getattr(error, "reason", None) or error
        raise ConnectionError(
            f"could not reach the KFP API at {host}: {type(cause).__name__}: {cause}"
        ) from None
    except kfp_server_api.ApiException as error:
        hint = {
            401: "; the endpoint wants credentials: --token or KFP_TOKEN",
            403: "; the credentials may not create runs in this namespace",
            404: "; is this the KFP API (its /apis/v2beta1 routes)?",
        }.get(error.status, "")
        body = " ".join(str(error.body or "").split())[:200]
        raise ConnectionError(
            f"the KFP API at {host} answered HTTP {error.status} {error.reason}"
            + (f" ({body})" if body else "")
            + hint
        ) from None


def _close(client: Any) -> None:
    """Close the HTTP connections of a ``kfp.Client`` (it has no ``close`` of its own)."""
    api_client = getattr(getattr(client, "_run_api", None), "api_client", None)
    pool = getattr(getattr(api_client, "rest_client", None), "pool_manager", None)
    if pool is not None:
        pool.clear()
    if api_client is not None:
        api_client.close()


def run_local(
    arguments: dict[str, Any],
    out: str | os.PathLike[str] = DEFAULT_OUT,
    *,
    cache: bool = True,
) -> dict[str, Any]:
    """Run the whole pipeline with KFP's local runner; return where every output is.

    Steps run as subprocesses in this Python environment (``SubprocessRunner(use_venv=False)``)
    with their artifacts under ``out/kfp``. With ``cache``, a step whose inputs did not change
    since an earlier run in ``out`` is taken from KFP's local cache. MLflow defaults to
    ``out/mlflow.db``.

    ``out`` is a new or empty folder, or one where this command ran before: it never writes
    into a folder of other files, nor inside a dataset.

    Returns:
        ``{"outputs": {step: {output: path}}, "mlflow_uri", "seconds", "pipeline_root"}``.

    Raises:
        FileExistsError: For an ``out`` the rule above refuses.
        RuntimeError: When a step fails (KFP's message names it; its log is printed above).
    """
    from kfp import local

    from multivae.io import claim_output, read_output_marker, write_output_marker
    from pipelines.pipeline import build_pipeline

    out = Path(out).resolve()
    # A new or empty folder, or one holding this command's earlier runs, to which a run adds
    # its own timestamped folder (and reuses their step cache); never a folder of other files.
    claim_output(out, RUNS_KIND, RUN_LOCAL_COMMAND)
    arguments = dict(arguments)
    arguments.setdefault("mlflow_uri", f"sqlite:///{out / 'mlflow.db'}")
    check_arguments(arguments)  # before anything is written
    out.mkdir(parents=True, exist_ok=True)
    if read_output_marker(out) is None:
        write_output_marker(out, RUNS_KIND, RUN_LOCAL_COMMAND)
    root = out / "kfp"
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        enable_caching=cache,
        raise_on_error=True,
    )
    started = time.time()
    log = StepLog(sys.stdout)
    try:
        with warnings.catch_warnings(), redirect_stdout(log):
            # The steps run in this environment, which has multivae installed: KFP's warning
            # that the components name a custom image does not apply.
            warnings.filterwarnings("ignore", message=".*custom or non-Python base image")
            build_pipeline("local")(**arguments)
    except RuntimeError as error:
        # KFP says only "Inner task failed: 'train'": the step's own error is the last
        # exception line of its log, which went through the tee.
        message = _ANSI.sub("", str(error))
        failed = re.search(r"Inner task failed: '([^']+)'", message)
        cause = log.last_error()
        if failed is None or cause is None:
            raise RuntimeError(message) from None
        raise RuntimeError(
            f"step '{failed.group(1)}' failed: {cause} (its log is above; artifacts under {root})"
        ) from None
    return {
        "outputs": locate_outputs(root, since=started),
        "mlflow_uri": arguments["mlflow_uri"],
        "seconds": time.time() - started,
        "pipeline_root": str(root),
    }


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^\s*((?:\w+\.)*\w*(?:Error|Exception|Interrupt|Exit)\b.*)$")


class StepLog(io.TextIOBase):
    """A tee of the steps' output, which KFP's local runner prints line by line.

    The output is shown as it comes; its last lines are kept to name a failed step's own error.
    """

    def __init__(self, stream: Any, keep: int = 400) -> None:
        self.stream = stream
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._partial = ""

    def write(self, text: str) -> int:
        """Show ``text``; keep its complete lines."""
        self.stream.write(text)
        *complete, self._partial = (self._partial + text).split("\n")
        self.lines.extend(_ANSI.sub("", line) for line in complete)
        return len(text)

    def flush(self) -> None:
        """Flush the stream shown."""
        self.stream.flush()

    def last_error(self) -> str | None:
        """The last ``SomeError: message`` line, without its module path."""
        for line in reversed(self.lines):
            match = _EXCEPTION_LINE.match(line)
            if match:
                kind, _, rest = match.group(1).partition(":")
                return f"{kind.rsplit('.', 1)[-1]}:{rest}" if rest else kind.rsplit(".", 1)[-1]
        return None


def locate_outputs(root: Path, since: float = 0.0) -> dict[str, dict[str, str]]:
    """The newest output of each step under a local pipeline root (cached ones included)."""
    found: dict[str, dict[str, str]] = {}
    for step, names in STEP_OUTPUTS.items():
        for name in names:
            candidates = sorted(
                root.glob(f"*/{step}/{name}"), key=lambda p: p.stat().st_mtime, reverse=True
            )
            if candidates:
                found.setdefault(step, {})[name] = str(candidates[0])
    return found


def report(result: dict[str, Any]) -> str:
    """Where every result of a local run is, and how to look at the MLflow runs."""
    from multivae.names import FIGURES_FOLDER, METRICS_FILE, MODEL_FOLDER

    outputs = result["outputs"]

    def where(step: str, name: str, suffix: str = "") -> str:
        path = outputs.get(step, {}).get(name)
        return f"{path}{suffix}" if path else "(not produced)"

    uri = result["mlflow_uri"]
    lines = [
        f"pipeline finished in {result['seconds']:.0f} s; artifacts under "
        f"{result['pipeline_root']}",
        "",
        f"  dataset (Parquet):               {where('preprocess', 'data')}",
        f"  classifiers (judges):            {where('preprocess', 'classifiers')}",
        f"  model folder:                    {where('train', 'model', f'/{MODEL_FOLDER}')}",
        f"  metrics:                         {where('evaluate', 'report', f'/{METRICS_FILE}')}",
        f"  figures:                         {where('evaluate', 'report', f'/{FIGURES_FOLDER}')}",
        f"  figures page (HTML):             {where('evaluate', 'figures')}",
        f"  synthetic dataset:               {where('sample-augmentation', 'synthetic')}",
        f"  fitted sampler:                  {where('sample-augmentation', 'fitted_sampler')}",
        f"  Hub folder (dry run):            {where('register', 'hub_model')}",
        f"  MLflow store:                    {uri}",
        "",
        f"Open the MLflow UI:  {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri "
        f"{uri}  (then http://127.0.0.1:5000)",
    ]
    metrics_path = outputs.get("evaluate", {}).get("report")
    if metrics_path and (Path(metrics_path) / METRICS_FILE).is_file():
        metrics = json.loads((Path(metrics_path) / METRICS_FILE).read_text())
        coherence = metrics.get("coherence", {})
        per_size = ", ".join(f"from {k}: {v:.3f}" for k, v in coherence.get("per_size", {}).items())
        lines += ["", f"cross-modal coherence (chance 0.1): {per_size}"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m pipelines`` argument parser."""
    from multivae.cli.paths import CommandParser, file_argument, output, path_argument

    parser = CommandParser(prog="python -m pipelines", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    compile_cmd = commands.add_parser("compile", help="compile the pipeline to KFP IR YAML")
    path_argument(
        compile_cmd,
        "--out",
        role=output("compiled pipeline", file=True),
        default="pipeline.yaml",
        help="the YAML file to write (a new file, or one this command wrote)",
    )
    compile_cmd.add_argument(
        "--platform", default="kubernetes", choices=("kubernetes", "local"), help="target"
    )
    for name, help_text in (
        ("submit", "compile and create a run on a KFP endpoint"),
        ("run-local", "run the whole pipeline here with KFP's local runner"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--dataset", help="built-in dataset or converter (poly-digits)")
        command.add_argument("--missing-rate", type=float, help="missing rate in [0, 1) (0.5)")
        command.add_argument("--model", help="model name (mopoe)")
        command.add_argument("--epochs", type=int, help="training epochs (10)")
        file_argument(
            command, "--sweep", "sweep file", "a sweep file: tune instead of train", required=False
        )
        command.add_argument("--sampler", help="latent sampler: prior, gmm, maf, iaf (gmm)")
        command.add_argument("--train-mode", help="local, ray, ray-job or rayjob (local)")
        command.add_argument("--hub-repo", help="Hub repository owner/name")
        command.add_argument("--push", action="store_true", help="push to the Hub (HF_TOKEN)")
        command.add_argument("--mlflow-uri", help="MLflow tracking URI")
        command.add_argument(
            "--set", action="append", metavar="NAME=VALUE", help="any pipeline parameter"
        )
    submit_cmd = commands.choices["submit"]
    submit_cmd.add_argument("--host", help="KFP API endpoint (else KFP_HOST)")
    submit_cmd.add_argument("--token", help="bearer token (else KFP_TOKEN)")
    submit_cmd.add_argument("--namespace", help="Kubeflow profile namespace")
    submit_cmd.add_argument("--experiment", default="multivae")
    submit_cmd.add_argument("--run-name")
    submit_cmd.add_argument("--service-account", default="multivae-pipeline")
    for command in (compile_cmd, submit_cmd):
        command.add_argument(
            "--train-gpus",
            type=int,
            default=0,
            metavar="N",
            help="GPUs (nvidia.com/gpu) for the train step's pod, when it trains in the step",
        )
    local_cmd = commands.choices["run-local"]
    path_argument(
        local_cmd,
        "--out",
        role=output(RUNS_KIND),
        default=str(DEFAULT_OUT),
        help="output folder (runs/pipeline): new or empty, or one where this command ran before",
    )
    local_cmd.add_argument("--no-cache", action="store_true", help="rerun every step")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input, 1 for a failed run)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error (one line)
        return done.code if isinstance(done.code, int) else 2
    try:
        if args.command == "compile":
            path = compile_pipeline(args.out, args.platform, args.train_gpus)
            print(f"compiled {path}")
            return 0
        arguments = pipeline_arguments(args)
        if args.command == "submit":
            result = submit(
                arguments,
                host=args.host,
                token=args.token,
                namespace=args.namespace,
                experiment=args.experiment,
                run_name=args.run_name,
                service_account=args.service_account,
                train_gpus=args.train_gpus,
            )
            print(f"submitted run {result.run_id}")
            return 0
        outcome = run_local(arguments, args.out, cache=not args.no_cache)
        print(report(outcome))
        return 0
    except (ValueError, FileNotFoundError, FileExistsError, ConnectionError) as error:
        from multivae.redact import redact

        print(f"python -m pipelines {args.command}: error: {redact(str(error))}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        from multivae.redact import redact

        print(
            f"python -m pipelines {args.command}: error: the pipeline failed: {redact(str(error))}",
            file=sys.stderr,
        )
        return 1
