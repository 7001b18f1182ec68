"""JNF: a joint VAE whose unimodal posteriors are normalizing flows, trained in two stages.

Senellart, Chadebec and Allassonnière, "Improving Multimodal Joint Variational Autoencoders
through Normalizing Flows and Correlation Analysis", arXiv 2305.11832 (2023); the journal
version, which MultiVae cites, is Senellart and Allassonnière, "Bridging the inference gap in
Multimodal Variational Autoencoders", arXiv 2502.03952 (2025). The reference code is MultiVae's
``jnf`` model (``jnf_model.py``, version 1.0.3); its variant JNF-DCCA was removed from MultiVae
and is not here.

A shared latent ``z`` with prior ``p(z) = N(0, I)``, decoders ``p(x_m | z)``, a joint encoder
``q(z | X)`` (Gaussian) and per modality a unimodal posterior that is a Gaussian pushed through
a flow: ``u ~ N(mu_m(x_m), sigma_m^2(x_m))``, ``z = f_m^{-1}(u)``, so

    log q_m(z | x_m) = log N(f_m(z); mu_m, sigma_m^2) + log |det df_m/dz|.

``f_m`` is a masked autoregressive flow (:mod:`multivae.nn.flows`; pythae's defaults: two MADE
blocks of three hidden layers of 128, the order reversed between them), chosen by ``flow``.

Training, in two stages (:attr:`JNF.stages`), on a sample observed on ``O``:

* ``joint``: the joint encoder and the decoders, by the beta-ELBO
  ``loss = -sum_{m in O} lambda_m log p(x_m | z) + w beta KL(q(z | X_O) || p)``, ``z ~ q(z |
  X_O)``, with ``w`` rising linearly from 0 to 1 over the first ``warmup`` epochs of the stage
  (``warmup: 0``, the default and the reference, gives ``w = 1``). The unimodal encoders and
  flows are frozen (they take no part).
* ``flows``: the unimodal encoders and flows; the joint encoder, the decoders and the
  likelihoods are frozen. With one draw ``z ~ q(z | X_O)`` and no gradient through it,
  ``loss = sum_{m in O} [log q(z | X_O) - log q_m(z | x_m)]``, a one-draw estimate of
  ``sum_{m in O} KL(q(z | X_O) || q_m)`` (the part ``kl_experts``): its gradient is the
  reference's ``-sum_m log q_m(z | x_m)``, and its value is 0 when every flow posterior matches
  the joint one.

Incomplete samples (the reference refuses them). The joint encoder is a
:class:`~multivae.nn.joint.MaskedJointEncoder`, so ``q(z | X_O)`` exists for every presence
pattern; stage 1 scores the observed modalities given it, and stage 2 fits each observed ``q_m``
to it: under missingness completely at random the minimiser of ``E[-log q_m(z | x_m)]`` is
``E[q(z | X_O) | x_m]``, close to ``p(z | x_m)``. With ``complete_only`` only complete samples
count, as in the reference (the others contribute exactly 0 and a batch without a complete
sample skips its optimizer step). A sample with nothing observed contributes exactly 0.

Inference given a subset ``S`` (:meth:`JNF.posterior`), per sample, with ``S_O`` the modalities
of ``S`` it has:

* ``S`` is every modality and the sample is complete: the joint encoder.
* one modality in ``S_O``: its flow posterior; the "mean" is ``f_m^{-1}(mu_m)``.
* two or more: ``p(z | X_S)`` is proportional to ``prod_m p(z | x_m) / p(z)^(|S_O| - 1)``, so
  Hamiltonian Monte Carlo on
  ``log pi(z) = sum_{m in S_O} log q_m(z | x_m) - (|S_O| - 1) log p(z)`` (``divide_prior:
  exact``; ``once`` subtracts ``log p(z)`` once, the reference's rule, exact for two modalities
  only). Chains start from a draw of one of the ``S_O`` flow posteriors, chosen uniformly, run
  ``hmc_steps`` Metropolis steps of ``hmc_leapfrog_steps`` leapfrog steps of ``hmc_step_size``
  with unit mass, accept or reject each chain on its own and reject non-finite proposals (the
  target is improper in the tails when the experts' precisions sum to less than
  ``|S_O| - 1``). This posterior has samples but no density: its ``log_prob`` raises
  ``NotImplementedError``; its ``mean`` is the average of ``hmc_mean_chains`` chains drawn from
  a generator seeded with 0, so that it is deterministic. The reference's settings (100 steps
  of 10 leapfrog steps of 0.01) move a chain by about 0.1 per step: they mix slowly where the
  target is wider than that (in the hand test, a target of standard deviation 0.67 keeps a
  variance 13% too high), so ``hmc_step_size`` should follow the posteriors' scale.
* none: the prior.

Likelihoods: the joint NLL's proposal (:meth:`JNF.joint_proposal`) is the joint encoder given
the observed scored modalities, ``q(z | X_{gen and O})``, which has a density for every
presence pattern: the joint posterior itself on complete samples (the reference's proposal),
the masked encoder's posterior on the others (any density with full support gives a consistent
estimate; with ``complete_only`` the encoder never saw an incomplete input, so the estimate stays
consistent but its variance can be high). Conditional NLLs need only samples of
``q(z | x_cond)``, which the posterior above draws (the base class's estimator), so every NLL
applies; a caller that asks the HMC posterior for a density gets ``NotImplementedError``.

Deliberate differences from the reference code (MultiVae):

* Incomplete samples train as above; ``complete_only`` is the reference's behaviour.
* An optional KL warm-up in stage 1 (``warmup``; off by default, as in the reference).
* HMC divides by the prior ``|S_O| - 1`` times (the reference: once); it starts from a flow
  posterior sample, ``f^{-1}(mu + sigma eps)`` (the reference starts from the Gaussian base
  sample ``u`` itself, not pushed through ``f^{-1}``); it rejects non-finite proposals; it draws
  from torch's generator (the reference chooses the start expert with NumPy) and enables
  autograd itself, so it runs under ``torch.no_grad``; it reuses the gradient at the end of a
  trajectory instead of computing it twice.
* Stage 2 does not compute the joint ELBO (the reference recomputes it for its metrics); its
  loss adds ``log q(z | X)``, a constant for the trained parameters, so that it reads as a KL.
* The stages are the training loop's: their lengths come from ``training.stage_epochs`` (the
  reference's ``warmup``, 10 epochs of stage 1), each stage gets fresh optimizers (the
  reference resets at ``warmup + 1``) and the best stage-1 weights are restored before stage 2
  (:attr:`JNF.restore_best_between_stages`, as the reference's trainer).
* The loss is a per-sample mean over the batch (the reference divides a batch sum by its size:
  the same).
* The joint encoder is built from the config: a feature network per modality (its encoder's
  architecture, or ``joint_encoders``), features zeroed where absent, the presence bits, then
  an MLP (``joint_hidden``; the reference's default head has two hidden layers of 512).
* The flows have no batch norm (pythae's default) and give their output in the input's order
  (see :mod:`multivae.nn.flows`).

Randomness, all from torch's global generator: the objective draws one standard normal tensor
``(N, latent_dim)``, the noise of ``z ~ q(z | X_O)``, in either stage. A posterior's ``rsample(n)``
draws ``(n, N, latent_dim)`` standard normals (the noise of every kind of row); then, when
``S`` can hold two observed modalities, ``(n, N)`` uniforms (the start expert of each chain)
and, in each Metropolis step, ``(n, N, latent_dim)`` momenta and ``(n, N)`` uniforms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.models.base import (
    Capabilities,
    GaussianPosterior,
    ModelConfig,
    MultimodalVAE,
    Objective,
    Posterior,
)
from multivae.nn.architectures import ArchitectureConfig
from multivae.nn.flows import Flow, FlowConfig, build_flow, float32_region
from multivae.nn.fusion import LOGVAR_BOUNDS, normal_log_density
from multivae.nn.joint import MaskedJointEncoder, build_masked_joint_encoder
from multivae.nn.priors import Prior
from multivae.objectives import kl_standard_normal
from multivae.registry import register_model

DividePrior = Literal["exact", "once"]


@dataclass
class JNFConfig(ModelConfig):
    """Configuration of :class:`JNF`.

    Attributes:
        beta: Weight of the KL to the prior in stage ``joint``.
        warmup: Epochs of stage ``joint`` over which the KL weight rises linearly from 0 to 1
            (0: none, as the reference, whose ``warmup`` is the length of stage 1, here
            ``training.stage_epochs``).
        complete_only: Train on complete samples only (the reference); incomplete ones
            contribute 0.
        joint_feature_dim: Size of the features each modality gives the joint encoder.
        joint_hidden: Hidden sizes of the joint encoder's MLP head.
        joint_encoders: Architecture of the joint encoder's feature network, per modality; a
            modality not listed uses its own encoder's architecture.
        flow: The flow of every unimodal posterior (``maf`` and its options).
        divide_prior: ``exact``: HMC's target divides the product of ``k`` experts by the prior
            ``k - 1`` times; ``once``: once (the reference).
        hmc_steps: Metropolis steps of a chain.
        hmc_leapfrog_steps: Leapfrog steps per Metropolis step.
        hmc_step_size: Leapfrog step size.
        hmc_mean_chains: Chains averaged for the ``mean`` of an HMC posterior.
    """

    beta: float = 1.0
    warmup: float = 0.0
    complete_only: bool = False
    joint_feature_dim: int = 128
    joint_hidden: tuple[int, ...] = (512, 512)
    joint_encoders: dict[str, ArchitectureConfig] = field(default_factory=dict)
    flow: FlowConfig = field(default_factory=FlowConfig)
    divide_prior: DividePrior = "exact"
    hmc_steps: int = 100
    hmc_leapfrog_steps: int = 10
    hmc_step_size: float = 0.01
    hmc_mean_chains: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ConfigError(f"jnf: beta must be a finite number >= 0, found {self.beta}")
        if not (math.isfinite(self.warmup) and self.warmup >= 0):
            raise ConfigError(f"jnf: warmup must be a finite number >= 0, found {self.warmup}")
        if self.joint_feature_dim < 1:
            raise ConfigError(
                f"jnf: joint_feature_dim must be >= 1, found {self.joint_feature_dim}"
            )
        if any(size < 1 for size in self.joint_hidden):
            raise ConfigError(
                f"jnf: joint_hidden sizes must be >= 1, found {list(self.joint_hidden)}"
            )
        unknown = sorted(set(self.joint_encoders) - set(self.modalities))
        if unknown:
            raise ConfigError(
                f"jnf: joint_encoders names unknown modalities {unknown}; expected some of "
                f"{list(self.modalities)}"
            )
        for option in ("hmc_steps", "hmc_leapfrog_steps", "hmc_mean_chains"):
            value = getattr(self, option)
            if value < 1:
                raise ConfigError(f"jnf: {option} must be >= 1, found {value}")
        if not (math.isfinite(self.hmc_step_size) and self.hmc_step_size > 0):
            raise ConfigError(
                f"jnf: hmc_step_size must be a finite number > 0, found {self.hmc_step_size}"
            )


@dataclass(frozen=True)
class HMCSettings:
    """How the chains of :func:`hamiltonian_monte_carlo` run.

    Attributes:
        steps: Metropolis steps.
        leapfrog_steps: Leapfrog steps per Metropolis step.
        step_size: Leapfrog step size.
    """

    steps: int
    leapfrog_steps: int
    step_size: float


def _value_and_gradient(
    log_target: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log_target(z)`` per chain and its gradient in ``z`` (autograd must be on)."""
    z = z.detach().requires_grad_(True)
    value = log_target(z)
    (gradient,) = torch.autograd.grad(value.sum(), z)
    return value.detach(), gradient


