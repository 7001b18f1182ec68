"""Converters from public multimodal digit datasets, as released, to the multimodal Parquet format.

The user downloads the release files; these functions only read them and never download.

* **PolyMNIST** (Sutter, Daunhawer and Vogt, 2021, "Generalized Multimodal ELBO",
  arXiv:2105.02470): five (or any number of) modalities, each an MNIST digit drawn on a
  modality-specific background patch, 28x28 RGB. See :func:`convert_polymnist`.
* **MNIST-SVHN** (Shi, Siddharth, Paige and Torr, 2019, "Variational Mixture-of-Experts
  Autoencoders for Multi-Modal Deep Generative Models", arXiv:1911.03393): pairs of an MNIST
  digit and an SVHN house number of the same class. See :func:`convert_mnist_svhn`.

Both converters stream their output through :class:`~multivae.data.writer.SplitWriter` and move
every split into place only once all of them are written, so a bad release file leaves the output
folder as it was.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

import numpy as np
import scipy.io
from numpy.typing import NDArray
from PIL import Image
from scipy.io.matlab import MatReadError

from multivae.data.errors import DataFormatError
from multivae.data.missingness import (
    apply_presence,
    missing_completely_at_random,
    polymnist_scheme,
)
from multivae.data.schema import SPLITS, DatasetSchema, ModalitySpec
from multivae.data.writer import SplitArrays, write_dataset
from multivae.io import claim_output, write_output_marker

__all__ = ["convert_mnist_svhn", "convert_polymnist"]

DEFAULT_CHUNK_ROWS = 1024
POLYMNIST_PAPER = "Sutter et al. 2021, Generalized Multimodal ELBO, arXiv:2105.02470"
MNIST_SVHN_PAPER = "Shi et al. 2019, Variational Mixture-of-Experts Autoencoders, arXiv:1911.03393"
_DIGITS = tuple(str(d) for d in range(10))
_POLYMNIST_FILE = re.compile(r"^(\d+)\.(\d+)\.png$")
_MODALITY_FOLDER = re.compile(r"^m(\d+)$")
_IMAGE_SIZE = 28
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_SVHN_SIZE = 32

# Streams of the seed: each random decision draws from its own stream so that changing one
# (say the missing rate) leaves the others (the train/val split, the pairing) as they were.
_STREAM_SPLIT = 0
_STREAM_TRAIN_MASK = 1
_STREAM_VAL_MASK = 2
_STREAM_PAIR_TRAIN = 3
_STREAM_PAIR_VAL = 4
_STREAM_PAIR_TEST = 5
_STREAM_SVHN_SPLIT = 6

_Int64Array = NDArray[np.int64]
_UInt8Array = NDArray[np.uint8]


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _check_arguments(val_fraction: float, seed: int, missing_rate: float, chunk_rows: int) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"expected val_fraction in (0, 1), found {val_fraction}")
    if seed < 0:
        raise ValueError(f"expected a non-negative seed, found {seed}")
    if not 0.0 <= missing_rate <= 1.0:
        raise ValueError(f"expected missing_rate in [0, 1], found {missing_rate}")
    if chunk_rows < 1:
        raise ValueError(f"expected chunk_rows >= 1, found {chunk_rows}")


def _derived_seed(seed: int, stream: int) -> int:
    """An independent 32-bit seed for one random decision, reproducible from ``seed``."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint32)[0])


def _stratified_split(
    labels: _Int64Array, fraction: float, rng: np.random.Generator
) -> tuple[_Int64Array, _Int64Array]:
    """Positions of the train and of the validation part, each sorted.

    Each class gives ``fraction`` of its members (rounded) to validation, at least one and at
    most all but one when it has two or more, so both parts see every class the source has
    (MNIST-SVHN pairing needs that) and class balance matches the source.
    """
    val_parts = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = int(np.floor(fraction * members.size + 0.5))
        take = min(max(take, 1), members.size - 1) if members.size >= 2 else 0
        val_parts.append(rng.choice(members, size=take, replace=False))
    is_val = np.zeros(labels.size, dtype=bool)
    if val_parts:
        is_val[np.concatenate(val_parts)] = True
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)


