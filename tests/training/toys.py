"""Tiny test-local models and data for the training loop (nothing here is registered)."""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from multivae.data import (
    Batch,
    SplitArrays,
)
from multivae.models.base import ModalityConfig, ModelConfig, ModelOutput, MultimodalVAE
from multivae.nn.architectures import ArchitectureConfig
from multivae.objectives import kl_standard_normal
from multivae.training import TrainingConfig

SHAPES = {"a": (4,), "b": (3,)}


@dataclass
class ToyConfig(ModelConfig):
    pass


class ToyVAE(MultimodalVAE):
    """A Gaussian VAE whose posterior averages the present modalities' posteriors.

    It records the ``(stage, progress)`` of every training step it sees.
    """

    name = "toy"
    config_class = ToyConfig

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.seen: list[tuple[str, float]] = []

    def posterior_parameters(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        means, logvars = self.unimodal_posteriors(batch)
        weights = self.condition_mask(batch, None).float().unsqueeze(-1)
        count = weights.sum(0).clamp(min=1.0)
        return (means * weights).sum(0) / count, (logvars * weights).sum(0) / count

    def forward(self, batch: Batch) -> ModelOutput:
        if self.training:
            self.seen.append((self.stage, self.progress))
        mean, logvar = self.posterior_parameters(batch)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        recon = -self.log_likelihoods(self.decode(z), batch).sum(0)
        kl = kl_standard_normal(mean, logvar)
        return ModelOutput((recon + kl).mean(), {"recon": recon.mean(), "kl": kl.mean()})


class TwoStageVAE(ToyVAE):
    """Stage ``first`` trains the VAE; stage ``second`` trains only a head on top of its latent.

    The second stage's loss depends on the first stage's parameters too (through ``z``), so
    only the optimizer keeps them fixed. ``entered[stage]`` holds the weights when it began.
    """

    stages = ("first", "second")

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.head = nn.Linear(config.latent_dim, 1)
        self.entered: dict[str, dict[str, torch.Tensor]] = {}

    def set_stage(self, stage: str) -> None:
        super().set_stage(stage)
        self.entered[stage] = {k: v.clone() for k, v in self.state_dict().items()}

    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        head = list(self.head.parameters())
        if stage == "second":
            return head
        return [p for p in self.parameters() if all(p is not h for h in head)]

    def forward(self, batch: Batch) -> ModelOutput:
        output = super().forward(batch)
        if self.stage == "first":
            return output
        mean, _ = self.posterior_parameters(batch)
        fit = (self.head(mean).squeeze(-1) - batch.data["a"][:, 0]) ** 2
        return ModelOutput(output.loss + fit.mean(), {**output.metrics, "fit": fit.mean()})


class ScriptedVAE(ToyVAE):
    """Trains like :class:`ToyVAE`; its validation loss in epoch ``e`` is ``script[e - 1]``."""

    script: tuple[float, ...] = ()

    def forward(self, batch: Batch) -> ModelOutput:
        output = super().forward(batch)
        if self.training:
            return output
        scripted = torch.tensor(self.script[round(self.progress) - 1])
        return ModelOutput(scripted, output.metrics)


def toy_config(latent_dim: int = 2) -> ToyConfig:
    return ToyConfig(
        modalities={
            name: ModalityConfig(
                shape=shape,
                learn_scale=True,
                encoder=ArchitectureConfig("mlp", {"hidden": [8]}),
                decoder=ArchitectureConfig("mlp", {"hidden": [8]}),
            )
            for name, shape in SHAPES.items()
        },
        latent_dim=latent_dim,
    )


def build(cls: type[ToyVAE] = ToyVAE, seed: int = 0) -> ToyVAE:
    torch.manual_seed(seed)
    return cls(toy_config())


def views(n: int, seed: int, missing_rate: float = 0.3) -> SplitArrays:
    """Two noisy linear views of a 2-d latent; each view missing at random (never both)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 2))
    mixing = np.random.default_rng(123)
    data = {
        name: (
            z @ mixing.standard_normal((2, shape[0])) + 0.1 * rng.standard_normal((n, shape[0]))
        ).astype(np.float32)
        for name, shape in SHAPES.items()
    }
    present_a = rng.random(n) >= missing_rate
    present_b = ~present_a | (rng.random(n) >= missing_rate)
    present = {"a": present_a, "b": present_b}
    data = {name: values * present[name][:, None] for name, values in data.items()}
    return SplitArrays(data, present)


def quiet(**options) -> TrainingConfig:
    """A CPU training config without progress bar; ``options`` override its fields."""
    return TrainingConfig.from_dict({"device": "cpu", "progress_bar": False, **options})
