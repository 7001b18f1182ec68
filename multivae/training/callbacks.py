"""Hooks into the training loop (:class:`Callback`) and what a run returns (the result)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multivae.training.loop import Trainer

EpochRecord = dict[str, float | int | str]
"""One entry of the history: ``epoch`` (counted over all stages, from 1), ``stage``,
``stage_epoch`` (from 1), ``lr``, ``train_loss`` and ``train_<metric>`` for every metric the
model reports, ``val_loss`` and ``val_<metric>`` when there is validation data,
``epoch_time`` (seconds, training and validation) and ``samples_per_s`` (training)."""


class Callback:
    """Hooks into the training loop; subclass and override what you need.

    Callbacks run on every rank; one that logs or writes should check
    :func:`distributed_rank` itself.
    """

    def on_train_begin(self, trainer: Trainer) -> None:
        """Called once before the first epoch of :meth:`Trainer.fit` (after a resume's load)."""

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float | int | str]) -> bool:
        """Called after each epoch with its history entry (see :data:`EpochRecord`).

        Args:
            epoch: The epoch just finished, counted over all stages from 1.
            metrics: Its history entry.

        Returns:
            ``True`` to stop training after this epoch (a checkpoint is written, and a later
            resume continues from there).
        """
        return False

    def on_epoch_saved(
        self, epoch: int, metrics: Mapping[str, float | int | str], checkpoint: Path | None
    ) -> None:
        """Called after :meth:`on_epoch_end` and after the epoch's checkpoint, if any, is written.

        Args:
            epoch: The epoch just finished, counted over all stages from 1.
            metrics: Its history entry.
            checkpoint: The checkpoint file written at this epoch (by rank 0; the same path is
                passed on every rank), or ``None`` when this epoch wrote none.
        """

    def on_train_end(self, result: TrainingResult) -> None:
        """Called once at the end of :meth:`Trainer.fit`, after the outputs are written."""

    def on_train_error(self, error: BaseException) -> None:
        """Called when :meth:`Trainer.fit` fails after ``on_train_begin``; the error is re-raised.

        The checkpoint of the last saved epoch stays in place, so the run can be resumed.
        """


@dataclass
class TrainingResult:
    """What :meth:`Trainer.fit` returns.

    Attributes:
        history: One :data:`EpochRecord` per epoch, over all stages (and runs, when resumed).
        monitor: ``val_loss`` or ``train_loss``: the loss that picks the best epoch.
        best_epoch: The best epoch of the last stage trained, or ``None``.
        best_loss: Its monitored loss, or ``None``.
        epochs_run: Epochs trained over all stages (and runs, when resumed).
        wall_time: Seconds spent in :meth:`Trainer.fit` (and before, when resumed).
        early_stopped: The stages that early stopping ended.
        stopped_by_callback: Whether a callback stopped training.
        output_dir: The run's folder.
        model_dir: The saved model (``output_dir/model``), best or last by ``keep``.
        metrics_path: ``output_dir/metrics.json``.
        checkpoint_path: ``output_dir/checkpoint.pt``.
    """

    history: list[EpochRecord]
    monitor: str
    best_epoch: int | None
    best_loss: float | None
    epochs_run: int
    wall_time: float
    early_stopped: list[str]
    stopped_by_callback: bool
    output_dir: Path
    model_dir: Path
    metrics_path: Path
    checkpoint_path: Path
