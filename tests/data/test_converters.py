"""Converters of PolyMNIST and MNIST-SVHN, run on tiny files written in the real release formats."""

from __future__ import annotations

import gzip
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
from PIL import Image

from multivae.data import DataFormatError, MultimodalDataset, list_splits, read_schema
from multivae.data.consistency import check_dataset
from multivae.data.datasets.mnist_svhn import convert_mnist_svhn
from multivae.data.datasets.polymnist import convert_polymnist

# ----------------------------------------------------------------------------------------------
# PolyMNIST fixtures: <top>/MMNIST/{train,test}/m<j>/<index>.<label>.png
# ----------------------------------------------------------------------------------------------

POLY_MODALITIES = 3
POLY_TRAIN = 12
POLY_TEST = 6
SPLIT_CODE = {"train": 0, "test": 1}


def poly_label(index: int) -> int:
    # Three classes of four training samples each, so a 25% stratified validation split takes
    # exactly one sample per class.
    return index % 3


def poly_pixels(split: str, modality: int, index: int) -> np.ndarray[Any, Any]:
    """(28, 28, 3) uint8 pixels that identify split, modality and index, and cover 0..255."""
    y, x, c = np.meshgrid(np.arange(28), np.arange(28), np.arange(3), indexing="ij")
    values = (y * 28 + x) * 3 + c + 17 * index + 61 * modality + 101 * SPLIT_CODE[split]
    return (values % 256).astype(np.uint8)


def poly_expected(split: str, modality: int, index: int) -> np.ndarray[Any, Any]:
    return poly_pixels(split, modality, index).transpose(2, 0, 1).astype(np.float32) / np.float32(
        255
    )


def make_polymnist_folder(top: Path) -> Path:
    release = top / "MMNIST"
    for split, count in (("train", POLY_TRAIN), ("test", POLY_TEST)):
        for modality in range(POLY_MODALITIES):
            folder = release / split / f"m{modality}"
            folder.mkdir(parents=True)
            for index in range(count):
                image = Image.fromarray(poly_pixels(split, modality, index), mode="RGB")
                image.save(folder / f"{index}.{poly_label(index)}.png")
    return top


def zip_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                handle.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


@pytest.fixture
def poly_folder(tmp_path: Path) -> Path:
    return make_polymnist_folder(tmp_path / "extracted")


@pytest.fixture
def poly_zip(tmp_path: Path, poly_folder: Path) -> Path:
    # The zip nests the release one folder deeper than the extracted copy and carries macOS
    # junk, so the search for train/m0 is exercised too.
    archive = zip_folder(poly_folder, tmp_path / "PolyMNIST.zip", prefix="download/")
    with zipfile.ZipFile(archive, "a") as handle:
        handle.writestr("__MACOSX/download/MMNIST/train/m0/._0.0.png", b"resource fork")
    return archive


def check_polymnist_split(out: Path, split: str) -> Any:
    batch = MultimodalDataset(out, split).read_all()
    release_split = "test" if split == "test" else "train"
    # Test ids follow the release train split's (ids are unique in the dataset).
    offset = POLY_TRAIN if split == "test" else 0
    assert batch.label is not None and batch.sample_id is not None
    for row, sample_id in enumerate(batch.sample_id.tolist()):
        index = sample_id - offset
        assert batch.label[row].item() == poly_label(index)
        for modality in range(POLY_MODALITIES):
            name = f"m{modality}"
            values = batch.data[name][row].numpy()
            assert values.dtype == np.float32
            assert values.shape == (3, 28, 28)
            if batch.mask[name][row]:
                np.testing.assert_array_equal(values, poly_expected(release_split, modality, index))
            else:
                assert not values.any()
    return batch


