"""Normalizing-flow samplers: MAF and IAF, built from zuko's masked autoregressive transforms.

Both stack ``n_layers`` affine autoregressive transforms (zuko's
``MaskedAutoregressiveTransform``: a MADE network, Germain et al. 2015, gives each dimension's
shift and log-scale from the dimensions before it), with the order of the dimensions reversed
between consecutive layers, over a standard normal base. They differ in direction:

* MAF (Papamakarios et al. 2017): the layers map data to noise, so ``log_prob`` is one pass per
  layer and sampling inverts each layer in ``D`` sequential passes;
* IAF (Kingma et al. 2016): the same layers map noise to data (zuko's ``transform.inv``, the
  construction zuko's maintainers give for an IAF), so sampling is one pass per layer and
  ``log_prob`` takes ``D`` sequential passes per layer (training included: an IAF trained by
  maximum likelihood is ``D`` times slower per step than a MAF).

With ``D = 1`` zuko's autoregressive layers reduce to element-wise affine maps, so the flow is
a Gaussian.

Both are trained by maximum likelihood with Adam on standardized latents (``(z - shift) /
scale`` per dimension, with the data's mean and standard deviation, floored at ``1e-6``);
``log_prob`` adds the standardization's ``-sum(log scale)``. Saved as the flow's
``state_dict`` (prefixed ``flow.``) plus ``shift`` and ``scale`` in safetensors.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import zuko  # type: ignore[import-untyped]
from torch import nn

from multivae.samplers.base import LatentSampler, expect_tensors, register_sampler

SCALE_FLOOR = 1e-6
"""Smallest per-dimension standard deviation used to standardize (constant dimensions)."""


class AutoregressiveFlowSampler(LatentSampler):
    """A stack of affine autoregressive transforms trained on the latents (MAF or IAF).

    Args:
        n_layers: Number of autoregressive transforms.
        hidden_size: Width of each MADE hidden layer.
        hidden_layers: Number of hidden layers of each MADE.
        steps: Adam steps of maximum-likelihood training.
        batch_size: Latents per step (drawn with replacement; all of them if fewer).
        lr: Adam's learning rate.
        seed: Seeds the initialization and the batches; fitting twice gives the same flow.
    """

    inverse: ClassVar[bool]

    def __init__(
        self,
        n_layers: int = 5,
        hidden_size: int = 64,
        hidden_layers: int = 2,
        steps: int = 500,
        batch_size: int = 256,
        lr: float = 1e-3,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value, minimum in (
            ("n_layers", n_layers, 1),
            ("hidden_size", hidden_size, 1),
            ("hidden_layers", hidden_layers, 1),
            ("steps", steps, 1),
            ("batch_size", batch_size, 1),
            ("seed", seed, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(
                    f"{self.kind}: expected an integer {name} >= {minimum}, found {value!r}"
                )
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
            raise ValueError(f"{self.kind}: expected a learning rate lr > 0, found {lr!r}")
        self.n_layers = n_layers
        self.hidden_size = hidden_size
        self.hidden_layers = hidden_layers
        self.steps = steps
        self.batch_size = batch_size
        self.lr = float(lr)
        self.seed = seed
        self.flow: nn.Module | None = None
        self.shift = torch.empty(0)
        self.scale = torch.empty(0)

    def config(self) -> dict[str, Any]:
        """The constructor options."""
        return {
            "n_layers": self.n_layers,
            "hidden_size": self.hidden_size,
            "hidden_layers": self.hidden_layers,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "seed": self.seed,
        }

    def min_samples(self) -> tuple[int, str]:
        """Two latents, to standardize them."""
        return 2, "two to standardize them"

    def _build(self, dim: int) -> nn.Module:
        """A freshly initialized flow over ``dim`` features (seeded, leaving the global RNG)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            maf = zuko.flows.MAF(
                features=dim,
                transforms=self.n_layers,
                hidden_features=(self.hidden_size,) * self.hidden_layers,
            )
        if not self.inverse:
            module: nn.Module = maf
            return module
        iaf: nn.Module = zuko.flows.Flow(maf.transform.inv, maf.base)
        return iaf

    def _fit(self, latents: torch.Tensor) -> None:
        data = latents.to(torch.float32)
        self.shift = data.mean(dim=0)
        self.scale = data.std(dim=0).clamp_min(SCALE_FLOOR)
        standardized = (data - self.shift) / self.scale
        flow = self._build(data.shape[1])
        optimizer = torch.optim.Adam(flow.parameters(), lr=self.lr)
        generator = torch.Generator().manual_seed(self.seed)
        count = min(self.batch_size, len(data))
        flow.train()
        for step in range(self.steps):
            rows = torch.randint(len(data), (count,), generator=generator)
            loss = -flow().log_prob(standardized[rows]).mean()
            if not torch.isfinite(loss):
                raise RuntimeError(
                    f"{type(self).__name__}.fit: training diverged at step {step} (loss "
                    f"{loss.item()}); try a lower lr"
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        flow.eval()
        self.flow = flow

    def _module(self) -> nn.Module:
        assert self.flow is not None
        return self.flow

    def _sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        noise = torch.randn((n, self.dim), generator=generator)
        with torch.no_grad():
            standardized: torch.Tensor = self._module()().transform.inv(noise)
        return self.shift + self.scale * standardized

    def _log_prob(self, z: torch.Tensor) -> torch.Tensor:
        standardized = (z.to(torch.float32) - self.shift) / self.scale
        log_density: torch.Tensor = self._module()().log_prob(standardized)
        return (log_density - torch.log(self.scale).sum()).to(z.dtype)

    def _state(self) -> dict[str, torch.Tensor]:
        state = {f"flow.{k}": v for k, v in self._module().state_dict().items()}
        return {**state, "shift": self.shift, "scale": self.scale}

    def _restore(self, dim: int, tensors: dict[str, torch.Tensor]) -> None:
        flow = self._build(dim)
        shapes = {f"flow.{k}": tuple(v.shape) for k, v in flow.state_dict().items()}
        expect_tensors(tensors, {**shapes, "shift": (dim,), "scale": (dim,)})
        if not bool((tensors["scale"] > 0).all()):
            raise ValueError("tensor 'scale': expected positive values")
        flow.load_state_dict(
            {k.removeprefix("flow."): v for k, v in tensors.items() if k.startswith("flow.")},
            strict=True,
        )
        flow.eval()
        self.flow = flow
        self.shift = tensors["shift"].to(torch.float32)
        self.scale = tensors["scale"].to(torch.float32)


@register_sampler
class MAFSampler(AutoregressiveFlowSampler):
    """Masked autoregressive flow: one-pass density, ``D``-pass sampling (see the module)."""

    kind: ClassVar[str] = "maf"
    inverse: ClassVar[bool] = False


@register_sampler
class IAFSampler(AutoregressiveFlowSampler):
    """Inverse autoregressive flow: one-pass sampling, ``D``-pass density (see the module)."""

    kind: ClassVar[str] = "iaf"
    inverse: ClassVar[bool] = True
