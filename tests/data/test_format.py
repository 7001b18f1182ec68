"""Round trips of the multimodal Parquet format, its samplers and loaders, and other readers.

Every test writes small real files into ``tmp_path`` with several row groups and several files,
then reads them back through the project's reader or through pyarrow, pandas and Ray Data.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from multivae.data import (
    Batch,
    BlockShuffleSampler,
    DatasetSchema,
    ModalitySpec,
    MultimodalDataset,
    SplitArrays,
    SplitWriter,
    apply_presence,
    make_dataloader,
    missing_completely_at_random,
    read_schema,
    split_files,
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
    class_names=("zero", "one", "two"),
    name="toy",
    extra={"generator": "tests", "version": 1},
)
MODALITIES = SCHEMA.modality_names
ROW_BYTES = SCHEMA.bytes_per_sample  # 16 + 12 + 32 + 8 = 68 bytes of values per sample
ROWS_PER_GROUP = 7
ROWS_PER_FILE = 21
# 7 rows per row group, 21 rows (3 row groups) per file.
OPTIONS = {"row_group_bytes": ROWS_PER_GROUP * ROW_BYTES, "file_bytes": ROWS_PER_FILE * ROW_BYTES}


def make_split(rows: int, seed: int, *, ids: bool = True, first: int = 1000) -> SplitArrays:
    """Random rows of every modality with about 30% missing cells (zeroed)."""
    rng = np.random.default_rng(seed)
    data = {
        "image": rng.integers(0, 256, size=(rows, 1, 4, 4), dtype=np.uint8),
        "vec": rng.uniform(-4.9, 4.9, size=(rows, 3)).astype(np.float32),
        "grid": rng.standard_normal((rows, 2, 2)) * 1e6,
        "digit": rng.integers(0, 5, size=rows, dtype=np.int64),
    }
    masks = missing_completely_at_random(rows, MODALITIES, 0.3, seed=seed)
    return SplitArrays(
        data=apply_presence(data, masks.present),
        present=masks.present,
        labels=rng.integers(0, 3, size=rows, dtype=np.int64),
        # Stable ids that are neither 0..n-1 nor sorted.
        sample_ids=(first + 3 * rng.permutation(rows)).astype(np.int64) if ids else None,
    )


def assert_batch_equals(batch: Batch, arrays: SplitArrays, order: np.ndarray | None = None) -> None:
    """``batch`` holds the rows of ``arrays`` (in ``order`` when given), exactly."""
    rows = np.arange(len(arrays)) if order is None else order
    expected_ids = np.arange(len(arrays)) if arrays.sample_ids is None else arrays.sample_ids
    for name in MODALITIES:
        values = batch.data[name].numpy()
        assert values.dtype == arrays.data[name].dtype
        np.testing.assert_array_equal(values, arrays.data[name][rows])
        assert batch.mask[name].dtype == torch.bool
        np.testing.assert_array_equal(batch.mask[name].numpy(), arrays.present[name][rows])
    assert batch.label.dtype == torch.long
    np.testing.assert_array_equal(batch.label.numpy(), arrays.labels[rows])
    np.testing.assert_array_equal(batch.sample_id.numpy(), expected_ids[rows])


def positions_of(arrays: SplitArrays, sample_ids: np.ndarray) -> np.ndarray:
    """Row index in ``arrays`` of each sample id."""
    index = {int(s): i for i, s in enumerate(arrays.sample_ids)}
    return np.array([index[int(s)] for s in sample_ids])


@pytest.fixture
def dataset_root(tmp_path: Path) -> tuple[Path, dict[str, SplitArrays]]:
    splits = {
        "train": make_split(50, seed=1),
        "val": make_split(17, seed=2, ids=False),
        "test": make_split(5, seed=3, first=5000),
    }
    root = tmp_path / "toy"
    write_dataset(root, SCHEMA, splits, **OPTIONS)
    # Rows written without ids are numbered after the previous split's largest id.
    after_train = int(splits["train"].sample_ids.max()) + 1
    splits["val"].sample_ids = np.arange(after_train, after_train + 17)
    return root, splits


# ----------------------------------------------------------------------------------------------
# Round trip
# ----------------------------------------------------------------------------------------------


def test_round_trip_gives_back_every_array_mask_label_and_id(dataset_root):
    root, splits = dataset_root
    assert read_schema(root) == SCHEMA
    for split, arrays in splits.items():
        dataset = MultimodalDataset(root, split)
        assert len(dataset) == len(arrays)
        assert dataset.modalities == MODALITIES
        assert dataset.schema == SCHEMA
        assert_batch_equals(dataset.read_all(), arrays)


def test_round_trip_spans_several_files_and_row_groups(dataset_root):
    root, _ = dataset_root
    files = split_files(root, "train")
    # 50 rows: files of 21, 21 and 8 rows; row groups of 7 rows.
    assert [f.name for f in files] == [f"part-{i:05d}.parquet" for i in range(3)]
    groups = [pq.ParquetFile(f).metadata.num_row_groups for f in files]
    rows = [pq.ParquetFile(f).metadata.num_rows for f in files]
    assert groups == [3, 3, 2]
    assert rows == [21, 21, 8]
    dataset = MultimodalDataset(root, "train")
    assert dataset.row_group_spans == [(s, min(s + 7, 50)) for s in range(0, 50, 7)]


def test_single_rows_match_the_written_rows(dataset_root):
    root, splits = dataset_root
    arrays = splits["train"]
    dataset = MultimodalDataset(root, "train", cache_size=2)
    for index in (0, 6, 7, 20, 21, 49, -1):
        sample = dataset[index]
        row = index % len(arrays)
        for name in MODALITIES:
            np.testing.assert_array_equal(sample.data[name], arrays.data[name][row])
            assert sample.data[name].dtype == arrays.data[name].dtype
            assert sample.mask[name] == bool(arrays.present[name][row])
        assert sample.label == int(arrays.labels[row])
        assert sample.sample_id == int(arrays.sample_ids[row])
    with pytest.raises(IndexError):
        dataset[50]


def test_split_writer_chunk_by_chunk_writes_the_same_files_as_one_write(tmp_path):
    arrays = make_split(50, seed=4, ids=False)
    write_split(tmp_path / "whole", "train", SCHEMA, arrays, **OPTIONS)
    with SplitWriter(tmp_path / "chunked", "train", SCHEMA, **OPTIONS) as writer:
        start = 0
        for size in (5, 13, 0, 1, 31):
            part = slice(start, start + size)
            writer.write(
                {m: v[part] for m, v in arrays.data.items()},
                {m: p[part] for m, p in arrays.present.items()},
                arrays.labels[part],
            )
            start += size
    assert writer.rows_written == 50
    whole = split_files(tmp_path / "whole", "train")
    chunked = split_files(tmp_path / "chunked", "train")
    assert [f.name for f in chunked] == [f.name for f in whole]
    for one, other in zip(whole, chunked, strict=True):
        assert pq.read_table(one).equals(pq.read_table(other), check_metadata=True)
        layout = pq.ParquetFile(one).metadata
        assert [layout.row_group(i).num_rows for i in range(layout.num_row_groups)] == [
            pq.ParquetFile(other).metadata.row_group(i).num_rows
            for i in range(pq.ParquetFile(other).metadata.num_row_groups)
        ]
        assert one.read_bytes() == other.read_bytes()
    assert_batch_equals(MultimodalDataset(tmp_path / "chunked", "train").read_all(), arrays)


def test_write_dataset_streams_an_iterable_of_chunks(tmp_path):
    arrays = make_split(30, seed=5)

    def chunks():
        for start in range(0, 30, 8):
            part = slice(start, start + 8)
            yield SplitArrays(
                {m: v[part] for m, v in arrays.data.items()},
                {m: p[part] for m, p in arrays.present.items()},
                arrays.labels[part],
                arrays.sample_ids[part],
            )

    write_dataset(tmp_path, SCHEMA, {"train": chunks()}, **OPTIONS)
    assert_batch_equals(MultimodalDataset(tmp_path, "train").read_all(), arrays)


# ----------------------------------------------------------------------------------------------
# Samplers and loaders
# ----------------------------------------------------------------------------------------------


def test_block_shuffle_sampler_permutes_every_row_once_per_epoch(dataset_root):
    root, _ = dataset_root
    dataset = MultimodalDataset(root, "train")
    sampler = BlockShuffleSampler(dataset, window=2, seed=7)
    assert len(sampler) == 50
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(50))
        orders.append(order)
    assert orders[0] != orders[1] != orders[2] != orders[0]
    assert orders[0] != list(range(50))

    again = BlockShuffleSampler(dataset, window=2, seed=7)
    assert list(again) == orders[0]
    again.set_epoch(2)
    assert list(again) == orders[2]
    assert list(BlockShuffleSampler(dataset, window=2, seed=8)) != orders[0]


def test_block_shuffle_sampler_without_shuffle_is_file_order(dataset_root):
    root, _ = dataset_root
    dataset = MultimodalDataset(root, "train")
    sampler = BlockShuffleSampler(dataset, seed=3, shuffle=False)
    sampler.set_epoch(5)
    assert list(sampler) == list(range(50))


def test_block_shuffle_sampler_reads_row_groups_as_blocks(dataset_root):
    root, _ = dataset_root
    dataset = MultimodalDataset(root, "train")
    groups = dataset.group_of(np.array(list(BlockShuffleSampler(dataset, window=1, seed=1))))
    # With a window of one row group, each row group's rows come out together: one run each.
    runs = 1 + int(np.count_nonzero(np.diff(groups)))
    assert runs == len(dataset.row_group_spans) == 8
    assert groups.tolist() != sorted(groups.tolist())


def test_make_dataloader_batches_have_fixed_shapes_and_dtypes(dataset_root):
    root, splits = dataset_root
    arrays = splits["train"]
    dataset = MultimodalDataset(root, "train")
    loader = make_dataloader(dataset, batch_size=8, shuffle=True, seed=3)
    seen = []
    for batch in loader:
        size = len(batch)
        assert 1 <= size <= 8
        for spec in SCHEMA.modalities:
            assert batch.data[spec.name].shape == (size, *spec.shape)
            assert batch.data[spec.name].dtype == getattr(torch, spec.dtype)
            assert batch.mask[spec.name].shape == (size,)
            assert batch.mask[spec.name].dtype == torch.bool
        assert batch.label.dtype == torch.long
        assert batch.sample_id.dtype == torch.long
        order = positions_of(arrays, batch.sample_id.numpy())
        assert_batch_equals(batch, arrays, order)
        seen.extend(batch.sample_id.tolist())
    assert sorted(seen) == sorted(arrays.sample_ids.tolist())
    assert seen != arrays.sample_ids.tolist()


def test_make_dataloader_without_shuffle_is_file_order(dataset_root):
    root, splits = dataset_root
    dataset = MultimodalDataset(root, "val")
    ids = [i for batch in make_dataloader(dataset, batch_size=4) for i in batch.sample_id.tolist()]
    assert ids == splits["val"].sample_ids.tolist()  # consecutive, in file order
    assert ids == list(range(ids[0], ids[0] + 17))


def test_reading_many_row_groups_keeps_at_most_cache_size_decoded(tmp_path):
    arrays = make_split(200, seed=6)
    # 5 rows per row group: 40 row groups over 4 files.
    write_split(
        tmp_path, "train", SCHEMA, arrays, row_group_bytes=5 * ROW_BYTES, file_bytes=50 * ROW_BYTES
    )
    dataset = MultimodalDataset(tmp_path, "train", cache_size=3)
    assert len(dataset.row_group_spans) == 40
    assert len(split_files(tmp_path, "train")) == 4

    largest = 0
    order = np.random.default_rng(0).permutation(200)
    for index in order:
        sample = dataset[int(index)]
        largest = max(largest, len(dataset._cache))
        assert len(dataset._cache) <= 3
        np.testing.assert_array_equal(sample.data["vec"], arrays.data["vec"][index])
    assert largest == 3

    largest = 0
    loader = make_dataloader(dataset, batch_size=16, shuffle=True, seed=1)
    seen = 0
    for batch in loader:
        largest = max(largest, len(dataset._cache))
        assert len(dataset._cache) <= 3
        seen += len(batch)
        order = positions_of(arrays, batch.sample_id.numpy())
        assert_batch_equals(batch, arrays, order)
    assert seen == 200
    assert largest == 3


def test_dataset_survives_pickling_and_worker_processes(dataset_root):
    root, splits = dataset_root
    arrays = splits["train"]
    dataset = MultimodalDataset(root, "train", cache_size=2)
    # Fill the cache and start the prefetch thread, which must not travel with the dataset.
    in_process = list(make_dataloader(dataset, batch_size=8, num_workers=0))
    assert len(dataset._cache) > 0

    copy = pickle.loads(pickle.dumps(dataset))
    assert len(copy._cache) == 0
    assert_batch_equals(copy.read_all(), arrays)

    loader = make_dataloader(dataset, batch_size=8, num_workers=2)
    in_workers = list(loader)
    del loader

    def by_id(batches):
        ids = torch.cat([b.sample_id for b in batches])
        order = torch.argsort(ids)
        return {
            "ids": ids[order],
            "label": torch.cat([b.label for b in batches])[order],
            **{m: torch.cat([b.data[m] for b in batches])[order] for m in MODALITIES},
            **{f"{m}_mask": torch.cat([b.mask[m] for b in batches])[order] for m in MODALITIES},
        }

    expected, found = by_id(in_process), by_id(in_workers)
    assert len(found["ids"]) == 50
    for key, values in expected.items():
        assert torch.equal(found[key], values), key
    assert_batch_equals(
        Batch(
            data={m: found[m] for m in MODALITIES},
            mask={m: found[f"{m}_mask"] for m in MODALITIES},
            label=found["label"],
            sample_id=found["ids"],
        ),
        arrays,
        positions_of(arrays, found["ids"].numpy()),
    )


# ----------------------------------------------------------------------------------------------
# Readable by other tools
# ----------------------------------------------------------------------------------------------


def test_pyarrow_alone_reads_columns_and_schema_metadata(dataset_root):
    root, splits = dataset_root
    arrays = splits["train"]
    table = pq.read_table(root / "train")
    assert table.num_rows == 50
    assert set(table.column_names) == {
        "sample_id",
        "label",
        *MODALITIES,
        *(f"{m}__present" for m in MODALITIES),
    }
    for spec in SCHEMA.modalities:
        assert table.schema.field(f"{spec.name}__present").type == pa.bool_()
    assert table.schema.field("digit").type == pa.int64()
    image_type = table.schema.field("image").type
    assert isinstance(image_type, pa.FixedShapeTensorType)
    assert image_type.shape == [1, 4, 4]
    assert image_type.value_type == pa.uint8()
    assert table.schema.field("grid").type.shape == [2, 2]

    document = json.loads(table.schema.metadata[b"multivae"])
    assert document["format_version"] == 1
    assert document["split"] == "train"
    assert document["name"] == "toy"
    assert document["num_classes"] == 3
    assert document["class_names"] == ["zero", "one", "two"]
    assert document["extra"] == {"generator": "tests", "version": 1}
    assert [m["name"] for m in document["modalities"]] == list(MODALITIES)
    assert document["modalities"][0]["shape"] == [1, 4, 4]
    assert document["modalities"][0]["dtype"] == "uint8"
    assert document["modalities"][3]["num_categories"] == 5
    assert document["modalities"][3]["value_range"] == [0.0, 4.0]

    order = positions_of(arrays, table.column("sample_id").to_numpy())
    np.testing.assert_array_equal(
        table.column("image").combine_chunks().to_numpy_ndarray(), arrays.data["image"][order]
    )
    np.testing.assert_array_equal(
        table.column("vec__present").to_numpy(), arrays.present["vec"][order]
    )
    np.testing.assert_array_equal(table.column("label").to_numpy(), arrays.labels[order])


def test_pandas_reads_the_files(dataset_root):
    root, splits = dataset_root
    arrays = splits["train"]
    frame = pd.read_parquet(root / "train" / "part-00000.parquet")
    assert len(frame) == 21
    assert frame["vec__present"].dtype == bool
    np.testing.assert_array_equal(frame["sample_id"].to_numpy(), arrays.sample_ids[:21])
    np.testing.assert_array_equal(frame["digit"].to_numpy(), arrays.data["digit"][:21])
    np.testing.assert_array_equal(frame["label"].to_numpy(), arrays.labels[:21])
    np.testing.assert_array_equal(
        np.asarray(frame["vec"].iloc[4], dtype=np.float32), arrays.data["vec"][4]
    )
    np.testing.assert_array_equal(
        np.asarray(frame["image"].iloc[3]).reshape(1, 4, 4), arrays.data["image"][3]
    )


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.integration
def test_ray_data_iterates_torch_batches(ray_session, dataset_root):
    root, splits = dataset_root
    arrays = splits["train"]
    dataset = ray_session.data.read_parquet(str(root / "train"))
    collected: dict[str, list[torch.Tensor]] = {}
    for batch in dataset.iter_torch_batches(batch_size=8):
        size = len(batch["sample_id"])
        assert 1 <= size <= 8
        for spec in SCHEMA.modalities:
            assert isinstance(batch[spec.name], torch.Tensor)
            assert tuple(batch[spec.name].shape) == (size, *spec.shape)
            assert batch[spec.name].dtype == getattr(torch, spec.dtype)
            assert batch[f"{spec.name}__present"].dtype == torch.bool
            assert tuple(batch[f"{spec.name}__present"].shape) == (size,)
        for key, values in batch.items():
            collected.setdefault(key, []).append(values)
    columns = {key: torch.cat(values).numpy() for key, values in collected.items()}
    assert len(columns["sample_id"]) == 50
    order = positions_of(arrays, columns["sample_id"])
    for name in MODALITIES:
        np.testing.assert_array_equal(columns[name], arrays.data[name][order])
        np.testing.assert_array_equal(columns[f"{name}__present"], arrays.present[name][order])
    np.testing.assert_array_equal(columns["label"], arrays.labels[order])