def _to_unit_float(pixels: _UInt8Array) -> NDArray[np.float32]:
    return pixels.astype(np.float32) / np.float32(255)


# --------------------------------------------------------------------------------------------
# PolyMNIST
# --------------------------------------------------------------------------------------------


def _hidden(name: str) -> bool:
    # Archives made on macOS carry "__MACOSX/" shadow trees and "._x" resource forks; editors
    # and file browsers leave dot files. None of them is part of the release.
    return name.startswith(".") or name == "__MACOSX"


class _Release(ABC):
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

    def __enter__(self) -> _Release:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class _FolderRelease(_Release):
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


class _ZipRelease(_Release):
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


def _open_release(source: Path) -> _Release:
    if source.is_dir():
        return _FolderRelease(source)
    if source.is_file():
        return _ZipRelease(source)
    raise DataFormatError(
        "expected the PolyMNIST zip file or its extracted folder, found nothing", file=source
    )


def _find_release_root(release: _Release, source: Path) -> PurePosixPath:
    """The shallowest folder holding ``train/m0``, searched breadth first."""
    level = [PurePosixPath()]
    while level:
        found = [f for f in level if "m0" in release.subfolders(f / "train")]
        if len(found) > 1:
            raise DataFormatError(
                f"expected one PolyMNIST release, found train/m0 under each of "
                f"{sorted(str(f) for f in found)}",
                file=source,
            )
        if found:
            return found[0]
        level = [f / name for f in level for name in release.subfolders(f)]
    raise DataFormatError(
        "expected a folder holding train/m0, train/m1, ... and test/m0, ... (the PolyMNIST "
        "release layout), found none",
        file=source,
    )


class _PolyMnistSplit:
    """The samples of one release split: their indices, labels and per-modality file paths."""

    def __init__(
        self, indices: _Int64Array, labels: _Int64Array, paths: dict[str, list[PurePosixPath]]
    ) -> None:
        self.indices = indices
        self.labels = labels
        self.paths = paths

    def __len__(self) -> int:
        return int(self.indices.size)


def _modality_folders(release: _Release, split_folder: PurePosixPath) -> list[str]:
    numbers = sorted(
        int(match.group(1))
        for name in release.subfolders(split_folder)
        if (match := _MODALITY_FOLDER.match(name))
    )
    expected = list(range(len(numbers)))
    if not numbers or numbers != expected:
        raise DataFormatError(
            f"expected modality folders m0..m{max(len(numbers) - 1, 0)}, found "
            f"{[f'm{n}' for n in numbers]}",
            file=release.describe(split_folder),
        )
    return [f"m{n}" for n in numbers]


def _list_modality(
    release: _Release, folder: PurePosixPath
) -> dict[int, tuple[int, PurePosixPath]]:
    """Index -> (label, path) of the PNGs of one modality folder."""
    entries: dict[int, tuple[int, PurePosixPath]] = {}
    for name in sorted(release.files(folder)):
        path = folder / name
        match = _POLYMNIST_FILE.match(name)
        if match is None:
            raise DataFormatError(
                "expected a file name <index>.<label>.png (for example 17.3.png)",
                file=release.describe(path),
            )
        index, label = int(match.group(1)), int(match.group(2))
        if label > 9:
            raise DataFormatError(
                f"expected a digit label 0..9 in the file name, found {label}",
                file=release.describe(path),
            )
        if index in entries:
            raise DataFormatError(
                f"expected one file per index, found index {index} also in "
                f"{entries[index][1].name}",
                file=release.describe(path),
            )
        entries[index] = (label, path)
    return entries


