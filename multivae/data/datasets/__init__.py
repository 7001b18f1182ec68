"""Offline built-in datasets, generated deterministically on first use, and converters.

Built-in datasets need no network: they are generated from data bundled with scikit-learn and
from seeded generators. :func:`prepare_builtin` writes one into a folder of your choice;
:func:`load_builtin` keeps one per parameter set in a cache folder (``$MULTIVAE_CACHE``, else
``$XDG_CACHE_HOME/multivae``, else ``~/.cache/multivae``) and returns its path.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multivae.data.datasets.digits_label import build_digits_label
from multivae.data.datasets.gaussian_views import build_gaussian_views
from multivae.data.datasets.mnist_svhn import convert_mnist_svhn
from multivae.data.datasets.poly_digits import build_poly_digits
from multivae.data.datasets.polymnist import convert_polymnist
from multivae.io import claim_output, staged_folder, write_output_marker

PREPARE_COMMAND = "multivae prepare-data"
GENERATOR_VERSION = 2
"""Part of each cached dataset's key: 2 numbers sample ids across splits (unique in the dataset)."""


@dataclass(frozen=True)
class BuiltinDataset:
    """A built-in dataset.

    Attributes:
        name: Its name, as given to the CLI.
        summary: One line for humans.
        build: ``build(out, *, missing_rate, seed, **parameters) -> Path``.
    """

    name: str
    summary: str
    build: Callable[..., Path]

    @property
    def parameters(self) -> dict[str, Any]:
        """Generator parameters besides ``missing_rate`` and ``seed``, with their defaults."""
        signature = inspect.signature(self.build)
        return {
            name: p.default
            for name, p in signature.parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in ("missing_rate", "seed")
        }


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    dataset.name: dataset
    for dataset in (
        BuiltinDataset(
            "poly-digits",
            "PolyMNIST analogue: 5 RGB 28x28 modalities sharing only the digit class",
            build_poly_digits,
        ),
        BuiltinDataset(
            "digits-label",
            "a 1x28x28 digit image and its class as a categorical modality",
            build_digits_label,
        ),
        BuiltinDataset(
            "gaussian-views",
            "linear-Gaussian views of a known latent (ground truth in the metadata)",
            build_gaussian_views,
        ),
    )
}


def list_builtin_datasets() -> list[str]:
    """Names of the built-in datasets."""
    return sorted(BUILTIN_DATASETS)


def get_builtin(name: str) -> BuiltinDataset:
    """The built-in dataset called ``name``; the error suggests the closest name."""
    if name not in BUILTIN_DATASETS:
        close = difflib.get_close_matches(name, BUILTIN_DATASETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown built-in dataset {name!r}; expected one of {list_builtin_datasets()}.{hint}"
        )
    return BUILTIN_DATASETS[name]


def _check_parameters(dataset: BuiltinDataset, parameters: dict[str, Any]) -> None:
    known = dataset.parameters
    for key in parameters:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{dataset.name}: unknown parameter {key!r}; expected one of {sorted(known)}.{hint}"
            )
        default, value = known[key], parameters[key]
        where = f"{dataset.name}: parameter {key}"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{where}: expected true or false, found {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{where}: expected an integer, found {value!r}")
            if value < 1:  # sizes and counts, every integer parameter of the generators
                raise ValueError(f"{where}: expected an integer >= 1, found {value}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{where}: expected a number, found {value!r}")
            if value < 0:
                raise ValueError(f"{where}: expected a number >= 0, found {value}")


def prepare_builtin(
    name: str,
    out: str | os.PathLike[str],
    *,
    missing_rate: float = 0.0,
    seed: int = 0,
    overwrite: bool = False,
    **parameters: Any,
) -> Path:
    """Generate built-in dataset ``name`` into ``out``.

    The dataset is built in a temporary folder next to ``out`` and moved into place when
    complete. ``out`` must be new or empty, or (with ``overwrite``) hold an earlier dataset of
    this command, replaced only when the new one is complete (:func:`multivae.io.claim_output`).

    Raises:
        ValueError: For an unknown dataset or parameter.
        FileExistsError: For an ``out`` that the output rule refuses.
    """
    dataset = get_builtin(name)
    _check_parameters(dataset, parameters)
    out = claim_output(Path(out), "dataset", PREPARE_COMMAND, overwrite=overwrite)
    with staged_folder(out, create=False) as staging:
        dataset.build(staging, missing_rate=missing_rate, seed=seed, **parameters)
        write_output_marker(staging, "dataset", PREPARE_COMMAND)
    return out


def cache_dir() -> Path:
    """The folder where :func:`load_builtin` keeps generated datasets."""
    if "MULTIVAE_CACHE" in os.environ:
        return Path(os.environ["MULTIVAE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "multivae"


def load_builtin(
    name: str,
    *,
    missing_rate: float = 0.0,
    seed: int = 0,
    cache: str | os.PathLike[str] | None = None,
    **parameters: Any,
) -> Path:
    """The folder of built-in dataset ``name`` for these settings, generated on first use."""
    dataset = get_builtin(name)
    _check_parameters(dataset, parameters)
    settings = {**dataset.parameters, **parameters, "missing_rate": missing_rate, "seed": seed}
    key = json.dumps(
        {"name": name, "version": GENERATOR_VERSION, "settings": settings}, sort_keys=True
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = Path(cache if cache is not None else cache_dir()) / "datasets" / f"{name}-{digest}"
    if not folder.exists():
        prepare_builtin(name, folder, missing_rate=missing_rate, seed=seed, **parameters)
    return folder


__all__ = [
    "BUILTIN_DATASETS",
    "BuiltinDataset",
    "cache_dir",
    "convert_mnist_svhn",
    "convert_polymnist",
    "get_builtin",
    "list_builtin_datasets",
    "load_builtin",
    "prepare_builtin",
]
