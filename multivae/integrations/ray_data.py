"""The Ray Data adapter: a worker's shard of the run's Parquet splits as :class:`Batch` objects.

Ray Data reads the run's splits (``read_parquet``, streamed and split evenly across workers by
Ray Train); :class:`RayShardBatches` turns a worker's shard into the epoch-by-epoch batches the
:class:`~multivae.training.Trainer` takes, presence masks kept, and checks every row as the local
reader does (:func:`check_columns`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from multivae.data.batch import Batch
from multivae.data.errors import DataFormatError
from multivae.data.schema import (
    LABEL_COLUMN,
    PRESENCE_SUFFIX,
    SAMPLE_ID_COLUMN,
    DatasetSchema,
    imputed_column,
    presence_column,
)
from multivae.data.validation import check_chunk


def _writable(values: Any) -> np.ndarray[Any, Any]:
    """A contiguous array torch may wrap, copied when read-only.

    Ray Data's zero-copy batches are read-only views: ``torch.from_numpy`` warns on them and an
    in-place op on the tensor would be undefined.
    """
    array = np.ascontiguousarray(values)
    return array if array.flags.writeable else array.copy()


def batch_from_columns(
    columns: Mapping[str, np.ndarray[Any, Any]], modalities: Sequence[str]
) -> Batch:
    """A :class:`Batch` from one Ray Data batch in NumPy format (the Parquet columns).

    Modality columns become ``(N, *shape)`` tensors (zero-copy where NumPy allows), the
    ``<name>__present`` columns the masks, ``label`` and ``sample_id`` the long tensors.
    """
    data = {name: torch.from_numpy(_writable(columns[name])) for name in modalities}
    mask = {
        name: torch.from_numpy(_writable(np.asarray(columns[f"{name}{PRESENCE_SUFFIX}"], bool)))
        for name in modalities
    }
    label = columns.get("label")
    sample_id = columns.get("sample_id")
    return Batch(
        data=data,
        mask=mask,
        label=None if label is None else torch.from_numpy(_writable(label.astype(np.int64))),
        sample_id=None
        if sample_id is None
        else torch.from_numpy(_writable(sample_id.astype(np.int64))),
    )


def check_columns(schema: DatasetSchema, columns: Mapping[str, Any], where: str) -> None:
    """The local reader's row checks on one Ray Data batch.

    The checks and messages are :func:`~multivae.data.validation.check_chunk`'s; a bad row is
    named by its ``sample_id`` (Ray Data keeps no file rows).

    Raises:
        DataFormatError: The local reader's message, located at ``where`` and the sample id.
    """
    data = {spec.name: np.asarray(columns[spec.name]) for spec in schema.modalities}
    present = {
        spec.name: np.asarray(columns[presence_column(spec.name)]) for spec in schema.modalities
    }
    labels = None if schema.num_classes is None else np.asarray(columns[LABEL_COLUMN])
    imputed = None
    if schema.imputed:
        imputed = {
            spec.name: np.asarray(columns[imputed_column(spec.name)]) for spec in schema.modalities
        }
    try:
        check_chunk(schema, data, present, labels, imputed=imputed)
    except DataFormatError as error:
        sample = ""
        if error.row is not None and SAMPLE_ID_COLUMN in columns:
            sample = f", sample_id {int(np.asarray(columns[SAMPLE_ID_COLUMN])[error.row])}"
        raise DataFormatError(error.problem, f"{where}{sample}", column=error.column) from None


class RayShardBatches:
    """A worker's shard of a Ray Dataset as an epoch-by-epoch iterable of :class:`Batch`.

    Args:
        shard: ``ray.train.get_dataset_shard(name)``.
        modalities: The modality columns to read.
        batch_size: Samples per batch.
        steps: Batches per epoch (the loop's fractional progress needs it; the shards that Ray
            Train makes are equal in size, so every worker takes the same number of steps).
        seed: Seed of the local shuffle; epoch ``e`` uses ``seed + e``.
        shuffle_buffer_size: Rows in the local shuffle buffer; 0 keeps the read order.
        schema: Check every batch's rows as the local reader does (:func:`check_columns`);
            ``None`` skips the checks.
        where: Where the rows come from, for the messages (the split's folder).
    """

    def __init__(
        self,
        shard: Any,
        modalities: Sequence[str],
        batch_size: int,
        steps: int,
        seed: int = 0,
        shuffle_buffer_size: int = 0,
        schema: DatasetSchema | None = None,
        where: str = "",
    ) -> None:
        self.shard = shard
        self.schema = schema
        self.where = where
        self.modalities = tuple(modalities)
        self.batch_size = batch_size
        self.steps = steps
        self.seed = seed
        self.shuffle_buffer_size = shuffle_buffer_size
        self.epoch = 0

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffle of the next epoch."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        options: dict[str, Any] = {}
        if self.shuffle_buffer_size:
            options = {
                "local_shuffle_buffer_size": self.shuffle_buffer_size,
                "local_shuffle_seed": self.seed + self.epoch,
            }
        for columns in self.shard.iter_batches(
            batch_size=self.batch_size, batch_format="numpy", prefetch_batches=2, **options
        ):
            if self.schema is not None:
                check_columns(self.schema, columns, self.where)
            yield batch_from_columns(columns, self.modalities)