# ----------------------------------------------------------------------------------------------
# PolyMNIST tests
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_polymnist_round_trip(tmp_path: Path, kind: str, poly_folder: Path, poly_zip: Path) -> None:
    source = poly_folder if kind == "folder" else poly_zip
    out = convert_polymnist(source, tmp_path / "out", val_fraction=0.25, chunk_rows=5)

    assert list_splits(out) == ["train", "val", "test"]
    schema = read_schema(out)
    assert schema.modality_names == ("m0", "m1", "m2")
    for spec in schema.modalities:
        assert (spec.shape, spec.dtype, spec.kind, spec.likelihood) == (
            (3, 28, 28),
            "float32",
            "image",
            "laplace",
        )
        assert spec.value_range == (0.0, 1.0)
    assert schema.num_classes == 10
    assert schema.missingness is None
    assert schema.extra["source"] == str(source.resolve())
    assert schema.extra["seed"] == 0

    train = check_polymnist_split(out, "train")
    val = check_polymnist_split(out, "val")
    test = check_polymnist_split(out, "test")
    assert (len(train), len(val), len(test)) == (9, 3, POLY_TEST)
    assert sorted(val.label.tolist()) == [0, 1, 2]
    train_ids, val_ids = set(train.sample_id.tolist()), set(val.sample_id.tolist())
    assert not train_ids & val_ids
    assert train_ids | val_ids == set(range(POLY_TRAIN))
    assert sorted(test.sample_id.tolist()) == list(range(POLY_TRAIN, POLY_TRAIN + POLY_TEST))
    check_dataset(out)  # one schema, unique ids across the three splits
    for batch in (train, val, test):
        assert all(mask.all() for mask in batch.mask.values())


def test_polymnist_zip_and_folder_agree(tmp_path: Path, poly_folder: Path, poly_zip: Path) -> None:
    from_folder = convert_polymnist(poly_folder, tmp_path / "a", seed=3, progress=False)
    from_zip = convert_polymnist(poly_zip, tmp_path / "b", seed=3, progress=False)
    for split in ("train", "val", "test"):
        a = MultimodalDataset(from_folder, split).read_all()
        b = MultimodalDataset(from_zip, split).read_all()
        assert a.sample_id is not None and b.sample_id is not None
        assert a.sample_id.tolist() == b.sample_id.tolist()
        for name in a.data:
            assert bool((a.data[name] == b.data[name]).all())


def test_polymnist_seed_changes_the_validation_split(tmp_path: Path, poly_folder: Path) -> None:
    picks = set()
    for seed in range(6):
        out = convert_polymnist(poly_folder, tmp_path / str(seed), val_fraction=0.25, seed=seed)
        val = MultimodalDataset(out, "val").read_all()
        assert val.sample_id is not None
        picks.add(tuple(val.sample_id.tolist()))
    assert len(picks) > 1


def test_polymnist_missingness(tmp_path: Path, poly_folder: Path) -> None:
    out = convert_polymnist(
        poly_folder, tmp_path / "out", val_fraction=0.25, missing_rate=0.5, seed=1, chunk_rows=4
    )
    schema = read_schema(out)
    assert schema.missingness is not None
    assert set(schema.missingness) == {"train", "val"}
    for record in schema.missingness.values():
        assert record["scheme"] == "polymnist"
        assert record["rate"] == 0.5
        assert record["always_present"] == "m0"
    dropped = 0
    for split in ("train", "val"):
        batch = check_polymnist_split(out, split)
        assert bool(batch.mask["m0"].all())
        dropped += sum(int((~batch.mask[f"m{j}"]).sum()) for j in range(1, POLY_MODALITIES))
    assert dropped > 0
    test = check_polymnist_split(out, "test")
    assert all(mask.all() for mask in test.mask.values())


def test_polymnist_refuses_disagreeing_indices_extra_file(
    poly_folder: Path, tmp_path: Path
) -> None:
    extra = poly_folder / "MMNIST" / "train" / "m2" / "99.0.png"
    Image.fromarray(poly_pixels("train", 2, 0), mode="RGB").save(extra)
    with pytest.raises(DataFormatError, match="disagree on indices") as caught:
        convert_polymnist(poly_folder, tmp_path / "out")
    assert str(extra) in str(caught.value)
    assert not (tmp_path / "out" / "train").exists()


