"""Dataset-level checks: what no file alone can tell (one schema, unique ids, labels)."""

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from multivae.cli import main
from multivae.data import DataFormatError, DatasetSchema, ModalitySpec, SplitArrays, write_dataset
from multivae.data.consistency import check_dataset
from multivae.data.datasets import prepare_builtin
from multivae.data.summary import summarize


def schema(size=3, num_classes=2):
    return DatasetSchema(
        modalities=(ModalitySpec("a", (size,), "float32", "tabular"),),
        num_classes=num_classes,
        name="toy",
    )


def rows(n, size=3, labels=True, seed=0):
    rng = np.random.default_rng(seed)
    return SplitArrays(
        data={"a": rng.standard_normal((n, size)).astype(np.float32)},
        present={"a": np.ones(n, dtype=bool)},
        labels=rng.integers(0, 2, n) if labels else None,
    )


@pytest.fixture
def good(tmp_path):
    root = tmp_path / "good"
    write_dataset(root, schema(), {"train": rows(10), "val": rows(4, seed=1), "test": rows(4)})
    return root


def test_a_consistent_dataset_passes_and_builtins_are_consistent(good, tmp_path):
    assert check_dataset(good) == schema()
    for name in ("gaussian-views", "poly-digits", "digits-label"):
        folder = prepare_builtin(name, tmp_path / name, n_train=20, n_val=5, n_test=5)
        check_dataset(folder)


def test_a_split_file_copied_twice_is_refused(good):
    (part,) = (good / "train").glob("*.parquet")
    shutil.copy(part, good / "train" / "part-00001.parquet")
    with pytest.raises(DataFormatError) as raised:
        check_dataset(good)
    message = str(raised.value)
    assert "train/part-00001.parquet" in message and "column 'sample_id'" in message
    assert "found 0 here (row 0) and in train/part-00000.parquet (row 0)" in message


def test_a_sample_in_two_splits_is_refused_with_a_hint(good, tmp_path):
    (val,) = (good / "val").glob("*.parquet")
    table = pq.read_table(val)
    ids = table.column("sample_id").to_numpy().copy()
    ids[2] = 7  # a train id
    table = table.set_column(0, "sample_id", pa.array(ids, pa.int64()))
    pq.write_table(table, val)
    with pytest.raises(DataFormatError, match=r"found 7 here \(row 2\) and in train/"):
        check_dataset(good)


def test_the_same_id_twice_in_one_file_is_refused(good):
    (train,) = (good / "train").glob("*.parquet")
    table = pq.read_table(train)
    ids = table.column("sample_id").to_numpy().copy()
    ids[5] = ids[1]
    pq.write_table(table.set_column(0, "sample_id", pa.array(ids, pa.int64())), train)
    with pytest.raises(DataFormatError, match=r"found 1 in rows 1 and 5 of the same file"):
        check_dataset(good)


def test_splits_whose_schemas_disagree_are_refused_naming_both(good, tmp_path):
    other = tmp_path / "other"
    write_dataset(other, schema(size=9), {"train": rows(3, size=9)})
    shutil.rmtree(good / "val")
    shutil.copytree(other / "train", good / "val")
    with pytest.raises(DataFormatError) as raised:
        check_dataset(good)
    message = str(raised.value)
    assert "val/part-00000.parquet" in message
    assert "a (3,) float32" in message and "a (9,) float32" in message
    assert "from train/part-00000.parquet" in message
    # inspect --validate says the same in one line; plain inspect reads metadata only.
    assert main(["inspect", str(good), "--validate"]) == 2


def test_a_label_column_without_num_classes_is_refused(tmp_path):
    root = tmp_path / "unlabelled"
    write_dataset(root, schema(num_classes=None), {"train": rows(5, labels=False)})
    (train,) = (root / "train").glob("*.parquet")
    table = pq.read_table(train)
    table = table.append_column(
        "label", pa.array(np.zeros(5, dtype=np.int64))
    ).replace_schema_metadata(table.schema.metadata)
    pq.write_table(table, train)
    with pytest.raises(
        DataFormatError, match=r"column 'label': found a label column but the schema"
    ):
        check_dataset(root)


def test_negative_labels_in_a_summary_are_a_format_error_not_a_traceback(good, capsys):
    (train,) = (good / "train").glob("*.parquet")
    table = pq.read_table(train)
    labels = table.column("label").to_numpy().copy()
    labels[3] = -1
    index = table.schema.get_field_index("label")
    pq.write_table(table.set_column(index, "label", pa.array(labels, pa.int64())), train)
    with pytest.raises(
        DataFormatError, match=r"column 'label': expected labels in \[0, 1\], found -1"
    ):
        summarize(good)
    assert main(["inspect", str(good)]) == 2
    assert "expected labels in [0, 1], found -1" in capsys.readouterr().err
