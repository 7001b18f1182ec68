"""Models by name: a model is a string, as configs, sweeps, the CLI and pipelines want.

A leaf: each model file registers its class with :func:`register_model` when it is imported, and
:func:`find_model_class` looks a name up among the classes registered so far. Nothing here
imports a model; :mod:`multivae.factory` imports them all before it builds one by name.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, TypeVar

from multivae.config import ConfigError

if TYPE_CHECKING:
    from multivae.models.base import MultimodalVAE

ModelClass = TypeVar("ModelClass", bound="type[MultimodalVAE]")
MODELS: dict[str, type[MultimodalVAE]] = {}


def register_model(cls: ModelClass) -> ModelClass:
    """Class decorator: register a model under its ``name``."""
    if cls.name in MODELS and MODELS[cls.name] is not cls:
        raise ValueError(f"a model named {cls.name!r} is already registered")
    MODELS[cls.name] = cls
    return cls


def find_model_class(name: str) -> type[MultimodalVAE]:
    """The model class registered as ``name``; the error suggests the closest name.

    Raises:
        ConfigError: For a name no imported model file registered.
    """
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown model {name!r}; expected one of {sorted(MODELS)}.{hint}")
    return MODELS[name]
