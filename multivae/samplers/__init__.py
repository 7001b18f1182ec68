"""Latent samplers for generation and data augmentation.

A VAE's decoders see, at training time, latents from the aggregate posterior, which can differ
a lot from the prior; sampling from a distribution fitted on encoded data (Ghosh et al. 2020)
usually generates better samples than sampling from the prior. A sampler is fitted on
``(N, D)`` latents and passed to ``model.sample(n, sampler=...)``::

    from multivae.samplers import fit_sampler, load_sampler

    sampler = fit_sampler(model, train_batches, "maf", steps=1000)
    generated = model.sample(64, sampler=sampler)
    sampler.save("maf-sampler")
    same = load_sampler("maf-sampler")

Kinds: ``prior`` (:class:`PriorSampler`, ``N(0, I)``), ``gmm``
(:class:`GaussianMixtureSampler`), ``maf`` (:class:`MAFSampler`) and ``iaf``
(:class:`IAFSampler`). A sampler models the shared latent; for models with private latents,
:func:`fit_joint_sampler` also fits one sampler per modality's private latent and returns a
:class:`JointSampler` that ``model.sample`` uses for both. Saved samplers are a
JSON config and safetensors tensors (a joint sampler: one such folder per space);
:func:`load_sampler` loads either, and executes nothing from the folder. A sampler fitted on a
model's latents records that model (and the data, when fitted from a dataset folder) by
fingerprint; :func:`check_sampler_model` refuses it for another model.
"""

from multivae.samplers.base import (
    SAMPLERS,
    LatentSampler,
    SamplerNotFittedError,
    create_sampler,
    register_sampler,
)
from multivae.samplers.encode import (
    JointSampler,
    check_sampler_model,
    encode_latents,
    encode_private_latents,
    fit_joint_sampler,
    fit_sampler,
    load_sampler,
    record_fitted_on,
)
from multivae.samplers.flows import AutoregressiveFlowSampler, IAFSampler, MAFSampler
from multivae.samplers.gmm import GaussianMixtureSampler
from multivae.samplers.prior import PriorSampler

__all__ = [
    "SAMPLERS",
    "AutoregressiveFlowSampler",
    "GaussianMixtureSampler",
    "IAFSampler",
    "JointSampler",
    "LatentSampler",
    "MAFSampler",
    "PriorSampler",
    "SamplerNotFittedError",
    "check_sampler_model",
    "create_sampler",
    "encode_latents",
    "encode_private_latents",
    "fit_joint_sampler",
    "fit_sampler",
    "load_sampler",
    "record_fitted_on",
    "register_sampler",
]
