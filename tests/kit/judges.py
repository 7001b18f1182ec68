"""Judges: per-modality classifiers trained once per run on data the models never see."""

from __future__ import annotations

from pathlib import Path

from kit.data import judge_poly_digits
from kit.shared import build_once
from multivae.metrics.classifiers import ClassifierSet, train_classifiers

SMALL_CONV = {"channels": [16, 32], "hidden_dim": 64}
"""A small convolutional classifier: trains in seconds on one core."""
JUDGE_ACCURACY_FLOOR = 0.85
"""What a judge must score on digits it never saw (the test split) before it judges a model."""


def train_judge(data: Path, out: Path) -> ClassifierSet:
    """Train the small classifier of m1 images on ``data`` into ``out``."""
    return train_classifiers(
        data,
        out,
        epochs=8,
        batch_size=64,
        lr=2e-3,
        modalities=["m1"],
        progress=False,
        device="cpu",
        options={"m1": SMALL_CONV},
    )


def poly_digits_judge(kit_folder: Path) -> ClassifierSet:
    """A classifier of poly-digits' m1 images, trained on 2,000 complete samples.

    The models of the learning test see only half of m1 (the rest is missing) and the test
    split's digits come from a pool disjoint from train's, so the judge is scored on images
    that neither it nor any model saw.
    """
    data = judge_poly_digits(kit_folder)
    folder = build_once(
        kit_folder / "judges" / "poly-digits-m1", lambda out: train_judge(data, out)
    )
    judge = ClassifierSet.load(folder)
    accuracy = judge.accuracy["m1"]
    assert accuracy is not None and accuracy > JUDGE_ACCURACY_FLOOR, (
        f"the m1 judge scores {accuracy} on held-out digits; it must beat "
        f"{JUDGE_ACCURACY_FLOOR} before it judges a model"
    )
    return judge