def test_polymnist_refuses_disagreeing_indices_missing_file(
    poly_folder: Path, tmp_path: Path
) -> None:
    (poly_folder / "MMNIST" / "test" / "m1" / f"4.{poly_label(4)}.png").unlink()
    with pytest.raises(DataFormatError, match="disagree on indices") as caught:
        convert_polymnist(poly_folder, tmp_path / "out")
    message = str(caught.value)
    assert str(poly_folder / "MMNIST" / "test" / "m0" / f"4.{poly_label(4)}.png") in message
    assert str(poly_folder / "MMNIST" / "test" / "m1") in message


@pytest.mark.parametrize("name", ["7.png", "seven.1.png", "3.1.jpg", "12.10.png"])
def test_polymnist_refuses_bad_file_names(poly_folder: Path, tmp_path: Path, name: str) -> None:
    bad = poly_folder / "MMNIST" / "train" / "m1" / name
    Image.fromarray(poly_pixels("train", 1, 0), mode="RGB").save(bad, format="PNG")
    with pytest.raises(DataFormatError) as caught:
        convert_polymnist(poly_folder, tmp_path / "out")
    assert str(bad) in str(caught.value)


def test_polymnist_refuses_disagreeing_labels(poly_folder: Path, tmp_path: Path) -> None:
    folder = poly_folder / "MMNIST" / "train" / "m2"
    wrong = folder / "5.0.png"
    (folder / f"5.{poly_label(5)}.png").rename(wrong)
    with pytest.raises(DataFormatError, match="labels of sample 5 disagree") as caught:
        convert_polymnist(poly_folder, tmp_path / "out")
    assert str(wrong) in str(caught.value)


@pytest.mark.parametrize(
    ("mode", "size"), [("RGB", (27, 28)), ("RGB", (28, 32)), ("L", (28, 28)), ("RGBA", (28, 28))]
)
def test_polymnist_refuses_images_that_are_not_28x28_rgb(
    poly_folder: Path, tmp_path: Path, mode: str, size: tuple[int, int]
) -> None:
    bad = poly_folder / "MMNIST" / "test" / "m1" / f"3.{poly_label(3)}.png"
    Image.new(mode, size).save(bad)
    with pytest.raises(DataFormatError, match="expected a 28x28 RGB image") as caught:
        convert_polymnist(poly_folder, tmp_path / "out", progress=False)
    assert str(bad) in str(caught.value)
    # The failure comes while writing; no split may have been moved into place.
    assert list_splits(tmp_path / "out") == []


def test_polymnist_refuses_corrupt_png_in_zip(poly_folder: Path, tmp_path: Path) -> None:
    (poly_folder / "MMNIST" / "train" / "m0" / f"2.{poly_label(2)}.png").write_bytes(b"\x89PNG x")
    archive = zip_folder(poly_folder, tmp_path / "release.zip")
    with pytest.raises(DataFormatError, match="unreadable PNG") as caught:
        convert_polymnist(archive, tmp_path / "out")
    assert f"{archive}[MMNIST/train/m0/2.{poly_label(2)}.png]" in str(caught.value)


def test_polymnist_names_the_zip_member_in_errors(poly_folder: Path, tmp_path: Path) -> None:
    (poly_folder / "MMNIST" / "train" / "m1" / "notes.txt").write_text("hello")
    archive = zip_folder(poly_folder, tmp_path / "release.zip")
    with pytest.raises(DataFormatError, match=r"<index>\.<label>\.png") as caught:
        convert_polymnist(archive, tmp_path / "out")
    assert "MMNIST/train/m1/notes.txt" in str(caught.value)
    assert str(archive) in str(caught.value)


def test_polymnist_refuses_a_source_without_the_layout(tmp_path: Path) -> None:
    (tmp_path / "empty" / "train" / "x").mkdir(parents=True)
    with pytest.raises(DataFormatError, match="train/m0") as caught:
        convert_polymnist(tmp_path / "empty", tmp_path / "out")
    assert str(tmp_path / "empty") in str(caught.value)
    with pytest.raises(DataFormatError, match="found nothing"):
        convert_polymnist(tmp_path / "absent.zip", tmp_path / "out")
    (tmp_path / "not.zip").write_bytes(b"not a zip")
    with pytest.raises(DataFormatError, match="unreadable zip") as caught:
        convert_polymnist(tmp_path / "not.zip", tmp_path / "out")
    assert str(tmp_path / "not.zip") in str(caught.value)


