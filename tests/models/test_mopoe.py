"""MoPoE against the generalized multimodal ELBO, worked out by hand with torch.distributions.

Sampling is made deterministic by replaying the seed: ``MoPoE.forward`` documents its draws
(with the default ``split`` choice of subsets, ``torch.randn((N, D))`` for the shared latent then
``torch.randn((M, N, private_dim))`` for the private ones), so the hand computation reseeds and
draws the same noise. Products of experts, KLs, the subset choice and the masks are written
here with Python loops, independently of the model's code.
"""

import math

import pytest
import torch
from kit.models import vector_batch
from torch.distributions import Normal, kl_divergence

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.factory import create_model
from multivae.models.base import ModalityConfig, MultimodalVAE
from multivae.models.mopoe import MoPoE, MoPoEConfig
from multivae.nn.architectures import ArchitectureConfig

SIZES = {"a": 3, "b": 4, "c": 3}
NAMES = list(SIZES)
LATENT = 2
N = 5
ALL_SUBSETS = [("a",), ("b",), ("c",), ("a", "b"), ("a", "c"), ("b", "c"), ("a", "b", "c")]
MASKS = {
    "complete": {name: [True] * N for name in NAMES},
    # Sample 1 lacks a, sample 2 has only a, sample 3 lacks c.
    "missing": {
        "a": [True, False, True, True, True],
        "b": [True, True, False, True, True],
        "c": [True, True, False, False, True],
    },
}


def make_config(**options):
    mlp = ArchitectureConfig("mlp", {"hidden": [8]})
    modalities = {
        name: ModalityConfig(shape=(size,), encoder=mlp, decoder=mlp)
        for name, size in SIZES.items()
    }
    return MoPoEConfig(modalities=modalities, latent_dim=LATENT, **options)


def make_model(seed=0, **options):
    torch.manual_seed(seed)
    return MoPoE(make_config(**options))


def make_batch(mask="complete", seed=1):
    return vector_batch(SIZES, MASKS[mask], seed)


def hand_posteriors(model, batch):
    """Per modality: (shared mean, shared log-variance, private mean, private log-variance)."""
    size = LATENT + model.config.private_dim
    out = {}
    for name in NAMES:
        features = model.encoders[name](batch.data[name])
        mean, logvar = features[:, :size], features[:, size:].clamp(-20.0, 20.0)
        out[name] = (mean[:, :LATENT], logvar[:, :LATENT], mean[:, LATENT:], logvar[:, LATENT:])
    return out


def hand_product(posteriors, subset, n, prior_expert):
    """Mean and standard deviation of the Gaussian product of the subset's experts."""
    precision = torch.ones(LATENT) if prior_expert else torch.zeros(LATENT)
    weighted = torch.zeros(LATENT)
    for name in subset:
        mean, logvar = posteriors[name][0][n], posteriors[name][1][n]
        precision = precision + torch.exp(-logvar)
        weighted = weighted + mean * torch.exp(-logvar)
    return weighted / precision, precision.rsqrt()


