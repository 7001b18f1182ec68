"""Fixtures of the training tests: a tiny dataset on disk and loaders over it."""

import pytest
from toys import SHAPES, views

from multivae.data import (
    DatasetSchema,
    ModalitySpec,
    MultimodalDataset,
    make_dataloader,
    write_dataset,
)


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory):
    """A dataset folder of 96 train and 32 val rows, in row groups of 16 rows."""
    schema = DatasetSchema(
        modalities=tuple(
            ModalitySpec(name, shape, "float32", "tabular", None, "normal")
            for name, shape in SHAPES.items()
        ),
        name="toy",
    )
    root = tmp_path_factory.mktemp("toy") / "data"
    row_bytes = schema.bytes_per_sample
    return write_dataset(
        root,
        schema,
        {"train": views(96, 0), "val": views(32, 1)},
        row_group_bytes=16 * row_bytes,
    )


@pytest.fixture
def loaders(toy_dataset):
    """``loaders(batch_size, seed, num_workers)``: shuffled train and ordered val loaders."""

    def make(batch_size: int = 16, seed: int = 0, num_workers: int = 0):
        train = make_dataloader(
            MultimodalDataset(toy_dataset, "train"),
            batch_size,
            shuffle=True,
            seed=seed,
            num_workers=num_workers,
        )
        val = make_dataloader(
            MultimodalDataset(toy_dataset, "val"), batch_size, num_workers=num_workers
        )
        return train, val

    return make
