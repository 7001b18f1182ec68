"""MLflow for the pipeline: one run per step, nested under the pipeline's parent run."""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from multivae.names import MLFLOW_DATABASE_FILE

EXPERIMENT = "multivae"
STEP_TAG = "multivae.step"


def tracking_uri_for(uri: str, folder: str | os.PathLike[str]) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite store in ``folder``."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    path = Path(folder).resolve() / MLFLOW_DATABASE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


@contextlib.contextmanager
def step_run(
    tracking_uri: str, parent_run_id: str, step: str, params: Mapping[str, Any] | None = None
) -> Iterator[tuple[Any, str]]:
    """An MLflow run for one pipeline step, nested under the pipeline's run.

    Yields the client and the run id; the run ends ``FINISHED``, or ``FAILED`` when the block
    raises.
    """
    from mlflow import MlflowClient

    from multivae.integrations.mlflow import experiment_id_for, flatten_config, package_version

    client = MlflowClient(tracking_uri)
    tags = {STEP_TAG: step, "multivae.version": package_version()}
    if parent_run_id:
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        tags["mlflow.parentRunId"] = parent_run_id
    else:
        experiment_id = experiment_id_for(client, EXPERIMENT)
    run = client.create_run(experiment_id, run_name=step, tags=tags)
    run_id = str(run.info.run_id)
    for key, value in flatten_config(dict(params or {})).items():
        client.log_param(run_id, key, value)
    status = "FAILED"
    try:
        yield client, run_id
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)


_METRIC_KEY = re.compile(r"[^A-Za-z0-9_\-./ ]")
_SKIPPED = ("config", "pairs", "counts", "per_subset", "data", "model", "split")


def scalar_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested metrics document, keyed by dotted path (MLflow-safe).

    Per-pair coherences, per-subset probes and counts are left out (the summaries stay).
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if key in _SKIPPED:
            continue
        name = _METRIC_KEY.sub("_", f"{prefix}{key}")
        if isinstance(value, Mapping):
            out.update(scalar_metrics(value, f"{name}."))
        elif (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(float(value))
        ):
            out[name] = float(value)
    return out


def log_metrics(client: Any, run_id: str, metrics: Mapping[str, float]) -> None:
    """Log ``metrics`` at step 0 of the run, 500 per request."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(key, value, now, 0) for key, value in metrics.items()]
    for start in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[start : start + 500])
