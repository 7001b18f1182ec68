"""A dataset's fingerprint: a short digest that changes when its data changes.

MLflow tags every run with it (``multivae.dataset_fingerprint``) and a checkpoint records it, so
that a resume on other data is refused.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from multivae.data.errors import DataFormatError
from multivae.data.reader import list_splits, split_files

_SAMPLED_BLOCKS = 16
_BLOCK_BYTES = 16 * 1024


def _sampled_bytes(handle: BinaryIO, end: int) -> Iterator[bytes]:
    """The bytes of ``handle`` before ``end``: all of them when few, else evenly spaced blocks."""
    if end <= _SAMPLED_BLOCKS * _BLOCK_BYTES:
        handle.seek(0)
        yield handle.read(end)
        return
    step = (end - _BLOCK_BYTES) / (_SAMPLED_BLOCKS - 1)
    for block in range(_SAMPLED_BLOCKS):
        handle.seek(round(block * step))
        yield handle.read(_BLOCK_BYTES)


def dataset_fingerprint(folder: str | os.PathLike[str]) -> str:
    """A short hex digest of a dataset folder that changes when its data changes.

    Whole files are not read. The digest covers each Parquet file's path relative to the
    folder, its size, its footer (the schema with the multivae metadata, and every row group's
    sizes and statistics) and a sample of its data pages: all of them up to 256 KiB, else 16
    evenly spaced blocks of 16 KiB. The multivae writer keeps statistics for ``sample_id`` and
    ``label`` only, so a change of modality values shows in the footer only through sizes; in
    a file larger than 256 KiB, a change confined to unsampled bytes that keeps every size
    goes unnoticed. The same data copied elsewhere has the same fingerprint.

    Raises:
        DataFormatError: For a folder without splits, or a file that is not Parquet.
    """
    root = Path(folder)
    files = [path for split in list_splits(root) for path in split_files(root, split)]
    if not files:
        raise DataFormatError("expected train, val or test splits, found none", where=str(root))
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            # A Parquet file ends with its footer, the footer's length (4 bytes) and b"PAR1".
            handle.seek(max(size - 8, 0))
            tail = handle.read(8)
            length = int.from_bytes(tail[:4], "little")
            if len(tail) != 8 or tail[4:] != b"PAR1" or length > size - 12:
                raise DataFormatError("not a Parquet file (no footer)", file=path)
            data_end = size - 8 - length
            digest.update(f"{path.relative_to(root).as_posix()}\0{size}\0{length}\0".encode())
            handle.seek(data_end)
            digest.update(handle.read(length))
            for chunk in _sampled_bytes(handle, data_end):
                digest.update(chunk)
    return digest.hexdigest()[:16]
