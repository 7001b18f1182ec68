"""The results of a sweep: the table of its trials, and its best trial exported.

A trial that fails (an error in its run, a Train run out of restarts) is recorded as failed; the
best of the finished trials is exported to ``output_dir/best/`` (``model/``, ``run.yaml``,
``metrics.json``) and described in ``output_dir/best.json``. The MLflow runs of trials that ASHA
stopped are closed as killed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multivae.integrations.sweep_file import SweepConfig
from multivae.names import (
    BEST_FILE,
    BEST_FOLDER,
    METRICS_FILE,
    MLFLOW_RUN_FILE,
    MODEL_FOLDER,
    RUN_CONFIG_FILE,
    TRIALS_FOLDER,
)


@dataclass
class SweepResult:
    """What :func:`~multivae.integrations.tune.run_sweep` returns.

    Attributes:
        best_trial: Tune's id of the best finished trial.
        best_params: Its sampled parameters.
        best_metrics: Its final reported metrics.
        best_dir: ``output_dir/best`` (``model/``, ``run.yaml``, ``metrics.json``).
        trials: One entry per trial: id, status, parameters, last metric.
        parent_run_id: The sweep's MLflow parent run, or ``None``.
    """

    best_trial: str
    best_params: dict[str, Any]
    best_metrics: dict[str, Any]
    best_dir: Path
    trials: list[dict[str, Any]]
    parent_run_id: str | None


def _error_text(error: BaseException) -> str:
    """The trial's own exception, ``Type: message`` (not Ray's wrapper with its traceback)."""
    cause = getattr(error, "cause", None)
    root = cause if isinstance(cause, BaseException) else error
    return f"{type(root).__name__}: {root}"


def trial_table(sweep: SweepConfig, grid: Any, output_dir: Path) -> list[dict[str, Any]]:
    """One entry per trial: id, whether it finished (wrote its model), error, params, metric."""
    trials = []
    for result in grid:
        metrics = dict(result.metrics or {})
        trial_id = str(metrics.get("trial_id", ""))
        trial_dir = output_dir / TRIALS_FOLDER / trial_id
        trials.append(
            {
                "trial_id": trial_id,
                "finished": (trial_dir / METRICS_FILE).exists()
                and (trial_dir / MODEL_FOLDER).exists(),
                "error": None if result.error is None else _error_text(result.error),
                "params": dict(result.config),
                sweep.metric: metrics.get(sweep.metric),
                "epochs": metrics.get("epoch"),
            }
        )
    return trials


def close_stopped_trial_runs(
    tracking_uri: str, output_dir: Path, trials: Sequence[Mapping[str, Any]]
) -> None:
    """Mark the MLflow runs of trials that ASHA stopped as KILLED (not FAILED), tagged so."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    for trial in trials:
        run_file = output_dir / TRIALS_FOLDER / trial["trial_id"] / MLFLOW_RUN_FILE
        if trial["finished"] or trial["error"] is not None or not run_file.exists():
            continue
        run_id = json.loads(run_file.read_text())["run_id"]
        client.set_tag(run_id, "multivae.stopped_early", "true")
        client.set_terminated(run_id, "KILLED")


def export_best(
    sweep: SweepConfig,
    grid: Any,
    trials: list[dict[str, Any]],
    output_dir: Path,
    parent_run_id: str | None,
) -> SweepResult:
    """Copy the best finished trial to ``output_dir/best``; describe it in ``best.json``."""
    best: tuple[float, Any] | None = None
    sign = 1.0 if sweep.mode == "min" else -1.0
    for result, trial in zip(grid, trials, strict=True):
        value = trial[sweep.metric]
        if trial["finished"] and isinstance(value, int | float) and math.isfinite(value):
            score = sign * float(value)
            if best is None or score < best[0]:
                best = (score, result)
    if best is None:
        raise RuntimeError(
            f"no trial of the sweep in {output_dir} finished with a finite {sweep.metric}; "
            f"trials: {json.dumps(trials, default=str)}"
        )
    result = best[1]
    best_id = str(result.metrics["trial_id"])
    source = output_dir / TRIALS_FOLDER / best_id
    staging = output_dir / f".{BEST_FOLDER}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    shutil.copytree(source / MODEL_FOLDER, staging / MODEL_FOLDER)
    for name in (METRICS_FILE, RUN_CONFIG_FILE):
        shutil.copy2(source / name, staging / name)
    if (output_dir / BEST_FOLDER).exists():
        shutil.rmtree(output_dir / BEST_FOLDER)
    os.replace(staging, output_dir / BEST_FOLDER)
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, int | float | str)}
    document = {
        "trial_id": best_id,
        "metric": sweep.metric,
        "mode": sweep.mode,
        "value": result.metrics[sweep.metric],
        "params": dict(result.config),
        "metrics": metrics,
        "model_dir": str(output_dir / BEST_FOLDER / MODEL_FOLDER),
        "mlflow_parent_run_id": parent_run_id,
        "trials": trials,
    }
    temporary = output_dir / f".{BEST_FILE}.tmp"
    temporary.write_text(json.dumps(document, indent=2, default=str))
    os.replace(temporary, output_dir / BEST_FILE)
    return SweepResult(
        best_trial=best_id,
        best_params=dict(result.config),
        best_metrics=metrics,
        best_dir=output_dir / BEST_FOLDER,
        trials=trials,
        parent_run_id=parent_run_id,
    )
