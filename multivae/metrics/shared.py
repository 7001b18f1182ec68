"""What every metric shares: its data in batches, the model's device, modes and random state."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from multivae.data.batch import Batch, collate
from multivae.data.reader import MultimodalDataset

EvaluationData = Batch | MultimodalDataset
"""What the metrics evaluate on: one in-memory batch, or a dataset split read batch by batch."""


def select_rows(batch: Batch, rows: torch.Tensor) -> Batch:
    """The rows of ``batch`` picked by a boolean mask or an index tensor."""
    return Batch(
        data={name: values[rows] for name, values in batch.data.items()},
        mask={name: flags[rows] for name, flags in batch.mask.items()},
        label=None if batch.label is None else batch.label[rows],
        sample_id=None if batch.sample_id is None else batch.sample_id[rows],
    )


def iter_batches(data: EvaluationData, batch_size: int) -> Iterator[Batch]:
    """Consecutive batches of at most ``batch_size`` rows, in order, so memory stays bounded.

    Args:
        data: A :class:`~multivae.data.batch.Batch` (sliced) or a
            :class:`~multivae.data.reader.MultimodalDataset` (read row group by row group).
        batch_size: Rows per batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, found {batch_size}")
    if isinstance(data, MultimodalDataset):
        # Row by row range, without a DataLoader: a loader draws from torch's random state for
        # its workers' seeds, which would make seeded metrics depend on how data is given.
        for start in range(0, len(data), batch_size):
            yield collate(data.__getitems__(range(start, min(start + batch_size, len(data)))))
        return
    for start in range(0, len(data), batch_size):
        rows = slice(start, start + batch_size)
        yield Batch(
            data={name: values[rows] for name, values in data.data.items()},
            mask={name: flags[rows] for name, flags in data.mask.items()},
            label=None if data.label is None else data.label[rows],
            sample_id=None if data.sample_id is None else data.sample_id[rows],
        )


def model_device(model: object) -> torch.device:
    """The device of a model's first parameter; the CPU for objects without parameters."""
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        for parameter in parameters():
            if isinstance(parameter, torch.Tensor):
                return parameter.device
    return torch.device("cpu")


@contextmanager
def evaluation_mode(model: object) -> Iterator[None]:
    """Put a module in evaluation mode for the block and restore its mode after it."""
    if not isinstance(model, nn.Module):
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run the block under torch's random state seeded with ``seed``, then restore the caller's.

    ``None`` leaves the random state alone.
    """
    if seed is None:
        yield
        return
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
