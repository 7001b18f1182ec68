"""The register step: the Hub folder, its push, the MLflow model version; the pipeline ends."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from multivae.names import REGISTER_RECORD_ARTIFACT
from multivae.workflow.artifacts import model_folder_in
from multivae.workflow.tracking import step_run, tracking_uri_for


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
) -> dict[str, Any]:
    """Write the Hub folder, push it (unless ``dry_run``), register it in MLflow.

    The folder ``out`` holds the model's files and a model card with the evaluation metrics,
    the dataset description, intended use and limits: exactly what is pushed. It is written
    first, so a push that fails (no token, no network) loses nothing. The model version is
    registered from the training run (``train_run_id``) that the evaluation scored. The last
    step of the pipeline: it also ends the pipeline's parent run.

    Raises:
        PermissionError: When pushing without a Hugging Face token (``HF_TOKEN`` or a saved
            login), with what to do.
        ValueError: When pushing without ``hub_repo``, or for ``metrics`` that record the
            evaluation of another model (by fingerprint, :func:`multivae.hub.hub_folder`).

    Returns:
        ``{"hub_folder", "pushed", "repo_url", "registered_model", "registered_version"}``.
    """
    from multivae.hub import hub_folder, push_to_hub
    from multivae.integrations.mlflow import finish_run, register_model

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
            if train_run_id:
                version = register_model(
                    tracking_uri, train_run_id, registered_name, model_dir=source
                )
                client.set_tag(run_id, "multivae.registered_version", version)
            record["registered_model"] = registered_name if version else None
            record["registered_version"] = version
            client.log_dict(run_id, record, REGISTER_RECORD_ARTIFACT)
        status = "FINISHED"
    finally:
        if parent_run_id:
            finish_run(tracking_uri, parent_run_id, status)
    return record
