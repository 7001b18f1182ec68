"""Real handwritten digits from scikit-learn, rendered at MNIST size.

scikit-learn ships 1,797 real 8x8 handwritten digits (the UCI optical digits test set) inside its
wheel, so they are available offline. They are split once, per class, into disjoint pools for
train, val and test, so no test image is ever seen in training, and rendered at 28x28 the way
MNIST digits are laid out: a 20x20 digit inside a 28x28 canvas, moved by a random shift of up to
two pixels so that repeated draws of the same source image differ.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

POOL_FRACTIONS = {"train": 0.6, "val": 0.15, "test": 0.25}
CANVAS = 28
DIGIT = 20
MAX_SHIFT = 2


def digit_pools(seed: int = 0) -> dict[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    """Disjoint per-split pools of the bundled digits: ``split -> (images in [0, 1], labels)``.

    Each class is split with the same fractions, so every pool holds every class.
    """
    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[np.ndarray[Any, Any]]] = {split: [] for split in POOL_FRACTIONS}
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        n_train = round(len(members) * POOL_FRACTIONS["train"])
        n_val = round(len(members) * POOL_FRACTIONS["val"])
        chosen["train"].append(members[:n_train])
        chosen["val"].append(members[n_train : n_train + n_val])
        chosen["test"].append(members[n_train + n_val :])
    pools = {}
    for split, parts in chosen.items():
        index = np.sort(np.concatenate(parts))
        pools[split] = (images[index], labels[index])
    return pools


def render_digits(images: np.ndarray[Any, Any], rng: np.random.Generator) -> np.ndarray[Any, Any]:
    """Render 8x8 digits as 28x28 images in [0, 1] with a random shift of up to two pixels.

    Args:
        images: Array of shape ``(n, 8, 8)`` with values in [0, 1].
        rng: Source of the shifts.

    Returns:
        Float32 array of shape ``(n, 28, 28)``.
    """
    scaled = F.interpolate(
        torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None],
        size=(DIGIT, DIGIT),
        mode="bilinear",
        align_corners=False,
    )[:, 0].numpy()
    canvas = np.zeros((len(images), CANVAS, CANVAS), dtype=np.float32)
    margin = (CANVAS - DIGIT) // 2
    shifts = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=(len(images), 2))
    for i, (dy, dx) in enumerate(shifts):
        top, left = margin + dy, margin + dx
        canvas[i, top : top + DIGIT, left : left + DIGIT] = scaled[i]
    return np.clip(canvas, 0.0, 1.0)


def balanced_labels(
    num_samples: int, num_classes: int, rng: np.random.Generator
) -> np.ndarray[Any, Any]:
    """Labels with every class equally often (up to one), in random order."""
    labels = np.arange(num_samples, dtype=np.int64) % num_classes
    return rng.permutation(labels)
