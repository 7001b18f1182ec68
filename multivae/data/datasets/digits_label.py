"""``digits-label``: a handwritten digit image and its class as a second, categorical modality.

The offline counterpart of the MNIST + label setup used to report likelihoods of multimodal VAEs
(for example Suzuki et al., "Joint Multimodal Learning with Deep Generative Models", JMVAE,
arXiv:1611.01891): modality ``image`` is a 1x28x28 digit in [0, 1] (Bernoulli likelihood), and
modality ``digit`` is its class index (categorical likelihood). The images are real
scikit-learn digits rendered at MNIST size with a random shift of up to two pixels (see
:mod:`.digits`), drawn from per-split disjoint pools. Missingness is completely at random with
``missing_rate`` per modality on train and val; the test split is complete.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from multivae.data.datasets.digits import balanced_labels, digit_pools, render_digits
from multivae.data.missingness import apply_presence, missing_completely_at_random
from multivae.data.schema import DatasetSchema, ModalitySpec
from multivae.data.writer import SplitArrays, write_dataset

MODALITIES = (
    ModalitySpec("image", (1, 28, 28), "float32", "image", (0.0, 1.0), "bernoulli"),
    ModalitySpec("digit", (), "int64", "categorical", likelihood="categorical", num_categories=10),
)


def build_digits_label(
    out: Path,
    *,
    missing_rate: float = 0.0,
    seed: int = 0,
    n_train: int = 5000,
    n_val: int = 500,
    n_test: int = 1000,
) -> Path:
    """Generate ``digits-label`` into ``out`` (splits ``train``, ``val``, ``test``).

    Args:
        out: Dataset folder.
        missing_rate: Probability that each modality is missing (train, val); a sample never
            loses both.
        seed: Seed of every random choice.
        n_train: Samples in the train split.
        n_val: Samples in the val split.
        n_test: Samples in the test split.
    """
    pools = digit_pools(seed)
    names = [m.name for m in MODALITIES]
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    splits = {}
    records = {}
    for split_number, (split, size) in enumerate(sizes.items()):
        pool_images, pool_labels = pools[split]
        rng = np.random.default_rng([seed, 3, split_number])
        labels = balanced_labels(size, 10, rng)
        sources = np.array([rng.choice(np.flatnonzero(pool_labels == y)) for y in labels])
        data = {"image": render_digits(pool_images[sources], rng)[:, None], "digit": labels}
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
        modalities=MODALITIES,
        num_classes=10,
        class_names=tuple(str(d) for d in range(10)),
        name="digits-label",
        missingness=records,
        extra={"generator": "digits-label", "seed": seed, "sizes": sizes},
    )
    return write_dataset(out, schema, splits)
