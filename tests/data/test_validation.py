"""Every bad input gives a DataFormatError naming where it is: file or split folder, column, row.

Write-side cases feed bad arrays to the writer. Read-side cases take a good file written by the
writer, alter its data by hand with pyarrow (the writer refuses bad data) keeping its schema
metadata, and read it back with :class:`MultimodalDataset`. Atomicity of failed writes and the
construction errors of the schema classes are checked here too.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from multivae.data import (
    DataFormatError,
    DatasetSchema,
    ModalitySpec,
    MultimodalDataset,
    SplitArrays,
    SplitWriter,
    read_schema,
    write_dataset,
    write_split,
)

SCHEMA = DatasetSchema(
    modalities=(
        ModalitySpec("image", (1, 4, 4), "uint8", "image", (0, 255), "bernoulli"),
        ModalitySpec("vec", (3,), "float32", "tabular", (-5.0, 5.0), "normal"),
        ModalitySpec("grid", (2, 2), "float64", "tabular", None, "laplace"),
        ModalitySpec(
            "digit", (), "int64", "categorical", likelihood="categorical", num_categories=5
        ),
    ),
    num_classes=3,
    name="toy",
)
MODALITIES = SCHEMA.modality_names
ROW_BYTES = SCHEMA.bytes_per_sample
# 30 rows in two files of 15 rows, each of three row groups of 5 rows.
OPTIONS = {"row_group_bytes": 5 * ROW_BYTES, "file_bytes": 15 * ROW_BYTES}
BAD_ROW = 12  # in the third row group of the second file


def make_split(rows: int, seed: int) -> SplitArrays:
    """Valid rows: every modality present except ``vec`` on rows 1, 4, 7... (zeroed there)."""
    rng = np.random.default_rng(seed)
    present = {m: np.ones(rows, dtype=bool) for m in MODALITIES}
    present["vec"] = np.arange(rows) % 3 != 1
    vec = rng.uniform(-4.0, 4.0, size=(rows, 3)).astype(np.float32)
    vec[~present["vec"]] = 0
    return SplitArrays(
        data={
            "image": rng.integers(0, 256, size=(rows, 1, 4, 4), dtype=np.uint8),
            "vec": vec,
            "grid": rng.standard_normal((rows, 2, 2)),
            "digit": rng.integers(0, 5, size=rows, dtype=np.int64),
        },
        present=present,
        labels=rng.integers(0, 3, size=rows, dtype=np.int64),
    )


def copy_arrays(arrays: SplitArrays) -> SplitArrays:
    return SplitArrays(
        data={m: v.copy() for m, v in arrays.data.items()},
        present={m: p.copy() for m, p in arrays.present.items()},
        labels=None if arrays.labels is None else arrays.labels.copy(),
        sample_ids=None if arrays.sample_ids is None else arrays.sample_ids.copy(),
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def assert_names(
    error: DataFormatError,
    *,
    file: str | Path,
    column: str | None = None,
    row: int | None = None,
    says: str = "",
) -> None:
    message = str(error)
    assert str(file) in message, message
    if column is not None:
        assert f"column '{column}'" in message, message
        assert error.column == column
    if row is not None:
        assert f"row {row}" in message, message
        assert error.row == row
    assert says in message, message


# ----------------------------------------------------------------------------------------------
# Write side: the writer refuses bad arrays
# ----------------------------------------------------------------------------------------------


def _drop_data(a: SplitArrays) -> None:
    del a.data["vec"]


def _drop_presence(a: SplitArrays) -> None:
    del a.present["vec"]


def _wrong_shape(a: SplitArrays) -> None:
    a.data["grid"] = np.zeros((len(a.labels), 4))


def _wrong_dtype(a: SplitArrays) -> None:
    a.data["vec"] = a.data["vec"].astype(np.float64)


def _absent_but_nonzero(a: SplitArrays) -> None:
    a.present["vec"][BAD_ROW] = False
    a.data["vec"][BAD_ROW] = [0.0, 0.5, 0.0]


def _nothing_present(a: SplitArrays) -> None:
    for m in MODALITIES:
        a.present[m][BAD_ROW] = False
        a.data[m][BAD_ROW] = 0


def _nan(a: SplitArrays) -> None:
    a.data["vec"][BAD_ROW, 1] = np.nan


def _inf(a: SplitArrays) -> None:
    a.data["grid"][BAD_ROW, 1, 0] = -np.inf


def _out_of_range(a: SplitArrays) -> None:
    a.data["vec"][BAD_ROW, 2] = 7.5


def _category_out_of_range(a: SplitArrays) -> None:
    a.data["digit"][BAD_ROW] = 5


def _label_out_of_range(a: SplitArrays) -> None:
    a.labels[BAD_ROW] = 3


def _negative_label(a: SplitArrays) -> None:
    a.labels[BAD_ROW] = -1


def _presence_not_bool(a: SplitArrays) -> None:
    a.present["vec"] = a.present["vec"].astype(np.uint8)


def _rows_disagree(a: SplitArrays) -> None:
    a.data["grid"] = a.data["grid"][:-1]


def _no_labels(a: SplitArrays) -> None:
    a.labels = None


def _extra_modality(a: SplitArrays) -> None:
    a.data["audio"] = np.zeros(len(a.labels), dtype=np.float32)
    a.present["audio"] = np.ones(len(a.labels), dtype=bool)


WRITE_CASES: list[tuple[str, Callable[[SplitArrays], None], str | None, int | None, str]] = [
    ("missing-modality-column", _drop_data, "vec", None, "missing modality column"),
    ("missing-presence-column", _drop_presence, "vec__present", None, "missing presence column"),
    ("shape-mismatch", _wrong_shape, "grid", None, "expected samples of shape (2, 2), found (4,)"),
    ("dtype-mismatch", _wrong_dtype, "vec", None, "expected dtype float32, found float64"),
    ("absent-but-nonzero", _absent_but_nonzero, "vec", BAD_ROW, "presence flag is false"),
    ("no-modality-present", _nothing_present, None, BAD_ROW, "at least one modality present"),
    ("nan", _nan, "vec", BAD_ROW, "found NaN"),
    ("inf", _inf, "grid", BAD_ROW, "found an infinite value"),
    ("outside-value-range", _out_of_range, "vec", BAD_ROW, "expected values in [-5, 5]"),
    ("category-out-of-range", _category_out_of_range, "digit", BAD_ROW, "in [0, 4], found 5"),
    ("label-out-of-range", _label_out_of_range, "label", BAD_ROW, "in [0, 2], found 3"),
    ("negative-label", _negative_label, "label", BAD_ROW, "in [0, 2], found -1"),
    ("presence-not-bool", _presence_not_bool, "vec__present", None, "found dtype uint8"),
    ("rows-disagree", _rows_disagree, "grid", None, "expected 30 rows"),
    ("labels-missing", _no_labels, "label", None, "missing labels"),
    ("extra-modality", _extra_modality, None, None, "found extra ['audio']"),
]


@pytest.mark.parametrize(
    ("mutate", "column", "row", "says"),
    [case[1:] for case in WRITE_CASES],
    ids=[case[0] for case in WRITE_CASES],
)
def test_writer_refuses_bad_rows(tmp_path, mutate, column, row, says):
    arrays = copy_arrays(make_split(30, seed=0))
    mutate(arrays)
    with pytest.raises(DataFormatError) as caught:
        write_split(tmp_path, "train", SCHEMA, arrays, **OPTIONS)
    assert_names(caught.value, file=tmp_path / "train", column=column, row=row, says=says)
    assert "(being written)" in str(caught.value)
    assert not (tmp_path / "train").exists()
    assert leftovers(tmp_path) == []


def test_writer_names_the_row_within_the_split_across_chunks(tmp_path):
    good, bad = make_split(30, seed=0), copy_arrays(make_split(30, seed=1))
    _nan(bad)
    with pytest.raises(DataFormatError) as caught, SplitWriter(tmp_path, "val", SCHEMA) as writer:
        writer.write(good.data, good.present, good.labels)
        writer.write(bad.data, bad.present, bad.labels)
    assert_names(caught.value, file=tmp_path / "val", column="vec", row=30 + BAD_ROW)


def test_writer_refuses_labels_without_classes(tmp_path):
    schema = DatasetSchema(modalities=SCHEMA.modalities)
    arrays = make_split(10, seed=0)
    with pytest.raises(DataFormatError) as caught:
        write_split(tmp_path, "test", schema, arrays)
    assert_names(caught.value, file=tmp_path / "test", column="label", says="declares no label")


def test_writer_refuses_bad_sample_ids(tmp_path):
    arrays = make_split(10, seed=0)
    arrays.sample_ids = np.arange(10, dtype=np.float64)
    with pytest.raises(DataFormatError) as caught:
        write_split(tmp_path, "train", SCHEMA, arrays)
    assert_names(caught.value, file=tmp_path / "train", column="sample_id", says="integer")


@pytest.mark.parametrize("split", ["training", "holdout", "Train", ""])
def test_writer_refuses_an_unknown_split(tmp_path, split):
    root = tmp_path / "data"
    arrays = make_split(10, seed=0)
    with pytest.raises(DataFormatError) as caught:
        write_split(root, split, SCHEMA, arrays)
    assert_names(caught.value, file=root, says=f"unknown split {split!r}")
    with pytest.raises(DataFormatError, match="unknown split"):
        SplitWriter(root, split, SCHEMA)
    with pytest.raises(DataFormatError, match="unknown split"):
        write_dataset(root, SCHEMA, {"train": arrays, split: arrays})
    # Refused before anything is created, even the valid split given beside it.
    assert not root.exists()


def test_writer_refuses_an_empty_split(tmp_path):
    with pytest.raises(DataFormatError) as caught, SplitWriter(tmp_path, "train", SCHEMA):
        pass
    assert_names(caught.value, file=tmp_path / "train", says="expected at least one row")
    assert not (tmp_path / "train").exists()
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# Read side: files altered by hand with pyarrow
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def good(tmp_path: Path) -> tuple[Path, Path]:
    """A valid split of two files; returns the dataset folder and its second file."""
    root = tmp_path / "data"
    write_split(root, "train", SCHEMA, make_split(30, seed=0), **OPTIONS)
    files = sorted((root / "train").glob("*.parquet"))
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet"]
    assert pq.ParquetFile(files[1]).metadata.num_row_groups == 3
    return root, files[1]


def tensor(table: pa.Table, column: str) -> np.ndarray[Any, Any]:
    return table.column(column).combine_chunks().to_numpy_ndarray().copy()


def with_column(table: pa.Table, column: str, values: Any) -> pa.Table:
    """``table`` with ``column`` replaced (tensor columns from an N-d array)."""
    if isinstance(values, np.ndarray) and values.ndim > 1:
        array = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(values))
    else:
        array = pa.array(values)
    index = table.schema.get_field_index(column)
    return table.set_column(index, pa.field(column, array.type, nullable=False), array)


def rewrite(path: Path, alter: Callable[[pa.Table], pa.Table]) -> None:
    """Rewrite ``path`` by hand with altered data, keeping the metadata and row groups."""
    table = alter(pq.read_table(path))
    pq.write_table(table, path, row_group_size=5)


def read_error(root: Path) -> DataFormatError:
    with pytest.raises(DataFormatError) as caught:
        MultimodalDataset(root, "train").read_all()
    return caught.value


def test_rewrite_by_hand_keeps_a_good_file_readable(good):
    root, path = good
    rewrite(path, lambda t: t)
    assert b"multivae" in pq.read_schema(path).metadata
    assert len(MultimodalDataset(root, "train").read_all()) == 30


def test_read_missing_modality_column(good):
    root, path = good
    rewrite(path, lambda t: t.drop_columns(["vec"]))
    assert_names(read_error(root), file=path, column="vec", says="missing modality column")


def test_read_missing_presence_column(good):
    root, path = good
    rewrite(path, lambda t: t.drop_columns(["vec__present"]))
    assert_names(read_error(root), file=path, column="vec__present", says="missing presence column")


def test_read_missing_label_column(good):
    root, path = good
    rewrite(path, lambda t: t.drop_columns(["label"]))
    assert_names(read_error(root), file=path, column="label", says="missing column")


def test_read_presence_column_of_wrong_type(good):
    root, path = good
    rewrite(path, lambda t: with_column(t, "vec__present", t.column("vec__present").cast("int8")))
    assert_names(read_error(root), file=path, column="vec__present", says="expected type bool")


def test_read_shape_mismatch(good):
    root, path = good
    rewrite(path, lambda t: with_column(t, "grid", tensor(t, "grid").reshape(-1, 4, 1)))
    error = read_error(root)
    assert_names(error, file=path, column="grid", says="shape (2, 2)")
    assert "shape=[4,1]" in str(error)


def test_read_dtype_mismatch(good):
    root, path = good
    rewrite(path, lambda t: with_column(t, "vec", tensor(t, "vec").astype(np.float64)))
    error = read_error(root)
    assert_names(error, file=path, column="vec", says="dtype float32")
    assert "value_type=double" in str(error)


def test_read_scalar_dtype_mismatch(good):
    root, path = good
    rewrite(path, lambda t: with_column(t, "digit", t.column("digit").cast("float64")))
    assert_names(read_error(root), file=path, column="digit", says="found double")


def _altered_row(column: str, change: Callable[[np.ndarray], None]):
    def alter(table: pa.Table) -> pa.Table:
        if isinstance(table.schema.field(column).type, pa.FixedShapeTensorType):
            values = tensor(table, column)
        else:
            values = table.column(column).to_numpy().copy()
        change(values)
        return with_column(table, column, values)

    return alter


def test_read_absent_but_nonzero(good):
    root, path = good

    def alter(table: pa.Table) -> pa.Table:
        flags = table.column("vec__present").to_numpy().copy()
        flags[BAD_ROW] = False
        table = with_column(table, "vec__present", flags)
        values = tensor(table, "vec")
        values[BAD_ROW] = [0.0, 0.0, 1.5]
        return with_column(table, "vec", values)

    rewrite(path, alter)
    assert_names(read_error(root), file=path, column="vec", row=BAD_ROW, says="not all zeros")


def test_read_sample_without_any_modality(good):
    root, path = good

    def alter(table: pa.Table) -> pa.Table:
        for name in MODALITIES:
            flags = table.column(f"{name}__present").to_numpy().copy()
            flags[BAD_ROW] = False
            table = with_column(table, f"{name}__present", flags)
            if name == "digit":
                values = table.column(name).to_numpy().copy()
            else:
                values = tensor(table, name)
            values[BAD_ROW] = 0
            table = with_column(table, name, values)
        return table

    rewrite(path, alter)
    assert_names(read_error(root), file=path, row=BAD_ROW, says="at least one modality present")


def test_read_nan(good):
    root, path = good
    rewrite(path, _altered_row("vec", lambda v: v.__setitem__((BAD_ROW, 0), np.nan)))
    assert_names(read_error(root), file=path, column="vec", row=BAD_ROW, says="found NaN")


def test_read_inf(good):
    root, path = good
    rewrite(path, _altered_row("grid", lambda v: v.__setitem__((BAD_ROW, 0, 1), np.inf)))
    assert_names(read_error(root), file=path, column="grid", row=BAD_ROW, says="infinite")


def test_read_value_outside_range(good):
    root, path = good
    rewrite(path, _altered_row("vec", lambda v: v.__setitem__((BAD_ROW, 1), -6.25)))
    error = read_error(root)
    assert_names(error, file=path, column="vec", row=BAD_ROW, says="expected values in [-5, 5]")
    assert "found -6.25" in str(error)


def test_read_category_outside_range(good):
    root, path = good
    rewrite(path, _altered_row("digit", lambda v: v.__setitem__(BAD_ROW, 7)))
    assert_names(read_error(root), file=path, column="digit", row=BAD_ROW, says="[0, 4], found 7")


def test_read_label_out_of_range(good):
    root, path = good
    rewrite(path, _altered_row("label", lambda v: v.__setitem__(BAD_ROW, 3)))
    assert_names(read_error(root), file=path, column="label", row=BAD_ROW, says="[0, 2], found 3")


def test_read_row_error_in_the_first_row_group(good):
    root, path = good
    rewrite(path, _altered_row("vec", lambda v: v.__setitem__((2, 0), np.nan)))
    assert_names(read_error(root), file=path, column="vec", row=2, says="NaN")


def test_read_without_validation_skips_value_checks(good):
    root, path = good
    rewrite(path, _altered_row("vec", lambda v: v.__setitem__((BAD_ROW, 0), np.nan)))
    batch = MultimodalDataset(root, "train", validate=False).read_all()
    assert np.isnan(batch.data["vec"][15 + BAD_ROW, 0].item())


@pytest.mark.parametrize("split", ["training", "holdout", "Train"])
def test_read_unknown_split(good, split):
    root, _ = good
    # Even a folder of valid files is refused under a name outside train/val/test.
    shutil.copytree(root / "train", root / split)
    with pytest.raises(DataFormatError) as caught:
        MultimodalDataset(root, split)
    assert_names(caught.value, file=root, says=f"unknown split {split!r}")
    with pytest.raises(DataFormatError, match="unknown split"):
        read_schema(root, split)


def test_read_absent_split(good):
    root, _ = good
    with pytest.raises(DataFormatError) as caught:
        MultimodalDataset(root, "val")
    assert_names(caught.value, file=root, says="no split 'val'")


def test_read_corrupt_file(good):
    root, path = good
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert_names(read_error(root), file=path, says="corrupt or truncated")


def test_read_truncated_file(good):
    root, path = good
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    assert_names(read_error(root), file=path, says="corrupt or truncated")


def test_read_file_without_multivae_metadata(good):
    root, path = good
    rewrite(path, lambda t: t.replace_schema_metadata(None))
    assert_names(read_error(root), file=path, says="no 'multivae' entry")


@pytest.mark.parametrize(
    ("document", "says"),
    [
        (b"{not json", "unreadable multivae schema metadata"),
        (b'{"format_version": 99, "modalities": []}', "expected format_version 1, found 99"),
        (b'{"format_version": 1}', "unreadable multivae schema metadata"),
    ],
    ids=["not-json", "future-version", "no-modalities"],
)
def test_read_file_with_bad_multivae_metadata(good, document, says):
    root, path = good
    rewrite(path, lambda t: t.replace_schema_metadata({b"multivae": document}))
    assert_names(read_error(root), file=path, says=says)


def test_read_files_that_disagree_on_modalities(good):
    root, path = good

    def alter(table: pa.Table) -> pa.Table:
        document = json.loads(table.schema.metadata[b"multivae"])
        document["modalities"][1]["value_range"] = [-9.0, 9.0]
        return table.replace_schema_metadata({b"multivae": json.dumps(document).encode()})

    rewrite(path, alter)
    assert_names(read_error(root), file=path, says="different")


def _nullable_table(table: pa.Table, column: str, array: pa.Array) -> pa.Table:
    """``table`` as plain pyarrow would build it: nullable fields, ``column`` replaced."""
    fields = [
        pa.field(f.name, array.type if f.name == column else f.type, nullable=True)
        for f in table.schema
    ]
    arrays = [array if name == column else table.column(name) for name in table.column_names]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=table.schema.metadata))


def test_read_null_tensor_cell(good):
    root, path = good

    def alter(table: pa.Table) -> pa.Table:
        values = tensor(table, "vec").reshape(table.num_rows, -1)
        cells = [None if i == BAD_ROW else row.tolist() for i, row in enumerate(values)]
        storage = pa.array(cells, pa.list_(pa.float32(), 3))
        array = pa.ExtensionArray.from_storage(table.schema.field("vec").type, storage)
        assert array.null_count == 1
        return _nullable_table(table, "vec", array)

    rewrite(path, alter)
    # Null fixed-size cells do not read back from Parquet: the reader finds which column fails.
    error = read_error(root)
    assert_names(error, file=path, column="vec")
    assert error.file == str(path)
    assert "missing modality must be stored as zeros" in str(error)


@pytest.mark.parametrize("column", ["vec__present", "digit", "image__present"])
def test_read_null_cell_in_a_plain_column(good, column):
    root, path = good

    def alter(table: pa.Table) -> pa.Table:
        values = table.column(column).to_pylist()
        values[BAD_ROW] = None
        return _nullable_table(table, column, pa.array(values, table.schema.field(column).type))

    rewrite(path, alter)
    assert pq.read_table(path).column(column).null_count == 1
    assert_names(read_error(root), file=path, column=column, says="null")


# ----------------------------------------------------------------------------------------------
# Atomicity of failed writes
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def previous(tmp_path: Path) -> tuple[Path, dict[str, dict[str, bytes]]]:
    """A dataset already on disk, and the bytes of each of its splits."""
    root = tmp_path / "data"
    write_dataset(
        root, SCHEMA, {"train": make_split(30, seed=0), "val": make_split(10, seed=1)}, **OPTIONS
    )
    return root, {split: snapshot(root / split) for split in ("train", "val")}


def assert_untouched(root: Path, before: dict[str, dict[str, bytes]]) -> None:
    for split, files in before.items():
        assert snapshot(root / split) == files
    assert sorted(p.name for p in root.iterdir()) == sorted(before)
    assert leftovers(root) == []


def test_bad_chunk_after_a_good_one_leaves_the_previous_split(previous):
    root, before = previous
    good, bad = make_split(30, seed=5), copy_arrays(make_split(30, seed=6))
    _out_of_range(bad)
    with pytest.raises(DataFormatError), SplitWriter(root, "train", SCHEMA, **OPTIONS) as writer:
        writer.write(good.data, good.present, good.labels)
        # The good chunk is already in files of the temporary folder.
        assert any(root.glob(".train.tmp-*/*.parquet"))
        writer.write(bad.data, bad.present, bad.labels)
    assert_untouched(root, before)
    assert len(MultimodalDataset(root, "train").read_all()) == 30


def test_exception_inside_the_writer_block_leaves_the_previous_split(previous):
    root, before = previous
    good = make_split(40, seed=5)
    with (
        pytest.raises(RuntimeError, match="disk on fire"),
        SplitWriter(root, "train", SCHEMA, **OPTIONS) as writer,
    ):
        writer.write(good.data, good.present, good.labels)
        raise RuntimeError("disk on fire")
    assert_untouched(root, before)


def test_write_dataset_with_a_bad_chunk_changes_no_split(previous):
    root, before = previous
    bad = copy_arrays(make_split(15, seed=7))
    _label_out_of_range(bad)
    with pytest.raises(DataFormatError):
        write_dataset(
            root,
            SCHEMA,
            {"train": make_split(30, seed=8), "val": iter([make_split(10, seed=9), bad])},
            **OPTIONS,
        )
    assert_untouched(root, before)


def test_write_dataset_with_a_failing_generator_changes_no_split(previous):
    root, before = previous

    def chunks():
        yield make_split(10, seed=3)
        raise OSError("source vanished")

    with pytest.raises(OSError, match="source vanished"):
        write_dataset(root, SCHEMA, {"train": make_split(30, seed=8), "val": chunks()}, **OPTIONS)
    assert_untouched(root, before)


def test_write_dataset_with_an_empty_split_changes_no_split(previous):
    root, before = previous
    with pytest.raises(DataFormatError) as caught:
        write_dataset(root, SCHEMA, {"train": make_split(30, seed=8), "val": iter([])}, **OPTIONS)
    assert_names(caught.value, file=root / "val", says="expected at least one row")
    assert_untouched(root, before)


def test_successful_overwrite_replaces_the_split_and_leaves_nothing_behind(previous):
    root, before = previous
    newer = make_split(12, seed=11)
    write_split(root, "train", SCHEMA, newer, **OPTIONS)
    assert snapshot(root / "val") == before["val"]
    assert snapshot(root / "train") != before["train"]
    assert leftovers(root) == []
    batch = MultimodalDataset(root, "train").read_all()
    np.testing.assert_array_equal(batch.data["vec"].numpy(), newer.data["vec"])


# ----------------------------------------------------------------------------------------------
# Schema construction
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["1abc", "_abc", "a__b", "with-dash", "a b", "", "sample_id", "label", "é"]
)
def test_modality_name_is_refused(name):
    with pytest.raises(DataFormatError, match="expected a name") as caught:
        ModalitySpec(name, (3,), "float32", "tabular")
    assert f"modality {name!r}" in str(caught.value)


@pytest.mark.parametrize("name", ["a", "m0", "image_left", "A1_b2"])
def test_modality_name_is_accepted(name):
    assert ModalitySpec(name, (3,), "float32", "tabular").name == name


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"kind": "audio"}, "expected kind in"),
        ({"dtype": "float128"}, "expected dtype in"),
        ({"dtype": "bool"}, "expected dtype in"),
        ({"likelihood": "poisson"}, "expected likelihood in"),
        ({"shape": (3, 0)}, "expected positive dimensions"),
        ({"shape": (-1,)}, "expected positive dimensions"),
        ({"value_range": (1.0, -1.0)}, "low <= high"),
        ({"kind": "categorical", "dtype": "int64"}, "needs num_categories >= 2, found None"),
        (
            {"kind": "categorical", "dtype": "int64", "num_categories": 1},
            "needs num_categories >= 2, found 1",
        ),
        ({"kind": "categorical", "num_categories": 4}, "integer class indices"),
    ],
    ids=[
        "kind",
        "dtype",
        "bool-dtype",
        "likelihood",
        "zero-dim",
        "negative-dim",
        "range",
        "categories-missing",
        "one-category",
        "float-categorical",
    ],
)
def test_modality_spec_is_refused(changes, says):
    arguments = {"name": "m", "shape": (3,), "dtype": "float32", "kind": "tabular", **changes}
    with pytest.raises(DataFormatError, match="modality 'm'") as caught:
        ModalitySpec(**arguments)
    assert says in str(caught.value)


def test_categorical_modality_gets_its_value_range():
    spec = ModalitySpec("c", (), "uint8", "categorical", num_categories=10)
    assert spec.value_range == (0.0, 9.0)
    assert spec.arrow_type == pa.uint8()


def test_dataset_schema_refuses_duplicate_names():
    spec = ModalitySpec("m", (3,), "float32", "tabular")
    other = ModalitySpec("n", (2,), "uint8", "image")
    with pytest.raises(DataFormatError, match=r"unique modality names, found \['m'\] repeated"):
        DatasetSchema(modalities=(spec, other, ModalitySpec("m", (1,), "int8", "tabular")))


def test_dataset_schema_refuses_no_modalities():
    with pytest.raises(DataFormatError, match="at least one modality"):
        DatasetSchema(modalities=())


def test_dataset_schema_refuses_class_names_of_the_wrong_length():
    with pytest.raises(DataFormatError, match="expected 3 class names, found 2"):
        DatasetSchema(modalities=SCHEMA.modalities, num_classes=3, class_names=("a", "b"))


def test_dataset_schema_json_round_trip():
    schema = DatasetSchema(
        modalities=SCHEMA.modalities,
        num_classes=3,
        class_names=("a", "b", "c"),
        name="x",
        missingness={"train": {"scheme": "none"}},
        extra={"k": [1, 2]},
    )
    assert DatasetSchema.from_json(schema.to_json("train")) == schema
