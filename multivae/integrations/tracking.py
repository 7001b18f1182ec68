"""The tracking callbacks of a run, from its description.

MLflow is imported only when a run is tracked, so runs without tracking need no MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from multivae.training.loop import Callback

if TYPE_CHECKING:
    from multivae.run_config import RunConfig


def tracking_callbacks(config: RunConfig, folder: Path) -> list[Callback]:
    """The MLflow callback of a run (none when ``mlflow.enabled`` is false)."""
    if not config.mlflow.enabled:
        return []
    from multivae.integrations.mlflow import MLflowCallback, default_tracking_uri

    settings = config.mlflow
    return [
        MLflowCallback(
            tracking_uri=settings.tracking_uri or default_tracking_uri(config.output_dir),
            experiment=settings.experiment,
            run_name=settings.run_name,
            parent_run_id=settings.parent_run_id,
            config=config.to_dict(),
            dataset=folder,
            register_as=settings.register_as,
        )
    ]
