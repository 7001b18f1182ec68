"""Models built by name, and model folders loaded: the layer above the models.

Importing this module imports every built-in model (:mod:`multivae.models`), which registers
each with :mod:`multivae.registry`; the functions here then look names up there.
"""

from __future__ import annotations

import os
from typing import Any

import torch

import multivae.models  # noqa: F401  (registers every built-in model)
from multivae.hub import resolve_model_folder
from multivae.model_folder import load_model_folder
from multivae.models.base import ModelConfig, MultimodalVAE
from multivae.registry import MODELS, find_model_class


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(MODELS)


def get_model_class(name: str) -> type[MultimodalVAE]:
    """The model class registered as ``name``; the error suggests the closest name."""
    return find_model_class(name)


def create_model(name: str, config: ModelConfig | dict[str, Any]) -> MultimodalVAE:
    """Build model ``name`` from its config dataclass or the config's plain-data form."""
    cls = get_model_class(name)
    if isinstance(config, dict):
        config = cls.config_class.from_dict(config, where=f"{name} config")
    return cls(config)


def load_model(
    path_or_repo_id: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    *,
    revision: str | None = None,
) -> MultimodalVAE:
    """Load a model folder (:mod:`multivae.model_folder`), or a Hub repository of one.

    ``revision`` pins a repository's branch, tag or commit hash (refused with a local folder,
    see :func:`multivae.hub.resolve_model_folder`).
    """
    return load_model_folder(resolve_model_folder(path_or_repo_id, revision), map_location)
