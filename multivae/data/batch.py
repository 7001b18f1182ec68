"""Samples and batches in memory, and the collate function that turns one into the other."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import torch


@dataclass(slots=True)
class Sample:
    """One row of a split.

    Attributes:
        data: Modality name -> array of the modality's shape (zeros where absent).
        mask: Modality name -> whether the modality is present.
        label: The class, or ``None`` when the dataset has no label.
        sample_id: The stable id of the row.
    """

    data: dict[str, np.ndarray[Any, Any]]
    mask: dict[str, bool]
    label: int | None
    sample_id: int


@dataclass(slots=True)
class Batch:
    """A batch: every modality always has an entry, zero-filled where absent, so shapes are fixed.

    Attributes:
        data: Modality name -> tensor of shape ``(batch, *shape)``.
        mask: Modality name -> boolean tensor of shape ``(batch,)``, true where present.
        label: Long tensor of shape ``(batch,)``, or ``None``.
        sample_id: Long tensor of shape ``(batch,)``, or ``None``.
    """

    data: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]
    label: torch.Tensor | None = None
    sample_id: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(next(iter(self.mask.values())).shape[0])

    @property
    def modalities(self) -> tuple[str, ...]:
        """Names of the modalities in the batch."""
        return tuple(self.data)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy on ``device``."""
        return Batch(
            data={k: v.to(device, non_blocking=non_blocking) for k, v in self.data.items()},
            mask={k: v.to(device, non_blocking=non_blocking) for k, v in self.mask.items()},
            label=None if self.label is None else self.label.to(device, non_blocking=non_blocking),
            sample_id=None
            if self.sample_id is None
            else self.sample_id.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        """A copy in pinned memory; called by ``DataLoader(pin_memory=True)``."""
        return Batch(
            data={k: v.pin_memory() for k, v in self.data.items()},
            mask={k: v.pin_memory() for k, v in self.mask.items()},
            label=None if self.label is None else self.label.pin_memory(),
            sample_id=None if self.sample_id is None else self.sample_id.pin_memory(),
        )


class SampleBlock(Sequence[Sample]):
    """Several rows held as arrays (what a dataset returns for a whole batch of indices).

    It behaves as a sequence of :class:`Sample`, and :func:`collate` turns it into a
    :class:`Batch` by wrapping its arrays, without a per-sample step.
    """

    def __init__(
        self,
        data: dict[str, np.ndarray[Any, Any]],
        present: dict[str, np.ndarray[Any, Any]],
        labels: np.ndarray[Any, Any] | None,
        sample_ids: np.ndarray[Any, Any],
    ) -> None:
        self.data = data
        self.present = present
        self.labels = labels
        self.sample_ids = sample_ids

    def __len__(self) -> int:
        return len(self.sample_ids)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Sample]: ...

    def __getitem__(self, index: int | slice) -> Sample | Sequence[Sample]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return Sample(
            data={name: values[index] for name, values in self.data.items()},
            mask={name: bool(flags[index]) for name, flags in self.present.items()},
            label=None if self.labels is None else int(self.labels[index]),
            sample_id=int(self.sample_ids[index]),
        )

    def to_batch(self) -> Batch:
        """The rows as a :class:`Batch`, sharing memory with the block."""
        return Batch(
            data={name: torch.from_numpy(values) for name, values in self.data.items()},
            mask={name: torch.from_numpy(flags) for name, flags in self.present.items()},
            label=None if self.labels is None else torch.from_numpy(self.labels),
            sample_id=torch.from_numpy(self.sample_ids),
        )


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack samples into a :class:`Batch` (the ``collate_fn`` for a ``DataLoader``)."""
    if isinstance(samples, SampleBlock):
        return samples.to_batch()
    if not samples:
        raise ValueError("collate expected at least one sample, found an empty sequence")
    first = samples[0]
    data = {
        name: torch.from_numpy(np.stack([s.data[name] for s in samples])) for name in first.data
    }
    mask = {
        name: torch.from_numpy(np.fromiter((s.mask[name] for s in samples), bool, len(samples)))
        for name in first.mask
    }
    label = (
        None if first.label is None else torch.tensor([s.label for s in samples], dtype=torch.long)
    )
    sample_id = torch.tensor([s.sample_id for s in samples], dtype=torch.long)
    return Batch(data=data, mask=mask, label=label, sample_id=sample_id)
