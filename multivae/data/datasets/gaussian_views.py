"""``gaussian-views``: linear-Gaussian views of a known low-dimensional latent.

A ground truth for tests: ``z ~ N(0, I_d)`` and each view ``x_v = W_v z + b_v + s_v * eps`` with
``eps ~ N(0, I)``. The parameters ``W_v``, ``b_v``, ``s_v`` are stored in the dataset's metadata
(``extra["ground_truth"]``), so the exact marginal likelihood of any subset of views is known in
closed form: ``x_S ~ N(b_S, W_S W_S^T + diag(s_S^2))``. The label is the equal-probability
quantile bin of ``z_0`` among ``num_classes`` bins, so classes are balanced and predictable from
the latent. Missingness is completely at random on train and val; the test split is complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import norm

from multivae.data.missingness import apply_presence, missing_completely_at_random
from multivae.data.schema import DatasetSchema, ModalitySpec
from multivae.data.writer import SplitArrays, write_dataset


def build_gaussian_views(
    out: Path,
    *,
    missing_rate: float = 0.0,
    seed: int = 0,
    num_views: int = 2,
    latent_dim: int = 2,
    view_dim: int = 8,
    noise_std: float = 0.1,
    num_classes: int = 4,
    n_train: int = 10000,
    n_val: int = 1000,
    n_test: int = 2000,
) -> Path:
    """Generate ``gaussian-views`` into ``out`` (splits ``train``, ``val``, ``test``).

    Args:
        out: Dataset folder.
        missing_rate: Probability that each view is missing (train, val).
        seed: Seed of the parameters and of the samples.
        num_views: Number of views (modalities ``view0``, ``view1``, ...).
        latent_dim: Dimension of the shared latent ``z``.
        view_dim: Dimension of every view.
        noise_std: Standard deviation ``s_v`` of the observation noise (same for all views).
        num_classes: Number of label classes (quantile bins of ``z_0``).
        n_train: Samples in the train split.
        n_val: Samples in the val split.
        n_test: Samples in the test split.
    """
    for name, value in (
        ("num_views", num_views),
        ("latent_dim", latent_dim),
        ("view_dim", view_dim),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, found {value}")
    if noise_std <= 0:
        raise ValueError(f"noise_std must be > 0, found {noise_std}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, found {num_classes}")
    rng = np.random.default_rng([seed, 4])
    names = [f"view{v}" for v in range(num_views)]
    weights = rng.standard_normal((num_views, view_dim, latent_dim)) / np.sqrt(latent_dim)
    biases = rng.standard_normal((num_views, view_dim))
    edges = norm.ppf(np.arange(1, num_classes) / num_classes)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    splits = {}
    records: dict[str, Any] = {}
    for split_number, (split, size) in enumerate(sizes.items()):
        split_rng = np.random.default_rng([seed, 5, split_number])
        z = split_rng.standard_normal((size, latent_dim))
        labels = np.digitize(z[:, 0], edges).astype(np.int64)
        data = {
            name: (
                z @ weights[v].T
                + biases[v]
                + noise_std * split_rng.standard_normal((size, view_dim))
            ).astype(np.float32)
            for v, name in enumerate(names)
        }
        if split == "test":
            present = {n: np.ones(size, dtype=bool) for n in names}
        else:
            drawn = missing_completely_at_random(
                size, names, missing_rate, seed * 10 + split_number
            )
            present, records[split] = drawn.present, drawn.record
        # Ids are numbered by write_dataset, across splits (unique in the dataset).
        splits[split] = SplitArrays(apply_presence(data, present), present, labels)
    schema = DatasetSchema(
        modalities=tuple(
            ModalitySpec(name, (view_dim,), "float32", "tabular", None, "normal") for name in names
        ),
        num_classes=num_classes,
        class_names=None,
        name="gaussian-views",
        missingness=records,
        extra={
            "generator": "gaussian-views",
            "seed": seed,
            "sizes": sizes,
            "ground_truth": {
                "latent_dim": latent_dim,
                "weights": weights.tolist(),
                "biases": biases.tolist(),
                "noise_std": [noise_std] * num_views,
                "label": f"quantile bin of z_0 among {num_classes} equal-probability bins",
            },
        },
    )
    return write_dataset(out, schema, splits)