def test_polymnist_refuses_gaps_in_modality_folders(poly_folder: Path, tmp_path: Path) -> None:
    for split in ("train", "test"):
        shutil.rmtree(poly_folder / "MMNIST" / split / "m1")
    with pytest.raises(DataFormatError, match=r"m0\.\.m1, found \['m0', 'm2'\]") as caught:
        convert_polymnist(poly_folder, tmp_path / "out")
    assert str(poly_folder / "MMNIST" / "train") in str(caught.value)


def test_polymnist_refuses_bad_arguments(poly_folder: Path, tmp_path: Path) -> None:
    for val_fraction, missing_rate in ((0.0, 0.0), (1.0, 0.0), (0.1, 1.5)):
        with pytest.raises(ValueError, match="expected"):
            convert_polymnist(
                poly_folder,
                tmp_path / "out",
                val_fraction=val_fraction,
                missing_rate=missing_rate,
            )
    with pytest.raises(ValueError, match="chunk_rows"):
        convert_polymnist(poly_folder, tmp_path / "out", chunk_rows=0)


# ----------------------------------------------------------------------------------------------
# MNIST-SVHN fixtures: torchvision's MNIST/raw IDX files and SVHN .mat files
# ----------------------------------------------------------------------------------------------

MNIST_TRAIN = 20
MNIST_TEST = 8
SVHN_TRAIN = 24
SVHN_TEST = 12
CLASSES = 4
PAIRS = 3


def write_idx(path: Path, values: np.ndarray[Any, Any], magic: int, compress: bool) -> Path:
    payload = struct.pack(">I", magic)
    payload += b"".join(struct.pack(">I", d) for d in values.shape)
    payload += values.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def mnist_images(split: str, count: int) -> np.ndarray[Any, Any]:
    y, x = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
    offset = 0 if split == "train" else 128
    return np.stack([(y * 28 + x + 37 * i + offset) % 256 for i in range(count)]).astype(np.uint8)


def mnist_labels(count: int) -> np.ndarray[Any, Any]:
    return (np.arange(count) % CLASSES).astype(np.uint8)


def svhn_images(split: str, count: int) -> np.ndarray[Any, Any]:
    """(count, 3, 32, 32) uint8, one pattern per image."""
    c, y, x = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    offset = 0 if split == "train" else 77
    return np.stack([(c * 1024 + y * 32 + x + 53 * i + offset) % 256 for i in range(count)]).astype(
        np.uint8
    )


def svhn_digits(count: int) -> np.ndarray[Any, Any]:
    # Reversed so that SVHN and MNIST indices of a class differ; digit 0 is stored as 10.
    return (np.arange(count)[::-1] % CLASSES).astype(np.int64)


def write_mat(path: Path, images: np.ndarray[Any, Any], digits: np.ndarray[Any, Any]) -> None:
    stored = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(path, {"X": np.transpose(images, (2, 3, 1, 0)), "y": stored})


def make_mnist_svhn(top: Path, compress: bool) -> tuple[Path, Path]:
    raw = top / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, split, count in (("train", "train", MNIST_TRAIN), ("t10k", "test", MNIST_TEST)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", mnist_images(split, count), 2051, compress)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", mnist_labels(count), 2049, compress)
    svhn = top / "svhn"
    svhn.mkdir()
    write_mat(svhn / "train_32x32.mat", svhn_images("train", SVHN_TRAIN), svhn_digits(SVHN_TRAIN))
    write_mat(svhn / "test_32x32.mat", svhn_images("test", SVHN_TEST), svhn_digits(SVHN_TEST))
    return top / "mnist", svhn


@pytest.fixture
def mnist_svhn(tmp_path: Path) -> tuple[Path, Path]:
    return make_mnist_svhn(tmp_path / "downloads", compress=False)


def identify_svhn(split: str, values: np.ndarray[Any, Any]) -> int:
    count = SVHN_TRAIN if split == "train" else SVHN_TEST
    expected = svhn_images(split, count).astype(np.float32) / np.float32(255)
    matches = np.flatnonzero((expected == values).all(axis=(1, 2, 3)))
    assert matches.size == 1, "the svhn cell is not exactly one of the source images"
    return int(matches[0])


