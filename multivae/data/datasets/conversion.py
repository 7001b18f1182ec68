"""What the two converters share: argument checks, the seed's streams, the train/val split."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

DEFAULT_CHUNK_ROWS = 1024
DIGITS = tuple(str(d) for d in range(10))
IMAGE_SIZE = 28

# Streams of the seed: each random decision draws from its own stream so that changing one
# (say the missing rate) leaves the others (the train/val split, the pairing) as they were.
STREAM_SPLIT = 0
STREAM_TRAIN_MASK = 1
STREAM_VAL_MASK = 2
STREAM_PAIR_TRAIN = 3
STREAM_PAIR_VAL = 4
STREAM_PAIR_TEST = 5
STREAM_SVHN_SPLIT = 6

Int64Array = NDArray[np.int64]
UInt8Array = NDArray[np.uint8]


def check_arguments(val_fraction: float, seed: int, missing_rate: float, chunk_rows: int) -> None:
    """Refuse a converter's arguments out of range (``ValueError``)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"expected val_fraction in (0, 1), found {val_fraction}")
    if seed < 0:
        raise ValueError(f"expected a non-negative seed, found {seed}")
    if not 0.0 <= missing_rate <= 1.0:
        raise ValueError(f"expected missing_rate in [0, 1], found {missing_rate}")
    if chunk_rows < 1:
        raise ValueError(f"expected chunk_rows >= 1, found {chunk_rows}")


def derived_seed(seed: int, stream: int) -> int:
    """An independent 32-bit seed for one random decision, reproducible from ``seed``."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint32)[0])


def stratified_split(
    labels: Int64Array, fraction: float, rng: np.random.Generator
) -> tuple[Int64Array, Int64Array]:
    """Positions of the train and of the validation part, each sorted.

    Each class gives ``fraction`` of its members (rounded) to validation, at least one and at
    most all but one when it has two or more, so both parts see every class the source has
    (MNIST-SVHN pairing needs that) and class balance matches the source.
    """
    val_parts = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = int(np.floor(fraction * members.size + 0.5))
        take = min(max(take, 1), members.size - 1) if members.size >= 2 else 0
        val_parts.append(rng.choice(members, size=take, replace=False))
    is_val = np.zeros(labels.size, dtype=bool)
    if val_parts:
        is_val[np.concatenate(val_parts)] = True
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)


def to_unit_float(pixels: UInt8Array) -> NDArray[np.float32]:
    """Pixels as float32 in ``[0, 1]`` (pixel / 255)."""
    return pixels.astype(np.float32) / np.float32(255)