def hamiltonian_monte_carlo(
    log_target: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    settings: HMCSettings,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Independent HMC chains with unit mass, each accepted or rejected on its own.

    Runs with autograd on (under ``torch.no_grad`` too) and autocast off. A proposal whose
    position, gradient or acceptance ratio is not finite is rejected. No Python branch depends
    on the values, so it runs on the meta device.

    Args:
        log_target: ``(..., D)`` positions to their unnormalized log-density, ``(...)``.
        start: ``(..., D)`` the chains' starting points.
        settings: Steps, leapfrog steps and step size.
        generator: Torch's generator to draw from (the global one by default). Each step
            draws ``start.shape`` standard normal momenta, then ``start.shape[:-1]`` uniforms.

    Returns:
        ``(..., D)`` the chains' positions after ``settings.steps`` steps, without gradient.
    """
    step = settings.step_size
    device = start.device
    with torch.enable_grad(), float32_region(device):
        z = start.detach().float()
        log_p, gradient = _value_and_gradient(log_target, z)
        for _ in range(settings.steps):
            momentum = torch.randn(z.shape, generator=generator, device=device)
            uniform = torch.rand(z.shape[:-1], generator=generator, device=device)
            position = z
            velocity = momentum + 0.5 * step * gradient
            for leap in range(settings.leapfrog_steps):
                position = position + step * velocity
                new_log_p, new_gradient = _value_and_gradient(log_target, position)
                last = leap == settings.leapfrog_steps - 1
                velocity = velocity + (0.5 * step if last else step) * new_gradient
            log_ratio = (new_log_p - 0.5 * velocity.square().sum(-1)) - (
                log_p - 0.5 * momentum.square().sum(-1)
            )
            finite = (
                torch.isfinite(log_ratio)
                & torch.isfinite(position).all(-1)
                & torch.isfinite(new_gradient).all(-1)
            )
            accept = finite & (torch.log(uniform) < log_ratio)
            z = torch.where(accept.unsqueeze(-1), position, z)
            log_p = torch.where(accept, new_log_p, log_p)
            gradient = torch.where(accept.unsqueeze(-1), new_gradient, gradient)
    return z.detach()


class JNFPosterior:
    """JNF's posterior over ``(N, D)`` latents given the modalities ``S``, row by row.

    Per row (see the module docstring): the joint encoder's Gaussian where ``S`` is every
    modality and the row is complete, the flow posterior of its one observed expert, HMC over
    the product of its two or more observed experts divided by the prior, or the prior (``N(0,
    I)``) when it has none. Every kind is computed for every row and selected with
    ``torch.where``; only the HMC is skipped when no row needs it (not on the meta device,
    which has no values to look at).

    Args:
        experts: The flows of the modalities of ``S``, in the model's order.
        means: ``(len(experts), N, D)`` their base Gaussians' means.
        logvars: ``(len(experts), N, D)`` their log-variances.
        mask: ``(len(experts), N)`` which of them each row has.
        joint: The joint encoder's mean and log-variance ``(N, D)`` when ``S`` is every
            modality, else ``None``.
        prior: The prior, ``N(0, I)``.
        divide_prior: ``exact`` or ``once`` (see :class:`JNFConfig`).
        hmc: The chains' settings.
        mean_chains: Chains averaged for :attr:`mean`.
        subset: The names of ``S``, for messages.
    """

    def __init__(
        self,
        experts: Sequence[Flow],
        means: torch.Tensor,
        logvars: torch.Tensor,
        mask: torch.Tensor,
        joint: tuple[torch.Tensor, torch.Tensor] | None,
        prior: Prior,
        divide_prior: DividePrior,
        hmc: HMCSettings,
        mean_chains: int,
        subset: Sequence[str],
    ) -> None:
        self.experts = list(experts)
        self.means = means
        self.logvars = logvars
        self.mask = mask
        self.joint = joint
        self.prior = prior
        self.divide_prior = divide_prior
        self.hmc = hmc
        self.mean_chains = mean_chains
        self.subset = tuple(subset)
        count = mask.sum(0)
        complete = count == len(self.experts)
        self.joint_rows = complete if joint is not None else torch.zeros_like(complete)
        self.hmc_rows = (count >= 2) & ~self.joint_rows
        # Whether a row can need HMC at all, from S alone: two experts or more, and with the
        # joint encoder at hand, a subset that is not every modality (three or more).
        self.sampled_only = len(self.experts) >= 2 and (joint is None or len(self.experts) >= 3)

    @property
    def device(self) -> torch.device:
        """Where the posterior's tensors are."""
        return self.mask.device

    def _needs_hmc(self) -> bool:
        if not self.sampled_only:
            return False
        return self.device.type == "meta" or bool(self.hmc_rows.any())

    def _expert_draws(self, noise: torch.Tensor, uniform: torch.Tensor | None) -> torch.Tensor:
        """``f_k^{-1}(mu_k + sigma_k noise)`` for one observed expert ``k`` per chain.

        ``k`` is the ``floor(uniform * count)``-th observed expert of the row in the model's
        order (the first one without ``uniform``); ``noise`` itself where the row has none.
        """
        count = self.mask.sum(0)
        if uniform is None:
            rank = torch.zeros_like(count)
        else:
            rank = torch.minimum((uniform * count).long(), (count - 1).clamp(min=0))
        order = self.mask.long().cumsum(0) - 1
        z = noise
        for index, flow in enumerate(self.experts):
            chosen = self.mask[index] & (order[index] == rank)
            base = self.means[index] + torch.exp(0.5 * self.logvars[index]) * noise
            z = torch.where(chosen.unsqueeze(-1), flow.inverse(base)[0], z)
        return z

    def log_target(self, z: torch.Tensor) -> torch.Tensor:
        """``sum_{m in S_O} log q_m(z | x_m) - c log p(z)`` for chains ``(..., N, D)``.

        ``c = |S_O| - 1`` (``exact``) or ``min(|S_O| - 1, 1)`` (``once``): a row with no
        expert gets the prior, one with one expert that expert's density.
        """
        excess = self.mask.sum(0).to(z.dtype) - 1
        if self.divide_prior == "once":
            excess = excess.clamp(max=1.0)
        total = -excess * self.prior.log_prob(z)
        zero = torch.zeros((), dtype=z.dtype, device=z.device)
        for index, flow in enumerate(self._detached_flows):
            u, log_det = flow(z)
            mean, logvar = self.means[index].detach(), self.logvars[index].detach()
            log_q = normal_log_density(u, mean, logvar) + log_det
            total = total + torch.where(self.mask[index], log_q, zero)
        return total

    @cached_property
    def _detached_flows(self) -> list[Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
        """The experts' flows prepared for the HMC's many evaluations (no weight gradients)."""
        return [flow.detached_forward() for flow in self.experts]

    def rsample(self, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Samples ``(n_samples, N, D)``: reparameterized except on rows sampled by HMC.

        Draws, in order: the ``(n, N, D)`` noise of every row, then (when ``S`` can hold two
        observed modalities) the ``(n, N)`` uniforms that choose each chain's start expert,
        then the HMC's draws (see :func:`hamiltonian_monte_carlo`).
        """
        shape = (n_samples, *self.means.shape[1:])
        noise = torch.randn(shape, generator=generator, device=self.device)
        uniform = None
        if self.sampled_only:
            uniform = torch.rand(shape[:-1], generator=generator, device=self.device)
        z = self._expert_draws(noise, uniform)
        if self.joint is not None:
            mean, logvar = self.joint
            z = torch.where(
                self.joint_rows.unsqueeze(-1), mean + torch.exp(0.5 * logvar) * noise, z
            )
        if self._needs_hmc():
            chains = hamiltonian_monte_carlo(self.log_target, z, self.hmc, generator)
            z = torch.where(self.hmc_rows.unsqueeze(-1), chains, z)
        return z

    @cached_property
    def mean(self) -> torch.Tensor:
        """``(N, D)``: the joint mean, ``f_m^{-1}(mu_m)``, 0 (the prior's) or an HMC average.

        HMC rows average ``mean_chains`` chains drawn from a generator seeded with 0, so the
        mean is deterministic and leaves the global generator alone.
        """
        zero = torch.zeros((1, *self.means.shape[1:]), device=self.device)
        z = self._expert_draws(zero, None)[0]
        if self.joint is not None:
            z = torch.where(self.joint_rows.unsqueeze(-1), self.joint[0], z)
        if self._needs_hmc():
            generator = None
            if self.device.type != "meta":
                generator = torch.Generator(device=self.device).manual_seed(0)
            chains = self.rsample(self.mean_chains, generator).mean(0)
            z = torch.where(self.hmc_rows.unsqueeze(-1), chains, z)
        return z

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log q(z)``, shape ``z.shape[:-1]``, where no row can need HMC.

        Raises:
            NotImplementedError: When ``S`` holds two modalities or more (and is not exactly
                every modality of a two-modality model): HMC samples that posterior, which has
                no closed-form density.
        """
        if self.sampled_only:
            raise NotImplementedError(
                f"jnf: the posterior given {list(self.subset)} is sampled by Hamiltonian Monte "
                "Carlo wherever a sample has two or more of these modalities; it has no "
                "closed-form density (use rsample, or joint_proposal for importance sampling)"
            )
        zero = torch.zeros((), dtype=z.dtype, device=z.device)
        total = torch.where(self.mask.any(0), zero, self.prior.log_prob(z))
        for index, flow in enumerate(self.experts):
            u, log_det = flow(z)
            log_q = normal_log_density(u, self.means[index], self.logvars[index]) + log_det
            total = total + torch.where(self.mask[index], log_q, zero)
        if self.joint is not None:
            mean, logvar = self.joint
            total = torch.where(self.joint_rows, normal_log_density(z, mean, logvar), total)
        return total


_SHORT_CHAINS = {"hmc_steps": 3, "hmc_leapfrog_steps": 2, "hmc_mean_chains": 2}


@register_model
class JNF(MultimodalVAE):
    """JNF (Senellart et al. 2023): a joint VAE, then flow posteriors fitted to it.

    Args:
        config: The model's config.
    """

    name: ClassVar[str] = "jnf"
    config_class: ClassVar[type[ModelConfig]] = JNFConfig
    declared_capabilities: ClassVar[Capabilities] = Capabilities(multi_stage=True)
    stages: tuple[str, ...] = ("joint", "flows")
    restore_best_between_stages: ClassVar[bool] = True
    """True: stage ``flows`` starts from the best weights of stage ``joint``, as the reference's
    trainer does. The flows are fitted to the joint encoder the saved model keeps (frozen from
    then on), so it should be the best joint VAE, not the last epoch's."""
    variant_configs: ClassVar[dict[str, dict[str, Any]]] = {
        # Short chains outside the default: the default's 1,000 leapfrog steps per draw already
        # run the HMC code path, and the variants test other paths.
        "complete-only": {"complete_only": True, **_SHORT_CHAINS},
        "reference-hmc": {"divide_prior": "once", **_SHORT_CHAINS},
        "linear-flow": {"flow": FlowConfig("maf", {"blocks": 1, "hidden": []}), **_SHORT_CHAINS},
    }
    config: JNFConfig

    def __init__(self, config: JNFConfig) -> None:
        super().__init__(config)
        self.joint_encoder: MaskedJointEncoder = build_masked_joint_encoder(
            {
                name: (
                    config.joint_encoders.get(name, spec.encoder),
                    tuple(spec.shape),
                    spec.num_categories,
                )
                for name, spec in config.modalities.items()
            },
            config.joint_feature_dim,
            config.joint_hidden,
            2 * config.latent_dim,
        )
        self.flows = nn.ModuleDict(
            {name: build_flow(config.flow, config.latent_dim) for name in self.modalities}
        )

    def flow(self, name: str) -> Flow:
        """The flow ``f_m`` of a modality's posterior (latent to base)."""
        module = self.flows[name]
        assert isinstance(module, Flow)
        return module

    def frozen_modules(self, stage: str) -> list[str]:
        """``joint``: the unimodal encoders and flows; ``flows``: the rest."""
        if stage == "joint":
            return ["encoders", "flows"]
        return ["joint_encoder", "decoders", "likelihoods"]

    def joint_posterior(self, batch: Batch, mask: torch.Tensor) -> GaussianPosterior:
        """``q(z | X_O)`` from the joint encoder given the presence ``mask`` ``(M, N)``.

        Float32 with clamped log-variances, whatever autocast computed in.
        """
        out = self.joint_encoder(batch.data, mask).float()
        mean, logvar = out.chunk(2, dim=-1)
        return GaussianPosterior(mean, logvar.clamp(*LOGVAR_BOUNDS))

    def expert_log_densities(
        self, z: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """``log q_m(z | x_m)`` of every modality where ``mask``, 0 elsewhere: ``(M, ..., N)``.

        Args:
            z: ``(..., N, D)`` latents.
            means: ``(M, N, D)`` the base Gaussians' means.
            logvars: ``(M, N, D)`` their log-variances.
            mask: ``(M, N)`` the cells to score.
        """
        zero = torch.zeros((), dtype=torch.float32, device=z.device)
        terms = []
        for index, name in enumerate(self.modalities):
            u, log_det = self.flow(name)(z)
            # Absent experts become N(0, I) first: a where's zero gradient times a huge
            # derivative must not give NaN.
            observed = mask[index].unsqueeze(-1)
            mean = torch.where(observed, means[index], zero)
            logvar = torch.where(observed, logvars[index], zero)
            log_q = normal_log_density(u, mean, logvar) + log_det
            terms.append(torch.where(mask[index], log_q, zero))
        return torch.stack(terms)

    def objective(self, batch: Batch) -> Objective:
        """Stage ``joint``: the negative beta-ELBO; stage ``flows``: ``kl_experts``.

        The KL of stage ``joint`` is weighted by :attr:`kl_warmup` (1 without ``warmup``).
        Parts: ``reconstruction`` (weighted) and ``kl`` in stage ``joint``; ``kl_experts``, the
        one-draw estimate of ``sum_{m in O} KL(q(z | X_O) || q_m)``, in stage ``flows``. Rows
        with nothing observed, or incomplete ones with ``complete_only``, give exactly 0.
        """
        presence = self.condition_mask(batch, None)
        usable = presence.all(0) if self.config.complete_only else presence.any(0)
        if self.stage == "joint":
            joint = self.joint_posterior(batch, presence)
            z = joint.rsample(1)[0]
            latents = dict.fromkeys(self.modalities, z)
            reconstruction = self.decoded_log_likelihoods(latents, batch, presence).sum(0)
            kl = kl_standard_normal(joint.mean, joint.logvar)
            warmup = self.kl_warmup
            loss = -reconstruction + warmup * self.config.beta * kl
            parts = {"reconstruction": reconstruction, "kl": kl}
            return Objective(loss, parts, kl_weight=warmup).where(usable)
        with torch.no_grad():
            joint = self.joint_posterior(batch, presence)
            z = joint.rsample(1)[0]
            log_joint = joint.log_prob(z)
        means, logvars = self.unimodal_posteriors(batch)
        log_experts = self.expert_log_densities(z, means, logvars, presence)
        zero = torch.zeros((), dtype=log_experts.dtype, device=log_experts.device)
        kl_experts = torch.where(presence, log_joint - log_experts, zero).sum(0)
        return Objective(kl_experts, {"kl_experts": kl_experts}).where(usable)

    def posterior(self, batch: Batch, cond: Sequence[str] | None = None) -> JNFPosterior:
        """``q(z | observed cond modalities)``, row by row (see :class:`JNFPosterior`).

        Only the encoders of ``cond`` run, and the joint encoder only when ``cond`` is every
        modality.
        """
        self.check_batch(batch)
        mask = self.condition_mask(batch, cond)
        subset = [m for m in self.modalities if cond is None or m in cond]
        rows = [self.modalities.index(m) for m in subset]
        means, logvars = self.unimodal_posteriors(batch, subset)
        joint = None
        if len(subset) == len(self.modalities):
            posterior = self.joint_posterior(batch, mask)
            joint = (posterior.mean, posterior.logvar)
        config = self.config
        return JNFPosterior(
            [self.flow(m) for m in subset],
            means[rows],
            logvars[rows],
            mask[rows],
            joint,
            self.shared_prior,
            config.divide_prior,
            HMCSettings(config.hmc_steps, config.hmc_leapfrog_steps, config.hmc_step_size),
            config.hmc_mean_chains,
            subset,
        )

    def joint_proposal(
        self, batch: Batch, gen: Sequence[str] | None, n_samples: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws from the joint encoder given the observed ``gen`` modalities, with its density.

        ``q(z | X_{gen and O})``: the joint posterior on complete samples, the masked joint
        encoder's Gaussian elsewhere (the HMC posterior has no density to weigh by).
        """
        posterior: Posterior = self.joint_posterior(batch, self.condition_mask(batch, gen))
        z = posterior.rsample(n_samples)
        return z, posterior.log_prob(z)
