"""Tiny model configs and batches: the tester configs of every model, for every test.

Two modality sets cover the kinds a model meets: ``vectors`` (three 1-D modalities) and
``mixed`` (a 28x28 image with a conv encoder and decoder, a 1-D vector and a categorical
label). A model is built from its registered name, a variant (``default`` or a name from the
model class's ``variant_configs``) and a set, with a latent of 2: small enough that the contract
suite runs every model in every variant in seconds.
"""

from __future__ import annotations

import itertools

import torch

import multivae
from multivae.data import Batch
from multivae.models.base import ModalityConfig, ModelConfig, MultimodalVAE
from multivae.nn.architectures import ArchitectureConfig

MLP = ArchitectureConfig("mlp", {"hidden": [8]})
MODALITY_SETS = {
    "vectors": {
        "a": ModalityConfig(shape=(4,), encoder=MLP, decoder=MLP),
        "b": ModalityConfig(shape=(3,), encoder=MLP, decoder=MLP),
        "c": ModalityConfig(shape=(5,), encoder=MLP, decoder=MLP),
    },
    "mixed": {
        "img": ModalityConfig(
            shape=(1, 28, 28),
            likelihood="laplace",
            encoder=ArchitectureConfig("conv", {"channels": [2, 4]}),
            decoder=ArchitectureConfig("conv", {"channels": [2, 4]}),
        ),
        "vec": ModalityConfig(shape=(3,), encoder=MLP, decoder=MLP),
        "lab": ModalityConfig(
            shape=(),
            likelihood="categorical",
            num_categories=3,
            encoder=ArchitectureConfig("embedding", {"embedding_dim": 4, "hidden": [8]}),
            decoder=MLP,
        ),
    },
}
N = 6
"""Rows of a tiny batch."""


def names_of(modalities: str) -> list[str]:
    """The modality names of a set, in order."""
    return list(MODALITY_SETS[modalities])


def tiny_config(name: str, variant: str = "default", modalities: str = "vectors") -> ModelConfig:
    """The config of model ``name`` in ``variant`` over modality set ``modalities``."""
    cls = multivae.get_model_class(name)
    options = {} if variant == "default" else dict(cls.variant_configs[variant])
    return cls.config_class(modalities=dict(MODALITY_SETS[modalities]), latent_dim=2, **options)


def tiny_model(
    name: str, variant: str = "default", modalities: str = "vectors", seed: int = 0
) -> MultimodalVAE:
    """A seeded tiny model, past typical warm-ups so that every term of its loss is active."""
    torch.manual_seed(seed)
    model = multivae.create_model(name, tiny_config(name, variant, modalities))
    model.progress = 5.0
    return model


def generation_case(model: MultimodalVAE, modalities: str) -> tuple[list[str], list[str]]:
    """The first smallest subset a model conditions on, and what it generates from it.

    ``[first] -> [second, third]`` for a joint model; a model's own case otherwise, chosen by
    its ``conditionable`` (DVCCA: its primary view -> the others; a CVAE: its conditioning
    modalities -> its main modality).
    """
    names = names_of(modalities)
    for size in range(1, len(names)):
        for cond in itertools.combinations(names, size):
            targets = [m for m in names if m not in cond and model.conditionable(cond, m)]
            if model.conditionable(cond) and targets:
                return list(cond), targets
    raise AssertionError(f"{model.name} generates nothing from any subset of {names}")


def tiny_batch(
    modalities: str, missing: dict[str, list[bool]] | None = None, seed: int = 0
) -> Batch:
    """``N`` random rows of a set; ``missing`` gives some modalities' presence per row.

    Absent cells hold zeros, as the data contract says.
    """
    generator = torch.Generator().manual_seed(seed)
    specs = MODALITY_SETS[modalities]
    mask = {m: torch.ones(N, dtype=torch.bool) for m in specs}
    for modality, present in (missing or {}).items():
        mask[modality] = torch.tensor(present)
    data = {}
    for m, spec in specs.items():
        if spec.likelihood == "categorical":
            assert spec.num_categories is not None
            values = torch.randint(0, spec.num_categories, (N,), generator=generator)
        else:
            values = torch.randn(N, *spec.shape, generator=generator)
        present = mask[m].reshape(-1, *[1] * len(spec.shape))
        data[m] = torch.where(present, values, torch.zeros((), dtype=values.dtype))
    return Batch(data=data, mask=mask, label=torch.zeros(N, dtype=torch.long))


def vector_batch(sizes: dict[str, int], present: dict[str, list[bool]], seed: int = 1) -> Batch:
    """A batch of 1-D modalities of ``sizes``, with presence ``present`` (one list per modality).

    Values are standard normal from a generator seeded with ``seed``, drawn modality by modality
    in ``sizes``'s order; absent cells hold zeros, as the data format stores them. The model
    test files replay their hand computations on these batches.
    """
    generator = torch.Generator().manual_seed(seed)
    rows = len(next(iter(present.values())))
    data = {name: torch.randn(rows, size, generator=generator) for name, size in sizes.items()}
    mask = {name: torch.tensor(flags) for name, flags in present.items()}
    data = {name: values * mask[name].unsqueeze(-1) for name, values in data.items()}
    return Batch(data=data, mask=mask)
