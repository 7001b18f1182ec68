"""The PolyMNIST converter: the release, as downloaded, to the multimodal Parquet format.

**PolyMNIST** (Sutter, Daunhawer and Vogt, 2021, "Generalized Multimodal ELBO",
arXiv:2105.02470): five (or any number of) modalities, each an MNIST digit drawn on a
modality-specific background patch, 28x28 RGB. See :func:`convert_polymnist`.

The converter streams its output through :class:`~multivae.data.writer.SplitWriter` and moves
every split into place only once all of them are written, so a bad release file leaves the output
folder as it was.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from multivae.data.datasets.conversion import (
    DEFAULT_CHUNK_ROWS,
    DIGITS,
    IMAGE_SIZE,
    STREAM_SPLIT,
    STREAM_TRAIN_MASK,
    STREAM_VAL_MASK,
    Int64Array,
    UInt8Array,
    check_arguments,
    derived_seed,
    stratified_split,
    to_unit_float,
)
from multivae.data.datasets.release_files import Release, open_release
from multivae.data.errors import DataFormatError
from multivae.data.missingness import apply_presence, polymnist_scheme
from multivae.data.schema import SPLITS, DatasetSchema, ModalitySpec
from multivae.data.writer import SplitArrays, write_dataset
from multivae.io import claim_output, write_output_marker

__all__ = ["convert_polymnist"]

POLYMNIST_PAPER = "Sutter et al. 2021, Generalized Multimodal ELBO, arXiv:2105.02470"
_POLYMNIST_FILE = re.compile(r"^(\d+)\.(\d+)\.png$")
_MODALITY_FOLDER = re.compile(r"^m(\d+)$")


def _find_release_root(release: Release, source: Path) -> PurePosixPath:
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
        self, indices: Int64Array, labels: Int64Array, paths: dict[str, list[PurePosixPath]]
    ) -> None:
        self.indices = indices
        self.labels = labels
        self.paths = paths

    def __len__(self) -> int:
        return int(self.indices.size)


def _modality_folders(release: Release, split_folder: PurePosixPath) -> list[str]:
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


def _list_modality(release: Release, folder: PurePosixPath) -> dict[int, tuple[int, PurePosixPath]]:
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
    release: Release, split_folder: PurePosixPath, modalities: list[str]
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


def _decode_polymnist_png(payload: bytes, where: str) -> UInt8Array:
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
    if mode != "RGB" or size != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataFormatError(
            f"expected a {IMAGE_SIZE}x{IMAGE_SIZE} RGB image, found {size[0]}x{size[1]} {mode}",
            file=where,
        )
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _polymnist_chunks(
    release: Release,
    listing: _PolyMnistSplit,
    positions: Int64Array,
    present: dict[str, NDArray[np.bool_]] | None,
    chunk_rows: int,
    id_offset: int = 0,
) -> Iterator[SplitArrays]:
    modalities = list(listing.paths)
    for start in range(0, positions.size, chunk_rows):
        rows = positions[start : start + chunk_rows]
        data: dict[str, NDArray[Any]] = {}
        for modality in modalities:
            pixels = np.empty((rows.size, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
            paths = listing.paths[modality]
            for out_row, position in enumerate(rows.tolist()):
                path = paths[position]
                pixels[out_row] = _decode_polymnist_png(release.read(path), release.describe(path))
            data[modality] = to_unit_float(pixels)
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
    check_arguments(val_fraction, seed, missing_rate, chunk_rows)
    source = Path(source)
    out = claim_output(Path(out), "dataset", "multivae convert polymnist", overwrite=overwrite)
    with open_release(source) as release:
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

        rng = np.random.default_rng(derived_seed(seed, STREAM_SPLIT))
        train_rows, val_rows = stratified_split(train_listing.labels, val_fraction, rng)
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
                derived_seed(seed, STREAM_TRAIN_MASK),
            )
            val_masks = polymnist_scheme(
                val_rows.size, modalities, missing_rate, derived_seed(seed, STREAM_VAL_MASK)
            )
            masks["train"], masks["val"] = train_masks.present, val_masks.present
            missingness = {"train": train_masks.record, "val": val_masks.record}

        schema = DatasetSchema(
            modalities=tuple(
                ModalitySpec(
                    name=m,
                    shape=(3, IMAGE_SIZE, IMAGE_SIZE),
                    dtype="float32",
                    kind="image",
                    value_range=(0.0, 1.0),
                    likelihood="laplace",
                )
                for m in modalities
            ),
            num_classes=10,
            class_names=DIGITS,
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
