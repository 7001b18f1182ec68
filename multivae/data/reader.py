"""Reading multimodal Parquet splits with bounded memory.

Files are opened lazily and decoded one row group at a time; decoded row groups are converted to
NumPy without copying (Arrow's tensor buffers are viewed in place) and kept in a small LRU cache,
so memory stays bounded by ``cache_size`` row groups whatever the size of the dataset. Random
access within a row group is free; to shuffle without decoding a row group per sample, use
:class:`BlockShuffleSampler`, which permutes row groups and then rows within a small window of
row groups.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from multivae.data.batch import Batch, Sample, SampleBlock, collate
from multivae.data.errors import DataFormatError
from multivae.data.schema import (
    LABEL_COLUMN,
    METADATA_KEY,
    SAMPLE_ID_COLUMN,
    SPLITS,
    DatasetSchema,
    presence_column,
)
from multivae.data.validation import check_chunk
from multivae.data.writer import check_split_name


def list_splits(root: str | os.PathLike[str]) -> list[str]:
    """The splits present in a dataset folder, in the order train, val, test."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError("expected a dataset folder, found nothing there", where=str(root))
    return [s for s in SPLITS if (root / s).is_dir()]


def split_files(root: str | os.PathLike[str], split: str) -> list[Path]:
    """The Parquet files of a split, sorted by name."""
    check_split_name(split, where=root)
    folder = Path(root) / split
    if not folder.is_dir():
        raise DataFormatError(
            f"no split {split!r}; the dataset has {list_splits(root)}", where=str(root)
        )
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise DataFormatError("expected Parquet files, found none", where=str(folder))
    return files


