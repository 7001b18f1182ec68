"""The MNIST-SVHN converter: torchvision's MNIST and SVHN files to the multimodal Parquet format.

**MNIST-SVHN** (Shi, Siddharth, Paige and Torr, 2019, "Variational Mixture-of-Experts
Autoencoders for Multi-Modal Deep Generative Models", arXiv:1911.03393): pairs of an MNIST
digit and an SVHN house number of the same class. See :func:`convert_mnist_svhn`.

The converter streams its output through :class:`~multivae.data.writer.SplitWriter` and moves
every split into place only once all of them are written, so a bad release file leaves the output
folder as it was.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from multivae.data.datasets.conversion import (
    DEFAULT_CHUNK_ROWS,
    DIGITS,
    IMAGE_SIZE,
    STREAM_PAIR_TEST,
    STREAM_PAIR_TRAIN,
    STREAM_PAIR_VAL,
    STREAM_SPLIT,
    STREAM_SVHN_SPLIT,
    STREAM_TRAIN_MASK,
    STREAM_VAL_MASK,
    Int64Array,
    UInt8Array,
    check_arguments,
    derived_seed,
    stratified_split,
    to_unit_float,
)
from multivae.data.datasets.release_files import SVHN_SIZE, find_mnist_file, read_mnist, read_svhn
from multivae.data.errors import DataFormatError
from multivae.data.missingness import apply_presence, missing_completely_at_random
from multivae.data.schema import SPLITS, DatasetSchema, ModalitySpec
from multivae.data.writer import SplitArrays, write_dataset
from multivae.io import claim_output, write_output_marker

__all__ = ["convert_mnist_svhn"]

MNIST_SVHN_PAPER = "Shi et al. 2019, Variational Mixture-of-Experts Autoencoders, arXiv:1911.03393"


def _pair_by_class(
    mnist_ids: Int64Array,
    mnist_labels: Int64Array,
    svhn_ids: Int64Array,
    svhn_labels: Int64Array,
    pairs_per_image: int,
    rng: np.random.Generator,
    svhn_file: Path,
) -> tuple[Int64Array, Int64Array, Int64Array]:
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
    mnist_images: UInt8Array,
    mnist_labels: Int64Array,
    svhn_images: UInt8Array,
    pairs: tuple[Int64Array, Int64Array, Int64Array],
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
            "mnist": to_unit_float(mnist_images[chosen_mnist][:, None]),
            "svhn": to_unit_float(svhn_images[svhn_rows[start:stop]]),
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
    check_arguments(val_fraction, seed, missing_rate, chunk_rows)
    if pairs_per_image < 1:
        raise ValueError(f"expected pairs_per_image >= 1, found {pairs_per_image}")
    mnist_root, svhn_root = Path(mnist_root), Path(svhn_root)
    out = claim_output(Path(out), "dataset", "multivae convert mnist-svhn", overwrite=overwrite)
    for prefix in ("train", "t10k"):
        for stem in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            find_mnist_file(mnist_root, f"{prefix}-{stem}")  # each file there, before reading
    svhn_train_path, svhn_test_path = svhn_root / "train_32x32.mat", svhn_root / "test_32x32.mat"
    for path in (svhn_train_path, svhn_test_path):
        if not path.is_file():  # before MNIST is read: a missing release is refused at once
            raise DataFormatError("missing SVHN file", file=path)
    mnist_train, mnist_train_labels, train_files = read_mnist(mnist_root, "train")
    mnist_test, mnist_test_labels, test_files = read_mnist(mnist_root, "t10k")
    svhn_train, svhn_train_labels = read_svhn(svhn_train_path)
    svhn_test, svhn_test_labels = read_svhn(svhn_test_path)

    mnist_split = stratified_split(
        mnist_train_labels, val_fraction, np.random.default_rng(derived_seed(seed, STREAM_SPLIT))
    )
    svhn_split = stratified_split(
        svhn_train_labels,
        val_fraction,
        np.random.default_rng(derived_seed(seed, STREAM_SVHN_SPLIT)),
    )
    if mnist_split[1].size == 0:
        raise DataFormatError(
            f"expected enough train images to split off a validation part, found "
            f"{mnist_train_labels.size}",
            file=train_files[0],
        )
    pairs = {}
    for split, part, stream in (("train", 0, STREAM_PAIR_TRAIN), ("val", 1, STREAM_PAIR_VAL)):
        mnist_ids, svhn_ids = mnist_split[part], svhn_split[part]
        pairs[split] = _pair_by_class(
            mnist_ids,
            mnist_train_labels[mnist_ids],
            svhn_ids,
            svhn_train_labels[svhn_ids],
            pairs_per_image,
            np.random.default_rng(derived_seed(seed, stream)),
            svhn_train_path,
        )
    pairs["test"] = _pair_by_class(
        np.arange(mnist_test_labels.size, dtype=np.int64),
        mnist_test_labels,
        np.arange(svhn_test_labels.size, dtype=np.int64),
        svhn_test_labels,
        pairs_per_image,
        np.random.default_rng(derived_seed(seed, STREAM_PAIR_TEST)),
        svhn_test_path,
    )

    modalities = ("mnist", "svhn")
    masks: dict[str, dict[str, NDArray[np.bool_]] | None] = dict.fromkeys(SPLITS)
    missingness = None
    if missing_rate > 0:
        records = {}
        for split, stream in (("train", STREAM_TRAIN_MASK), ("val", STREAM_VAL_MASK)):
            drawn = missing_completely_at_random(
                pairs[split][0].size, modalities, missing_rate, derived_seed(seed, stream)
            )
            masks[split], records[split] = drawn.present, drawn.record
        missingness = dict(records)

    schema = DatasetSchema(
        modalities=(
            ModalitySpec(
                name="mnist",
                shape=(1, IMAGE_SIZE, IMAGE_SIZE),
                dtype="float32",
                kind="image",
                value_range=(0.0, 1.0),
                likelihood="laplace",
            ),
            ModalitySpec(
                name="svhn",
                shape=(3, SVHN_SIZE, SVHN_SIZE),
                dtype="float32",
                kind="image",
                value_range=(0.0, 1.0),
                likelihood="laplace",
            ),
        ),
        num_classes=10,
        class_names=DIGITS,
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
