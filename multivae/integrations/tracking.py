"""The tracking callbacks of a run, from its description.

MLflow is imported only when a run is tracked, so runs without tracking need no MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from multivae.training import Callback

if TYPE_CHECKING:
    from multivae.run_config import RunConfig


def tracking_callbacks(config: RunConfig, folder: Path) -> list[Callback]:
    """The MLflow callback of a run (none when ``mlflow.enabled`` is false)."""
    if not config.mlflow.enabled:
        return []
    from multivae.integrations.endpoints import check_tracking_uri
    from multivae.integrations.mlflow import MLflowCallback, default_tracking_uri

    settings = config.mlflow
    uri = settings.tracking_uri or default_tracking_uri(config.output_dir)
    # Before the run writes anything: an unreachable server is refused at once.
    check_tracking_uri(
        uri, "mlflow.tracking_uri" if settings.tracking_uri else "MLFLOW_TRACKING_URI"
    )
    return [
        MLflowCallback(
            tracking_uri=uri,
            experiment=settings.experiment,
            run_name=settings.run_name,
            parent_run_id=settings.parent_run_id,
            config=config.to_dict(),
            dataset=folder,
            register_as=settings.register_as,
        )
    ]
