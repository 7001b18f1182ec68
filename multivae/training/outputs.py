"""What a finished run leaves in its folder: the model, ``metrics.json`` and the result."""

from __future__ import annotations

import json
import os
from pathlib import Path

from multivae.models.base import MultimodalVAE
from multivae.names import METRICS_FILE, MODEL_FOLDER
from multivae.training.callbacks import TrainingResult
from multivae.training.checkpoint import CHECKPOINT_FILE
from multivae.training.state import LoopState


def training_result(
    state: LoopState, output_dir: Path, validated: bool, stopped_by_callback: bool
) -> TrainingResult:
    """The :class:`TrainingResult` of a run whose loop ended in ``state``."""
    return TrainingResult(
        history=state.history,
        monitor="val_loss" if validated else "train_loss",
        best_epoch=state.best_epoch,
        best_loss=None if state.best_epoch is None else state.best_loss,
        epochs_run=state.epoch,
        wall_time=state.elapsed,
        early_stopped=state.early_stopped,
        stopped_by_callback=stopped_by_callback,
        output_dir=output_dir,
        model_dir=output_dir / MODEL_FOLDER,
        metrics_path=output_dir / METRICS_FILE,
        checkpoint_path=output_dir / CHECKPOINT_FILE,
    )


def write_outputs(model: MultimodalVAE, keep: str, result: TrainingResult) -> None:
    """Save the model (``save_pretrained``) and write ``metrics.json`` atomically."""
    model.save_pretrained(result.model_dir)
    best = [r for r in result.history if r["epoch"] == result.best_epoch]
    document = {
        "model": model.name,
        "kept": keep,
        "monitor": result.monitor,
        "epochs_run": result.epochs_run,
        "wall_time_s": result.wall_time,
        "best_epoch": result.best_epoch,
        "best_loss": result.best_loss,
        "early_stopped": result.early_stopped,
        "stopped_by_callback": result.stopped_by_callback,
        "final": result.history[-1],
        "best": best[0] if best else None,
    }
    temporary = result.metrics_path.with_name(f".{METRICS_FILE}.tmp")
    temporary.write_text(json.dumps(document, indent=2))
    os.replace(temporary, result.metrics_path)