def read_pairs(out: Path, split: str) -> tuple[Any, list[int], list[int]]:
    """The batch, and the MNIST and SVHN source index of each present pair."""
    batch = MultimodalDataset(out, split).read_all()
    assert batch.sample_id is not None and batch.label is not None
    source = "test" if split == "test" else "train"
    mnist_expected = mnist_images(source, MNIST_TEST if split == "test" else MNIST_TRAIN)
    svhn_labels = svhn_digits(SVHN_TEST if split == "test" else SVHN_TRAIN)
    mnist_ids, svhn_ids = [], []
    # Test ids follow the train ids (unique in the dataset): MNIST train's pairs come first.
    offset = MNIST_TRAIN * PAIRS if split == "test" else 0
    for row in range(len(batch)):
        mnist_index = (int(batch.sample_id[row].item()) - offset) // PAIRS
        label = batch.label[row].item()
        assert label == mnist_index % CLASSES
        mnist_cell = batch.data["mnist"][row].numpy()
        svhn_cell = batch.data["svhn"][row].numpy()
        assert mnist_cell.shape == (1, 28, 28) and mnist_cell.dtype == np.float32
        assert svhn_cell.shape == (3, 32, 32) and svhn_cell.dtype == np.float32
        if batch.mask["mnist"][row]:
            expected = mnist_expected[mnist_index][None].astype(np.float32) / np.float32(255)
            np.testing.assert_array_equal(mnist_cell, expected)
        else:
            assert not mnist_cell.any()
        if batch.mask["svhn"][row]:
            svhn_index = identify_svhn(source, svhn_cell)
            assert svhn_labels[svhn_index] == label, "pair of different classes"
            svhn_ids.append(svhn_index)
        else:
            assert not svhn_cell.any()
        mnist_ids.append(mnist_index)
    return batch, mnist_ids, svhn_ids


# ----------------------------------------------------------------------------------------------
# MNIST-SVHN tests
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_svhn_round_trip(tmp_path: Path, compress: bool) -> None:
    mnist_root, svhn_root = make_mnist_svhn(tmp_path / "downloads", compress)
    out = convert_mnist_svhn(
        mnist_root,
        svhn_root,
        tmp_path / "out",
        pairs_per_image=PAIRS,
        val_fraction=0.2,
        chunk_rows=7,
    )
    assert list_splits(out) == ["train", "val", "test"]
    schema = read_schema(out)
    mnist, svhn = schema["mnist"], schema["svhn"]
    assert (mnist.shape, mnist.dtype, mnist.kind, mnist.likelihood) == (
        (1, 28, 28),
        "float32",
        "image",
        "laplace",
    )
    assert (svhn.shape, svhn.dtype, svhn.kind, svhn.likelihood) == (
        (3, 32, 32),
        "float32",
        "image",
        "laplace",
    )
    assert schema.num_classes == 10
    assert schema.missingness is None
    assert schema.extra["pairs_per_image"] == PAIRS
    assert schema.extra["seed"] == 0
    suffix = ".gz" if compress else ""
    raw = (mnist_root / "MNIST" / "raw").resolve()
    assert schema.extra["source"]["mnist_train_images"] == str(
        raw / f"train-images-idx3-ubyte{suffix}"
    )
    assert schema.extra["source"]["svhn_test"] == str((svhn_root / "test_32x32.mat").resolve())

    train, train_mnist, train_svhn = read_pairs(out, "train")
    val, val_mnist, val_svhn = read_pairs(out, "val")
    test, test_mnist, test_svhn = read_pairs(out, "test")
    # 20 MNIST train images in 4 classes of 5: one per class goes to val.
    assert (len(train), len(val), len(test)) == (16 * PAIRS, 4 * PAIRS, MNIST_TEST * PAIRS)
    for ids, images in ((train_mnist, 16), (val_mnist, 4), (test_mnist, MNIST_TEST)):
        assert len(set(ids)) == images
        assert all(ids.count(i) == PAIRS for i in set(ids))
    assert not set(train_mnist) & set(val_mnist)
    assert set(train_mnist) | set(val_mnist) == set(range(MNIST_TRAIN))
    assert not set(train_svhn) & set(val_svhn), "val pairs reuse SVHN images of train"
    assert set(test_mnist) == set(range(MNIST_TEST))
    assert set(test_svhn) <= set(range(SVHN_TEST))
    # Every digit class, including 0 (stored as 10 by SVHN), is paired.
    assert set(test.label.tolist()) == set(range(CLASSES))
    for batch in (train, val, test):
        assert len(set(batch.sample_id.tolist())) == len(batch)
        assert all(mask.all() for mask in batch.mask.values())


