"""The thin base of every model: modality encoders, decoders and likelihoods, and the shared API.

A model is built from its config dataclass alone (architectures by registered name), so a config
JSON plus a safetensors file restore it exactly. Subclasses implement :meth:`forward` (the loss,
a per-sample mean, and its named parts), :meth:`encode` (a latent posterior given any subset of
observed modalities) and, when their latent is not a single Gaussian, :meth:`posterior`.

Missing modalities are handled by masks inside fusion and likelihood terms, never by skipping
code per sample: every encoder runs on every batch (absent cells are zeros) and masked terms
contribute exactly zero value and gradient.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Self

import torch
from torch import nn

from multivae.config import Config, ConfigError
from multivae.data.batch import Batch
from multivae.data.schema import DatasetSchema
from multivae.nn.architectures import (
    ArchitectureConfig,
    build_decoder,
    build_encoder,
    default_architectures,
)
from multivae.nn.fusion import LOGVAR_BOUNDS, product_of_experts
from multivae.nn.likelihoods import LIKELIHOODS, ModalityLikelihood
from multivae.nn.posteriors import GaussianPosterior, Posterior
from multivae.nn.priors import Prior, StandardNormalPrior
from multivae.objectives.bounds import log_mean_exp
from multivae.objectives.warmup import linear_warmup

__all__ = [
    "Capabilities",
    "GaussianPosterior",
    "ModalityConfig",
    "ModelConfig",
    "ModelOutput",
    "MultimodalVAE",
    "Posterior",
]


@dataclass
class ModalityConfig(Config):
    """How one modality is encoded, decoded and scored.

    Attributes:
        shape: Shape of one sample (``[]`` for a class index).
        likelihood: ``normal``, ``laplace``, ``bernoulli`` or ``categorical``.
        scale: Standard deviation (normal) or scale (laplace) of the likelihood.
        learn_scale: Learn that scale.
        weight: Rescaling factor of the modality's log-likelihood.
        num_categories: Number of classes of a categorical modality.
        encoder: Encoder architecture.
        decoder: Decoder architecture.
    """

    shape: tuple[int, ...]
    likelihood: str = "normal"
    scale: float = 1.0
    learn_scale: bool = False
    weight: float = 1.0
    num_categories: int | None = None
    encoder: ArchitectureConfig = field(default_factory=lambda: ArchitectureConfig("mlp"))
    decoder: ArchitectureConfig = field(default_factory=lambda: ArchitectureConfig("mlp"))


@dataclass
class ModelConfig(Config):
    """Fields every model shares; each model's config adds its own options.

    Attributes:
        modalities: Modality name -> its config, in a fixed order.
        latent_dim: Dimension of the shared latent.
    """

    modalities: dict[str, ModalityConfig]
    latent_dim: int = 16

    @classmethod
    def from_schema(cls, schema: DatasetSchema, **options: Any) -> Self:
        """A config for the modalities of a dataset, with default architectures.

        Each modality gets the likelihood its dataset suggests and the default encoder and
        decoder for its kind and shape; ``options`` set the model's other fields.
        """
        modalities = {}
        for spec in schema.modalities:
            encoder, decoder = default_architectures(spec.shape, spec.kind)
            modalities[spec.name] = ModalityConfig(
                shape=spec.shape,
                likelihood=spec.likelihood,
                num_categories=spec.num_categories,
                encoder=encoder,
                decoder=decoder,
            )
        return cls(modalities=modalities, **options)


@dataclass(frozen=True)
class Capabilities:
    """What a model can do, for users, tests, metrics and pipelines to query.

    A model class declares what it can do in some configuration
    (:attr:`MultimodalVAE.declared_capabilities`, shown by ``multivae list-models``); a built
    model answers for its own configuration (:attr:`MultimodalVAE.capabilities`): MoPoE with
    ``private_dim: 0`` has no private latents.

    Attributes:
        missing_modalities: Trains on samples where some modalities are absent.
        private_latents: Has modality-specific latents besides the shared one.
        multi_stage: Trains in several stages (see the training loop).
        importance_sampled: Its training bound uses several posterior samples (IWAE/DReG).
        conditional: Generates only given conditioning data (no joint sampling from a prior).
        tractable_likelihood: :meth:`MultimodalVAE.nll` estimates a likelihood (false for
            models without a density, e.g. deterministic encoders).
        hierarchical: Has several levels of latents.
        adversarial: Trains with several optimizers (critics, discriminators).
        clustering: Its prior is a mixture whose components are clusters.
    """

    missing_modalities: bool = True
    private_latents: bool = False
    multi_stage: bool = False
    importance_sampled: bool = False
    conditional: bool = False
    tractable_likelihood: bool = True
    hierarchical: bool = False
    adversarial: bool = False
    clustering: bool = False


LOSS_PARTS: dict[str, str] = {
    "reconstruction": "sum over the observed modalities of log p(x_m | latents), times each "
    "modality's training weight: a log-likelihood, higher is better",
    "kl": "KL divergence of the shared latent's posterior to its prior (summed over the "
    "unimodal posteriors where there is no joint one: mcVAE, TELBO's unimodal stage), in closed "
    "form, as a Monte Carlo estimate log q - log p, or an approximation the model documents",
    "kl_private": "the same for the private latents, summed over the modalities that have one",
    "kl_experts": "sum over the observed modalities of KL(q(z | X) || q(z | x_m)), the joint "
    "posterior to each unimodal expert (JMVAE's, MVTCAE's and CRMVAE's regularizer), >= 0",
    "bound": "the per-sample bound the loss maximizes (ELBO, IWAE), a log-likelihood scale",
    "regularizer": "a model's own extra term, added to the loss as it is (its docstring says "
    "what it is)",
}
"""The one vocabulary of loss parts: each quantity has one name and one sign in every model.

