"""The evaluate step: every metric of the trained model, logged to MLflow."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from multivae.names import FIGURES_FOLDER, METRICS_FILE
from multivae.workflow.artifacts import model_folder_in
from multivae.workflow.parameters import integral
from multivae.workflow.tracking import (
    log_dataset_input,
    log_metrics,
    scalar_metrics,
    step_run,
    tracking_uri_for,
)


def evaluate_step(
    model_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    evaluation: Mapping[str, Any] | None = None,
    classifiers: str | os.PathLike[str] | None = None,
    tracking_uri: str = "",
    parent_run_id: str = "",
    train_run_id: str = "",
) -> dict[str, Any]:
    """Evaluate the model; log the scalar metrics and figures to MLflow.

    Args:
        model_dir: The model artifact folder (its ``model/``) or a model folder.
        data: The dataset folder.
        out: Where ``metrics.json`` and ``figures/`` go.
        evaluation: :class:`~multivae.metrics.EvaluationConfig` entries.
        classifiers: The classifiers' folder (the preprocess step's); the dataset's own,
            beside it, by default.
        tracking_uri: MLflow tracking URI.
        parent_run_id: The pipeline's MLflow run.
        train_run_id: The training run evaluated (tagged on the evaluation run).

    Returns:
        The metrics, as in ``metrics.json``.
    """
    from multivae.metrics import EvaluationConfig, evaluate

    model_path = model_folder_in(model_dir)
    entries = integral(evaluation or {})
    if classifiers is not None:
        entries = {**entries, "classifiers": str(classifiers)}
    config = EvaluationConfig.from_dict(entries)
    out = Path(out)
    tracking_uri = tracking_uri_for(tracking_uri, out.parent)
    with step_run(tracking_uri, parent_run_id, "evaluate", config.to_dict()) as (client, run_id):
        if train_run_id:
            client.set_tag(run_id, "multivae.train_run_id", train_run_id)
        log_dataset_input(client, run_id, data, "evaluation")
        metrics = evaluate(model_path, data, out, config, progress=False)
        log_metrics(client, run_id, scalar_metrics(metrics))
        client.log_artifact(run_id, str(out / METRICS_FILE))
        if (out / FIGURES_FOLDER).is_dir():
            client.log_artifacts(run_id, str(out / FIGURES_FOLDER), FIGURES_FOLDER)
    return metrics