def _list_polymnist_split(
    release: _Release, split_folder: PurePosixPath, modalities: list[str]
) -> _PolyMnistSplit:
    listings = {m: _list_modality(release, split_folder / m) for m in modalities}
    reference = listings[modalities[0]]
    if not reference:
        raise DataFormatError(
            "expected PNG files, found none", file=release.describe(split_folder / modalities[0])
        )
    for modality in modalities[1:]:
        listing = listings[modality]
        for index, (label, path) in listing.items():
            if index not in reference:
                raise DataFormatError(
                    f"modality folders disagree on indices: index {index} has no file in "
                    f"{modalities[0]}",
                    file=release.describe(path),
                )
            if label != reference[index][0]:
                raise DataFormatError(
                    f"labels of sample {index} disagree: {label} here, "
                    f"{reference[index][0]} in {release.describe(reference[index][1])}",
                    file=release.describe(path),
                )
        for index, (_, path) in reference.items():
            if index not in listing:
                raise DataFormatError(
                    f"modality folders disagree on indices: index {index} has no file in "
                    f"{release.describe(split_folder / modality)}",
                    file=release.describe(path),
                )
    indices = np.array(sorted(reference), dtype=np.int64)
    labels = np.array([reference[i][0] for i in indices.tolist()], dtype=np.int64)
    paths = {m: [listings[m][i][1] for i in indices.tolist()] for m in modalities}
    return _PolyMnistSplit(indices, labels, paths)


def _decode_polymnist_png(payload: bytes, where: str) -> _UInt8Array:
    """Pixels of one PolyMNIST image as ``(3, 28, 28)`` uint8."""
    try:
        with Image.open(io.BytesIO(payload)) as image:
            image.load()
            mode, size = image.mode, image.size
            pixels = np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as error:
        # Pillow reports a corrupt or truncated PNG with any of these three.
        raise DataFormatError(
            f"unreadable PNG ({type(error).__name__}: {error})", file=where
        ) from None
    if mode != "RGB" or size != (_IMAGE_SIZE, _IMAGE_SIZE):
        raise DataFormatError(
            f"expected a {_IMAGE_SIZE}x{_IMAGE_SIZE} RGB image, found {size[0]}x{size[1]} {mode}",
            file=where,
        )
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _polymnist_chunks(
    release: _Release,
    listing: _PolyMnistSplit,
    positions: _Int64Array,
    present: dict[str, NDArray[np.bool_]] | None,
    chunk_rows: int,
    id_offset: int = 0,
) -> Iterator[SplitArrays]:
    modalities = list(listing.paths)
    for start in range(0, positions.size, chunk_rows):
        rows = positions[start : start + chunk_rows]
        data: dict[str, NDArray[Any]] = {}
        for modality in modalities:
            pixels = np.empty((rows.size, 3, _IMAGE_SIZE, _IMAGE_SIZE), dtype=np.uint8)
            paths = listing.paths[modality]
            for out_row, position in enumerate(rows.tolist()):
                path = paths[position]
                pixels[out_row] = _decode_polymnist_png(release.read(path), release.describe(path))
            data[modality] = _to_unit_float(pixels)
        if present is None:
            flags = {m: np.ones(rows.size, dtype=bool) for m in modalities}
        else:
            flags = {m: present[m][start : start + rows.size] for m in modalities}
            data = apply_presence(data, flags)
        yield SplitArrays(
            data=data,
            present=flags,
            labels=listing.labels[rows],
            sample_ids=listing.indices[rows] + id_offset,
        )


