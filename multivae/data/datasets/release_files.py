"""Reading the public datasets' release files: the PolyMNIST archive, MNIST's IDX, SVHN's .mat.

The user downloads the release files; these functions only read them and never download. A file
that cannot be read as expected is a :class:`~multivae.data.errors.DataFormatError` naming it.
"""

from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from types import TracebackType

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from multivae.data.datasets.conversion import IMAGE_SIZE, Int64Array, UInt8Array
from multivae.data.errors import DataFormatError

SVHN_SIZE = 32
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049


def _hidden(name: str) -> bool:
    # Archives made on macOS carry "__MACOSX/" shadow trees and "._x" resource forks; editors
    # and file browsers leave dot files. None of them is part of the release.
    return name.startswith(".") or name == "__MACOSX"


class Release(ABC):
    """Read-only view of the PolyMNIST release, zipped or extracted, by relative POSIX path."""

    @abstractmethod
    def subfolders(self, folder: PurePosixPath) -> list[str]:
        """Names of the visible sub-folders of ``folder``; empty when it does not exist."""

    @abstractmethod
    def files(self, folder: PurePosixPath) -> list[str]:
        """Names of the visible files directly in ``folder``."""

    @abstractmethod
    def read(self, path: PurePosixPath) -> bytes:
        """Contents of a file."""

    @abstractmethod
    def describe(self, path: PurePosixPath) -> str:
        """How to name ``path`` in an error message."""

    @abstractmethod
    def close(self) -> None:
        """Release open handles."""

    def __enter__(self) -> Release:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class _FolderRelease(Release):
    def __init__(self, top: Path) -> None:
        self.top = top

    def subfolders(self, folder: PurePosixPath) -> list[str]:
        path = self.top / folder
        if not path.is_dir():
            return []
        with os.scandir(path) as entries:
            return sorted(e.name for e in entries if e.is_dir() and not _hidden(e.name))

    def files(self, folder: PurePosixPath) -> list[str]:
        with os.scandir(self.top / folder) as entries:
            return [e.name for e in entries if e.is_file() and not _hidden(e.name)]

    def read(self, path: PurePosixPath) -> bytes:
        return (self.top / path).read_bytes()

    def describe(self, path: PurePosixPath) -> str:
        return str(self.top / path)

    def close(self) -> None:
        pass


class _ZipRelease(Release):
    def __init__(self, archive: Path) -> None:
        self.archive = archive
        try:
            self._zip = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, OSError) as error:
            raise DataFormatError(
                f"unreadable zip file ({type(error).__name__}: {error})", file=archive
            ) from None
        # Folders are implied by member names (zips need not store folder entries), and member
        # names may carry a "./" prefix, so index the normalised paths once.
        self._folders: dict[PurePosixPath, set[str]] = {}
        self._files: dict[PurePosixPath, dict[str, str]] = {}
        for member in self._zip.namelist():
            if member.endswith("/"):
                self._add_folder(PurePosixPath(member))
                continue
            path = PurePosixPath(member)
            self._add_folder(path.parent)
            self._files.setdefault(path.parent, {})[path.name] = member

    def _add_folder(self, folder: PurePosixPath) -> None:
        while folder != PurePosixPath():
            children = self._folders.setdefault(folder.parent, set())
            if folder.name in children:
                return
            children.add(folder.name)
            folder = folder.parent

    def subfolders(self, folder: PurePosixPath) -> list[str]:
        return sorted(n for n in self._folders.get(folder, ()) if not _hidden(n))

    def files(self, folder: PurePosixPath) -> list[str]:
        return [n for n in self._files.get(folder, {}) if not _hidden(n)]

    def read(self, path: PurePosixPath) -> bytes:
        member = self._files[path.parent][path.name]
        try:
            return self._zip.read(member)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
            raise DataFormatError(
                f"unreadable zip member ({type(error).__name__}: {error})",
                file=self.describe(path),
            ) from None

    def describe(self, path: PurePosixPath) -> str:
        return f"{self.archive}[{path}]"

    def close(self) -> None:
        self._zip.close()


def open_release(source: Path) -> Release:
    """The PolyMNIST release at ``source``: its zip file or the folder it was extracted into."""
    if source.is_dir():
        return _FolderRelease(source)
    if source.is_file():
        return _ZipRelease(source)
    raise DataFormatError(
        "expected the PolyMNIST zip file or its extracted folder, found nothing", file=source
    )


def find_mnist_file(mnist_root: Path, stem: str) -> Path:
    """The torchvision copy of an MNIST file, uncompressed or gzipped."""
    folders = [mnist_root / "MNIST" / "raw", mnist_root / "raw", mnist_root]
    for folder in folders:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise DataFormatError(
        f"missing MNIST file (also looked for {stem}.gz, and in {folders[1]} and {folders[2]})",
        file=folders[0] / stem,
    )


