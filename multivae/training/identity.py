"""What makes a run this run: the checks before starting afresh and before resuming.

A run starts afresh only in a folder without another run's outputs (:func:`check_fresh_output`),
and resumes only as the same run (:func:`check_resume_identity`): the model, its config, the
training settings but :data:`RESUME_SAFE_KEYS`, and the data's fingerprint.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from multivae.config import ConfigError, flatten_mapping
from multivae.models.base import MultimodalVAE
from multivae.names import METRICS_FILE, MODEL_FOLDER
from multivae.training.checkpoint import CHECKPOINT_FILE
from multivae.training.config import TrainingConfig

RESUME_SAFE_KEYS = (
    "epochs",
    "stage_epochs",
    "progress_bar",
    "num_workers",
    "checkpoint_every",
    "device",
    "compile",
    "cuda_graphs",
    "early_stopping_patience",
    "early_stopping_min_delta",
)
"""Training settings a resume may change: how long, how often to save, on what hardware, how
fast; none of them changes what the epochs already trained mean. Everything else of the run's
identity (:meth:`Trainer.identity`) is checked against the checkpoint."""


def changed_keys(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs (or that one side lacks)."""
    missing = object()

    def show(value: Any) -> str:
        return "(absent)" if value is missing else repr(value)

    changes = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, missing), after.get(key, missing)
        if old != new:
            changes.append(f"{key}: {show(old)} -> {show(new)}")
    return changes


def check_fresh_output(output_dir: Path) -> None:
    """Refuse to start a run afresh where a run's outputs already are.

    Raises:
        FileExistsError: For a checkpoint (resume that run instead), or a model folder or
            metrics file without one (an earlier run's outputs, or files of the user's, which a
            new run would replace).
    """
    checkpoint = output_dir / CHECKPOINT_FILE
    if checkpoint.exists():
        raise FileExistsError(
            f"{checkpoint} exists: resume to continue that run (--resume), or choose another "
            "output_dir"
        )
    present = [name for name in (MODEL_FOLDER, METRICS_FILE) if (output_dir / name).exists()]
    if present:
        raise FileExistsError(
            f"{output_dir} already holds {present} without a checkpoint to resume; a new run "
            "would replace them: choose another output_dir"
        )


def run_identity(
    model: MultimodalVAE, config: TrainingConfig, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What makes a run this run, as dotted keys: what a resume must not change.

    The model's name and config, the training settings but :data:`RESUME_SAFE_KEYS`, and
    ``extra`` (the caller's: the data's fingerprint).
    """
    training = {
        f"training.{key}": value
        for key, value in flatten_mapping(config.to_dict(), "").items()
        if not any(key == safe or key.startswith(f"{safe}.") for safe in RESUME_SAFE_KEYS)
    }
    return {
        "model": model.name,
        **flatten_mapping(model.config.to_dict(), "model_config."),
        **training,
        **flatten_mapping(dict(extra or {}), ""),
    }


def check_resume_identity(
    path: Path, checkpoint: Mapping[str, Any], identity: Mapping[str, Any]
) -> None:
    """Refuse to resume ``checkpoint`` (read from ``path``) as a run of another ``identity``.

    Raises:
        ConfigError: Listing every changed key with its old and new value.
    """
    if "identity" not in checkpoint:  # written before checkpoints kept their run's identity
        return
    changed = changed_keys(checkpoint["identity"], identity)
    if changed:
        raise ConfigError(
            f"{path}: resuming would change the run: "
            + "; ".join(changed)
            + ". A resumed run keeps what it started with, except "
            + ", ".join(f"training.{key}" for key in RESUME_SAFE_KEYS)
            + "; start a new run in another output_dir to change the rest"
        )
