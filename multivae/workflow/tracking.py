"""MLflow for the pipeline: one run per step, nested under the pipeline's parent run.

Every run a step makes carries its source, as MLflow's UI shows it in the Source column
(MLflow detects one only for the scripts and notebooks that call ``mlflow.start_run``):
``mlflow.source.type`` ``JOB`` (a run of an orchestrated pipeline) and ``mlflow.source.name``
the file that defines what ran, ``pipelines/pipeline.py`` for the pipeline's run and
``components/<step>.py`` for a step's (:func:`step_source_tags`), with the git commit when the
step runs inside a git checkout (``mlflow.source.git.commit``).
"""

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
PIPELINE_SOURCE = "pipelines/pipeline.py"
"""The source of the pipeline's parent run: the file that defines the pipeline."""
SOURCE_TYPE = "JOB"
"""MLflow's source type of the runs of the pipeline and its steps."""


def step_source_tags(step: str | None = None) -> dict[str, str]:
    """The source tags of the pipeline's run (``step=None``) or of one of its steps' runs.

    ``mlflow.source.type: JOB``; ``mlflow.source.name``: :data:`PIPELINE_SOURCE`, or the
    step's component, ``components/<step>.py`` (``sample-augmentation``:
    ``components/sample_augmentation.py``); the user, and the git commit of the working
    directory when there is one. A step's run is also tagged ``multivae.step``.
    """
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    from multivae.integrations.mlflow import git_commit, source_tags

    name = PIPELINE_SOURCE if step is None else f"components/{step.replace('-', '_')}.py"
    tags = source_tags(name, SOURCE_TYPE)
    if commit := git_commit():
        tags[MLFLOW_GIT_COMMIT] = commit
    if step is not None:
        tags[STEP_TAG] = step
    return tags


def tag_step_run(tracking_uri: str, run_id: str, step: str) -> None:
    """Tag a run that a step made through another API (training's) as that step's run."""
    from mlflow import MlflowClient
    from mlflow.entities import RunTag

    tags = [RunTag(key, value) for key, value in step_source_tags(step).items()]
    MlflowClient(tracking_uri).log_batch(run_id, tags=tags)


def log_dataset_input(client: Any, run_id: str, data: str | os.PathLike[str], context: str) -> None:
    """Log the dataset folder ``data`` as an input of a run, with ``context``."""
    from multivae.integrations.mlflow import log_dataset

    log_dataset(client, run_id, data, context)


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

    Tagged with the step's source (:func:`step_source_tags`). Yields the client and the run
    id; the run ends ``FINISHED``, or ``FAILED`` when the block raises.
    """
    from mlflow import MlflowClient

    from multivae.integrations.mlflow import experiment_id_for, flatten_config, package_version

    client = MlflowClient(tracking_uri)
    tags = {**step_source_tags(step), "multivae.version": package_version()}
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
