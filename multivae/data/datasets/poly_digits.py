"""``poly-digits``: an offline analogue of PolyMNIST built from real handwritten digits.

PolyMNIST (Sutter et al., "Generalized Multimodal ELBO", ICLR 2021, arXiv:2105.02470) has five
modalities; each is a 28x28 RGB image of an MNIST digit of the sample's class, drawn from a
different MNIST image per modality, composited on a random crop of a modality-specific
background photograph with the colours inverted where the digit is. Only the class is shared
across modalities; handwriting style and background are modality-specific.

Here the digits are real scikit-learn handwritten digits (see :mod:`.digits`) and the
backgrounds are procedurally generated textures, one family per modality, whose channels stay
away from mid-grey so that the inverted digit is always visible. The images are float32 in
[0, 1], and the missingness follows the PolyMNIST scheme: the first modality is always present,
each other one is dropped with probability ``missing_rate`` (train and val only; the test split
is complete so that cross-modal coherence can be measured on every modality).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from multivae.data.datasets.digits import balanced_labels, digit_pools, render_digits
from multivae.data.missingness import apply_presence, polymnist_scheme
from multivae.data.schema import DatasetSchema, ModalitySpec
from multivae.data.writer import SplitArrays, write_dataset

TEXTURE_SIZE = 128
_CHUNK = 1024
# Which channels are bright, per modality: red, green, yellow, cyan, blue backgrounds.
_PALETTES = (
    (True, False, False),
    (False, True, False),
    (True, True, False),
    (False, True, True),
    (False, False, True),
)


def _texture(modality: int, rng: np.random.Generator) -> np.ndarray[Any, Any]:
    """A ``(3, 128, 128)`` texture of family ``modality % 5``.

    Each channel stays in [0, 0.3] or in [0.7, 1] so that inverted digits always contrast.
    """
    yy, xx = np.mgrid[0:TEXTURE_SIZE, 0:TEXTURE_SIZE].astype(np.float32) / TEXTURE_SIZE
    family = modality % 5
    phase = rng.uniform(0, 2 * np.pi, size=3)
    if family == 0:
        # Smooth blotches: a sum of random low-frequency waves.
        pattern = sum(
            np.sin(2 * np.pi * (rng.uniform(1, 3) * xx + rng.uniform(1, 3) * yy) + p) for p in phase
        )
    elif family == 1:
        frequency = rng.uniform(6, 9)
        pattern = np.sin(2 * np.pi * frequency * (xx + yy) + phase[0])
    elif family == 2:
        frequency = rng.uniform(4, 6)
        pattern = np.sin(2 * np.pi * frequency * xx + phase[0]) * np.sin(
            2 * np.pi * frequency * yy + phase[1]
        )
    elif family == 3:
        radius = np.hypot(xx - rng.uniform(0.3, 0.7), yy - rng.uniform(0.3, 0.7))
        pattern = np.sin(2 * np.pi * rng.uniform(8, 12) * radius + phase[0])
    else:
        pattern = rng.standard_normal((TEXTURE_SIZE, TEXTURE_SIZE)).astype(np.float32)
    pattern = np.asarray(pattern, dtype=np.float32)
    pattern = (pattern - pattern.min()) / (pattern.max() - pattern.min() + 1e-8)
    # Each channel is either dark or bright for the whole modality, and varies by 0.3 around it.
    bright = np.array(_PALETTES[modality % len(_PALETTES)])
    base = np.where(bright, 0.7, 0.0).astype(np.float32)
    weights = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
    texture: np.ndarray[Any, Any] = base[:, None, None] + 0.3 * weights[:, None, None] * pattern
    return texture


def _composite(
    digits: np.ndarray[Any, Any], texture: np.ndarray[Any, Any], rng: np.random.Generator
) -> np.ndarray[Any, Any]:
    """Digits on random 28x28 crops of ``texture``, colours inverted where the digit is."""
    n, size = len(digits), digits.shape[-1]
    corners = rng.integers(0, TEXTURE_SIZE - size + 1, size=(n, 2))
    backgrounds = np.stack(
        [texture[:, top : top + size, left : left + size] for top, left in corners]
    )
    ink = digits[:, None]
    images: np.ndarray[Any, Any] = backgrounds * (1.0 - ink) + (1.0 - backgrounds) * ink
    return images.astype(np.float32)


def poly_digits_schema(num_modalities: int) -> DatasetSchema:
    """The schema of ``poly-digits`` with ``num_modalities`` modalities ``m0, m1, ...``."""
    return DatasetSchema(
        modalities=tuple(
            ModalitySpec(
                name=f"m{i}",
                shape=(3, 28, 28),
                dtype="float32",
                kind="image",
                value_range=(0.0, 1.0),
                likelihood="laplace",
            )
            for i in range(num_modalities)
        ),
        num_classes=10,
        class_names=tuple(str(d) for d in range(10)),
        name="poly-digits",
    )


def build_poly_digits(
    out: Path,
    *,
    missing_rate: float = 0.0,
    seed: int = 0,
    num_modalities: int = 5,
    n_train: int = 10000,
    n_val: int = 1000,
    n_test: int = 2000,
) -> Path:
    """Generate ``poly-digits`` into ``out`` (splits ``train``, ``val``, ``test``).

    Args:
        out: Dataset folder.
        missing_rate: Probability that a modality other than ``m0`` is missing (train, val).
        seed: Seed of every random choice; the same seed gives the same files.
        num_modalities: Number of image modalities (PolyMNIST has 5).
        n_train: Samples in the train split.
        n_val: Samples in the val split.
        n_test: Samples in the test split.
    """
    if num_modalities < 1:
        raise ValueError(f"num_modalities must be >= 1, found {num_modalities}")
    pools = digit_pools(seed)
    texture_rng = np.random.default_rng([seed, 1])
    textures = [_texture(m, texture_rng) for m in range(num_modalities)]
    names = [f"m{i}" for i in range(num_modalities)]
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    records: dict[str, Any] = {}
    masks = {}
    for split_number, (split, size) in enumerate(sizes.items()):
        if split != "test":
            drawn = polymnist_scheme(size, names, missing_rate, seed=seed * 10 + split_number)
            masks[split] = drawn.present
            records[split] = drawn.record
    schema = dataclasses.replace(
        poly_digits_schema(num_modalities),
        missingness=records,
        extra={
            "generator": "poly-digits",
            "seed": seed,
            "sizes": sizes,
            "digit_source": "sklearn.datasets.load_digits, disjoint per-split pools",
        },
    )

    def chunks(split_number: int, split: str, size: int) -> Iterator[SplitArrays]:
        pool_images, pool_labels = pools[split]
        by_class = [np.flatnonzero(pool_labels == d) for d in range(10)]
        rng = np.random.default_rng([seed, 2, split_number])
        labels = balanced_labels(size, 10, rng)
        present = masks.get(split) or {n: np.ones(size, dtype=bool) for n in names}
        for start in range(0, size, _CHUNK):
            chunk_labels = labels[start : start + _CHUNK]
            # A different real digit image per modality: draw without replacement per sample.
            picks = np.stack(
                [
                    rng.choice(by_class[label], num_modalities, replace=False)
                    for label in chunk_labels
                ]
            )
            data = {
                name: _composite(render_digits(pool_images[picks[:, m]], rng), textures[m], rng)
                for m, name in enumerate(names)
            }
            chunk_present = {n: present[n][start : start + _CHUNK] for n in names}
            # Ids are numbered by write_dataset, across splits (unique in the dataset).
            yield SplitArrays(apply_presence(data, chunk_present), chunk_present, chunk_labels)

    splits = {split: chunks(i, split, size) for i, (split, size) in enumerate(sizes.items())}
    write_dataset(out, schema, splits, progress="poly-digits")
    return out
