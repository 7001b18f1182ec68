"""The one training loop: stages, epochs, optimizer and schedule, precision, checkpoints, resume.

See :class:`Trainer` for the loop, :class:`TrainingConfig` for its settings and
:class:`Callback` for hooking into it. :func:`multivae.run.run_training` wires a whole run
(data, model, trainer) from one config.
"""

from multivae.training.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from multivae.training.config import OptimizerConfig, SchedulerConfig, TrainingConfig
from multivae.training.loop import (
    METRICS_FILE,
    MODEL_FOLDER,
    Callback,
    EpochRecord,
    Trainer,
    TrainingResult,
    distributed_rank,
    unwrap_model,
)

__all__ = [
    "CHECKPOINT_FILE",
    "METRICS_FILE",
    "MODEL_FOLDER",
    "Callback",
    "EpochRecord",
    "OptimizerConfig",
    "SchedulerConfig",
    "Trainer",
    "TrainingConfig",
    "TrainingResult",
    "distributed_rank",
    "load_checkpoint",
    "save_checkpoint",
    "unwrap_model",
]
