"""Model folders: safetensors weights, a JSON config and a model card; no pickle anywhere.

A saved model is a folder (a Hugging Face Hub repository holds the same files, see
:mod:`multivae.hub`):

* ``config.json``: ``{"model": NAME, "config": {...}, "format_version": 1}``, the model's config
  dataclass as plain data;
* ``model.safetensors``: the weights;
* ``README.md``: a model card (:func:`model_card`): Hub metadata (``library_name``, tags) in a
  YAML block, then what the model is, its modalities, how to load it.

Loading reads the JSON, builds the registered model class from it and loads the weights with
``strict=True``; nothing in the folder is executed. The class is looked up in the registry, which
holds every model whose file has been imported (:mod:`multivae.factory` imports them all); this
module never imports a model.

A folder's :func:`model_fingerprint` digests its ``config.json`` and its whole weights file; what
is made from a model (a fitted sampler, a synthetic or imputed dataset, an evaluation) records
it, so that using one with another model is refused. A model loaded from a folder (or saved to
one) knows that folder and its fingerprint for as long as its weights are those of the folder
(:func:`model_source`).
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from multivae.config import ConfigError, check_known_keys, read_json
from multivae.io import staged_folder
from multivae.names import MODEL_CARD_FILE, MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE
from multivae.registry import find_model_class

if TYPE_CHECKING:
    from huggingface_hub import ModelCardData

    from multivae.models.base import MultimodalVAE

FORMAT_VERSION = 1
MODEL_FOLDER_FILES = (MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE, MODEL_CARD_FILE)
"""Every file of a model folder (and all that is fetched of a Hub repository)."""

_CHUNK_BYTES = 1 << 20


def model_fingerprint(folder: str | os.PathLike[str]) -> str:
    """A short hex digest of a model folder that changes when its config or any weight changes.

    The digest covers the bytes of ``config.json`` and of the whole ``model.safetensors`` (read
    in chunks), not the folder's path: the same model copied elsewhere, or pushed to the Hub and
    fetched back, has the same fingerprint. Same length as a dataset's
    (:func:`multivae.data.fingerprint.dataset_fingerprint`).

    Raises:
        FileNotFoundError: For a folder without ``config.json`` or without weights.
    """
    root = Path(folder)
    digest = hashlib.sha256()
    for name in (MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE):
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: expected a file of the model folder, found none")
        digest.update(f"{name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ModelSource:
    """The folder a model in memory was loaded from (or saved to), and its fingerprint."""

    folder: Path
    fingerprint: str


_SOURCES: weakref.WeakKeyDictionary[MultimodalVAE, tuple[ModelSource, str]] = (
    weakref.WeakKeyDictionary()
)
"""Model -> its folder and the digest of its weights when it was loaded or saved."""


def _weights_digest(model: MultimodalVAE) -> str:
    """A digest of the model's state: every tensor's name, dtype, shape and values."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        values = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()


def _remember_source(model: MultimodalVAE, folder: Path) -> None:
    source = ModelSource(folder.resolve(), model_fingerprint(folder))
    _SOURCES[model] = (source, _weights_digest(model))


def model_source(model: MultimodalVAE) -> ModelSource | None:
    """The folder ``model`` was loaded from or last saved to, with its fingerprint.

    ``None`` for a model built in memory and never saved, or whose weights changed since
    (trained further, cast to another dtype): it is then no folder's model until saved again.
    The weights are compared by a digest of the state, computed on each call.
    """
    entry = _SOURCES.get(model)
    if entry is None:
        return None
    source, weights = entry
    return source if _weights_digest(model) == weights else None


LIBRARY_NAME = "multivae-platform"
"""The ``library_name`` of every model card: the distribution that reads model folders.

It is what ``pip install`` takes (``[project] name`` in ``pyproject.toml``), in the lowercase,
hyphenated spelling of the Hub's library ids; the package it installs is imported as
``multivae``. The import name is not used: ``multivae`` is also the PyPI name of another library
(MultiVae, whose Hub models carry the tag ``multivae``) that cannot load these folders, and the
Hub filters models by library name.
"""


def model_card_tags(model: MultimodalVAE) -> list[str]:
    """The card's tags: the kind of model, its registry name, what this configuration can do.

    Each capability the configured model has (:attr:`MultimodalVAE.capabilities`) is a tag,
    spelt as ``multivae list-models`` prints it (``missing-modalities``, ``private-latents``).
    """
    capabilities = [
        name.replace("_", "-") for name, value in asdict(model.capabilities).items() if value
    ]
    return ["multimodal", "variational-autoencoder", "pytorch", model.name, *capabilities]