def hand_loss(model, batch, seed, subsets=ALL_SUBSETS, prior_rule="full"):
    """``-mean_n [sum_m log p(x_m|z,w_m) - beta mean_S KL(q_S||p) - beta_style sum_m KL_w]``.

    A sample with no available subset counts as 0.
    """
    config = model.config
    posteriors = hand_posteriors(model, batch)
    torch.manual_seed(seed)
    shared_noise = torch.randn(N, LATENT)
    private_noise = torch.randn(len(NAMES), N, config.private_dim)
    standard = Normal(0.0, 1.0)
    objectives = []
    for n in range(N):
        present = [name for name in NAMES if batch.mask[name][n]]
        available = [s for s in subsets if set(s) <= set(present)]
        if not available:
            objectives.append(torch.zeros(()))
            continue
        products = [
            hand_product(
                posteriors,
                s,
                n,
                prior_rule == "all" or (prior_rule == "full" and len(s) == len(NAMES)),
            )
            for s in available
        ]
        kl = torch.stack(
            [kl_divergence(Normal(mean, std), standard).sum() for mean, std in products]
        ).mean()
        # The reference's deterministic split, among this sample's available subsets.
        mean, std = products[n * len(available) // N]
        z = mean + std * shared_noise[n]
        reconstruction = torch.zeros(())
        kl_private = torch.zeros(())
        for i, name in enumerate(NAMES):
            if name not in present:
                continue
            w_mean, w_logvar = posteriors[name][2][n], posteriors[name][3][n]
            w_std = torch.exp(0.5 * w_logvar)
            w = w_mean + w_std * private_noise[i, n]
            params = model.decoders[name](torch.cat([z, w]).unsqueeze(0))[0]
            reconstruction = (
                reconstruction + Normal(params, 1.0).log_prob(batch.data[name][n]).sum()
            )
            kl_private = kl_private + kl_divergence(Normal(w_mean, w_std), standard).sum()
        objectives.append(reconstruction - config.beta * kl - config.beta_style * kl_private)
    return -torch.stack(objectives).mean()


def test_default_subsets_are_every_non_empty_subset_smallest_first():
    assert make_model().subsets == tuple(ALL_SUBSETS)


@pytest.mark.parametrize("mask", ["complete", "missing"])
@pytest.mark.parametrize("private_dim", [0, 2], ids=["shared-only", "private"])
def test_loss_is_the_generalized_elbo_computed_by_hand(private_dim, mask):
    model = make_model(private_dim=private_dim, beta=2.0, beta_style=0.5)
    batch = make_batch(mask)
    torch.manual_seed(7)
    loss = model(batch).loss
    with torch.no_grad():
        expected = hand_loss(model, batch, 7)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prior_rule", ["all", "none"])
def test_prior_expert_option(prior_rule):
    model = make_model(prior_expert=prior_rule)
    batch = make_batch("missing")
    torch.manual_seed(2)
    loss = model(batch).loss
    with torch.no_grad():
        expected = hand_loss(model, batch, 2, prior_rule=prior_rule)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_configured_subsets_and_the_full_set_alone_is_the_product_of_experts():
    full = ("a", "b", "c")
    model = make_model(subsets=(full,))
    batch = make_batch("complete")
    torch.manual_seed(4)
    loss = model(batch).loss
    z = torch.randn(3, N, LATENT)
    with torch.no_grad():
        torch.testing.assert_close(loss, hand_loss(model, batch, 4, subsets=[full]))
        posterior = model.posterior(batch)
        posteriors = hand_posteriors(model, batch)
        for n in range(N):
            mean, std = hand_product(posteriors, full, n, prior_expert=True)
            torch.testing.assert_close(posterior.mean[n], mean)
            torch.testing.assert_close(
                posterior.log_prob(z)[:, n], Normal(mean, std).log_prob(z[:, n]).sum(-1)
            )

    pairs = make_model(subsets=(("a", "b"), ("c",)))
    batch = make_batch("missing")
    torch.manual_seed(4)
    loss = pairs(batch).loss
    with torch.no_grad():
        # Sample 2 (only a) has no available subset: it contributes 0.
        expected = hand_loss(pairs, batch, 4, subsets=[("a", "b"), ("c",)])
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampling", ["split", "random"])
def test_unavailable_subsets_are_never_selected(sampling):
    model = make_model(mixture_sampling=sampling)
    generator = torch.Generator().manual_seed(0)
    available = torch.rand(len(ALL_SUBSETS), 200, generator=generator) < 0.3
    available[:, :5] = False
    torch.manual_seed(1)
    chosen = model.select_components(available)
    assert not (chosen & ~available).any()
    assert torch.equal(chosen.sum(0), available.any(0).long())
    # Over many samples, every available subset is used.
    assert torch.equal(chosen.any(1), available.any(1))


def test_split_is_the_references_when_nothing_is_missing():
    model = make_model()
    available = torch.ones(len(ALL_SUBSETS), 14, dtype=torch.bool)
    chosen = model.select_components(available).long().argmax(0)
    assert chosen.tolist() == [i * len(ALL_SUBSETS) // 14 for i in range(14)]


@pytest.mark.parametrize("prior_expert", ["full", "all", "none"])
def test_product_conditioning_is_the_product_of_the_observed_cond_experts(prior_expert):
    model = make_model(private_dim=2, prior_expert=prior_expert)
    assert model.config.conditioning == "product"
    batch = make_batch("missing")
    z = torch.randn(4, N, LATENT)
    with torch.no_grad():
        posteriors = hand_posteriors(model, batch)
        for cond in (["a", "b"], NAMES):
            posterior = model.posterior(batch, cond)
            for n in range(N):
                present = [name for name in cond if batch.mask[name][n]]
                with_prior = bool(present) and (
                    prior_expert == "all" or (prior_expert == "full" and len(present) == 3)
                )
                mean, std = hand_product(posteriors, present, n, prior_expert=with_prior)
                if not present:
                    mean, std = torch.zeros(LATENT), torch.ones(LATENT)
                torch.testing.assert_close(posterior.mean[n], mean)
                expected = Normal(mean, std).log_prob(z[:, n]).sum(-1)
                torch.testing.assert_close(posterior.log_prob(z)[:, n], expected)


def test_mixture_conditioning_uses_only_the_cond_modalities():
    model = make_model(private_dim=2, conditioning="mixture")
    batch = make_batch("missing")
    cond = ["a", "b"]
    z = torch.randn(4, N, LATENT)
    with torch.no_grad():
        posterior = model.posterior(batch, cond)
        posteriors = hand_posteriors(model, batch)
        for n in range(N):
            present = [name for name in cond if batch.mask[name][n]]
            products = [
                hand_product(posteriors, s, n, prior_expert=False)
                for s in ALL_SUBSETS
                if set(s) <= set(present)
            ]
            if not products:
                products = [(torch.zeros(LATENT), torch.ones(LATENT))]
            mean = torch.stack([m for m, _ in products]).mean(0)
            densities = torch.stack([Normal(m, s).log_prob(z[:, n]).sum(-1) for m, s in products])
            log_q = torch.logsumexp(densities, 0) - math.log(len(products))
            torch.testing.assert_close(posterior.mean[n], mean)
            torch.testing.assert_close(posterior.log_prob(z)[:, n], log_q)

        changed = Batch(data={**batch.data, "c": batch.data["c"] - 3.0}, mask=batch.mask)
        other = model.posterior(changed, cond)
        torch.testing.assert_close(other.mean, posterior.mean)
        torch.testing.assert_close(other.log_prob(z), posterior.log_prob(z))
        torch.manual_seed(5)
        draws = posterior.rsample(6)
        torch.manual_seed(5)
        torch.testing.assert_close(other.rsample(6), draws)
        assert draws.shape == (6, N, LATENT)


def test_private_latents_shapes_and_cross_generation():
    private = 3
    model = make_model(private_dim=private)
    for name in NAMES:
        assert model.encoders[name].network[-1].out_features == 2 * (LATENT + private)
        assert model.decoders[name].network[0].in_features == LATENT + private
    z = torch.randn(4, N, LATENT)
    assert model.generation_latent(z, "a").shape == (4, N, LATENT + private)
    torch.testing.assert_close(model.generation_latent(z, "a")[..., :LATENT], z)

    batch = make_batch("complete")
    out = model.predict(batch, cond=["a"], gen=["b", "c"])
    assert {name: x.shape for name, x in out.items()} == {"b": (N, 4), "c": (N, 3)}
    many = model.predict(batch, cond=["a"], n_samples=3)
    assert {name: x.shape for name, x in many.items()} == {
        name: (3, N, size) for name, size in SIZES.items()
    }
    assert all(torch.isfinite(x).all() for x in many.values())
    assert {name: x.shape for name, x in model.sample(6).items()} == {
        name: (6, size) for name, size in SIZES.items()
    }

    # Cross-generation of b from a draws w_b from the prior: b's own data plays no part ...
    changed = Batch(data={**batch.data, "b": batch.data["b"] + 3.0}, mask=batch.mask)
    torch.manual_seed(9)
    from_a = model.predict(batch, cond=["a"], gen=["b"])["b"]
    torch.manual_seed(9)
    torch.testing.assert_close(model.predict(changed, cond=["a"], gen=["b"])["b"], from_a)
    # ... while reconstructing b from a and b uses b's private posterior.
    torch.manual_seed(9)
    with_b = model.predict(batch, cond=["a", "b"], gen=["b"])["b"]
    torch.manual_seed(9)
    assert not torch.allclose(model.predict(changed, cond=["a", "b"], gen=["b"])["b"], with_b)


def test_nll():
    model = make_model()
    batch = make_batch("missing")
    for cond, gen in [(None, None), (["a"], ["b", "c"])]:
        torch.manual_seed(3)
        ours = model.nll(batch, cond, gen, k=30, chunk_size=8)
        torch.manual_seed(3)
        base = MultimodalVAE.nll(model, batch, cond, gen, k=30, chunk_size=8)
        # Without private latents the joint latent is z alone: the base's estimate.
        torch.testing.assert_close(ours, base)

    private = make_model(private_dim=2)
    nll = private.nll(batch, k=30, chunk_size=8)
    assert nll.shape == (N,)
    assert torch.isfinite(nll).all()


def test_config_round_trip_and_bad_configs():
    config = make_config(subsets=(("a", "b"), ("c",)), private_dim=2, mixture_sampling="random")
    rebuilt = create_model("mopoe", config.to_dict())
    assert isinstance(rebuilt, MoPoE)
    assert rebuilt.config == config
    assert rebuilt.subsets == (("a", "b"), ("c",))

    with pytest.raises(ConfigError, match=r"subsets\[1\] must be a non-empty list"):
        make_config(subsets=(("a",), ("a", "d")))
    with pytest.raises(ConfigError, match=r"subsets\[0\] must be a non-empty list"):
        make_config(subsets=((),))
    with pytest.raises(ConfigError, match=r"subsets\[1\] \['b', 'a'\] is listed twice"):
        make_config(subsets=(("a", "b"), ("b", "a")))
    with pytest.raises(ConfigError, match="private_dim must be >= 0, found -1"):
        make_config(private_dim=-1)