:meth:`MultimodalVAE.forward` logs each part a model's :class:`Objective` gives as its mean over
the batch (``train_reconstruction``, ``val_kl``, ...), and ``kl_weight``, the warm-up factor of
the KL terms (0 to 1; ``beta`` is separate), when the model has a warm-up. A part outside this
table is refused, so a new model cannot log a quantity under a new name or the other sign.
"""


@dataclass
class Objective:
    """A model's training objective on a batch, per sample.

    Attributes:
        loss: ``(N,)``: the negative objective of each sample (what training minimizes, with
            its gradient); :meth:`MultimodalVAE.forward` averages it over the batch.
        parts: Names of :data:`LOSS_PARTS` -> ``(N,)`` values, logged as batch means.
        kl_weight: The warm-up factor the KL terms had (0 to 1), or ``None`` without warm-up.
        usable: ``(N,)`` booleans, the samples the objective scores, or ``None`` when it scores
            every one (set by :meth:`where`).
    """

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]
    kl_weight: float | None = None
    usable: torch.Tensor | None = None

    def where(self, usable: torch.Tensor) -> Objective:
        """The loss and every part exactly 0 (value and gradient) where ``usable`` is false.

        A sample with nothing to score still counts in the batch mean. The mask is kept
        (:attr:`usable`): a batch without a usable sample skips its optimizer step.
        """
        zero = torch.zeros((), dtype=self.loss.dtype, device=self.loss.device)
        usable = usable if self.usable is None else usable & self.usable
        return Objective(
            torch.where(usable, self.loss, zero),
            {name: torch.where(usable, value, zero) for name, value in self.parts.items()},
            self.kl_weight,
            usable,
        )


@dataclass
class ModelOutput:
    """What :meth:`MultimodalVAE.forward` returns.

    Attributes:
        loss: Scalar: the negative training objective averaged over the samples of the batch.
        metrics: Named parts of the loss (and other diagnostics), scalars, for logging.
        usable: Scalar count of the samples the loss scores, or ``None`` when it scores them
            all. The training loop skips the optimizer step of a batch where it is 0 on every
            rank (Adam's moments would otherwise move the weights on a zero gradient).
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]
    usable: torch.Tensor | None = None


@dataclass
class OptimizerGroup:
    """One optimizer of a training stage: what it steps, how often, and what follows a step.

    The training loop builds one optimizer (and scheduler, and clipping) per group from the run
    config's ``training.groups[name]`` or, by default, ``training.optimizer``, and steps the
    groups of a stage in their declared order on every batch, each on its own forward pass
    (:attr:`MultimodalVAE.optimizer_group` tells the model which group's loss to compute).

    Attributes:
        name: The group's name (``main`` for a model with one optimizer).
        parameters: The parameters it steps.
        steps: Optimizer steps of this group per batch (a critic's ``n_critic``), >= 1.
        after_step: Called after each of its optimizer steps, or ``None``: a projection back
            into a constraint (gPoE's fusion weights), a weight clipping (a WGAN critic).
    """

    name: str
    parameters: list[nn.Parameter]
    steps: int = 1
    after_step: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(
                f"optimizer group {self.name!r}: steps must be >= 1, found {self.steps}"
            )