def test_mnist_svhn_deals_distinct_partners_per_round(
    tmp_path: Path, mnist_svhn: tuple[Path, Path]
) -> None:
    out = convert_mnist_svhn(*mnist_svhn, tmp_path / "out", pairs_per_image=PAIRS)
    for split in ("train", "test"):
        batch, _, svhn_ids = read_pairs(out, split)
        rounds: dict[tuple[int, int], list[int]] = {}
        for row, svhn_index in enumerate(svhn_ids):
            key = (batch.sample_id[row].item() % PAIRS, batch.label[row].item())
            rounds.setdefault(key, []).append(svhn_index)
        # Each class has more SVHN than MNIST images here, so within one round the dealt
        # permutation never hands the same SVHN image to two MNIST images.
        assert len(rounds) == PAIRS * CLASSES
        for partners in rounds.values():
            assert len(partners) == len(set(partners))


def test_mnist_svhn_is_deterministic(tmp_path: Path, mnist_svhn: tuple[Path, Path]) -> None:
    runs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        out = convert_mnist_svhn(*mnist_svhn, tmp_path / name, pairs_per_image=PAIRS, seed=seed)
        batch = MultimodalDataset(out, "train").read_all()
        assert batch.sample_id is not None
        runs.append((batch.sample_id.tolist(), batch.data["svhn"].numpy()))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert runs[0][0] != runs[2][0] or not np.array_equal(runs[0][1], runs[2][1])


def test_mnist_svhn_missingness(tmp_path: Path, mnist_svhn: tuple[Path, Path]) -> None:
    out = convert_mnist_svhn(
        *mnist_svhn, tmp_path / "out", pairs_per_image=PAIRS, missing_rate=0.4, seed=2
    )
    schema = read_schema(out)
    assert schema.missingness is not None
    assert set(schema.missingness) == {"train", "val"}
    for record in schema.missingness.values():
        assert record["scheme"] == "missing_completely_at_random"
        assert record["rates"] == {"mnist": 0.4, "svhn": 0.4}
    absent = 0
    for split in ("train", "val"):
        batch, _, _ = read_pairs(out, split)
        assert bool((batch.mask["mnist"] | batch.mask["svhn"]).all())
        absent += int((~batch.mask["mnist"]).sum() + (~batch.mask["svhn"]).sum())
    assert absent > 0
    test, _, _ = read_pairs(out, "test")
    assert all(mask.all() for mask in test.mask.values())


def test_mnist_svhn_refuses_a_missing_file(tmp_path: Path, mnist_svhn: tuple[Path, Path]) -> None:
    missing = mnist_svhn[0] / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    missing.unlink()
    with pytest.raises(DataFormatError, match="missing MNIST file") as caught:
        convert_mnist_svhn(*mnist_svhn, tmp_path / "out")
    assert str(missing) in str(caught.value)

    gone = mnist_svhn[1] / "test_32x32.mat"
    write_idx(missing, mnist_labels(MNIST_TEST), 2049, compress=False)
    gone.unlink()
    with pytest.raises(DataFormatError, match="missing SVHN file") as caught:
        convert_mnist_svhn(*mnist_svhn, tmp_path / "out")
    assert str(gone) in str(caught.value)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_svhn_refuses_a_bad_magic_number(tmp_path: Path, compress: bool) -> None:
    mnist_root, svhn_root = make_mnist_svhn(tmp_path / "downloads", compress)
    raw = mnist_root / "MNIST" / "raw"
    for path in raw.glob("train-images-idx3-ubyte*"):
        path.unlink()
    # A labels-style magic number on an images file: the classic swapped-files mistake.
    bad = write_idx(raw / "train-images-idx3-ubyte", mnist_images("train", 20), 2049, compress)
    with pytest.raises(DataFormatError, match="bad magic number: expected 2051") as caught:
        convert_mnist_svhn(mnist_root, svhn_root, tmp_path / "out")
    assert str(bad) in str(caught.value)


