"""Fixtures shared across test folders."""

import pytest
import torch

import multivae
from multivae.models.base import ModalityConfig
from multivae.nn.architectures import ArchitectureConfig


@pytest.fixture
def tiny_mvae():
    """A small MVAE over a 4-d vector ``x`` and a 3-class categorical ``y`` (seeded)."""
    torch.manual_seed(0)
    cls = multivae.get_model_class("mvae")
    config = cls.config_class(
        modalities={
            "x": ModalityConfig(shape=(4,), encoder=ArchitectureConfig("mlp", {"hidden": [8]})),
            "y": ModalityConfig(
                shape=(),
                likelihood="categorical",
                num_categories=3,
                encoder=ArchitectureConfig("embedding", {"embedding_dim": 4, "hidden": [8]}),
            ),
        },
        latent_dim=2,
    )
    return multivae.create_model("mvae", config)
