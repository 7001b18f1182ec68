"""Where the loop is: stage, epoch, best-model tracking and history, all of it checkpointed."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from multivae.training.callbacks import EpochRecord


def cpu_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a state dict (what the checkpoint and the best model keep)."""
    return {key: value.detach().to("cpu", copy=True) for key, value in state.items()}


@dataclass
class LoopState:
    """Where the loop is; all of it goes into the checkpoint."""

    stage_index: int = 0
    stage_epoch: int = 0
    epoch: int = 0
    stage_done: bool = False
    best_loss: float = math.inf
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    early_stopped: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    def next_stage(self) -> None:
        """Move to the first epoch of the next stage, with fresh best-model tracking."""
        self.stage_index += 1
        self.stage_epoch = 0
        self.stage_done = False
        self.best_loss = math.inf
        self.best_epoch = None
        self.best_state = None
        self.bad_epochs = 0

    def to_checkpoint(self) -> dict[str, Any]:
        """The state as the checkpoint's ``loop`` entry (plain values and tensors)."""
        return asdict(self)

    @classmethod
    def from_checkpoint(cls, entry: Mapping[str, Any]) -> LoopState:
        """The state a checkpoint's ``loop`` entry holds."""
        return cls(**entry)
