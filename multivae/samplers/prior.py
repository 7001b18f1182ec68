"""The standard normal prior as a sampler: the baseline the fitted samplers are compared with."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from multivae.samplers.base import LatentSampler, expect_tensors, register_sampler


@register_sampler
class PriorSampler(LatentSampler):
    """The standard normal ``N(0, I)`` of dimension ``D``; :meth:`fit` only records ``D``.

    This is the prior of JMVAE, MVAE and MoPoE's shared latent. MMVAE's prior is a Laplace
    (or normal) with possibly learned scales, which this sampler does not reproduce: use
    ``model.sample(n)`` without a sampler for MMVAE's own prior.
    """

    kind: ClassVar[str] = "prior"

    def config(self) -> dict[str, Any]:
        """No options."""
        return {}

    def _fit(self, latents: torch.Tensor) -> None:
        pass

    def _sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn((n, self.dim), generator=generator)

    def _log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z.square() + math.log(2 * math.pi)).sum(dim=1)

    def _state(self) -> dict[str, torch.Tensor]:
        return {}

    def _restore(self, dim: int, tensors: dict[str, torch.Tensor]) -> None:
        expect_tensors(tensors, {})
