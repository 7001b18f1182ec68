"""Built-in datasets by their generator settings, made once per test run and shared."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from kit.shared import build_once
from multivae.data.datasets import prepare_builtin


def builtin(kit_folder: Path, name: str, **settings: Any) -> Path:
    """The folder of built-in dataset ``name`` made with ``settings``, shared by the run.

    The same settings give the same folder in every process of the run; tests read it and never
    write into it (the output rule refuses writing inside a dataset anyway).
    """
    key = json.dumps({"name": name, **settings}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    folder = kit_folder / "datasets" / f"{name}-{digest}"
    folder.parent.mkdir(exist_ok=True)
    return build_once(folder, lambda out: prepare_builtin(name, out, **settings))


LEARNING_SIZES = {"n_train": 2000, "n_val": 200, "n_test": 500}
"""Poly-digits splits of the learning test: 63 steps of 32 per epoch, 500 complete test rows."""


def learning_poly_digits(kit_folder: Path, num_modalities: int) -> Path:
    """Poly-digits with half of m1, m2, ... missing in train and val (seed 0)."""
    return builtin(
        kit_folder,
        "poly-digits",
        missing_rate=0.5,
        seed=0,
        num_modalities=num_modalities,
        **LEARNING_SIZES,
    )


def judge_poly_digits(kit_folder: Path) -> Path:
    """Complete poly-digits of the same generator (seed 0: the same digit pools and textures)."""
    return builtin(
        kit_folder, "poly-digits", seed=0, num_modalities=2, n_train=2000, n_val=500, n_test=500
    )