def model_card_body(model: MultimodalVAE) -> str:
    """The Markdown of a model card, below its metadata: the model, its modalities, how to load.

    The loading example names ``"PATH_OR_REPO_ID"``; a Hub card replaces it with the repository.
    """
    lines = [
        f"# {model.name} ({type(model).__name__})",
        "",
        (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else "",
        "",
        "## Modalities",
        "",
        "| modality | shape | likelihood | encoder | decoder |",
        "|---|---|---|---|---|",
    ]
    for name, spec in model.config.modalities.items():
        lines.append(
            f"| {name} | {tuple(spec.shape)} | {spec.likelihood} | {spec.encoder.name} | "
            f"{spec.decoder.name} |"
        )
    parameters = sum(p.numel() for p in model.parameters())
    lines += [
        "",
        f"Latent dimension: {model.config.latent_dim}. Parameters: {parameters:,}.",
        "",
        "## Load",
        "",
        "```python",
        "import multivae",
        'model = multivae.load_model("PATH_OR_REPO_ID")',
        "```",
        "",
        "Weights are safetensors and the config is JSON: loading executes no code from this "
        "folder.",
        "",
    ]
    return "\n".join(lines)


CARD_KEY_ORDER = ["license", "library_name", "tags", "datasets"]
"""The metadata keys first in a card's YAML block, in this order (``model-index`` comes last)."""


def card_text(data: ModelCardData, body: str) -> str:
    """A ``README.md``: ``data`` as the YAML block the Hub reads, then the Markdown ``body``.

    The text is rendered by :class:`huggingface_hub.ModelCard`, which parses the block back
    (a ``model-index`` that does not parse is refused here, not by the Hub).
    """
    from huggingface_hub import ModelCard

    metadata = data.to_yaml(original_order=CARD_KEY_ORDER)
    return str(ModelCard(f"---\n{metadata}\n---\n\n{body}"))


def model_card(model: MultimodalVAE) -> str:
    """The folder's model card: Hub metadata (library, tags), the model, how to load it.

    A Hub card (:func:`multivae.hub.model_card`) adds a license, the training data and the
    evaluation.
    """
    from huggingface_hub import ModelCardData

    data = ModelCardData(library_name=LIBRARY_NAME, tags=model_card_tags(model))
    return card_text(data, model_card_body(model))


def save_model_folder(model: MultimodalVAE, directory: str | os.PathLike[str]) -> Path:
    """Write the model folder atomically (into a temporary sibling, then renamed)."""
    with staged_folder(directory) as staging:
        document = {
            "format_version": FORMAT_VERSION,
            "model": model.name,
            "config": model.config.to_dict(),
        }
        # Not sorted: the order of the modalities is part of the model (stacking, subsets).
        (staging / MODEL_CONFIG_FILE).write_text(json.dumps(document, indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(staging / MODEL_WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / MODEL_CARD_FILE).write_text(model_card(model))
    _remember_source(model, Path(directory))
    return Path(directory)


def read_model_config(folder: str | os.PathLike[str]) -> tuple[str, dict[str, Any]]:
    """The model name and the config (plain data) of a model folder.

    Raises:
        FileNotFoundError: When the folder has no ``config.json``.
        ConfigError: For an unreadable file or another format version.
    """
    config_path = Path(folder) / MODEL_CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no {MODEL_CONFIG_FILE}; not a multivae model folder")
    try:
        document = read_json(config_path.read_text())
        version, name, config = document["format_version"], document["model"], document["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ConfigError(f"{config_path}: unreadable model config ({error})") from None
    check_known_keys(document, ("format_version", "model", "config"), str(config_path))
    if version != FORMAT_VERSION:
        raise ConfigError(
            f"{config_path}: expected format_version {FORMAT_VERSION}, found {version}"
        )
    return name, config


def load_model_folder(
    folder: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> MultimodalVAE:
    """The model of a folder written by :func:`save_model_folder`, in eval mode.

    Raises:
        FileNotFoundError: When the folder has no ``config.json`` or no weights file.
        ConfigError: For an unreadable config, an unknown model or options it refuses.
        ValueError: For a weights file that is truncated or corrupt, that does not fit the
            model, or that holds a NaN or infinite value (named by its tensor).
    """
    name, config = read_model_config(folder)
    cls = find_model_class(name)
    model = cls(cls.config_class.from_dict(config, where=f"{name} config"))
    weights = Path(folder) / MODEL_WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: expected the model's weights, found no file")
    try:
        state = load_file(str(weights), device=str(map_location))
    except Exception as error:  # safetensors' SafetensorError: a truncated or garbled file
        raise ValueError(
            f"{weights}: expected a safetensors file of weights, found an unreadable one "
            f"(truncated or corrupt: {error})"
        ) from None
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(
                f"{weights}: tensor {key!r} holds NaN or infinite values; the model cannot be "
                "used (was it saved from a run whose loss diverged?)"
            )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{weights}: the weights do not fit this {name} model ({error})") from None
    model.eval()
    _remember_source(model, Path(folder))
    return model
