"""The optimizers of a training stage: one per optimizer group, with its schedule and clipping.

A model declares the groups of each stage (:meth:`MultimodalVAE.optimizer_groups`); the run
config gives each group its optimizer, scheduler and gradient clipping
(``training.groups[name]``, each entry defaulting to ``training.optimizer``,
``training.scheduler`` and ``training.grad_clip_norm``). :class:`StageOptimizers` builds them,
steps one group at a time, and saves and restores them all with the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from multivae.config import ConfigError
from multivae.models.base import MultimodalVAE, OptimizerGroup
from multivae.training.config import (
    OptimizerConfig,
    OptimizerGroupConfig,
    SchedulerConfig,
    TrainingConfig,
)


@dataclass
class GroupOptimizer:
    """One group's optimizer, scheduler and clipping norm."""

    group: OptimizerGroup
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    grad_clip_norm: float | None

    def step(self) -> None:
        """Clip the group's gradients, step its optimizer, then run its ``after_step``."""
        if self.grad_clip_norm is not None:
            # After backward (the gradients exist) and before the step (which uses them).
            nn.utils.clip_grad_norm_(self.group.parameters, self.grad_clip_norm)
        self.optimizer.step()
        if self.group.after_step is not None:
            self.group.after_step()

    def lr(self) -> float:
        """The learning rate of the optimizer's first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])


def check_group_names(model: MultimodalVAE, config: TrainingConfig) -> None:
    """Refuse ``training.groups`` entries that name no optimizer group of any stage.

    Raises:
        ConfigError: Naming the unknown groups and the model's groups.
    """
    if not config.groups:
        return
    known = {group.name for stage in model.stages for group in model.optimizer_groups(stage)}
    unknown = sorted(set(config.groups) - known)
    if unknown:
        raise ConfigError(
            f"training.groups: {model.name} has no optimizer group {unknown[0]!r}; expected "
            f"some of {sorted(known)}",
            key=f"training.groups.{unknown[0]}",
        )


class StageOptimizers:
    """The optimizers of one stage, in the order the model declares its groups.

    Args:
        model: The model (unwrapped).
        stage: The stage.
        config: The training settings.
    """

    def __init__(self, model: MultimodalVAE, stage: str, config: TrainingConfig) -> None:
        groups = model.optimizer_groups(stage)
        names = [group.name for group in groups]
        if not groups or len(set(names)) != len(names):
            raise ValueError(
                f"{model.name}: stage {stage!r} needs optimizer groups with distinct names, "
                f"found {names}"
            )
        self.entries: list[GroupOptimizer] = []
        for group in groups:
            settings = (config.groups or {}).get(group.name, OptimizerGroupConfig())
            optimizer_config: OptimizerConfig = settings.optimizer or config.optimizer
            scheduler_config: SchedulerConfig | None = (
                settings.scheduler if settings.scheduler is not None else config.scheduler
            )
            optimizer = optimizer_config.build(group.parameters)
            self.entries.append(
                GroupOptimizer(
                    group,
                    optimizer,
                    None if scheduler_config is None else scheduler_config.build(optimizer),
                    settings.grad_clip_norm
                    if settings.grad_clip_norm is not None
                    else config.grad_clip_norm,
                )
            )

    @property
    def names(self) -> list[str]:
        """The groups' names, in stepping order."""
        return [entry.group.name for entry in self.entries]

    def lr(self) -> float:
        """The first group's learning rate (the epoch record's ``lr``)."""
        return self.entries[0].lr()

    def step_schedulers(self, monitored: float) -> None:
        """Step every scheduler once (an epoch); ``ReduceLROnPlateau`` on the monitored loss."""
        for entry in self.entries:
            if entry.scheduler is None:
                continue
            if isinstance(entry.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                entry.scheduler.step(monitored)
            else:
                entry.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        """Every group's optimizer and scheduler state, by group name."""
        return {
            entry.group.name: {
                "optimizer": entry.optimizer.state_dict(),
                "scheduler": None if entry.scheduler is None else entry.scheduler.state_dict(),
            }
            for entry in self.entries
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved.

        Raises:
            ValueError: When the saved groups are not this stage's.
        """
        if sorted(state) != sorted(self.names):
            raise ValueError(
                f"expected the optimizer states of groups {self.names}, found {sorted(state)}"
            )
        for entry in self.entries:
            saved = state[entry.group.name]
            entry.optimizer.load_state_dict(saved["optimizer"])
            if entry.scheduler is not None and saved["scheduler"] is not None:
                entry.scheduler.load_state_dict(saved["scheduler"])


def checkpoint_optimizers(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The optimizer states of a checkpoint by group, also from the one-optimizer format.

    Checkpoints written before optimizer groups hold one ``optimizer`` and ``scheduler``: they
    are the ``main`` group's.
    """
    if "optimizers" in checkpoint:
        groups: dict[str, Any] = checkpoint["optimizers"]
        return groups
    return {"main": {"optimizer": checkpoint["optimizer"], "scheduler": checkpoint["scheduler"]}}
