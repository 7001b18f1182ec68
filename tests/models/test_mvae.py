"""MVAE: the sub-sampled loss against the paper's formula worked out by hand, and subset sampling.

The hand computations use the model's encoders and decoders but none of its fusion, likelihood
or KL code: torch.distributions and a hand-written product of Gaussians with the prior expert.
Sampling is made deterministic by replaying the seed: in training mode with k > 0 the model's
forward first draws torch.randperm(number of candidate subsets), then one standard normal tensor
of shape (terms, N, latent_dim); after the same torch.manual_seed the test draws the same.
"""

import itertools

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from multivae.config import ConfigError
from multivae.data import Batch
from multivae.models.base import ModalityConfig
from multivae.models.mvae import MVAE, MVAEConfig
from multivae.nn.architectures import ArchitectureConfig

SHAPES = {"a": (3,), "b": (4,), "c": (3,)}
SCALES = {"a": 1.0, "b": 0.5, "c": 2.0}
LATENT = 2
JOINT_AND_SINGLES = [("a", "b", "c"), ("a",), ("b",), ("c",)]
CANDIDATES = [("a", "b"), ("a", "c"), ("b", "c")]


def tiny_config(shapes: dict[str, tuple[int, ...]] = SHAPES, **options) -> MVAEConfig:
    modalities = {
        name: ModalityConfig(
            shape=shape,
            scale=SCALES.get(name, 1.0),
            encoder=ArchitectureConfig("mlp", {"hidden": [5]}),
            decoder=ArchitectureConfig("mlp", {"hidden": [5]}),
        )
        for name, shape in shapes.items()
    }
    return MVAEConfig(modalities=modalities, latent_dim=LATENT, **options)


def make_model(seed: int = 0, **options) -> MVAE:
    torch.manual_seed(seed)
    return MVAE(tiny_config(**options))


def make_batch(present: dict[str, list[bool]], n: int, seed: int = 1) -> Batch:
    """Random data, zeros in absent cells; modalities not in ``present`` are fully observed."""
    generator = torch.Generator().manual_seed(seed)
    mask = {m: torch.tensor(present.get(m, [True] * n)) for m in SHAPES}
    data = {
        m: torch.randn(n, *shape, generator=generator) * mask[m].reshape(-1, 1)
        for m, shape in SHAPES.items()
    }
    return Batch(data=data, mask=mask)


def normal_from(params: torch.Tensor) -> Normal:
    mean, logvar = params.chunk(2, dim=-1)
    return Normal(mean, torch.exp(0.5 * logvar))


def hand_product_with_prior(experts: list[Normal]) -> Normal:
    """Product of N(0, I) and Gaussian experts: precisions add, the prior's is 1."""
    precision = 1.0 + sum(1.0 / expert.variance for expert in experts)
    mean = sum(expert.mean / expert.variance for expert in experts) / precision
    return Normal(mean, precision.rsqrt())


def hand_loss(
    model: MVAE,
    batch: Batch,
    terms: list[tuple[str, ...]],
    noise: torch.Tensor,
    weight: float,
) -> torch.Tensor:
    """Minus the sum over terms of ELBO(observed part of the subset), averaged over samples."""
    losses = []
    for n in range(len(batch)):
        x = {m: batch.data[m][n : n + 1] for m in SHAPES}
        total = torch.zeros(())
        for t, subset in enumerate(terms):
            observed = [m for m in subset if batch.mask[m][n]]
            if not observed:
                continue
            q = hand_product_with_prior([normal_from(model.encoders[m](x[m])) for m in observed])
            z = q.mean + q.stddev * noise[t, n]
            log_p = sum(
                Normal(model.decoders[m](z), SCALES[m]).log_prob(x[m]).sum() for m in observed
            )
            total = total + log_p - weight * kl_divergence(q, Normal(0.0, 1.0)).sum()
        losses.append(-total)
    return torch.stack(losses).mean()


PRESENCE = {
    "complete": {},
    "mixed-missing": {
        "a": [True, True, False, True],
        "b": [True, False, False, True],
        "c": [True, True, True, False],
    },
    "b-absent-everywhere": {"b": [False] * 4},
}


