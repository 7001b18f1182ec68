"""The register step: the Hub folder, its push, the MLflow model version; the pipeline ends."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from multivae.names import REGISTER_RECORD_ARTIFACT
from multivae.workflow.artifacts import model_folder_in
from multivae.workflow.tracking import scalar_metrics, step_run, tracking_uri_for

CHAMPION_METRICS = ("coherence.mean", "likelihood.joint.mean")
"""The metrics a version is ranked on by default: the first that the evaluation reports."""


def _default_metric(metrics: Mapping[str, Any]) -> str:
    scalars = scalar_metrics(metrics)
    return next((name for name in CHAMPION_METRICS if name in scalars), CHAMPION_METRICS[0])


def register_step(
    model_dir: str | os.PathLike[str],
    metrics: Mapping[str, Any],
    data_summary: Mapping[str, Any],
    out: str | os.PathLike[str],
    *,
    hub_repo: str = "",
    dry_run: bool = True,
    token: str | None = None,
    registered_name: str = "multivae",
    tracking_uri: str = "",
    parent_run_id: str = "",
    train_run_id: str = "",
    private: bool = True,
    champion_metric: str = "",
    champion_alias: str = "champion",
) -> dict[str, Any]:
    """Write the Hub folder, push it (unless ``dry_run``), register it in MLflow.

    The folder ``out`` holds the model's files and a model card with the evaluation metrics,
    the dataset description, intended use and limits: exactly what is pushed. It is written
    first, so a push that fails (no token, no network) loses nothing. The model, that of the
    training run (``train_run_id``) the evaluation scored, is logged and registered from the
    pipeline's run (``parent_run_id``; the training run's without one): as MLflow's searches
    log their best model on their parent run, the pipeline's run is the logged model's
    ``source_run_id`` and the model version's ``run_id``, which fills its row's Models column
    in MLflow's UI (its nested runs, collapsed under it, show none). The training run is
    linked to it: the logged model is an output of that run too, which is tagged
    ``multivae.registered_model`` and ``multivae.registered_version``, and the version and the
    logged model are tagged ``multivae.train_run_id``. The logged model is an input of this
    step's run. The new version takes the alias ``champion_alias`` when it beats the version
    holding it on ``champion_metric`` (:func:`~multivae.integrations.mlflow.promote_champion`;
    a dotted key of :func:`~multivae.workflow.tracking.scalar_metrics` of ``metrics``, by
    default ``coherence.mean``, else ``likelihood.joint.mean`` when the evaluation has no
    coherence; the direction follows the name: an NLL is better lower), or when no version
    holds it. The last step of the pipeline: it also ends the pipeline's parent run.

    Raises:
        PermissionError: When pushing without a Hugging Face token (``HF_TOKEN`` or a saved
            login), with what to do.
        ValueError: When pushing without ``hub_repo``, or for ``metrics`` that record the
            evaluation of another model (by fingerprint, :func:`multivae.hub.hub_folder`).

    Returns:
        ``{"hub_folder", "pushed", "repo_url", "registered_model", "registered_version",
        "champion"}``, ``champion`` the alias decision (``None`` when nothing was registered):
        ``{"alias", "metric", "higher_is_better", "version", "value", "previous_version",
        "previous_value", "promoted", "reason"}``.
    """
    from mlflow.entities import LoggedModelInput, LoggedModelOutput

    from multivae.hub import hub_folder, push_to_hub
    from multivae.integrations.mlflow import (
        MODEL_ID_TAG,
        finish_run,
        promote_champion,
        register_model,
    )

    source = model_folder_in(model_dir)
    out = Path(out)
    tracking_uri = tracking_uri_for(tracking_uri, out.parent)
    params = {"hub_repo": hub_repo, "dry_run": dry_run, "registered_name": registered_name}
    status = "FAILED"
    try:
        with step_run(tracking_uri, parent_run_id, "register", params) as (client, run_id):
            hub_folder(source, out, metrics=metrics, data_summary=data_summary, repo_id=hub_repo)
            record: dict[str, Any] = {"hub_folder": str(out), "pushed": False, "repo_url": None}
            if not dry_run:
                record["repo_url"] = push_to_hub(out, hub_repo, token=token, private=private)
                record["pushed"] = True
                client.set_tag(run_id, "multivae.hub_repo", hub_repo)
            version = None
            record["champion"] = None
            if train_run_id:
                owner = parent_run_id or train_run_id
                version = register_model(tracking_uri, owner, registered_name, model_dir=source)
                client.set_tag(run_id, "multivae.registered_version", version)
                model_id = client.get_model_version(registered_name, version).tags[MODEL_ID_TAG]
                client.set_model_version_tag(
                    registered_name, version, "multivae.train_run_id", train_run_id
                )
                client.set_logged_model_tags(model_id, {"multivae.train_run_id": train_run_id})
                if owner != train_run_id:
                    client.log_outputs(train_run_id, [LoggedModelOutput(model_id, step=0)])
                    client.set_tag(train_run_id, "multivae.registered_model", registered_name)
                    client.set_tag(train_run_id, "multivae.registered_version", version)
                client.log_inputs(run_id, models=[LoggedModelInput(model_id)])
                metric = champion_metric or _default_metric(metrics)
                decision = promote_champion(
                    client,
                    registered_name,
                    version,
                    metric,
                    scalar_metrics(metrics).get(metric),
                    alias=champion_alias,
                )
                record["champion"] = decision
                client.set_tag(run_id, "multivae.champion", str(decision["promoted"]).lower())
            record["registered_model"] = registered_name if version else None
            record["registered_version"] = version
            client.log_dict(run_id, record, REGISTER_RECORD_ARTIFACT)
        status = "FINISHED"
    finally:
        if parent_run_id:
            finish_run(tracking_uri, parent_run_id, status)
    return record