class MultimodalVAE(nn.Module):
    """Base of the model zoo. Subclasses set ``name``, ``config_class`` and their capabilities.

    The latent contract: a shared latent ``z`` (dimension ``latent_dim``) with posterior
    :meth:`posterior` given any subset of modalities, and per modality an optional private
    latent ``w_m`` of dimension :meth:`private_dim` with posterior from
    :meth:`private_posteriors` and prior :meth:`private_prior_sample` /
    :meth:`private_prior_log_prob`. Decoder ``m`` takes ``[z, w_m]``
    (:meth:`generation_latent`). From these alone the base class provides :meth:`encode`,
    :meth:`predict` (and imputation through it), :meth:`sample`, :meth:`nll` (through the one
    hook :meth:`importance_log_weights`) and the private means samplers are fitted on
    (:meth:`private_latent_means`).

    Args:
        config: The model's config; it fully determines the model.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]]
    declared_capabilities: ClassVar[Capabilities] = Capabilities()
    """What the model can do in some configuration; :attr:`capabilities` answers for this one."""
    stages: tuple[str, ...] = ("main",)
    """Training stages in order; multi-stage models declare several (see :meth:`set_stage`). A
    class attribute, which a model whose schedule is an option replaces on the instance in its
    ``__init__`` (TELBO's paper schedule has one stage, its default two)."""
    variant_configs: ClassVar[dict[str, dict[str, Any]]] = {}
    """Named config overrides the contract test runs besides the defaults (the model file's
    "tester configs": private latents on, another latent family, ...)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} expects a {self.config_class.__name__}, found "
                f"{type(config).__name__}"
            )
        if not config.modalities:
            raise ConfigError(f"{self.name}: expected at least one modality, found none")
        if config.latent_dim < 1:
            raise ConfigError(f"{self.name}: latent_dim must be >= 1, found {config.latent_dim}")
        self.config = config
        self.modalities: tuple[str, ...] = tuple(config.modalities)
        self.progress = 0.0
        """Training progress in epochs (fractional), set by the training loop; drives warmups.
        It counts from the start of the current stage."""
        self.stage = self.stages[0]
        """The current training stage, set by the training loop through :meth:`set_stage`."""
        self.optimizer_group = "main"
        """The optimizer group whose loss :meth:`forward` computes, set by the training loop
        before each group's step (see :meth:`optimizer_groups`)."""
        self._frozen: tuple[str, ...] = ()
        self.encoders = nn.ModuleDict()
        self.decoders = nn.ModuleDict()
        self.likelihoods = nn.ModuleDict()
        for name, spec in config.modalities.items():
            if spec.likelihood not in LIKELIHOODS:
                raise ConfigError(
                    f"modality {name!r}: unknown likelihood {spec.likelihood!r}; expected one of "
                    f"{list(LIKELIHOODS)}"
                )
            if (spec.likelihood == "categorical") != (spec.num_categories is not None):
                raise ConfigError(
                    f"modality {name!r}: a categorical likelihood goes with num_categories, found "
                    f"likelihood {spec.likelihood!r} and num_categories {spec.num_categories}"
                )
            self.encoders[name] = build_encoder(
                spec.encoder, spec.shape, 2 * self.encoder_latent_dim(name), spec.num_categories
            )
            self.decoders[name] = build_decoder(
                spec.decoder, self.decoder_latent_dim(name), spec.shape, spec.num_categories
            )
            self.likelihoods[name] = ModalityLikelihood(
                spec.likelihood, spec.scale, spec.learn_scale, spec.weight
            )
        # The priors (multivae.nn.priors): N(0, I) by default; a model declares others by
        # replacing these modules in its __init__ (their parameters are then the model's).
        self.shared_prior: Prior = StandardNormalPrior(config.latent_dim)
        self.private_priors = nn.ModuleDict(
            {name: StandardNormalPrior(dim) for name, dim in self.private_dims.items()}
        )

    # ----------------------------------------------------------------------------------------
    # Sizes, capabilities and checks

    def private_dim(self, modality: str) -> int:
        """Dimension of a modality's private latent ``w_m`` (0: it has none)."""
        return 0

    def encoder_latent_dim(self, modality: str) -> int:
        """Dimension of the posterior a modality's encoder outputs: shared then private."""
        return self.config.latent_dim + self.private_dim(modality)

    def decoder_latent_dim(self, modality: str) -> int:
        """Dimension of the latent a modality's decoder takes: ``[z, w_m]``."""
        return self.config.latent_dim + self.private_dim(modality)

    @property
    def private_dims(self) -> dict[str, int]:
        """Modality -> private latent dimension, for the modalities that have one."""
        return {m: self.private_dim(m) for m in self.modalities if self.private_dim(m) > 0}

    @property
    def capabilities(self) -> Capabilities:
        """What this configured model can do (see :class:`Capabilities`)."""
        return replace(
            self.declared_capabilities,
            private_latents=bool(self.private_dims),
            multi_stage=len(self.stages) > 1,
        )

    def conditionable(self, subset: Sequence[str], target: str | None = None) -> bool:
        """Whether the model's own inference generates from ``subset`` (``target`` from it).

        With ``target`` ``None``: whether :meth:`posterior` given ``subset`` is the model's own
        inference for it (DVCCA conditions only through its primary view). With a ``target``:
        whether :meth:`predict` generates that modality from ``subset`` (a CVAE generates only
        its main modality, and only from its conditioning modalities). Metrics report "not
        applicable" for what it cannot do instead of a silent substitute such as the prior.
        Every subset of the modalities, and every target outside it, by default.
        """
        if not set(subset) <= set(self.modalities):
            return False
        return target is None or (target in self.modalities and target not in subset)

    def check_batch(self, batch: Batch) -> None:
        """Refuse a batch whose modalities or shapes differ from the config's."""
        if set(batch.data) != set(self.modalities):
            raise ValueError(
                f"{self.name}: expected modalities {list(self.modalities)}, found "
                f"{sorted(batch.data)}"
            )
        for name in self.modalities:
            expected = tuple(self.config.modalities[name].shape)
            found = tuple(batch.data[name].shape[1:])
            if found != expected:
                raise ValueError(
                    f"{self.name}: modality {name!r}: expected samples of shape {expected}, "
                    f"found {found}"
                )

    def condition_mask(self, batch: Batch, cond: Sequence[str] | None) -> torch.Tensor:
        """``(M, N)`` presence restricted to the ``cond`` modalities (all when ``None``)."""
        if isinstance(cond, str):
            raise TypeError(
                f"{self.name}: expected a list of modality names, found the string {cond!r}"
            )
        if cond is not None:
            unknown = sorted(set(cond) - set(self.modalities))
            if unknown:
                raise ValueError(
                    f"{self.name}: unknown modalities {unknown} in cond; known: "
                    f"{list(self.modalities)}"
                )
        return torch.stack(
            [
                batch.mask[m] if cond is None or m in cond else torch.zeros_like(batch.mask[m])
                for m in self.modalities
            ]
        )

    # ----------------------------------------------------------------------------------------
    # Building blocks

    def likelihood(self, name: str) -> ModalityLikelihood:
        """The likelihood module of a modality."""
        module = self.likelihoods[name]
        assert isinstance(module, ModalityLikelihood)
        return module

    def encode_modality(self, name: str, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and (clamped) log-variance from one modality's encoder, each ``(N, D + P_m)``.

        Always float32, whatever autocast made the encoder compute in: the posteriors, their
        noise, their fusion and every log-density downstream stay in float32 (in bf16 a
        reparameterized draw takes a few thousand values and the importance weights lose their
        tails).
        """
        out = self.encoders[name](values).float()
        mean, logvar = out.chunk(2, dim=-1)
        return mean, logvar.clamp(*LOGVAR_BOUNDS)

    def encoder_outputs(
        self, batch: Batch, cond: Sequence[str] | None = None
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`encode_modality` of every ``cond`` modality (all by default), on the whole batch.

        Absent cells are zeros and are masked downstream; modalities outside ``cond`` are not
        encoded (conditioning on a subset costs only its encoders). Pass the result to
        :meth:`unimodal_posteriors` and :meth:`private_posteriors` to encode once for both.
        """
        return {
            name: self.encode_modality(name, batch.data[name])
            for name in self.modalities
            if cond is None or name in cond
        }

    def unimodal_posteriors(
        self,
        batch: Batch,
        cond: Sequence[str] | None = None,
        outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every modality's Gaussian posterior over the shared latent: ``(M, N, D)`` each.

        Only the encoders of ``cond`` modalities (all by default) run, or none when
        ``outputs`` (from :meth:`encoder_outputs`) is given. Rows of modalities outside
        ``cond`` are ``N(0, I)`` placeholders, which callers mask out with
        :meth:`condition_mask`.
        """
        encoded = self.encoder_outputs(batch, cond) if outputs is None else outputs
        shared = self.config.latent_dim
        rows = batch.data[self.modalities[0]].shape[0]
        like = next(iter(encoded.values()))[0] if encoded else next(self.parameters())
        means, logvars = [], []
        for name in self.modalities:
            if name in encoded and (cond is None or name in cond):
                mean, logvar = encoded[name]
                means.append(mean[..., :shared])
                logvars.append(logvar[..., :shared])
            else:
                zeros = like.new_zeros((rows, shared))
                means.append(zeros)
                logvars.append(zeros)
        return torch.stack(means), torch.stack(logvars)

    def private_posteriors(
        self,
        batch: Batch,
        cond: Sequence[str] | None = None,
        outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> dict[str, Posterior]:
        """``q(w_m | x_m)`` of every ``cond`` modality (all by default) that has a private latent.

        By default a Gaussian from the private part of the modality's encoder output. Only the
        ``cond`` encoders run (none when ``outputs`` is given); absent samples are masked by
        the callers.
        """
        names = [m for m in self.private_dims if cond is None or m in cond]
        if not names:
            return {}
        encoded = self.encoder_outputs(batch, names) if outputs is None else outputs
        shared = self.config.latent_dim
        return {
            name: GaussianPosterior(encoded[name][0][..., shared:], encoded[name][1][..., shared:])
            for name in names
        }

    def _device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.parameters()).device

    def private_prior(self, modality: str) -> Prior:
        """The prior of a modality's private latent (``N(0, I)`` by default)."""
        prior = self.private_priors[modality]
        assert isinstance(prior, Prior)
        return prior

    def private_prior_sample(self, modality: str, shape: Sequence[int]) -> torch.Tensor:
        """Draws ``(*shape, P_m)`` from the prior of a modality's private latent."""
        return self.private_prior(modality).sample(shape, self._device())

    def private_prior_log_prob(self, modality: str, w: torch.Tensor) -> torch.Tensor:
        """``log p(w_m)`` under the private prior, shape ``w.shape[:-1]``."""
        return self.private_prior(modality).log_prob(w)

    def private_prior_mean(self, modality: str, shape: Sequence[int]) -> torch.Tensor:
        """The private prior's mean, ``(*shape, P_m)``."""
        return self.private_prior(modality).mean(shape, self._device())

    def decode(
        self, z: torch.Tensor, modalities: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Likelihood parameters of each modality from latents ``(..., N, D)``.

        Leading sample dimensions are flattened into the batch for the decoders and restored.
        """
        names = self.modalities if modalities is None else tuple(modalities)
        leading = z.shape[:-1]
        flat = z.reshape(-1, z.shape[-1])
        out = {}
        for name in names:
            params = self.decoders[name](flat)
            out[name] = params.reshape(*leading, *params.shape[1:])
        return out

    def log_likelihoods(
        self,
        params: dict[str, torch.Tensor],
        batch: Batch,
        mask: torch.Tensor | None = None,
        *,
        weighted: bool = True,
    ) -> torch.Tensor:
        """Masked per-sample log-likelihood of each modality: ``(M, ..., N)``.

        Args:
            params: Decoder outputs ``(..., N, ...)`` for every modality, or for some of them:
                the result then has one row per modality of ``params``, in the model's order
                (scoring a subset need not decode the rest).
            batch: The targets.
            mask: ``(M, N)`` which cells count, or ``(M, ..., N)`` to vary it per sample draw
                (broadcast against the leading dimensions); the batch's presence by default.
            weighted: Times each modality's training ``weight``; false gives ``log p(x_m | .)``
                itself (what the likelihood estimates use).
        """
        mask = self.condition_mask(batch, None) if mask is None else mask
        terms = []
        for i, name in enumerate(self.modalities):
            if name not in params:
                continue
            log_p = self.likelihood(name).log_prob(
                params[name], batch.data[name], weighted=weighted
            )
            terms.append(torch.where(mask[i], log_p, torch.zeros((), dtype=log_p.dtype)))
        return torch.stack(terms)

    def decoded_log_likelihoods(
        self,
        latents: dict[str, torch.Tensor],
        batch: Batch,
        cells: torch.Tensor,
        *,
        weighted: bool = True,
        detach_params: bool = False,
    ) -> torch.Tensor:
        """``log p(x_m | latents[m])`` where ``cells[m]`` is true and 0 elsewhere: ``(M, ..., N)``.

        The same values as ``log_likelihoods(decode(...), batch, cells)``, but each decoder runs
        on the latents of its true cells only. On incomplete data a model that scores every
        modality from every expert (MMVAE, MMVAE+) would otherwise spend most of its decoder
        passes on cells whose score is masked out: a missing target, or a missing expert.

        Args:
            latents: Per modality (in the model's order), its decoder's latents
                ``(..., N, D_m)``; the leading dimensions are the same for all.
            batch: The targets.
            cells: Boolean ``(M, ..., N)``, broadcast against the latents' leading dimensions.
            weighted: Times each modality's training ``weight`` (as :meth:`log_likelihoods`).
            detach_params: A stop-gradient call: the decoders' and likelihoods' parameters get
                no gradient from these values, the latents still do (TELBO's paper objective
                trains the unimodal encoders through fixed decoders).
        """
        terms = []
        for i, name in enumerate(self.modalities):
            latent = latents[name]
            shape = latent.shape[:-1]
            keep = cells[i].expand(shape)
            likelihood = self.likelihood(name)
            target = batch.data[name]
            decoder: Callable[[torch.Tensor], torch.Tensor] = self.decoders[name]
            if detach_params:
                detached = {key: p.detach() for key, p in self.decoders[name].named_parameters()}
                decoder = partial(torch.func.functional_call, self.decoders[name], detached)
            score = partial(likelihood.log_prob, weighted=weighted, detach_params=detach_params)
            # Every cell is decoded (and the false ones masked) when all are true; when none is
            # (the decoder's parameters must still take part in the step, with zero gradient, or
            # DistributedDataParallel fails); and in a compiled forward, where selecting cells
            # has a data-dependent shape (a graph break, and a recompile per count), or on the
            # meta device, which has no data to select by.
            select = not torch.compiler.is_compiling() and keep.device.type != "meta"
            index = keep.reshape(-1).nonzero()[:, 0] if select else None
            if index is None or index.numel() in (0, keep.numel()):
                params = decoder(latent.reshape(-1, latent.shape[-1]))
                log_p = score(params.reshape(*shape, *params.shape[1:]), target)
                terms.append(torch.where(keep, log_p, torch.zeros((), dtype=log_p.dtype)))
                continue
            params = decoder(latent.reshape(-1, latent.shape[-1]).index_select(0, index))
            # Cells flatten (..., N) row-major: a cell's sample is its index modulo N.
            log_p = score(params, target.index_select(0, index % shape[-1]))
            flat = log_p.new_zeros(keep.numel()).index_copy(0, index, log_p)
            terms.append(flat.reshape(shape))
        return torch.stack(terms)

    @staticmethod
    def observed_pairs(mask: torch.Tensor) -> torch.Tensor:
        """Cells ``(n, 1, m, N)`` where modality ``n`` and expert ``m`` are both observed.

        For :meth:`decoded_log_likelihoods` in mixtures that score every modality from every
        expert's ``(K, M, N)`` draws (the 1 broadcasts over the K draws).
        """
        return (mask[:, None] & mask[None, :]).unsqueeze(1)

    # ----------------------------------------------------------------------------------------
    # Stages (multi-stage models override)

    restore_best_between_stages: ClassVar[bool] = True
    """Whether a stage switch restores the best weights of the stage that ends (with the run's
    ``keep: best``), as MultiVae's two-stage trainer does; a model whose next stage must start
    from the last weights declares ``False``."""

    def set_stage(self, stage: str) -> None:
        """Switch to a training stage; :meth:`forward` computes that stage's objective.

        The stage's :meth:`frozen_modules` stop requiring gradients and stay in evaluation mode
        (dropout off, batch statistics fixed) until another stage, even when the training loop
        calls ``train()``; every other parameter requires gradients again.
        """
        if stage not in self.stages:
            raise ValueError(f"{self.name}: unknown stage {stage!r}; expected one of {self.stages}")
        self.stage = stage
        frozen = self.frozen_modules(stage)
        names = dict(self.named_modules())
        unknown = [name for name in frozen if name not in names]
        if unknown:
            raise ValueError(
                f"{self.name}: frozen_modules({stage!r}) names {unknown}, which are not modules "
                f"of the model"
            )
        self._frozen = tuple(frozen)
        frozen_parameters = {id(p) for name in frozen for p in names[name].parameters()}
        for parameter in self.parameters():
            parameter.requires_grad_(id(parameter) not in frozen_parameters)
        self.train(self.training)

    def frozen_modules(self, stage: str) -> list[str]:
        """Names (as in ``named_modules``) of the submodules a stage does not train; none here."""
        return []

    def train(self, mode: bool = True) -> MultimodalVAE:
        """``nn.Module.train``, keeping the current stage's frozen modules in evaluation mode."""
        super().train(mode)
        modules = dict(self.named_modules())
        for name in getattr(self, "_frozen", ()):
            modules[name].eval()
        return self

    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        """The parameters a stage trains: all but those of its :meth:`frozen_modules`."""
        modules = [self.get_submodule(name) for name in self.frozen_modules(stage)]
        frozen = {id(p) for module in modules for p in module.parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]

    def optimizer_groups(self, stage: str) -> list[OptimizerGroup]:
        """The optimizers of a stage, stepped in this order on every batch.

        One group, ``main``, over :meth:`stage_parameters` by default. A model with critics
        or discriminators declares several; one with a constraint to restore after each step
        gives the group an ``after_step`` (gPoE).
        """
        return [OptimizerGroup("main", self.stage_parameters(stage))]

    def warmup_factor(self, epochs: float) -> float:
        """A warm-up factor rising from 0 to 1 over ``epochs`` (fractional) of the stage.

        1 in evaluation mode (see :attr:`kl_warmup`) and for ``epochs <= 0``; for models with
        several KL groups warmed up over different spans.
        """
        if not self.training:
            return 1.0
        return linear_warmup(self.progress, float(epochs))

    # ----------------------------------------------------------------------------------------
    # The model's API

    def forward(self, batch: Batch) -> ModelOutput:
        """The training loss on a batch: the mean of :meth:`objective`, its parts as metrics.

        The one ``forward`` of every model: it checks the batch, asks the model for its
        per-sample :class:`Objective` and reports the parts in the vocabulary of
        :data:`LOSS_PARTS` (refusing any other name).
        """
        self.check_batch(batch)
        objective = self.objective(batch)
        unknown = sorted(set(objective.parts) - set(LOSS_PARTS))
        if unknown:
            raise ValueError(
                f"{self.name}: loss parts {unknown} are not in the vocabulary "
                f"(multivae.models.base.LOSS_PARTS: {sorted(LOSS_PARTS)})"
            )
        loss = objective.loss.mean()
        metrics = {name: value.detach().mean() for name, value in objective.parts.items()}
        if objective.kl_weight is not None:
            # A tensor op, not torch.tensor(float): no new compiled graph for every weight value.
            metrics["kl_weight"] = loss.detach().new_zeros(()) + objective.kl_weight
        usable = None if objective.usable is None else objective.usable.sum()
        return ModelOutput(loss=loss, metrics=metrics, usable=usable)

    def latent_report(self) -> dict[str, Any] | None:
        """Facts about the latent space for ``evaluate`` to report, or ``None`` (the default).

        Plain JSON values; mcVAE's sparse variant reports its kept dimensions and each
        dimension's dropout rate, which ``evaluate`` also draws.
        """
        return None

    @property
    def kl_warmup(self) -> float:
        """The warm-up factor of the KL terms: 0 to 1 over the config's ``warmup`` epochs.

        1 in evaluation mode: validation losses of every epoch then score the objective
        training converges to, so best-model tracking compares like with like (scored with the
        warm-up factor, epoch 1's low KL weight gives the lowest validation loss). 1 for a
        model without a ``warmup`` option.
        """
        return self.warmup_factor(float(getattr(self.config, "warmup", 0.0)))

    def objective(self, batch: Batch) -> Objective:
        """The model's training objective on a (checked) batch, per sample.

        The one method a model writes for training; :meth:`forward` calls it.
        """
        raise NotImplementedError

    def posterior(self, batch: Batch, cond: Sequence[str] | None = None) -> Posterior:
        """The posterior over the shared latent given the ``cond`` modalities (all by default)."""
        raise NotImplementedError

    def product_posterior(
        self, batch: Batch, cond: Sequence[str] | None, *, prior_expert: bool
    ) -> GaussianPosterior:
        """The product of the observed ``cond`` experts, with ``N(0, I)`` as one more or not.

        The posterior of MVAE, DMVAE, MVTCAE and CRMVAE; a sample with no expert and no prior
        expert gets ``N(0, I)``.
        """
        self.check_batch(batch)
        means, logvars = self.unimodal_posteriors(batch, cond)
        mask = self.condition_mask(batch, cond)
        return GaussianPosterior(*product_of_experts(means, logvars, mask, prior_expert))

    def modality_count(self, presence: torch.Tensor, rule: str) -> torch.Tensor:
        """``|O|`` per sample (``rule="observed"``, clamped at 1) or ``M`` (``"reference"``).

        The count of modalities in the weights and divisors of an objective: the restriction
        principle counts the observed ones, the references all of them.
        """
        if rule == "observed":
            return presence.sum(0).to(torch.float32).clamp(min=1.0)
        return torch.full(presence.shape[1:], float(len(self.modalities)), device=presence.device)

    def encode(
        self, batch: Batch, cond: Sequence[str] | None = None, n_samples: int = 1
    ) -> torch.Tensor:
        """Samples of the shared latent given ``cond``: shape ``(n_samples, N, D)``."""
        return self.posterior(batch, cond).rsample(n_samples)

    def generation_latent(
        self, z: torch.Tensor, modality: str, private: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The latent a modality's decoder takes, ``[z, w_m]``, given shared samples ``z``.

        ``w_m`` is ``private`` when given (broadcast to ``z``'s leading dimensions, e.g. drawn
        by a sampler fitted on that modality's private latents), else drawn from its prior.
        A modality without a private latent decodes ``z`` itself.
        """
        if self.private_dim(modality) == 0:
            return z
        leading = z.shape[:-1]
        if private is None:
            private = self.private_prior_sample(modality, leading)
        private = private.to(dtype=z.dtype, device=z.device).expand(
            (*leading, self.private_dim(modality))
        )
        return torch.cat([z, private], dim=-1)

    def private_latent_means(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Posterior means ``(N, P_m)`` of every private latent (empty without private latents).

        Rows of samples where the modality is absent mean nothing; callers select the present
        ones with ``batch.mask``.
        """
        return {name: q.mean for name, q in self.private_posteriors(batch).items()}

    def generation_privates(
        self,
        batch: Batch,
        cond: Sequence[str] | None,
        gen: Sequence[str],
        n_samples: int,
        use_mean: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Private latents ``(n_samples, N, P_m)`` for generating the ``gen`` modalities.

        ``w_m`` comes from ``q(w_m | x_m)`` where ``m`` is an observed ``cond`` modality
        (reconstruction), else from its prior (cross-generation); ``use_mean`` takes the
        distributions' means instead of draws.
        """
        names = [m for m in gen if self.private_dim(m) > 0]
        if not names:
            return {}
        mask = self.condition_mask(batch, cond)
        rows = mask.shape[1]
        posteriors = self.private_posteriors(batch, [m for m in names if cond is None or m in cond])
        out = {}
        for name in names:
            if use_mean:
                prior = self.private_prior_mean(name, (n_samples, rows))
            else:
                prior = self.private_prior_sample(name, (n_samples, rows))
            if name not in posteriors:
                out[name] = prior
                continue
            q = posteriors[name]
            drawn = q.mean.expand_as(prior) if use_mean else q.rsample(n_samples)
            observed = mask[self.modalities.index(name)].reshape(1, rows, 1)
            out[name] = torch.where(observed, drawn, prior.to(drawn.dtype))
        return out

    @torch.no_grad()
    def predict(
        self,
        batch: Batch,
        cond: Sequence[str],
        gen: Sequence[str] | None = None,
        n_samples: int = 1,
        use_mean: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Generate modalities ``gen`` (all by default) from the observed ``cond`` modalities.

        The shared latent is drawn from :meth:`posterior` given ``cond`` and each private
        latent as :meth:`generation_privates` says; ``use_mean`` decodes the posterior mean
        (private latents at their posterior or prior means) instead of draws, deterministic.

        Returns the likelihood means (class indices for categorical modalities), shaped like the
        data: ``(N, *shape)``, or ``(n_samples, N, *shape)`` when ``n_samples > 1``.
        """
        gen = self.modalities if gen is None else tuple(gen)
        unknown = sorted(set(gen) - set(self.modalities))
        if unknown:
            raise ValueError(
                f"{self.name}: unknown modalities {unknown} in gen; known: {list(self.modalities)}"
            )
        posterior = self.posterior(batch, cond)
        z = posterior.mean.unsqueeze(0).expand(n_samples, -1, -1) if use_mean else None
        z = posterior.rsample(n_samples) if z is None else z
        private = self.generation_privates(batch, cond, gen, n_samples, use_mean)
        out = {}
        for name in gen:
            latent = self.generation_latent(z, name, private.get(name))
            mean = self.likelihood(name).mean(self.decode(latent, [name])[name])
            out[name] = mean[0] if n_samples == 1 else mean
        return out

    def prior_sample(self, n: int) -> torch.Tensor:
        """``n`` draws from the prior over the shared latent (:attr:`shared_prior`): ``(n, D)``."""
        return self.shared_prior.sample((n,), self._device())

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)`` under :attr:`shared_prior`, shape ``z.shape[:-1]``."""
        return self.shared_prior.log_prob(z)

    @torch.no_grad()
    def sample(self, n: int, sampler: Any = None) -> dict[str, torch.Tensor]:
        """Generate ``n`` samples of every modality from the prior.

        A fitted ``sampler`` (anything with ``sample(n) -> (n, D)``) replaces the prior; when it
        also has ``private_samplers`` (modality -> sampler, see
        :class:`~multivae.samplers.JointSampler`), those draw the private latents.
        """
        if self.capabilities.conditional:
            raise ValueError(
                f"{self.name} generates only given conditioning data; use predict(batch, cond)"
            )
        device = next(self.parameters()).device
        # Samplers draw on the CPU; the decoders may be elsewhere.
        z = self.prior_sample(n) if sampler is None else sampler.sample(n).to(device)
        private = getattr(sampler, "private_samplers", None) or {}
        out = {}
        for name in self.modalities:
            w = private[name].sample(n).to(device) if name in private else None
            params = self.decode(self.generation_latent(z, name, w), [name])[name]
            out[name] = self.likelihood(name).mean(params)
        return out

    def joint_proposal(
        self, batch: Batch, gen: Sequence[str] | None, n_samples: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The hook of the joint :meth:`nll`: draws of the shared latent and their density.

        Returns ``z`` of shape ``(K, N, D)`` and ``log psi(z)``, ``(K, N)``, the log-density of
        the distribution the draws come from. By default the posterior given ``gen``
        (:meth:`posterior`); a model with a better proposal (MMVAE+'s stratified mixture), or a
        posterior without a closed-form density, overrides this one method: the weights, the
        private latents, the chunking and the log-mean-exp stay the base class's.
        """
        posterior = self.posterior(batch, gen)
        z = posterior.rsample(n_samples)
        return z, posterior.log_prob(z)

    def importance_log_weights(
        self,
        batch: Batch,
        cond: Sequence[str] | None,
        gen: Sequence[str] | None,
        n_samples: int,
    ) -> torch.Tensor:
        """``n_samples`` importance log-weights per sample for :meth:`nll`, ``(K, N)``.

        Joint (``cond is None``): ``log p(x_gen | z, w) + log p(z) - log psi(z) + sum_m [log
        p(w_m) - log q(w_m | x_m)]`` with ``z ~ psi`` from :meth:`joint_proposal` and ``w_m``
        from :meth:`private_posteriors` for the observed scored modalities (from the prior for
        the others, which then cancel out). Conditional: ``log p(x_gen | z, w)`` with ``z ~
        q(z | x_cond)`` and ``w_m`` as in :meth:`generation_privates`. Only present ``gen``
        modalities are scored, and always with unweighted likelihoods (every modality's
        training ``weight`` 1, no ``beta``): the estimate is of the model's ``p(X)``.
        """
        proposal_set = gen if cond is None else cond
        if cond is None:
            z, log_psi = self.joint_proposal(batch, gen, n_samples)
        else:
            z = self.posterior(batch, cond).rsample(n_samples)
        gen_mask = self.condition_mask(batch, gen)
        # Private latents from their posterior where the modality is observed, proposed and
        # scored; elsewhere from the prior (their prior/proposal ratio is then 1).
        from_posterior = self.condition_mask(batch, proposal_set) & gen_mask
        scored = [m for m in self.modalities if gen is None or m in gen]
        rows = gen_mask.shape[1]
        with_private = [m for m in scored if self.private_dim(m) > 0]
        posteriors = self.private_posteriors(
            batch, [m for m in with_private if proposal_set is None or m in proposal_set]
        )
        zero = torch.zeros((), dtype=z.dtype, device=z.device)
        private, private_ratio = {}, z.new_zeros((n_samples, rows))
        for name in with_private:
            prior = self.private_prior_sample(name, (n_samples, rows)).to(z.dtype)
            if name not in posteriors:
                private[name] = prior
                continue
            observed = from_posterior[self.modalities.index(name)]
            w = torch.where(observed.unsqueeze(-1), posteriors[name].rsample(n_samples), prior)
            ratio = self.private_prior_log_prob(name, w) - posteriors[name].log_prob(w)
            private[name] = w
            private_ratio = private_ratio + torch.where(observed, ratio, zero)
        params = {
            name: self.decode(self.generation_latent(z, name, private.get(name)), [name])[name]
            for name in scored
        }
        # The model's log p(X), not its training objective: no modality weight.
        log_w = self.log_likelihoods(params, batch, gen_mask, weighted=False).sum(0)
        if cond is not None:
            return log_w
        log_w = log_w + self.prior_log_prob(z) - log_psi + private_ratio
        # Nothing scored: p(X_O) = 1 exactly, whatever the proposal (CMVAE's F(0, 1) fallback
        # is not its cluster prior, so the ratio would only be 1 on average).
        return torch.where(gen_mask.any(0), log_w, torch.zeros((), dtype=log_w.dtype))

    @torch.no_grad()
    def nll(
        self,
        batch: Batch,
        cond: Sequence[str] | None = None,
        gen: Sequence[str] | None = None,
        k: int = 1000,
        chunk_size: int = 100,
    ) -> torch.Tensor:
        """Importance-sampled negative log-likelihood per sample, shape ``(N,)``.

        * ``cond is None``: the (joint) NLL of the ``gen`` modalities (all by default),
          ``-log (1/K) sum_k w_k`` with the joint importance weights of
          :meth:`importance_log_weights`.
        * ``cond`` given: the conditional NLL ``-log p(x_gen | x_cond)``, estimated as
          ``-log (1/K) sum_k p(x_gen | z_k, w_k)`` with ``z_k ~ q(z | x_cond)``: the posterior
          stands in for ``p(z | x_cond)``, as in the papers' conditional likelihoods.

        Only present modalities of ``gen`` are scored, so incomplete samples get the likelihood
        of what was observed. The K samples are drawn ``chunk_size`` at a time so memory stays
        bounded whatever ``k``.
        """
        return self.nll_with_error(batch, cond, gen, k, chunk_size)[0]

    @torch.no_grad()
    def nll_with_error(
        self,
        batch: Batch,
        cond: Sequence[str] | None = None,
        gen: Sequence[str] | None = None,
        k: int = 1000,
        chunk_size: int = 100,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`nll` and its standard error, each ``(N,)``.

        The error is the delta-method estimate for ``-log mean_k w_k``: the standard deviation
        of the normalized weights ``w_k / mean(w)`` over the ``K`` draws, divided by
        ``sqrt(K)`` (0 when every weight is equal; large when a few draws dominate).
        """
        if not self.capabilities.tractable_likelihood:
            raise ValueError(f"{self.name} defines no likelihood: nll is not applicable")
        self.check_batch(batch)
        chunks = [
            self.importance_log_weights(batch, cond, gen, min(chunk_size, k - start))
            for start in range(0, k, chunk_size)
        ]
        log_w = torch.cat(chunks).float()
        relative = torch.exp(log_w - log_w.max(0).values)
        relative = relative / relative.mean(0)
        error = (
            relative.std(0, correction=1) / math.sqrt(k) if k > 1 else torch.zeros_like(log_w[0])
        )
        return -log_mean_exp(log_w, dim=0), error

    # ----------------------------------------------------------------------------------------
    # Saving and loading (safetensors + JSON; see multivae.model_folder)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json``, ``model.safetensors`` and a model card ``README.md``."""
        from multivae.model_folder import save_model_folder

        return save_model_folder(self, directory)

    @classmethod
    def from_pretrained(
        cls, directory_or_repo_id: str | os.PathLike[str], *, revision: str | None = None
    ) -> MultimodalVAE:
        """Load a model saved by :meth:`save_pretrained`, from a folder or a Hub repository.

        ``revision`` pins a repository's branch, tag or commit hash (refused with a folder).
        """
        from multivae.hub import resolve_model_folder
        from multivae.model_folder import load_model_folder

        model = load_model_folder(resolve_model_folder(directory_or_repo_id, revision))
        if cls is not MultimodalVAE and not isinstance(model, cls):
            raise ConfigError(f"{directory_or_repo_id} holds a {model.name} model, not {cls.name}")
        return model

    def extra_repr(self) -> str:
        """Modalities and latent size in ``print(model)``."""
        return f"modalities={list(self.modalities)}, latent_dim={self.config.latent_dim}"
