"""Models by name: a model is a string, as configs, sweeps, the CLI and pipelines want."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, TypeVar

from multivae.config import ConfigError

if TYPE_CHECKING:
    from multivae.models.base import ModelConfig, MultimodalVAE

ModelClass = TypeVar("ModelClass", bound="type[MultimodalVAE]")
MODELS: dict[str, type[MultimodalVAE]] = {}


def register_model(cls: ModelClass) -> ModelClass:
    """Class decorator: register a model under its ``name``."""
    if cls.name in MODELS and MODELS[cls.name] is not cls:
        raise ValueError(f"a model named {cls.name!r} is already registered")
    MODELS[cls.name] = cls
    return cls


def _populate() -> None:
    # Importing the package registers every built-in model.
    import multivae.models  # noqa: F401


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    _populate()
    return sorted(MODELS)


def get_model_class(name: str) -> type[MultimodalVAE]:
    """The model class registered as ``name``; the error suggests the closest name."""
    _populate()
    if name not in MODELS:
        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown model {name!r}; expected one of {sorted(MODELS)}.{hint}")
    return MODELS[name]


def create_model(name: str, config: ModelConfig | dict[str, Any]) -> MultimodalVAE:
    """Build model ``name`` from its config dataclass or the config's plain-data form."""
    cls = get_model_class(name)
    if isinstance(config, dict):
        config = cls.config_class.from_dict(config, where=f"{name} config")
    return cls(config)