def test_mnist_svhn_refuses_a_truncated_idx_file(
    tmp_path: Path, mnist_svhn: tuple[Path, Path]
) -> None:
    path = mnist_svhn[0] / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataFormatError, match="truncated") as caught:
        convert_mnist_svhn(*mnist_svhn, tmp_path / "out")
    assert str(path) in str(caught.value)


def test_mnist_svhn_refuses_images_and_labels_of_different_sizes(
    tmp_path: Path, mnist_svhn: tuple[Path, Path]
) -> None:
    raw = mnist_svhn[0] / "MNIST" / "raw"
    write_idx(raw / "train-labels-idx1-ubyte", mnist_labels(MNIST_TRAIN - 1), 2049, False)
    with pytest.raises(DataFormatError, match="20 images but 19 labels") as caught:
        convert_mnist_svhn(*mnist_svhn, tmp_path / "out")
    assert str(raw / "train-images-idx3-ubyte") in str(caught.value)
    assert str(raw / "train-labels-idx1-ubyte") in str(caught.value)


@pytest.mark.parametrize("dropped", ["X", "y"])
def test_mnist_svhn_refuses_a_mat_without_x_or_y(
    tmp_path: Path, mnist_svhn: tuple[Path, Path], dropped: str
) -> None:
    path = mnist_svhn[1] / "train_32x32.mat"
    contents = {"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.ones((4, 1), np.uint8)}
    del contents[dropped]
    scipy.io.savemat(path, contents)
    with pytest.raises(DataFormatError, match=f"found no {dropped}") as caught:
        convert_mnist_svhn(*mnist_svhn, tmp_path / "out")
    assert str(path) in str(caught.value)


def test_mnist_svhn_refuses_malformed_mat_contents(
    tmp_path: Path, mnist_svhn: tuple[Path, Path]
) -> None:
    path = mnist_svhn[1] / "test_32x32.mat"
    scipy.io.savemat(path, {"X": np.zeros((28, 28, 3, 4), np.uint8), "y": np.ones((4, 1))})
    with pytest.raises(DataFormatError, match=r"shape \(32, 32, 3, N\)") as caught:
        convert_mnist_svhn(*mnist_svhn, tmp_path / "out")
    assert str(path) in str(caught.value)

    scipy.io.savemat(path, {"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.full((4, 1), 11)})
    with pytest.raises(DataFormatError, match=r"expected labels 1\.\.10") as caught:
        convert_mnist_svhn(*mnist_svhn, tmp_path / "out")
    assert str(path) in str(caught.value)

    path.write_bytes(b"definitely not MATLAB" * 20)
    with pytest.raises(DataFormatError, match=r"unreadable \.mat") as caught:
        convert_mnist_svhn(*mnist_svhn, tmp_path / "out")
    assert str(path) in str(caught.value)


def test_mnist_svhn_refuses_a_class_without_svhn_partners(
    tmp_path: Path, mnist_svhn: tuple[Path, Path]
) -> None:
    path = mnist_svhn[1] / "test_32x32.mat"
    digits = np.where(svhn_digits(SVHN_TEST) == 2, 1, svhn_digits(SVHN_TEST))
    write_mat(path, svhn_images("test", SVHN_TEST), digits)
    with pytest.raises(DataFormatError, match="SVHN images of class 2") as caught:
        convert_mnist_svhn(*mnist_svhn, tmp_path / "out")
    assert str(path) in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_mnist_svhn_refuses_bad_arguments(tmp_path: Path, mnist_svhn: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="pairs_per_image"):
        convert_mnist_svhn(*mnist_svhn, tmp_path / "out", pairs_per_image=0)
    with pytest.raises(ValueError, match="val_fraction"):
        convert_mnist_svhn(*mnist_svhn, tmp_path / "out", val_fraction=1.0)
