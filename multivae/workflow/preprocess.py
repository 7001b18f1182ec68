"""The preprocess step: the parameters checked, the dataset and its classifiers written."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from multivae.io import atomic_write_text
from multivae.names import SUMMARY_FILE
from multivae.workflow.parameters import CHECKED_PARAMETERS, check_parameters, integral
from multivae.workflow.tracking import (
    EXPERIMENT,
    log_dataset_input,
    log_metrics,
    step_run,
    step_source_tags,
    tracking_uri_for,
)


def preprocess_step(
    out: str | os.PathLike[str],
    *,
    dataset: str = "poly-digits",
    missing_rate: float = 0.5,
    seed: int = 0,
    dataset_params: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    classifier_epochs: int = 5,
    classifiers_out: str | os.PathLike[str] | None = None,
    tracking_uri: str = "",
    run_name: str = "pipeline",
    parameters: Mapping[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Check the pipeline's parameters, write the dataset and its classifiers.

    Args:
        out: The dataset folder (``train/``, ``val/``, ``test/``).
        dataset: A built-in dataset, or ``polymnist`` / ``mnist-svhn`` with ``source``.
        missing_rate: Probability that a modality is missing from a train or val sample.
        seed: Seed of the generator (and the converters' splits).
        dataset_params: Parameters of the built-in generator, e.g. ``{"n_train": 4000}``.
        source: For converters: ``{"path": ...}`` (PolyMNIST) or ``{"mnist": ..., "svhn":
            ...}``.
        classifier_epochs: Epochs of the coherence classifiers (0: none are trained).
        classifiers_out: Where the classifiers go (a folder outside the dataset);
            ``DATA-classifiers`` beside ``out`` by default.
        tracking_uri: MLflow; empty for ``MLFLOW_TRACKING_URI`` or ``out/../mlflow.db``.
        run_name: Name of the pipeline's parent MLflow run.
        parameters: Every pipeline parameter, checked (:func:`check_parameters` keys) and
            logged on the parent run.
        progress: Show progress bars.

    Returns:
        The dataset summary, with ``mlflow_parent_run_id``, ``tracking_uri`` and the classifiers'
        test accuracies.
    """
    from multivae.data.datasets import convert_mnist_svhn, convert_polymnist, prepare_builtin
    from multivae.data.summary import summarize
    from multivae.integrations.mlflow import run_tags, start_parent_run
    from multivae.metrics import train_classifiers

    dataset_params = integral(dataset_params or {})
    check_parameters(
        **{
            "dataset": dataset,
            "missing_rate": missing_rate,
            "source": source,
            **{k: v for k, v in (parameters or {}).items() if k in CHECKED_PARAMETERS},
        }
    )
    out = Path(out)
    tracking_uri = tracking_uri_for(tracking_uri, out.parent)
    parent = start_parent_run(
        tracking_uri,
        EXPERIMENT,
        run_name,
        params=dict(parameters or {}),
        tags={
            **run_tags(str((parameters or {}).get("model", ""))),
            **step_source_tags(),
            "multivae.kind": "pipeline",
        },
    )
    with step_run(tracking_uri, parent, "preprocess", {"dataset": dataset}) as (client, run_id):
        if dataset == "polymnist":
            convert_polymnist(
                source["path"],  # type: ignore[index]
                out,
                seed=seed,
                missing_rate=missing_rate,
                progress=progress,
            )
        elif dataset == "mnist-svhn":
            convert_mnist_svhn(
                source["mnist"],  # type: ignore[index]
                source["svhn"],  # type: ignore[index]
                out,
                seed=seed,
                missing_rate=missing_rate,
                progress=progress,
            )
        else:
            prepare_builtin(
                dataset, out, missing_rate=missing_rate, seed=seed, **dict(dataset_params or {})
            )
        summary = summarize(out, validate=True)
        log_dataset_input(client, parent, out, "training")  # the pipeline trains on it
        accuracy: dict[str, float] = {}
        if classifier_epochs > 0 and summary.get("num_classes"):
            classifiers = train_classifiers(
                out, classifiers_out, epochs=classifier_epochs, seed=seed, progress=progress
            )
            accuracy = {k: float(v) for k, v in classifiers.accuracy.items() if v is not None}
        summary = {
            **summary,
            "classifier_test_accuracy": accuracy,
            "mlflow_parent_run_id": parent,
            "tracking_uri": tracking_uri,
        }
        atomic_write_text(out / SUMMARY_FILE, json.dumps(summary, indent=2, default=str))
        log_metrics(
            client,
            run_id,
            {
                **{f"classifier_accuracy.{k}": v for k, v in accuracy.items()},
                **{
                    f"samples.{split}": float(info["rows"])
                    for split, info in summary["splits"].items()
                },
            },
        )
        client.log_artifact(run_id, str(out / SUMMARY_FILE))
    return summary
