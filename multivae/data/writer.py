"""Writing multimodal splits to Parquet, validated and atomic.

A split is written into a hidden temporary folder next to its final place and renamed into
place only when every file is complete, so a failure (bad data, a full disk, a crash) leaves the
split that was there before untouched.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from multivae.data.errors import DataFormatError
from multivae.data.schema import (
    LABEL_COLUMN,
    SAMPLE_ID_COLUMN,
    SPLITS,
    DatasetSchema,
    presence_column,
)
from multivae.data.validation import check_chunk

DEFAULT_ROW_GROUP_BYTES = 32 * 2**20
DEFAULT_FILE_BYTES = 512 * 2**20


def check_split_name(split: str, where: str | os.PathLike[str] | None = None) -> None:
    """Refuse a split name outside :data:`SPLITS`."""
    if split not in SPLITS:
        raise DataFormatError(
            f"unknown split {split!r}; expected one of {list(SPLITS)}",
            where=None if where is None else str(where),
        )


@dataclass
class SplitArrays:
    """All rows of one split in memory.

    Attributes:
        data: Modality name -> array of shape ``(rows, *shape)``; absent cells hold zeros.
        present: Modality name -> boolean array of shape ``(rows,)``.
        labels: Integer labels of shape ``(rows,)``, or ``None``.
        sample_ids: Stable integer ids of shape ``(rows,)``, or ``None`` for ``0..rows-1``.
    """

    data: dict[str, np.ndarray[Any, Any]]
    present: dict[str, np.ndarray[Any, Any]]
    labels: np.ndarray[Any, Any] | None = None
    sample_ids: np.ndarray[Any, Any] | None = None

    def __len__(self) -> int:
        return len(next(iter(self.data.values())))


class SplitWriter:
    """Streams rows of one split into Parquet files, then moves them into place atomically.

    Use it as a context manager: the split appears at ``root/split`` when the block ends without
    an exception, and nothing changes on disk otherwise.

    Args:
        root: Dataset folder; created if needed.
        split: One of ``train``, ``val``, ``test``.
        schema: Description of the modalities and label, stored in every file.
        row_group_bytes: Target size of a Parquet row group (the unit the reader decodes).
        file_bytes: Target size of a file; a split larger than this spans several files.
        compression: Parquet compression codec, or ``"none"``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        schema: DatasetSchema,
        *,
        row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
        file_bytes: int = DEFAULT_FILE_BYTES,
        compression: str = "none",
    ) -> None:
        check_split_name(split, where=root)
        self.root = Path(root)
        self.split = split
        self.schema = schema
        self.compression = compression
        row_bytes = max(1, schema.bytes_per_sample)
        self.rows_per_group = max(1, min(65536, row_group_bytes // row_bytes))
        self.rows_per_file = max(1, file_bytes // row_bytes // self.rows_per_group) * (
            self.rows_per_group
        )
        self._arrow_schema = schema.arrow_schema(split)
        self.root.mkdir(parents=True, exist_ok=True)
        self._staging = self.root / f".{split}.tmp-{uuid.uuid4().hex[:12]}"
        self._staging.mkdir()
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._file_index = 0
        self._file_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._next_sample_id = 0
        self.rows_written = 0

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def write(
        self,
        data: Mapping[str, np.ndarray[Any, Any]],
        present: Mapping[str, np.ndarray[Any, Any]],
        labels: np.ndarray[Any, Any] | None = None,
        sample_ids: np.ndarray[Any, Any] | None = None,
    ) -> None:
        """Validate and append a chunk of rows.

        Raises:
            DataFormatError: When the chunk breaks the format; rows are named by their index
                in the split.
        """
        where = f"{self.root / self.split} (being written)"
        check_chunk(self.schema, data, present, labels, file=where, row_offset=self.rows_written)
        rows = len(next(iter(data.values())))
        if sample_ids is None:
            sample_ids = np.arange(self._next_sample_id, self._next_sample_id + rows)
        elif sample_ids.shape != (rows,) or not np.issubdtype(sample_ids.dtype, np.integer):
            raise DataFormatError(
                f"expected {rows} integer sample ids, found shape {sample_ids.shape} "
                f"dtype {sample_ids.dtype}",
                file=where,
                column=SAMPLE_ID_COLUMN,
            )
        if rows == 0:
            # Nothing to append (Arrow cannot build a tensor column from an empty array).
            return
        self._next_sample_id = int(sample_ids.max()) + 1
        columns: dict[str, pa.Array] = {SAMPLE_ID_COLUMN: pa.array(sample_ids, pa.int64())}
        for spec in self.schema.modalities:
            values = np.ascontiguousarray(data[spec.name])
            if spec.shape == ():
                columns[spec.name] = pa.array(values)
            else:
                columns[spec.name] = pa.FixedShapeTensorArray.from_numpy_ndarray(values)
            columns[presence_column(spec.name)] = pa.array(present[spec.name])
        if labels is not None:
            columns[LABEL_COLUMN] = pa.array(labels, pa.int64())
        table = pa.Table.from_pydict(columns, schema=self._arrow_schema)
        self._pending.append(table)
        self._pending_rows += rows
        self.rows_written += rows
        while self._pending_rows >= self.rows_per_group:
            self._flush(self.rows_per_group)

    def _flush(self, rows: int) -> None:
        table = pa.concat_tables(self._pending)
        head, tail = table.slice(0, rows), table.slice(rows)
        self._pending = [tail] if tail.num_rows else []
        self._pending_rows = tail.num_rows
        if self._writer is None or self._file_rows >= self.rows_per_file:
            self._close_file()
            path = self._staging / f"part-{self._file_index:05d}.parquet"
            self._file_index += 1
            self._file_rows = 0
            self._writer = pq.ParquetWriter(
                path,
                self._arrow_schema,
                compression=self.compression,
                use_dictionary=[SAMPLE_ID_COLUMN, LABEL_COLUMN],
                write_statistics=[SAMPLE_ID_COLUMN, LABEL_COLUMN],
            )
        self._writer.write_table(head, row_group_size=rows)
        self._file_rows += rows

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def commit(self) -> Path:
        """Finish the files and move the split into place; returns its folder."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        self._close_file()
        if self.rows_written == 0:
            self.abort()
            raise DataFormatError(
                "expected at least one row, found none", where=str(self.root / self.split)
            )
        for path in self._staging.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        final = self.root / self.split
        if final.exists():
            retired = self.root / f".{self.split}.old-{uuid.uuid4().hex[:12]}"
            os.replace(final, retired)
            os.replace(self._staging, final)
            shutil.rmtree(retired)
        else:
            os.replace(self._staging, final)
        return final

    def abort(self) -> None:
        """Drop everything written so far; the split on disk stays as it was."""
        self._close_file()
        shutil.rmtree(self._staging, ignore_errors=True)


def write_split(
    root: str | os.PathLike[str],
    split: str,
    schema: DatasetSchema,
    arrays: SplitArrays,
    **writer_options: Any,
) -> Path:
    """Write a whole split held in memory; see :class:`SplitWriter` for the options."""
    with SplitWriter(root, split, schema, **writer_options) as writer:
        writer.write(arrays.data, arrays.present, arrays.labels, arrays.sample_ids)
    return Path(root) / split


def write_dataset(
    root: str | os.PathLike[str],
    schema: DatasetSchema,
    splits: Mapping[str, SplitArrays | Iterable[SplitArrays]],
    *,
    progress: str | None = None,
    **writer_options: Any,
) -> Path:
    """Write several splits, all or nothing.

    Each split is given whole (a :class:`SplitArrays`) or as an iterable of chunks, which are
    streamed to disk one at a time. Every split is written completely before any is moved into
    place, so bad data or an exception anywhere leaves ``root`` as it was.

    Args:
        root: Dataset folder.
        schema: Description stored in every file.
        splits: Split name -> rows.
        progress: Description of a progress bar over rows, or ``None`` for no bar.
        **writer_options: Passed to :class:`SplitWriter`.
    """
    for split in splits:
        check_split_name(split, where=root)
    writers: list[SplitWriter] = []
    bar = tqdm(desc=progress, unit="sample", disable=progress is None)
    try:
        for split, rows in splits.items():
            writer = SplitWriter(root, split, schema, **writer_options)
            writers.append(writer)
            for chunk in [rows] if isinstance(rows, SplitArrays) else rows:
                writer.write(chunk.data, chunk.present, chunk.labels, chunk.sample_ids)
                bar.update(len(chunk))
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    finally:
        bar.close()
    empty = [str(writer.root / writer.split) for writer in writers if writer.rows_written == 0]
    if empty:
        # Refused before any split moves into place (commit would refuse it after the others).
        for writer in writers:
            writer.abort()
        raise DataFormatError("expected at least one row, found none", where=", ".join(empty))
    for writer in writers:
        writer.commit()
    return Path(root)
