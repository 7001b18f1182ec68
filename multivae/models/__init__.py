"""The model zoo, one file per model: its config dataclass, module and objective.

Importing this package imports every module in it, which registers each built-in model with
:mod:`multivae.registry` (a new model file needs no edit here).
"""

import importlib
import pkgutil

from multivae.models.base import (
    Capabilities,
    GaussianPosterior,
    ModalityConfig,
    ModelConfig,
    ModelOutput,
    MultimodalVAE,
    Posterior,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Capabilities",
    "GaussianPosterior",
    "ModalityConfig",
    "ModelConfig",
    "ModelOutput",
    "MultimodalVAE",
    "Posterior",
]