def convert_polymnist(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    missing_rate: float = 0.0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Convert the PolyMNIST release (Sutter et al. 2021) into a multimodal Parquet dataset.

    The release holds ``train/m0 .. m<k-1>`` and ``test/m0 .. m<k-1>`` folders of 28x28 RGB PNGs
    named ``<index>.<label>.png``; files with the same index across the ``m*`` folders form one
    sample. The folder holding ``train/m0`` is searched for anywhere inside ``source`` (the
    release names it ``MMNIST``).

    The output has one image modality per folder, ``m0`` .. ``m<k-1>``, of shape ``(3, 28, 28)``,
    float32 in ``[0, 1]`` (pixel / 255), with a Laplace likelihood; the label is the digit. The
    release ``test`` split becomes ``test``; the release ``train`` split is divided into
    ``train`` and ``val`` by a seeded split stratified by digit. Sample ids are the release
    indices. Images are read and written ``chunk_rows`` samples at a time, so memory does not
    grow with the size of the release.

    Args:
        source: The release zip file, or the folder it was extracted into.
        out: Dataset folder to write: new or empty, or (``overwrite``) an earlier output of this
            command (:func:`multivae.io.claim_output`); written all or nothing.
        overwrite: Replace ``out`` when it holds an earlier output of this command.
        val_fraction: Fraction of each digit class of the release ``train`` split moved to
            ``val``.
        seed: Seed of the train/val split and of the presence masks.
        missing_rate: When positive, every modality but ``m0`` of a ``train`` or ``val`` sample is
            dropped with this probability (:func:`~multivae.data.missingness.polymnist_scheme`);
            ``test`` stays complete.
        chunk_rows: Samples decoded and written at a time.
        progress: Show a progress bar.

    Returns:
        The dataset folder.

    Raises:
        DataFormatError: Naming the file, when the layout is not found, modality folders
            disagree on indices or labels, a file name is not ``<index>.<label>.png``, or an
            image is not a readable 28x28 RGB PNG.
        ValueError: On an argument out of range.
    """
    _check_arguments(val_fraction, seed, missing_rate, chunk_rows)
    source = Path(source)
    out = claim_output(Path(out), "dataset", "multivae convert polymnist", overwrite=overwrite)
    with _open_release(source) as release:
        root = _find_release_root(release, source)
        modalities = _modality_folders(release, root / "train")
        test_modalities = _modality_folders(release, root / "test")
        if test_modalities != modalities:
            raise DataFormatError(
                f"expected the modality folders of train, {modalities}, found {test_modalities}",
                file=release.describe(root / "test"),
            )
        train_listing = _list_polymnist_split(release, root / "train", modalities)
        test_listing = _list_polymnist_split(release, root / "test", modalities)

        rng = np.random.default_rng(_derived_seed(seed, _STREAM_SPLIT))
        train_rows, val_rows = _stratified_split(train_listing.labels, val_fraction, rng)
        if train_rows.size == 0 or val_rows.size == 0:
            raise DataFormatError(
                f"expected enough train samples to split off a validation part, found "
                f"{len(train_listing)}",
                file=release.describe(root / "train"),
            )

        masks: dict[str, dict[str, NDArray[np.bool_]] | None] = dict.fromkeys(SPLITS)
        missingness = None
        if missing_rate > 0:
            train_masks = polymnist_scheme(
                train_rows.size,
                modalities,
                missing_rate,
                _derived_seed(seed, _STREAM_TRAIN_MASK),
            )
            val_masks = polymnist_scheme(
                val_rows.size, modalities, missing_rate, _derived_seed(seed, _STREAM_VAL_MASK)
            )
            masks["train"], masks["val"] = train_masks.present, val_masks.present
            missingness = {"train": train_masks.record, "val": val_masks.record}

        schema = DatasetSchema(
            modalities=tuple(
                ModalitySpec(
                    name=m,
                    shape=(3, _IMAGE_SIZE, _IMAGE_SIZE),
                    dtype="float32",
                    kind="image",
                    value_range=(0.0, 1.0),
                    likelihood="laplace",
                )
                for m in modalities
            ),
            num_classes=10,
            class_names=_DIGITS,
            name="polymnist",
            missingness=missingness,
            extra={
                "source": str(source.resolve()),
                "release_folder": str(root),
                "paper": POLYMNIST_PAPER,
                "seed": seed,
                "val_fraction": val_fraction,
                "sample_id": "index of the sample in the release train split; for the test "
                "split, that index plus the release train split's largest index + 1 (ids are "
                "unique in the dataset)",
                "val_split": "stratified by digit, from the release train split",
            },
        )
        all_test_rows = np.arange(len(test_listing), dtype=np.int64)
        test_offset = int(train_listing.indices.max()) + 1 if len(train_listing) else 0
        producers = {
            "train": _polymnist_chunks(
                release, train_listing, train_rows, masks["train"], chunk_rows
            ),
            "val": _polymnist_chunks(release, train_listing, val_rows, masks["val"], chunk_rows),
            "test": _polymnist_chunks(
                release, test_listing, all_test_rows, None, chunk_rows, id_offset=test_offset
            ),
        }
        write_dataset(out, schema, producers, progress="PolyMNIST" if progress else None)
        write_output_marker(out, "dataset", "multivae convert polymnist")
    return out


# --------------------------------------------------------------------------------------------
# MNIST-SVHN
# --------------------------------------------------------------------------------------------


def _find_mnist_file(mnist_root: Path, stem: str) -> Path:
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


def _read_idx(path: Path, magic: int) -> _UInt8Array:
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


def _read_mnist(mnist_root: Path, prefix: str) -> tuple[_UInt8Array, _Int64Array, list[Path]]:
    """Images ``(N, 28, 28)``, labels and the two files they came from."""
    images_path = _find_mnist_file(mnist_root, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_mnist_file(mnist_root, f"{prefix}-labels-idx1-ubyte")
    images = _read_idx(images_path, _IDX_IMAGES_MAGIC)
    labels = _read_idx(labels_path, _IDX_LABELS_MAGIC).astype(np.int64)
    if images.shape[1:] != (_IMAGE_SIZE, _IMAGE_SIZE):
        raise DataFormatError(
            f"expected {_IMAGE_SIZE}x{_IMAGE_SIZE} images, found {images.shape[1]}x"
            f"{images.shape[2]}",
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


def _read_svhn(path: Path) -> tuple[_UInt8Array, _Int64Array]:
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
        or images.shape[:3] != (_SVHN_SIZE, _SVHN_SIZE, 3)
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


def _pair_by_class(
    mnist_ids: _Int64Array,
    mnist_labels: _Int64Array,
    svhn_ids: _Int64Array,
    svhn_labels: _Int64Array,
    pairs_per_image: int,
    rng: np.random.Generator,
    svhn_file: Path,
) -> tuple[_Int64Array, _Int64Array, _Int64Array]:
    """MNIST index, SVHN index and pair number of every pair, in a random order.

    Each MNIST image meets ``pairs_per_image`` SVHN images of its class. Within one pair
    number, the SVHN images of a class are dealt out as a random permutation, repeated when the
    class has fewer SVHN than MNIST images, so every SVHN image is used about as often as any
    other, as MMVAE's random matching by permutation does.
    """
    mnist_out, svhn_out, number_out = [], [], []
    for label in np.unique(mnist_labels).tolist():
        members = mnist_ids[mnist_labels == label]
        partners = svhn_ids[svhn_labels == label]
        if partners.size == 0:
            raise DataFormatError(
                f"expected SVHN images of class {label} to pair with {members.size} MNIST "
                "images, found none",
                file=svhn_file,
            )
        deals = -(-members.size // partners.size)
        for number in range(pairs_per_image):
            dealt = np.concatenate([rng.permutation(partners) for _ in range(deals)])
            mnist_out.append(members)
            svhn_out.append(dealt[: members.size])
            number_out.append(np.full(members.size, number, dtype=np.int64))
    # Pairs are produced class by class; shuffling them keeps every row group class-mixed, which
    # the reader's block-wise shuffling relies on.
    order = rng.permutation(sum(m.size for m in mnist_out))
    return (
        np.concatenate(mnist_out)[order],
        np.concatenate(svhn_out)[order],
        np.concatenate(number_out)[order],
    )


def _mnist_svhn_chunks(
    mnist_images: _UInt8Array,
    mnist_labels: _Int64Array,
    svhn_images: _UInt8Array,
    pairs: tuple[_Int64Array, _Int64Array, _Int64Array],
    pairs_per_image: int,
    present: dict[str, NDArray[np.bool_]] | None,
    chunk_rows: int,
    id_offset: int = 0,
) -> Iterator[SplitArrays]:
    mnist_rows, svhn_rows, numbers = pairs
    for start in range(0, mnist_rows.size, chunk_rows):
        stop = min(start + chunk_rows, mnist_rows.size)
        chosen_mnist = mnist_rows[start:stop]
        data: dict[str, NDArray[Any]] = {
            "mnist": _to_unit_float(mnist_images[chosen_mnist][:, None]),
            "svhn": _to_unit_float(svhn_images[svhn_rows[start:stop]]),
        }
        if present is None:
            flags = {m: np.ones(stop - start, dtype=bool) for m in data}
        else:
            flags = {m: present[m][start:stop] for m in data}
            data = apply_presence(data, flags)
        yield SplitArrays(
            data=data,
            present=flags,
            labels=mnist_labels[chosen_mnist],
            sample_ids=chosen_mnist * pairs_per_image + numbers[start:stop] + id_offset,
        )


def convert_mnist_svhn(
    mnist_root: str | os.PathLike[str],
    svhn_root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    pairs_per_image: int = 5,
    val_fraction: float = 0.1,
    seed: int = 0,
    missing_rate: float = 0.0,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Build the bimodal MNIST-SVHN dataset (Shi et al. 2019) from torchvision's downloads.

    Reads MNIST from ``<mnist_root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
    (each possibly gzipped; ``<mnist_root>/raw`` and ``<mnist_root>`` are also searched) and
    SVHN from ``<svhn_root>/{train,test}_32x32.mat``. Each MNIST image is paired with
    ``pairs_per_image`` random SVHN images of the same digit, as in MMVAE's construction (which
    matches every class by random permutations; the paper used 20 pairings per image after
    capping classes at 10,000 images, here every MNIST image is kept).

    Modalities: ``mnist`` of shape ``(1, 28, 28)`` and ``svhn`` of shape ``(3, 32, 32)``, both
    float32 in ``[0, 1]`` (pixel / 255) with a Laplace likelihood; the label is the digit. MNIST
    ``t10k`` paired with SVHN ``test`` becomes ``test``; MNIST ``train`` and SVHN ``train`` are
    each split by a seeded, digit-stratified ``val_fraction`` before pairing, so no image of
    ``val`` appears in ``train``. The sample id of a pair is
    ``mnist_index * pairs_per_image + pair_number``.

    Args:
        mnist_root: The ``root`` given to ``torchvision.datasets.MNIST``.
        svhn_root: The ``root`` given to ``torchvision.datasets.SVHN``.
        out: Dataset folder to write: new or empty, or (``overwrite``) an earlier output of this
            command (:func:`multivae.io.claim_output`); written all or nothing.
        overwrite: Replace ``out`` when it holds an earlier output of this command.
        pairs_per_image: SVHN partners of each MNIST image.
        val_fraction: Fraction of each digit class moved from the train files to ``val``.
        seed: Seed of the train/val split, the pairing and the presence masks.
        missing_rate: When positive, each modality of a ``train`` or ``val`` pair is dropped
            with this probability, keeping at least one
            (:func:`~multivae.data.missingness.missing_completely_at_random`); ``test`` stays
            complete.
        chunk_rows: Pairs converted and written at a time.
        progress: Show a progress bar.

    Returns:
        The dataset folder.

    Raises:
        DataFormatError: Naming the file, for a missing file, a bad IDX magic number or size,
            images and labels of different counts, a ``.mat`` file without ``X`` or ``y`` or
            with malformed ones, or a digit class without any SVHN image to pair with.
        ValueError: On an argument out of range.
    """
    _check_arguments(val_fraction, seed, missing_rate, chunk_rows)
    if pairs_per_image < 1:
        raise ValueError(f"expected pairs_per_image >= 1, found {pairs_per_image}")
    mnist_root, svhn_root = Path(mnist_root), Path(svhn_root)
    out = claim_output(Path(out), "dataset", "multivae convert mnist-svhn", overwrite=overwrite)
    for prefix in ("train", "t10k"):
        for stem in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            _find_mnist_file(mnist_root, f"{prefix}-{stem}")  # each file there, before reading
    svhn_train_path, svhn_test_path = svhn_root / "train_32x32.mat", svhn_root / "test_32x32.mat"
    for path in (svhn_train_path, svhn_test_path):
        if not path.is_file():  # before MNIST is read: a missing release is refused at once
            raise DataFormatError("missing SVHN file", file=path)
    mnist_train, mnist_train_labels, train_files = _read_mnist(mnist_root, "train")
    mnist_test, mnist_test_labels, test_files = _read_mnist(mnist_root, "t10k")
    svhn_train, svhn_train_labels = _read_svhn(svhn_train_path)
    svhn_test, svhn_test_labels = _read_svhn(svhn_test_path)

    mnist_split = _stratified_split(
        mnist_train_labels, val_fraction, np.random.default_rng(_derived_seed(seed, _STREAM_SPLIT))
    )
    svhn_split = _stratified_split(
        svhn_train_labels,
        val_fraction,
        np.random.default_rng(_derived_seed(seed, _STREAM_SVHN_SPLIT)),
    )
    if mnist_split[1].size == 0:
        raise DataFormatError(
            f"expected enough train images to split off a validation part, found "
            f"{mnist_train_labels.size}",
            file=train_files[0],
        )
    pairs = {}
    for split, part, stream in (("train", 0, _STREAM_PAIR_TRAIN), ("val", 1, _STREAM_PAIR_VAL)):
        mnist_ids, svhn_ids = mnist_split[part], svhn_split[part]
        pairs[split] = _pair_by_class(
            mnist_ids,
            mnist_train_labels[mnist_ids],
            svhn_ids,
            svhn_train_labels[svhn_ids],
            pairs_per_image,
            np.random.default_rng(_derived_seed(seed, stream)),
            svhn_train_path,
        )
    pairs["test"] = _pair_by_class(
        np.arange(mnist_test_labels.size, dtype=np.int64),
        mnist_test_labels,
        np.arange(svhn_test_labels.size, dtype=np.int64),
        svhn_test_labels,
        pairs_per_image,
        np.random.default_rng(_derived_seed(seed, _STREAM_PAIR_TEST)),
        svhn_test_path,
    )

    modalities = ("mnist", "svhn")
    masks: dict[str, dict[str, NDArray[np.bool_]] | None] = dict.fromkeys(SPLITS)
    missingness = None
    if missing_rate > 0:
        records = {}
        for split, stream in (("train", _STREAM_TRAIN_MASK), ("val", _STREAM_VAL_MASK)):
            drawn = missing_completely_at_random(
                pairs[split][0].size, modalities, missing_rate, _derived_seed(seed, stream)
            )
            masks[split], records[split] = drawn.present, drawn.record
        missingness = dict(records)

    schema = DatasetSchema(
        modalities=(
            ModalitySpec(
                name="mnist",
                shape=(1, _IMAGE_SIZE, _IMAGE_SIZE),
                dtype="float32",
                kind="image",
                value_range=(0.0, 1.0),
                likelihood="laplace",
            ),
            ModalitySpec(
                name="svhn",
                shape=(3, _SVHN_SIZE, _SVHN_SIZE),
                dtype="float32",
                kind="image",
                value_range=(0.0, 1.0),
                likelihood="laplace",
            ),
        ),
        num_classes=10,
        class_names=_DIGITS,
        name="mnist-svhn",
        missingness=missingness,
        extra={
            "source": {
                "mnist_train_images": str(train_files[0].resolve()),
                "mnist_train_labels": str(train_files[1].resolve()),
                "mnist_test_images": str(test_files[0].resolve()),
                "mnist_test_labels": str(test_files[1].resolve()),
                "svhn_train": str(svhn_train_path.resolve()),
                "svhn_test": str(svhn_test_path.resolve()),
            },
            "paper": MNIST_SVHN_PAPER,
            "pairs_per_image": pairs_per_image,
            "seed": seed,
            "val_fraction": val_fraction,
            "sample_id": "mnist_index * pairs_per_image + pair_number; for the test split, plus "
            "len(MNIST train) * pairs_per_image (ids are unique in the dataset)",
            "val_split": "MNIST train and SVHN train each stratified by digit before pairing",
        },
    )
    sources = {
        "train": (mnist_train, mnist_train_labels, svhn_train),
        "val": (mnist_train, mnist_train_labels, svhn_train),
        "test": (mnist_test, mnist_test_labels, svhn_test),
    }
    offsets = {"train": 0, "val": 0, "test": len(mnist_train) * pairs_per_image}
    producers = {
        split: _mnist_svhn_chunks(
            *sources[split],
            pairs[split],
            pairs_per_image,
            masks[split],
            chunk_rows,
            id_offset=offsets[split],
        )
        for split in SPLITS
    }
    write_dataset(out, schema, producers, progress="MNIST-SVHN" if progress else None)
    write_output_marker(out, "dataset", "multivae convert mnist-svhn")
    return out
