"""Normalizing flows over latents, chosen by registered name: the masked autoregressive flow.

A flow ``f`` is an invertible map of ``D``-dimensional latents. :meth:`Flow.forward` maps ``z``
to ``u = f(z)`` with ``log |det df/dz|`` (the direction that evaluates a density, in one
parallel pass); :meth:`Flow.inverse` maps ``u`` back to ``z = f^{-1}(u)`` with ``log |det
df^{-1}/du|`` (the direction that samples). :class:`FlowPosterior` pushes a Gaussian forward
through ``f^{-1}``: ``z = f^{-1}(u)``, ``u ~ N(mean, exp(logvar))``, so that

    log q(z) = log N(f(z); mean, exp(logvar)) + log |det df/dz|

(JNF's unimodal posteriors). A config names its flow as ``{name, kwargs}`` (:class:`FlowConfig`),
plain data checked when the config is built, and the flow's weights live in the model's state
dict: nothing is pickled.

The registered flow, ``maf``, is Papamakarios et al.'s masked autoregressive flow ("Masked
Autoregressive Flow for Density Estimation", NeurIPS 2017, arXiv 1705.07057) as pythae 0.1.2
builds it: ``blocks`` MADE networks (Germain et al. 2015, arXiv 1502.03509), each an MLP with
masked weights whose outputs ``shift_i`` and ``log_scale_i`` depend on ``z_1..z_{i-1}`` only,
giving the affine autoregressive map ``u_i = (z_i - shift_i) exp(-log_scale_i)``; the order of
the dimensions is reversed between blocks. Differences from pythae's MAF: no batch-norm option
(pythae's ``include_batch_norm``, off by default); the inverse is a fixed-point iteration
without in-place writes (the same map, and differentiable, so draws are reparameterized); the
output comes back in the input's order (pythae
reverses after every block, so its output is reversed for an odd number of blocks), so that
MADEs which output 0 make the identity whatever the number of blocks; hidden units get
degrees ``1 .. D-1`` cyclically and, for ``D = 1``, degree 0 (a constant affine map, where
pythae divides by ``D - 1 = 0``); the masks are recomputed from the sizes in each pass on the
weights' device instead of being buffers (a buffer would be broadcast by
``DistributedDataParallel`` in every forward pass, which a compiled forward cannot trace).

Every flow computes in float32 (float64 for float64 inputs), with autocast off, whatever its
caller runs under: it is part of a log-density.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from multivae.config import Config, ConfigError
from multivae.nn.fusion import normal_log_density

__all__ = [
    "MADE",
    "MAF",
    "Flow",
    "FlowConfig",
    "FlowPosterior",
    "MAFOptions",
    "build_flow",
    "register_flow",
]


class Flow(nn.Module):
    """An invertible map of ``(..., D)`` latents with the log-determinants of its Jacobians."""

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``u = f(z)`` and ``log |det df/dz|``, shapes ``z.shape`` and ``z.shape[:-1]``."""
        raise NotImplementedError

    def inverse(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z = f^{-1}(u)`` and ``log |det df^{-1}/du|``, shapes ``u.shape``, ``u.shape[:-1]``."""
        raise NotImplementedError

    def detached_forward(self) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`forward` with the current weights, detached, for many evaluations in a row.

        No gradient reaches the weights (gradients in ``z`` still flow); what can be prepared
        once is (MAF's masked weights). For HMC, which evaluates a density a thousand times.
        """
        return self.forward


FlowBuilder = Callable[[int, Any], Flow]
FLOWS: dict[str, tuple[type[Config], FlowBuilder]] = {}
"""Registered flows: name -> (the dataclass of its options, ``builder(dim, options)``)."""


def register_flow(name: str, options: type[Config]) -> Callable[[FlowBuilder], FlowBuilder]:
    """Register ``builder(dim, options) -> Flow`` under ``name``, with its options' dataclass."""

    def decorate(builder: FlowBuilder) -> FlowBuilder:
        FLOWS[name] = (options, builder)
        return builder

    return decorate


@dataclass
class FlowConfig(Config):
    """A flow by registered name, with its options (checked when the config is built).

    Attributes:
        name: A registered flow (``maf``).
        kwargs: Its options (for ``maf``, the fields of :class:`MAFOptions`).
    """

    name: str = "maf"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.options()

    def options(self) -> Config:
        """The flow's options as their dataclass.

        Raises:
            ConfigError: For an unknown name (with the closest registered one), an unknown
                option or a value its dataclass refuses.
        """
        if self.name not in FLOWS:
            close = difflib.get_close_matches(self.name, FLOWS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown flow {self.name!r}; registered: {sorted(FLOWS)}.{hint}")
        options, _ = FLOWS[self.name]
        return options.from_dict(dict(self.kwargs), where="flow.kwargs")


def build_flow(spec: FlowConfig, dim: int) -> Flow:
    """The flow ``spec`` names, over ``dim``-dimensional latents."""
    if dim < 1:
        raise ConfigError(f"a flow needs latents of dimension >= 1, found {dim}")
    _, builder = FLOWS[spec.name]
    return builder(dim, spec.options())


def float32_region(device: torch.device) -> AbstractContextManager[Any]:
    """Autocast switched off on ``device`` (nothing to switch off where it has no autocast)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()


@dataclass
class MAFOptions(Config):
    """Options of the masked autoregressive flow (pythae's ``MAFConfig`` defaults).

    Attributes:
        blocks: Number of MADE blocks; the order of the dimensions is reversed between two.
        hidden: Hidden sizes of each MADE (pythae: ``n_hidden_in_made`` layers of
            ``hidden_size``); empty for a linear autoregressive conditioner.
    """

    blocks: int = 2
    hidden: tuple[int, ...] = (128, 128, 128)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blocks < 1:
            raise ConfigError(f"flow 'maf': blocks must be >= 1, found {self.blocks}")
        if any(size < 1 for size in self.hidden):
            raise ConfigError(f"flow 'maf': hidden sizes must be >= 1, found {list(self.hidden)}")


class MADE(nn.Module):
    """A masked MLP: ``shift_i`` and ``log_scale_i`` depend on ``z_1 .. z_{i-1}`` only.

    Input ``i`` (1-based) has degree ``i``; hidden unit ``k`` of a layer has degree ``1 + (k
    mod (D - 1))`` (0 when ``D = 1``). A hidden unit sees the units below of degree at most its
    own; output ``i`` sees the last hidden units of degree below ``i`` (the inputs themselves
    without hidden layers), so output 1 is a constant.

    Args:
        dim: Latent dimension ``D``.
        hidden: Hidden sizes.
    """

    def __init__(self, dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.dim = dim
        sizes = [dim, *hidden]
        self.hidden_layers = nn.ModuleList(
            nn.Linear(fan_in, fan_out) for fan_in, fan_out in itertools.pairwise(sizes)
        )
        self.output = nn.Linear(sizes[-1], 2 * dim)
        self.hidden_sizes = tuple(hidden)

    def masks(self, device: torch.device) -> list[torch.Tensor]:
        """The ``(out, in)`` masks of the hidden layers, then of the output layer."""
        degrees = torch.arange(1, self.dim + 1, device=device)
        inputs = degrees
        masks = []
        for size in self.hidden_sizes:
            units = torch.arange(size, device=device)
            hidden = (units % max(self.dim - 1, 1) + 1) * int(self.dim > 1)
            masks.append(hidden.unsqueeze(1) >= degrees.unsqueeze(0))
            degrees = hidden
        outputs = torch.cat([inputs, inputs])
        masks.append(outputs.unsqueeze(1) > degrees.unsqueeze(0))
        return masks

    def masked_layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(weight * mask, bias)`` of the hidden layers, then of the output layer."""
        layers = [*self.hidden_layers, self.output]
        masks = self.masks(self.output.weight.device)
        return [
            (layer.weight * mask, layer.bias) for layer, mask in zip(layers, masks, strict=True)
        ]

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``shift`` and ``log_scale``, each shaped like ``z`` (``(..., D)``)."""
        return made_outputs(z, self.masked_layers())


def made_outputs(
    z: torch.Tensor, layers: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A MADE's ``shift`` and ``log_scale`` from its masked layers (:meth:`MADE.masked_layers`)."""
    h = z
    for weight, bias in layers[:-1]:
        h = F.relu(F.linear(h, weight, bias))
    shift, log_scale = F.linear(h, *layers[-1]).chunk(2, dim=-1)
    return shift, log_scale


class MAF(Flow):
    """Masked autoregressive flow: MADE blocks, the order reversed between two.

    Block ``b`` maps ``x`` to ``(x - shift_b(x)) exp(-log_scale_b(x))``, reading the dimensions
    in reversed order when ``b`` is odd; the output is in the input's order. The forward pass (the
    density) is one pass per block; the inverse (sampling) is sequential: ``D`` passes per block,
    as the fixed-point iteration ``x <- y exp(log_scale(x)) + shift(x)`` is exact after ``D``
    steps (pass ``k`` settles dimension ``k``, which depends on the earlier ones only).

    Args:
        dim: Latent dimension ``D``.
        options: Number of blocks and hidden sizes.
    """

    def __init__(self, dim: int, options: MAFOptions) -> None:
        super().__init__()
        self.dim = dim
        self.blocks = nn.ModuleList(MADE(dim, options.hidden) for _ in range(options.blocks))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``u = f(z)`` and ``log |det df/dz| = -sum log_scale`` over the blocks."""
        with float32_region(z.device):
            return self._forward(z, [block.masked_layers() for block in self.made_blocks])

    def detached_forward(self) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`forward` with the masked weights computed once, detached."""
        with float32_region(self.made_blocks[0].output.weight.device):
            layers = [
                [(weight.detach(), bias.detach()) for weight, bias in block.masked_layers()]
                for block in self.made_blocks
            ]

        def forward(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with float32_region(z.device):
                return self._forward(z, layers)

        return forward

    @staticmethod
    def _forward(
        z: torch.Tensor, blocks: Sequence[Sequence[tuple[torch.Tensor, torch.Tensor]]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = z.to(torch.promote_types(z.dtype, torch.float32))
        log_det = x.new_zeros(x.shape[:-1])
        for index, layers in enumerate(blocks):
            if index > 0:
                x = x.flip(-1)
            shift, log_scale = made_outputs(x, layers)
            x = (x - shift) * torch.exp(-log_scale)
            log_det = log_det - log_scale.sum(-1)
        # Back in the input's order, so that MADEs which output 0 make the identity.
        return (x.flip(-1) if len(blocks) % 2 == 0 else x), log_det

    @property
    def made_blocks(self) -> list[MADE]:
        """The MADE blocks, in the order of the forward pass."""
        return [block for block in self.blocks if isinstance(block, MADE)]

    def inverse(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z = f^{-1}(u)`` and ``log |det df^{-1}/du| = sum log_scale`` over the blocks."""
        with float32_region(u.device):
            y = u.to(torch.promote_types(u.dtype, torch.float32))
            if len(self.blocks) % 2 == 0:
                y = y.flip(-1)
            log_det = y.new_zeros(y.shape[:-1])
            for index in reversed(range(len(self.blocks))):
                block = self.blocks[index]
                x = y
                for _ in range(self.dim):
                    shift, log_scale = block(x)
                    x = y * torch.exp(log_scale) + shift
                # The last pass's log_scale was taken where every dimension it reads was
                # already settled: it is the log-scale at the final x.
                log_det = log_det + log_scale.sum(-1)
                y = x.flip(-1) if index > 0 else x
        return y, log_det


@register_flow("maf", MAFOptions)
def _maf(dim: int, options: MAFOptions) -> Flow:
    return MAF(dim, options)


class FlowPosterior:
    """``z = f^{-1}(u)``, ``u ~ N(mean, exp(logvar))``: a Gaussian pushed through a flow.

    Args:
        flow: The flow ``f`` (latent to base).
        mean: ``(N, D)`` the base Gaussian's mean.
        logvar: ``(N, D)`` its log-variance.
    """

    def __init__(self, flow: Flow, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        self.flow = flow
        self.base_mean = mean
        self.base_logvar = logvar

    @property
    def mean(self) -> torch.Tensor:
        """``f^{-1}(mean)``, the image of the base's mean (not the mean of ``q``), ``(N, D)``."""
        return self.flow.inverse(self.base_mean)[0]

    def rsample(self, n_samples: int) -> torch.Tensor:
        """Reparameterized samples ``(n_samples, N, D)``: ``f^{-1}(mean + std * noise)``."""
        noise = torch.randn(
            (n_samples, *self.base_mean.shape),
            dtype=self.base_mean.dtype,
            device=self.base_mean.device,
        )
        return self.flow.inverse(self.base_mean + torch.exp(0.5 * self.base_logvar) * noise)[0]

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log N(f(z); mean, exp(logvar)) + log |det df/dz|``, shape ``z.shape[:-1]``."""
        u, log_det = self.flow.forward(z)
        return normal_log_density(u, self.base_mean, self.base_logvar) + log_det
