"""The pipeline's local run: every step on this machine with KFP's local runner.

Each step is a subprocess in this Python environment, with its artifacts in ``OUT/kfp`` and
MLflow in ``OUT/mlflow.db``; :func:`report` then lists where every result is.
"""

from __future__ import annotations

import collections
import io
import json
import os
import re
import sys
import time
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from pipelines.arguments import check_arguments

DEFAULT_OUT = Path("runs/pipeline")
RUN_LOCAL_COMMAND = "python -m pipelines run-local"
RUNS_KIND = "pipeline runs"
STEP_OUTPUTS = {
    "preprocess": ("data", "classifiers", "summary"),
    "train": ("model",),
    "evaluate": ("report", "figures", "metrics"),
    "sample-augmentation": ("synthetic", "fitted_sampler"),
    "register": ("hub_model", "card"),
}


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
        f"{uri}  (then http://127.0.0.1:5000/#/?workflowType=machine_learning)",
    ]
    metrics_path = outputs.get("evaluate", {}).get("report")
    if metrics_path and (Path(metrics_path) / METRICS_FILE).is_file():
        metrics = json.loads((Path(metrics_path) / METRICS_FILE).read_text())
        coherence = metrics.get("coherence", {})
        per_size = ", ".join(f"from {k}: {v:.3f}" for k, v in coherence.get("per_size", {}).items())
        lines += ["", f"cross-modal coherence (chance 0.1): {per_size}"]
    return "\n".join(lines)