@pytest.mark.parametrize("present", PRESENCE.values(), ids=PRESENCE.keys())
@pytest.mark.parametrize("k", [0, 2])
def test_loss_equals_the_papers_formula_by_hand(present, k):
    model = make_model(k=k, beta=2.0, warmup=10.0)
    model.progress = 2.5  # warm-up factor 2.5 / 10, KL weight beta * 0.25 = 0.5
    batch = make_batch(present, n=4)
    torch.manual_seed(5)
    output = model(batch)
    torch.manual_seed(5)
    terms = list(JOINT_AND_SINGLES)
    if k:
        terms += [CANDIDATES[i] for i in torch.randperm(len(CANDIDATES))[:k].tolist()]
    noise = torch.randn(len(terms), len(batch), LATENT)
    with torch.no_grad():
        expected = hand_loss(model, batch, terms, noise, weight=0.5)
    torch.testing.assert_close(output.loss, expected)
    assert output.metrics["kl_weight"].item() == 0.25  # the warm-up factor, beta apart
    torch.testing.assert_close(
        output.loss, -output.metrics["reconstruction"] + 2.0 * 0.25 * output.metrics["kl"]
    )


def test_k_zero_gives_the_joint_and_single_modality_terms_only():
    model = make_model(k=0)
    assert model.objective_subsets() == JOINT_AND_SINGLES
    assert model.random_candidates == tuple(CANDIDATES)


def test_random_subsets_come_from_torchs_seed_and_only_in_training():
    model = make_model(k=1)
    model.progress = 20.0
    batch = make_batch({"a": [True, False, True]}, n=3)
    losses = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        losses.append(model(batch).loss)
    assert torch.equal(losses[0], losses[1])
    drawn = set()
    for seed in range(10):
        torch.manual_seed(seed)
        drawn.add(model.objective_subsets()[-1])
    assert drawn == set(CANDIDATES)
    model.eval()
    assert model.objective_subsets() == JOINT_AND_SINGLES
    torch.manual_seed(9)
    found = model(batch).loss
    torch.manual_seed(9)
    noise = torch.randn(len(JOINT_AND_SINGLES), len(batch), LATENT)
    with torch.no_grad():
        expected = hand_loss(model, batch, JOINT_AND_SINGLES, noise, weight=1.0)
    torch.testing.assert_close(found, expected)


def test_without_subsampling_only_the_joint_elbo_remains():
    assert make_model(subsampling=False).objective_subsets() == [("a", "b", "c")]


def test_a_single_modality_model_has_one_term():
    torch.manual_seed(0)
    model = MVAE(tiny_config({"a": (3,)}))
    assert model.objective_subsets() == [("a",)]


@pytest.mark.parametrize(
    "cond", [["a"], ["a", "b"], ["b", "c"], None], ids=["a", "ab", "bc", "all"]
)
def test_posterior_uses_only_the_observed_conditioning_modalities(cond):
    model = make_model()
    batch = make_batch({"b": [True, False, True], "c": [False, True, True]}, n=3)
    # Cells outside these (unconditioned modalities, absent cells) may hold anything.
    used = {m: batch.mask[m] & (cond is None or m in cond) for m in SHAPES}
    changed = Batch(
        data={m: torch.where(used[m].reshape(-1, 1), v, 7.0) for m, v in batch.data.items()},
        mask=batch.mask,
    )
    with torch.no_grad():
        expected = model.posterior(batch, cond)
        found = model.posterior(changed, cond)
        experts = {m: normal_from(model.encoders[m](batch.data[m])) for m in SHAPES}
    assert torch.equal(found.mean, expected.mean)
    assert torch.equal(found.logvar, expected.logvar)
    for n in range(len(batch)):
        observed = [m for m in SHAPES if used[m][n]]
        product = hand_product_with_prior([experts[m] for m in observed])
        torch.testing.assert_close(expected.mean[n], product.mean[n])
        torch.testing.assert_close(expected.logvar[n], 2 * product.stddev[n].log())


@pytest.mark.parametrize(
    ("shapes", "options", "message"),
    [
        ({"a": (3,), "b": (4,)}, {"k": 1}, "k must be at most .* 0 with M = 2; found k = 1"),
        (SHAPES, {"k": 4}, "k must be at most .* 3 with M = 3; found k = 4"),
        (SHAPES, {"k": 1, "subsampling": False}, "expected subsampling = true or k = 0"),
        (SHAPES, {"k": -1}, "k must be >= 0"),
        (SHAPES, {"beta": -1.0}, "beta must be >= 0"),
    ],
    ids=["k-two-modalities", "k-too-large", "k-without-subsampling", "k-negative", "beta"],
)
def test_bad_options_are_refused_with_a_clear_message(shapes, options, message):
    with pytest.raises(ConfigError, match=message):
        MVAE(tiny_config(shapes, **options))


def test_candidates_follow_itertools_order():
    names = ["a", "b", "c", "d"]
    shapes = {name: (3,) for name in names}
    expected = [s for size in (2, 3) for s in itertools.combinations(names, size)]
    torch.manual_seed(0)
    assert list(MVAE(tiny_config(shapes)).random_candidates) == expected
