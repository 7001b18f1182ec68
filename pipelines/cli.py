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
import json
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("runs/pipeline")
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
        ValueError: For a ``--set`` entry without ``=`` or naming an unknown parameter.
    """
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
            raise FileNotFoundError(f"--sweep: the sweep file {path} does not exist")
        arguments["sweep"] = path.read_text()
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
    """Compile the pipeline to KFP IR YAML at ``path`` (``train_gpus``: see build_pipeline)."""
    from kfp import compiler

    from pipelines.pipeline import build_pipeline

    compiler.Compiler().compile(build_pipeline(platform, train_gpus), package_path=str(path))
    path = Path(path)
    path.write_text(_stable_header(path.read_text()))
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
    if client is None:
        host = host or os.environ.get("KFP_HOST")
        if not host:
            raise ValueError("submit: expected --host or KFP_HOST (the KFP API endpoint)")
        with warnings.catch_warnings():
            # kfp.Client warns on every construction that it needs a KFP v2 backend.
            warnings.filterwarnings("ignore", category=FutureWarning, module="kfp")
            client = kfp.Client(
                host=host,
                existing_token=token or os.environ.get("KFP_TOKEN") or None,
                namespace=namespace or "kubeflow",
            )
    try:
        with tempfile.TemporaryDirectory() as scratch:
            package = compile_pipeline(Path(scratch) / "pipeline.yaml", train_gpus=train_gpus)
            return client.create_run_from_pipeline_package(
                str(package),
                arguments=arguments,
                run_name=run_name,
                experiment_name=experiment,
                namespace=namespace,
                service_account=service_account,
                enable_caching=enable_caching,
            )
    finally:
        if owned:
            _close(client)


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

    Returns:
        ``{"outputs": {step: {output: path}}, "mlflow_uri", "seconds", "pipeline_root"}``.

    Raises:
        RuntimeError: When a step fails (KFP's message names it; its log is printed above).
    """
    from kfp import local

    from pipelines.pipeline import build_pipeline

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    arguments = dict(arguments)
    arguments.setdefault("mlflow_uri", f"sqlite:///{out / 'mlflow.db'}")
    check_arguments(arguments)
    root = out / "kfp"
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        enable_caching=cache,
        raise_on_error=True,
    )
    started = time.time()
    with warnings.catch_warnings():
        # The steps run in this environment, which has multivae installed: KFP's warning that
        # the components name a custom image does not apply.
        warnings.filterwarnings("ignore", message=".*custom or non-Python base image")
        build_pipeline("local")(**arguments)
    return {
        "outputs": locate_outputs(root, since=started),
        "mlflow_uri": arguments["mlflow_uri"],
        "seconds": time.time() - started,
        "pipeline_root": str(root),
    }


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
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    compile_cmd = commands.add_parser("compile", help="compile the pipeline to KFP IR YAML")
    compile_cmd.add_argument("--out", default="pipeline.yaml", help="the YAML file to write")
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
        command.add_argument("--sweep", metavar="FILE", help="a sweep file: tune instead of train")
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
    local_cmd.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (runs/pipeline)")
    local_cmd.add_argument("--no-cache", action="store_true", help="rerun every step")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for bad input, 1 for a failed run)."""
    args = build_parser().parse_args(argv)
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
    except (ValueError, FileNotFoundError) as error:
        from multivae.redact import redact

        print(f"error: {redact(str(error))}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        from multivae.redact import redact

        print(f"error: the pipeline failed: {redact(str(error))}", file=sys.stderr)
        return 1
