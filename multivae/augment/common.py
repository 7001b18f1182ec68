"""What sampling and imputation share: checks of their destination and of their data.

Both refuse an output folder that is a source or holds something else than a dataset, and a
dataset whose modalities differ from the model's; both store generated values clamped to the
declared range and cast to the dtype, generate under a seeded evaluation mode and record their
provenance with the library's version and the time.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multivae.data.schema import DatasetSchema, ModalitySpec
from multivae.distribution import installed_version
from multivae.io import claim_output
from multivae.models.base import MultimodalVAE

PROVENANCE_KEY = "provenance"
"""Key of :attr:`DatasetSchema.extra` under which generated datasets record their provenance."""


def library_version() -> str:
    """The installed version of this project, recorded in the provenance."""
    return installed_version()


def now() -> str:
    """The current UTC time, to the second, in ISO format."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def model_device(model: MultimodalVAE) -> torch.device:
    """The device of the model's parameters."""
    return next(model.parameters()).device


@contextmanager
def seeded_eval(model: MultimodalVAE, seed: int) -> Iterator[None]:
    """Run the block in eval mode, without gradients, under torch's RNG seeded with ``seed``.

    The caller's random state (CPU and the model's GPU) and the model's mode are restored.
    """
    device = model_device(model)
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            yield
    finally:
        model.train(was_training)


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` when it is an integer (not a bool) of at least ``minimum``; else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"expected an integer {name} >= {minimum}, found {value!r}")
    return value


def as_stored(spec: ModalitySpec, values: torch.Tensor) -> np.ndarray[Any, Any]:
    """Generated values in the form the dataset stores: clamped to the range, in its dtype.

    Integer dtypes get the values rounded first (class indices already are integers).
    """
    array = values.detach().cpu().numpy()
    dtype = spec.numpy_dtype
    low, high = spec.value_range if spec.value_range is not None else (-np.inf, np.inf)
    if np.issubdtype(dtype, np.integer):
        if np.issubdtype(array.dtype, np.floating):
            array = np.rint(array)
        info = np.iinfo(dtype)
        low, high = max(low, float(info.min)), min(high, float(info.max))
    if spec.value_range is not None or np.issubdtype(dtype, np.integer):
        array = np.clip(array, low, high)
    return np.ascontiguousarray(array.astype(dtype, copy=False))


def check_destination(
    out_dir: Path, *sources: Path | None, command: str, overwrite: bool = False
) -> None:
    """Refuse an ``out_dir`` that is a source of the data, or that the one output rule refuses.

    See :func:`multivae.io.claim_output`: a new or empty folder, or with ``overwrite`` this
    command's own earlier dataset; never another folder, never inside a dataset.
    """
    for source in sources:
        if source is not None and out_dir.resolve() == source.resolve():
            raise ValueError(
                f"{out_dir}: the output folder is the source dataset; give another folder"
            )
    claim_output(out_dir, "dataset", command, overwrite=overwrite)


def schema_from_model(model: MultimodalVAE, name: str | None = None) -> DatasetSchema:
    """A dataset description for a model's modalities, when the training data's is not at hand.

    Shapes and likelihoods come from the model's config. Categorical modalities store int64
    class indices; the others float32, with the range ``[0, 1]`` for a Bernoulli likelihood
    and no declared range otherwise. Three-dimensional modalities are images, the others
    tabular (or categorical).

    Args:
        model: The model.
        name: Name of the dataset; ``<model name>-samples`` by default.
    """
    modalities = []
    for modality, config in model.config.modalities.items():
        shape = tuple(int(s) for s in config.shape)
        if config.likelihood == "categorical":
            spec = ModalitySpec(
                modality,
                shape,
                "int64",
                "categorical" if shape == () else "text_tokens",
                likelihood="categorical",
                num_categories=config.num_categories,
            )
        else:
            spec = ModalitySpec(
                modality,
                shape,
                "float32",
                "image" if len(shape) == 3 else "tabular",
                value_range=(0.0, 1.0) if config.likelihood == "bernoulli" else None,
                likelihood=config.likelihood,
            )
        modalities.append(spec)
    return DatasetSchema(tuple(modalities), name=name or f"{model.name}-samples")


def check_model_matches(
    model: MultimodalVAE,
    schema: DatasetSchema,
    where: str | os.PathLike[str],
    model_where: str | os.PathLike[str] | None = None,
) -> None:
    """Refuse a dataset whose modalities or shapes differ from the model's.

    Args:
        model: The model.
        schema: The dataset's description.
        where: The dataset's folder (or another description of it), for the message.
        model_where: The model's folder, for the message.

    Raises:
        ValueError: Listing the expected and the found modalities with their shapes.
    """
    expected = {m: tuple(int(s) for s in c.shape) for m, c in model.config.modalities.items()}
    found = {spec.name: spec.shape for spec in schema.modalities}
    if expected == found:
        return
    model_text = f"model '{model.name}'" + (f" at {model_where}" if model_where else "")
    if set(expected) != set(found):
        problem = (
            f"expected the modalities of the {model_text}: {list(expected)}, found {list(found)}"
        )
    else:
        differing = {m: (expected[m], found[m]) for m in expected if expected[m] != found[m]}
        problem = "expected the shapes of the {}, found different ones: {}".format(
            model_text,
            "; ".join(f"{m}: expected {e}, found {f}" for m, (e, f) in differing.items()),
        )
    raise ValueError(
        f"{where}: the dataset does not match the model: {problem} (expected "
        f"{_with_shapes(expected)}, found {_with_shapes(found)})"
    )


def _with_shapes(shapes: Mapping[str, tuple[int, ...]]) -> str:
    return "[" + ", ".join(f"{m} {s}" for m, s in shapes.items()) + "]"