def _open(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise DataFormatError(
            f"corrupt or truncated Parquet file ({type(error).__name__}: {error})", file=path
        ) from None


def read_file_schema(path: str | os.PathLike[str]) -> DatasetSchema:
    """Parse and check the schema of one file against its multivae description."""
    path = Path(path)
    arrow_schema = _open(path).schema_arrow
    metadata = arrow_schema.metadata or {}
    if METADATA_KEY not in metadata:
        raise DataFormatError(
            "not a multivae dataset file: no 'multivae' entry in the Parquet schema metadata",
            file=path,
        )
    schema = DatasetSchema.from_json(metadata[METADATA_KEY], where=str(path))
    names = set(arrow_schema.names)
    for spec in schema.modalities:
        if spec.name not in names:
            raise DataFormatError("missing modality column", file=path, column=spec.name)
        found = arrow_schema.field(spec.name).type
        if found != spec.arrow_type:
            raise DataFormatError(
                f"expected type {spec.arrow_type} (shape {spec.shape}, dtype {spec.dtype}), "
                f"found {found}",
                file=path,
                column=spec.name,
            )
        flag = presence_column(spec.name)
        if flag not in names:
            raise DataFormatError("missing presence column", file=path, column=flag)
        if arrow_schema.field(flag).type != pa.bool_():
            raise DataFormatError(
                f"expected type bool, found {arrow_schema.field(flag).type}", file=path, column=flag
            )
    required = [SAMPLE_ID_COLUMN] + ([LABEL_COLUMN] if schema.num_classes is not None else [])
    for column in required:
        if column not in names:
            raise DataFormatError("missing column", file=path, column=column)
        if not pa.types.is_integer(arrow_schema.field(column).type):
            raise DataFormatError(
                f"expected an integer column, found {arrow_schema.field(column).type}",
                file=path,
                column=column,
            )
    return schema


def read_schema(root: str | os.PathLike[str], split: str | None = None) -> DatasetSchema:
    """The schema of a dataset (of ``split``, or of its first split)."""
    splits = list_splits(root) if split is None else [split]
    if not splits:
        raise DataFormatError(f"expected split folders {list(SPLITS)}, found none", where=str(root))
    return read_file_schema(split_files(root, splits[0])[0])


@dataclass(frozen=True, slots=True)
class _RowGroup:
    file: int
    index: int
    start: int
    rows: int
    file_offset: int


@dataclass(slots=True)
class _Decoded:
    data: dict[str, np.ndarray[Any, Any]]
    present: dict[str, np.ndarray[Any, Any]]
    labels: np.ndarray[Any, Any] | None
    sample_ids: np.ndarray[Any, Any]


class MultimodalDataset(Dataset[Sample]):
    """A split of a multimodal Parquet dataset as a map-style PyTorch dataset.

    Args:
        root: Dataset folder (holding ``train/``, ``val/``, ``test/``).
        split: The split to read.
        validate: Check each row group against the schema (NaN, range, presence consistency)
            the first time this process decodes it; costs one min/max pass over the values.
        cache_size: Number of decoded row groups kept in memory (per process).

    Raises:
        DataFormatError: For an unknown or empty split, a corrupt file, or files whose columns
            or descriptions disagree with each other.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        *,
        validate: bool = True,
        cache_size: int = 4,
    ) -> None:
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, found {cache_size}")
        self.root = Path(root)
        self.split = split
        self.validate = validate
        self.cache_size = cache_size
        self.files = split_files(root, split)
        self.schema = read_file_schema(self.files[0])
        groups: list[_RowGroup] = []
        start = 0
        for file_index, path in enumerate(self.files):
            if file_index and read_file_schema(path).modalities != self.schema.modalities:
                raise DataFormatError(
                    f"expected the modalities of {self.files[0].name}, found different ones",
                    file=path,
                )
            metadata = _open(path).metadata
            offset = 0
            for group_index in range(metadata.num_row_groups):
                rows = metadata.row_group(group_index).num_rows
                groups.append(_RowGroup(file_index, group_index, start, rows, offset))
                start += rows
                offset += rows
        self._groups = groups
        self._group_starts = np.array([g.start for g in groups], dtype=np.int64)
        self._length = start
        self._handles: dict[int, pq.ParquetFile] = {}
        self._cache: OrderedDict[int, _Decoded] = OrderedDict()
        self._validated: set[int] = set()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        state["_cache"] = OrderedDict()
        return state

    def __len__(self) -> int:
        return self._length

    @property
    def modalities(self) -> tuple[str, ...]:
        """Names of the modalities."""
        return self.schema.modality_names

    @property
    def row_group_spans(self) -> list[tuple[int, int]]:
        """``(start, stop)`` row ranges of the row groups, the unit of decoding."""
        return [(g.start, g.start + g.rows) for g in self._groups]

    def _decode(self, group_number: int) -> _Decoded:
        cached = self._cache.get(group_number)
        if cached is not None:
            self._cache.move_to_end(group_number)
            return cached
        group = self._groups[group_number]
        path = self.files[group.file]
        handle = self._handles.get(group.file)
        if handle is None:
            handle = self._handles[group.file] = _open(path)
        try:
            table = handle.read_row_group(group.index)
        except (pa.ArrowException, OSError) as error:
            raise DataFormatError(
                f"corrupt or truncated row group {group.index} ({type(error).__name__}: {error})",
                file=path,
            ) from None
        data: dict[str, np.ndarray[Any, Any]] = {}
        present: dict[str, np.ndarray[Any, Any]] = {}
        for spec in self.schema.modalities:
            flag = presence_column(spec.name)
            for column in (spec.name, flag):
                nulls = table.column(column).null_count
                if nulls:
                    raise DataFormatError(
                        f"found {nulls} null cells; a missing modality must be stored as zeros "
                        "with its presence flag false",
                        file=path,
                        column=column,
                    )
            chunk = table.column(spec.name).combine_chunks()
            if spec.shape == ():
                data[spec.name] = chunk.to_numpy(zero_copy_only=False)
            else:
                data[spec.name] = chunk.to_numpy_ndarray()
            present[spec.name] = table.column(flag).to_numpy()
        labels = None
        if self.schema.num_classes is not None:
            labels = table.column(LABEL_COLUMN).to_numpy()
        sample_ids = table.column(SAMPLE_ID_COLUMN).to_numpy()
        # A row group is checked the first time this process decodes it; later epochs re-read
        # the same bytes, so they are not checked again.
        if self.validate and group_number not in self._validated:
            check_chunk(
                self.schema, data, present, labels, file=str(path), row_offset=group.file_offset
            )
            self._validated.add(group_number)
        decoded = _Decoded(data, present, labels, sample_ids)
        self._cache[group_number] = decoded
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return decoded

    def _locate(self, index: int) -> tuple[int, int]:
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} out of range for a split of {self._length} rows")
        index %= self._length
        group_number = int(np.searchsorted(self._group_starts, index, side="right")) - 1
        return group_number, index - self._groups[group_number].start

    def __getitem__(self, index: int) -> Sample:
        group_number, row = self._locate(index)
        decoded = self._decode(group_number)
        return Sample(
            data={name: values[row] for name, values in decoded.data.items()},
            mask={name: bool(flags[row]) for name, flags in decoded.present.items()},
            label=None if decoded.labels is None else int(decoded.labels[row]),
            sample_id=int(decoded.sample_ids[row]),
        )

    def __getitems__(self, indices: Sequence[int]) -> SampleBlock:
        """Fetch several rows at once (``DataLoader`` calls this for a whole batch).

        Rows are gathered per row group with one vectorized copy per modality, instead of one
        object per sample; :func:`~multivae.data.batch.collate` turns the block into a batch
        without copying again.
        """
        rows = np.asarray(indices, dtype=np.int64)
        if rows.size and (rows.min() < -self._length or rows.max() >= self._length):
            raise IndexError(f"indices out of range for a split of {self._length} rows")
        rows %= max(self._length, 1)
        group_of_row = np.searchsorted(self._group_starts, rows, side="right") - 1
        data = {
            spec.name: np.empty((rows.size, *spec.shape), dtype=spec.numpy_dtype)
            for spec in self.schema.modalities
        }
        present = {name: np.empty(rows.size, dtype=bool) for name in data}
        labels = None if self.schema.num_classes is None else np.empty(rows.size, np.int64)
        sample_ids = np.empty(rows.size, dtype=np.int64)
        for group_number in np.unique(group_of_row):
            positions = np.flatnonzero(group_of_row == group_number)
            local = rows[positions] - self._groups[group_number].start
            decoded = self._decode(int(group_number))
            for name, values in decoded.data.items():
                data[name][positions] = values[local]
                present[name][positions] = decoded.present[name][local]
            if labels is not None and decoded.labels is not None:
                labels[positions] = decoded.labels[local]
            sample_ids[positions] = decoded.sample_ids[local]
        return SampleBlock(data, present, labels, sample_ids)

    def read_all(self) -> Batch:
        """Every row of the split as one batch (for small splits: metrics, tests)."""
        return collate(self.__getitems__(range(len(self))))


class BlockShuffleSampler(Sampler[int]):
    """Shuffles rows while decoding each row group once per epoch.

    Row groups are put in random order and taken ``window`` at a time; the rows of each window
    are shuffled together. With ``2 * window <= cache_size`` of the dataset (a batch may straddle
    two windows) and batches no larger than a window, every row group is decoded once per epoch.

    Args:
        dataset: The dataset to sample from.
        window: Number of row groups whose rows are mixed together.
        seed: Base seed; the permutation of epoch ``e`` uses ``seed + e``.
        shuffle: When false, rows come in file order.
    """

    def __init__(
        self, dataset: MultimodalDataset, *, window: int = 4, seed: int = 0, shuffle: bool = True
    ) -> None:
        self.spans = dataset.row_group_spans
        self.window = window
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (the ``DistributedSampler`` convention)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.spans[-1][1] if self.spans else 0

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            yield from range(len(self))
            return
        rng = np.random.default_rng(self.seed + self.epoch)
        order = rng.permutation(len(self.spans))
        for first in range(0, len(order), self.window):
            rows = np.concatenate(
                [np.arange(*self.spans[g]) for g in order[first : first + self.window]]
            )
            yield from rng.permutation(rows).tolist()


def make_dataloader(
    dataset: MultimodalDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader[Sample]:
    """A ``DataLoader`` yielding :class:`Batch` objects, shuffled block-wise when asked."""
    # A batch can straddle two windows; half the cache per window keeps both resident.
    sampler = BlockShuffleSampler(
        dataset, window=max(1, dataset.cache_size // 2), seed=seed, shuffle=shuffle
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        pin_memory=pin_memory and torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
