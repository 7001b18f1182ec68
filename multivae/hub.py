"""Model folders: safetensors weights, a JSON config and a model card; no pickle anywhere.

A saved model is a folder (or a Hugging Face Hub repository with the same files):

* ``config.json``: ``{"model": NAME, "config": {...}, "format_version": 1}``, the model's config
  dataclass as plain data;
* ``model.safetensors``: the weights;
* ``README.md``: a model card (what the model is, its modalities, how to load it).

Loading reads the JSON, builds the registered model class from it and loads the weights with
``strict=True``. Nothing in the folder is executed, and only these three files are fetched from
the Hub.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from multivae.config import ConfigError
from multivae.io import staged_folder

if TYPE_CHECKING:
    from multivae.models.base import MultimodalVAE

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"


def _model_card(model: MultimodalVAE) -> str:
    lines = [
        "---",
        "library_name: multivae",
        "tags:",
        "- multimodal",
        "- variational-autoencoder",
        f"- {model.name}",
        "---",
        "",
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


def save_pretrained(model: MultimodalVAE, directory: str | os.PathLike[str]) -> Path:
    """Write the model folder atomically (into a temporary sibling, then renamed)."""
    with staged_folder(directory) as staging:
        document = {
            "format_version": FORMAT_VERSION,
            "model": model.name,
            "config": model.config.to_dict(),
        }
        (staging / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True))
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        (staging / CARD_FILE).write_text(_model_card(model))
    return Path(directory)


def _local_folder(path_or_repo_id: str | os.PathLike[str]) -> Path:
    path = Path(path_or_repo_id)
    if path.is_dir():
        return path
    if path.exists() or str(path_or_repo_id).count("/") != 1:
        raise FileNotFoundError(
            f"{path_or_repo_id}: expected a model folder or a Hub repository id 'owner/name'"
        )
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            repo_id=str(path_or_repo_id), allow_patterns=[CONFIG_FILE, WEIGHTS_FILE, CARD_FILE]
        )
    )


def load_model(
    path_or_repo_id: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> MultimodalVAE:
    """Load a model folder written by :func:`save_pretrained`, or a Hub repository of one."""
    from multivae.registry import create_model

    folder = _local_folder(path_or_repo_id)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG_FILE}; not a multivae model folder")
    try:
        document = json.loads(config_path.read_text())
        version, name, config = document["format_version"], document["model"], document["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ConfigError(f"{config_path}: unreadable model config ({error})") from None
    if version != FORMAT_VERSION:
        raise ConfigError(
            f"{config_path}: expected format_version {FORMAT_VERSION}, found {version}"
        )
    model = create_model(name, config)
    state = load_file(str(folder / WEIGHTS_FILE), device=str(map_location))
    model.load_state_dict(state, strict=True)
    model.eval()
    return model