def _read_idx(path: Path, magic: int) -> UInt8Array:
    """A uint8 IDX array (the MNIST format: big-endian header, then the values)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                payload = handle.read()
        else:
            payload = path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise DataFormatError(
            f"unreadable file ({type(error).__name__}: {error})", file=path
        ) from None
    # The low byte of the magic number is the number of dimensions; 0x08 before it means uint8.
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    if len(payload) < header:
        raise DataFormatError(
            f"expected an IDX header of {header} bytes, found a file of {len(payload)} bytes",
            file=path,
        )
    found = int.from_bytes(payload[:4], "big")
    if found != magic:
        raise DataFormatError(
            f"bad magic number: expected {magic} "
            f"({'images' if magic == _IDX_IMAGES_MAGIC else 'labels'}), found {found}",
            file=path,
        )
    dims = [int(d) for d in np.frombuffer(payload, dtype=">u4", count=ndim, offset=4)]
    size = header + int(np.prod(dims, dtype=np.int64))
    if len(payload) != size:
        raise DataFormatError(
            f"expected {size} bytes for an IDX array of shape {tuple(dims)}, found "
            f"{len(payload)} (truncated or padded file)",
            file=path,
        )
    return np.frombuffer(payload, dtype=np.uint8, offset=header).reshape(dims)


def read_mnist(mnist_root: Path, prefix: str) -> tuple[UInt8Array, Int64Array, list[Path]]:
    """Images ``(N, 28, 28)``, labels and the two files they came from."""
    images_path = find_mnist_file(mnist_root, f"{prefix}-images-idx3-ubyte")
    labels_path = find_mnist_file(mnist_root, f"{prefix}-labels-idx1-ubyte")
    images = _read_idx(images_path, _IDX_IMAGES_MAGIC)
    labels = _read_idx(labels_path, _IDX_LABELS_MAGIC).astype(np.int64)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataFormatError(
            f"expected {IMAGE_SIZE}x{IMAGE_SIZE} images, found {images.shape[1]}x{images.shape[2]}",
            file=images_path,
        )
    if images.shape[0] != labels.size:
        raise DataFormatError(
            f"size mismatch: {images.shape[0]} images but {labels.size} labels in {labels_path}",
            file=images_path,
        )
    if labels.size == 0:
        raise DataFormatError("expected at least one image, found none", file=images_path)
    if labels.max() > 9:
        row = int(np.argmax(labels > 9))
        raise DataFormatError(
            f"expected digit labels 0..9, found {labels[row]}", file=labels_path, row=row
        )
    return images, labels, [images_path, labels_path]


def read_svhn(path: Path) -> tuple[UInt8Array, Int64Array]:
    """Images ``(N, 3, 32, 32)`` and digit labels (the release's 10 becomes 0)."""
    if not path.is_file():
        raise DataFormatError("missing SVHN file", file=path)
    try:
        contents = scipy.io.loadmat(path, variable_names=["X", "y"])
    except (ValueError, OSError, TypeError, NotImplementedError, MatReadError) as error:
        # scipy reports a file that is not MATLAB (or is MATLAB 7.3, HDF5) through any of these.
        raise DataFormatError(
            f"unreadable .mat file ({type(error).__name__}: {error})", file=path
        ) from None
    absent = [name for name in ("X", "y") if name not in contents]
    if absent:
        raise DataFormatError(
            f"expected MATLAB variables 'X' and 'y', found no {' or '.join(absent)}", file=path
        )
    images, labels = contents["X"], contents["y"]
    if (
        images.ndim != 4
        or images.shape[:3] != (SVHN_SIZE, SVHN_SIZE, 3)
        or images.dtype != np.uint8
    ):
        raise DataFormatError(
            f"expected 'X' of shape (32, 32, 3, N) and dtype uint8, found {images.shape} "
            f"{images.dtype}",
            file=path,
        )
    count = images.shape[3]
    if labels.size != count or not np.issubdtype(labels.dtype, np.number):
        raise DataFormatError(
            f"expected 'y' of {count} numbers (one per image of 'X'), found shape "
            f"{labels.shape} dtype {labels.dtype}",
            file=path,
        )
    if count == 0:
        raise DataFormatError("expected at least one image, found none", file=path)
    flat = labels.reshape(-1)
    digits = flat.astype(np.int64)
    bad = (digits != flat) | (digits < 1) | (digits > 10)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataFormatError(
            f"expected labels 1..10 in 'y' (10 meaning digit 0), found {flat[row]}",
            file=path,
            row=row,
        )
    # Going from MATLAB's (H, W, C, N) to (N, C, H, W) once makes every later gather contiguous.
    pixels = np.ascontiguousarray(np.transpose(images, (3, 2, 0, 1)))
    return pixels, digits % 10
