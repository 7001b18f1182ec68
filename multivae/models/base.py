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

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self

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
from multivae.nn.fusion import LOGVAR_BOUNDS, normal_log_density
from multivae.nn.likelihoods import LIKELIHOODS, ModalityLikelihood
from multivae.objectives.bounds import log_mean_exp


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
    """What a model can do, for users, tests and pipelines to query.

    Attributes:
        missing_modalities: Trains on samples where some modalities are absent.
        private_latents: Has modality-specific latents besides the shared one.
        multi_stage: Trains in several stages (see the training loop).
        importance_sampled: Its training bound uses several posterior samples (IWAE/DReG).
    """

    missing_modalities: bool = True
    private_latents: bool = False
    multi_stage: bool = False
    importance_sampled: bool = False


@dataclass
class ModelOutput:
    """What :meth:`MultimodalVAE.forward` returns.

    Attributes:
        loss: Scalar: the negative training objective averaged over the samples of the batch.
        metrics: Named parts of the loss (and other diagnostics), scalars, for logging.
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


class Posterior(Protocol):
    """What :meth:`MultimodalVAE.posterior` returns: a distribution over ``(N, D)`` latents."""

    @property
    def mean(self) -> torch.Tensor:
        """The distribution's mean, ``(N, D)`` (what deterministic embeddings use)."""
        ...

    def rsample(self, n_samples: int) -> torch.Tensor:
        """Reparameterized samples of shape ``(n_samples, N, D)``."""
        ...

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log q(z)`` of shape ``z.shape[:-1]``."""
        ...


class GaussianPosterior:
    """A diagonal Gaussian ``N(mean, exp(logvar))`` over ``(N, D)`` latents."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        self.mean = mean
        self.logvar = logvar

    def rsample(self, n_samples: int) -> torch.Tensor:
        """Reparameterized samples of shape ``(n_samples, N, D)``."""
        noise = torch.randn(
            (n_samples, *self.mean.shape), dtype=self.mean.dtype, device=self.mean.device
        )
        return self.mean + torch.exp(0.5 * self.logvar) * noise

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log q(z)`` of shape ``z.shape[:-1]``."""
        return normal_log_density(z, self.mean, self.logvar)


class MultimodalVAE(nn.Module):
    """Base of the model zoo. Subclasses set ``name``, ``config_class`` and ``capabilities``.

    Args:
        config: The model's config; it fully determines the model.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[ModelConfig]]
    capabilities: ClassVar[Capabilities] = Capabilities()
    stages: ClassVar[tuple[str, ...]] = ("main",)
    """Training stages in order; multi-stage models declare several (see :meth:`set_stage`)."""

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

    # ----------------------------------------------------------------------------------------
    # Sizes and checks

    def encoder_latent_dim(self, modality: str) -> int:
        """Dimension of the posterior a modality's encoder outputs (mean and log-variance)."""
        return self.config.latent_dim

    def decoder_latent_dim(self, modality: str) -> int:
        """Dimension of the latent a modality's decoder takes."""
        return self.config.latent_dim

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
        """Mean and (clamped) log-variance from one modality's encoder, each ``(N, D_m)``."""
        out = self.encoders[name](values)
        mean, logvar = out.chunk(2, dim=-1)
        return mean, logvar.clamp(*LOGVAR_BOUNDS)

    def unimodal_posteriors(
        self, batch: Batch, cond: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every modality's Gaussian posterior over the shared latent: ``(M, N, D)`` each.

        Every encoder of a ``cond`` modality (all by default) runs on the whole batch; absent
        cells are zeros and are masked downstream. The encoders of modalities outside ``cond``
        do not run: their rows are ``N(0, I)`` placeholders, which callers mask out with
        :meth:`condition_mask` (conditioning on a subset then costs only its encoders).
        """
        encoded = {
            name: self.encode_modality(name, batch.data[name])
            for name in self.modalities
            if cond is None or name in cond
        }
        if len(encoded) < len(self.modalities):
            like = next(iter(encoded.values()))[0] if encoded else next(self.parameters())
            rows = batch.data[self.modalities[0]].shape[0]
            for name in self.modalities:
                if name not in encoded:
                    zeros = like.new_zeros((rows, self.encoder_latent_dim(name)))
                    encoded[name] = (zeros, zeros)
        means = [encoded[name][0] for name in self.modalities]
        logvars = [encoded[name][1] for name in self.modalities]
        return torch.stack(means), torch.stack(logvars)

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
    ) -> torch.Tensor:
        """Masked per-sample log-likelihood of each modality: ``(M, ..., N)``.

        Args:
            params: Decoder outputs ``(..., N, ...)`` for every modality, or for some of them:
                the result then has one row per modality of ``params``, in the model's order
                (scoring a subset need not decode the rest).
            batch: The targets.
            mask: ``(M, N)`` which cells count, or ``(M, ..., N)`` to vary it per sample draw
                (broadcast against the leading dimensions); the batch's presence by default.
        """
        mask = self.condition_mask(batch, None) if mask is None else mask
        terms = []
        for i, name in enumerate(self.modalities):
            if name not in params:
                continue
            log_p = self.likelihood(name).log_prob(params[name], batch.data[name])
            terms.append(torch.where(mask[i], log_p, torch.zeros((), dtype=log_p.dtype)))
        return torch.stack(terms)

    # ----------------------------------------------------------------------------------------
    # Stages (multi-stage models override)

    def set_stage(self, stage: str) -> None:
        """Switch to a training stage; :meth:`forward` computes that stage's objective."""
        if stage not in self.stages:
            raise ValueError(f"{self.name}: unknown stage {stage!r}; expected one of {self.stages}")
        self.stage = stage

    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        """The parameters a stage trains (the training loop builds its optimizer from them)."""
        return [p for p in self.parameters() if p.requires_grad]

    # ----------------------------------------------------------------------------------------
    # The model's API

    def forward(self, batch: Batch) -> ModelOutput:
        """The training objective on a batch."""
        raise NotImplementedError

    def posterior(self, batch: Batch, cond: Sequence[str] | None = None) -> Posterior:
        """The posterior over the shared latent given the ``cond`` modalities (all by default)."""
        raise NotImplementedError

    def encode(
        self, batch: Batch, cond: Sequence[str] | None = None, n_samples: int = 1
    ) -> torch.Tensor:
        """Samples of the shared latent given ``cond``: shape ``(n_samples, N, D)``."""
        return self.posterior(batch, cond).rsample(n_samples)

    def generation_latent(
        self, z: torch.Tensor, modality: str, private: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The latent a modality's decoder takes, given shared samples.

        Models with private latents append them here: ``private`` when given (e.g. drawn by a
        sampler fitted on that modality's private latents), else draws from their prior.
        Models without private latents ignore ``private``.
        """
        return z

    def private_latent_means(self, batch: Batch) -> torch.Tensor | None:
        """Posterior means of every modality's private latent, ``(M, N, P)``.

        ``None`` when the model has no private latents.
        """
        return None

    @torch.no_grad()
    def predict(
        self,
        batch: Batch,
        cond: Sequence[str],
        gen: Sequence[str] | None = None,
        n_samples: int = 1,
    ) -> dict[str, torch.Tensor]:
        """Generate modalities ``gen`` (all by default) from the observed ``cond`` modalities.

        Returns the likelihood means (class indices for categorical modalities), shaped like the
        data: ``(N, *shape)``, or ``(n_samples, N, *shape)`` when ``n_samples > 1``.
        """
        gen = self.modalities if gen is None else tuple(gen)
        z = self.encode(batch, cond, n_samples)
        out = {}
        for name in gen:
            params = self.decode(self.generation_latent(z, name), [name])[name]
            mean = self.likelihood(name).mean(params)
            out[name] = mean[0] if n_samples == 1 else mean
        return out

    def prior_sample(self, n: int) -> torch.Tensor:
        """``n`` draws from the prior over the shared latent: ``(n, D)``."""
        device = next(self.parameters()).device
        return torch.randn(n, self.config.latent_dim, device=device)

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)`` under the prior, shape ``z.shape[:-1]``."""
        return normal_log_density(
            z, torch.zeros((), device=z.device), torch.zeros((), device=z.device)
        )

    @torch.no_grad()
    def sample(self, n: int, sampler: Any = None) -> dict[str, torch.Tensor]:
        """Generate ``n`` samples of every modality from the prior.

        A fitted ``sampler`` (anything with ``sample(n) -> (n, D)``) replaces the prior; when it
        also has ``private_samplers`` (modality -> sampler, see
        :class:`~multivae.samplers.JointSampler`), those draw the private latents.
        """
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
          ``-log (1/K) sum_k p(x_gen | z_k) p(z_k) / q(z_k | x_gen)`` with ``z_k ~ q(z | x_gen)``.
        * ``cond`` given: the conditional NLL ``-log p(x_gen | x_cond)``, estimated as
          ``-log (1/K) sum_k p(x_gen | z_k)`` with ``z_k ~ q(z | x_cond)``: the posterior stands
          in for ``p(z | x_cond)``, as in the papers' conditional likelihoods.

        Only present modalities of ``gen`` are scored, so incomplete samples get the likelihood
        of what was observed. The K samples are drawn ``chunk_size`` at a time so memory stays
        bounded whatever ``k``.
        """
        posterior = self.posterior(batch, gen if cond is None else cond)
        gen_mask = self.condition_mask(batch, gen)
        scored = self.modalities if gen is None else [m for m in self.modalities if m in gen]
        chunks = []
        for start in range(0, k, chunk_size):
            count = min(chunk_size, k - start)
            z = posterior.rsample(count)
            # Only the scored modalities are decoded.
            log_w = self.log_likelihoods(self.decode(z, scored), batch, gen_mask).sum(0)
            if cond is None:
                log_w = log_w + self.prior_log_prob(z) - posterior.log_prob(z)
            chunks.append(log_w)
        return -log_mean_exp(torch.cat(chunks), dim=0)

    # ----------------------------------------------------------------------------------------
    # Saving and loading (safetensors + JSON; see multivae.hub)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json``, ``model.safetensors`` and a model card ``README.md``."""
        from multivae.hub import save_pretrained

        return save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory_or_repo_id: str | os.PathLike[str]) -> MultimodalVAE:
        """Load a model saved by :meth:`save_pretrained`, from a folder or a Hub repository."""
        from multivae.hub import load_model

        model = load_model(directory_or_repo_id)
        if cls is not MultimodalVAE and not isinstance(model, cls):
            raise ConfigError(f"{directory_or_repo_id} holds a {model.name} model, not {cls.name}")
        return model

    def extra_repr(self) -> str:
        """Modalities and latent size in ``print(model)``."""
        return f"modalities={list(self.modalities)}, latent_dim={self.config.latent_dim}"
