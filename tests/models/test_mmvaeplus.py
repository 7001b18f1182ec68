"""MMVAE+ against its looser bound, worked out by hand with torch.distributions.

Sampling is made deterministic by replaying the seed: ``MMVAEPlus.forward`` documents its three
draws (shared latents, private latents, then the auxiliary ``w~``, each one ``rsample((K,))`` on
stacked parameters), so the hand computation reseeds and makes the same calls on parameters it
computes itself from the model's encoder networks and its prior logits. Everything after the
networks (scales, densities, mixtures, cross terms, bounds, masks) is written here independently
of the model's code, with Python loops over samples, experts and draws. The joint NLL is checked
against a numerical integral over a one-dimensional shared and private latent.
"""

import math

import pytest
import torch
from torch.distributions import Laplace, Normal

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.factory import create_model
from multivae.models.base import ModalityConfig
from multivae.models.mmvaeplus import MMVAEPlus, MMVAEPlusConfig
from multivae.nn.architectures import ArchitectureConfig

SIZES = {"a": 3, "b": 4, "c": 2}
NAMES = list(SIZES)
LATENT = 2
PRIVATE = 2
N = 5
MASKS = {
    "complete": {name: [True] * N for name in NAMES},
    # Sample 1 lacks a, sample 2 has only a, sample 3 lacks c, sample 4 has nothing.
    "missing": {
        "a": [True, False, True, True, False],
        "b": [True, True, False, True, False],
        "c": [True, True, False, False, False],
    },
}
FAMILIES = {"laplace": Laplace, "normal": Normal, "normal_with_softplus": Normal}


def make_config(sizes=SIZES, **options):
    mlp = ArchitectureConfig("mlp", {"hidden": [8]})
    modalities = {
        name: ModalityConfig(shape=(size,), encoder=mlp, decoder=mlp)
        for name, size in sizes.items()
    }
    options.setdefault("samples_per_expert", 2)
    options.setdefault("private_dim", PRIVATE)
    options.setdefault("latent_dim", LATENT)
    return MMVAEPlusConfig(modalities=modalities, **options)


def make_model(seed=0, sizes=SIZES, **options):
    torch.manual_seed(seed)
    return MMVAEPlus(make_config(sizes, **options))


def make_batch(mask="complete", seed=1, sizes=SIZES, masks=MASKS):
    generator = torch.Generator().manual_seed(seed)
    data = {name: torch.randn(N, size, generator=generator) for name, size in sizes.items()}
    present = {name: torch.tensor(flags) for name, flags in masks[mask].items()}
    # Absent cells hold zeros, as the data format stores them.
    data = {name: values * present[name].unsqueeze(-1) for name, values in data.items()}
    return Batch(data=data, mask=present)


def randomize_priors(model, seed=5):
    """Give the learnable prior logits ``a`` and ``b_n`` distinct values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.joint_prior.scale_logits.copy_(torch.randn(LATENT + PRIVATE, generator=generator))
        for name in NAMES:
            model.auxiliary_scale_logits[name].copy_(torch.randn(PRIVATE, generator=generator))


def hand_experts(model, batch, family, names=NAMES):
    """Per modality: (loc_z, scale_z, loc_w, scale_w), each (N, .), from its encoder network."""
    d, p = model.config.latent_dim, model.config.private_dim
    experts = []
    for name in names:
        out = model.encoders[name](batch.data[name])
        loc, logits = out[:, : d + p], out[:, d + p :].clamp(-20.0, 20.0)
        if family == "laplace":
            scale_z = torch.softmax(logits[:, :d], dim=-1) * d + 1e-6
            scale_w = torch.softmax(logits[:, d:], dim=-1) * p + 1e-6
        elif family == "normal_with_softplus":  # the spec's third family: softplus(h) + 1e-6
            scale_z = torch.nn.functional.softplus(logits[:, :d]) + 1e-6
            scale_w = torch.nn.functional.softplus(logits[:, d:]) + 1e-6
        else:
            scale_z, scale_w = torch.exp(0.5 * logits[:, :d]), torch.exp(0.5 * logits[:, d:])
        experts.append((loc[:, :d], scale_z, loc[:, d:], scale_w))
    return experts


def hand_prior_scales(model, names=NAMES):
    """Scales of p(z), of p(w) and of each r_n: softmax(a) * (D + Dw) split, softmax(b_n) * Dw."""
    d, p = model.config.latent_dim, model.config.private_dim
    joint = torch.softmax(model.joint_prior.scale_logits, dim=0) * (d + p)
    if model.config.learn_modality_prior:
        auxiliary = [torch.softmax(model.auxiliary_scale_logits[n], dim=0) * p for n in names]
    else:
        auxiliary = [torch.ones(p) for _ in names]
    return joint[:d], joint[d:], auxiliary


def hand_log_weights(model, batch, seed, family="laplace", detach_q=False, names=NAMES):
    """``log W`` of every observed expert ``m`` of every sample ``i``: {(m, i): (K,) tensor}."""
    distribution = FAMILIES[family]
    k = model.config.samples_per_expert
    beta = model.config.beta
    experts = hand_experts(model, batch, family, names)
    prior_z, prior_w, auxiliary = hand_prior_scales(model, names)
    torch.manual_seed(seed)
    z = distribution(torch.stack([e[0] for e in experts]), torch.stack([e[1] for e in experts]))
    z = z.rsample((k,))
    w = distribution(torch.stack([e[2] for e in experts]), torch.stack([e[3] for e in experts]))
    w = w.rsample((k,))
    count = len(names)
    scales = torch.stack(auxiliary).reshape(count, 1, 1, -1).expand(count, count, N, -1)
    w_auxiliary = distribution(torch.zeros_like(scales), scales).rsample((k,))

    log_w = {}
    for i in range(N):
        observed = [m for m, name in enumerate(names) if batch.mask[name][i]]
        for m in observed:
            entries = []
            for j in range(k):
                z_k, w_k = z[j, m, i], w[j, m, i]
                log_likelihood = 0.0
                for n in observed:
                    private = w_k if n == m else w_auxiliary[j, n, m, i]
                    latent = torch.cat([z_k, private]).unsqueeze(0)
                    mean = model.decoders[names[n]](latent)[0]
                    log_likelihood = (
                        log_likelihood + Normal(mean, 1.0).log_prob(batch.data[names[n]][i]).sum()
                    )
                shared_terms = []
                for e in observed:
                    loc, scale = experts[e][0][i], experts[e][1][i]
                    if detach_q:
                        loc, scale = loc.detach(), scale.detach()
                    shared_terms.append(distribution(loc, scale).log_prob(z_k).sum())
                log_qz = torch.logsumexp(torch.stack(shared_terms), 0) - math.log(len(observed))
                loc, scale = experts[m][2][i], experts[m][3][i]
                if detach_q:
                    loc, scale = loc.detach(), scale.detach()
                log_qw = distribution(loc, scale).log_prob(w_k).sum()
                log_p = (
                    distribution(0.0, prior_z).log_prob(z_k).sum()
                    + distribution(0.0, prior_w).log_prob(w_k).sum()
                )
                entries.append(log_likelihood + beta * (log_p - log_qz - log_qw))
            log_w[m, i] = torch.stack(entries)
    return log_w


def hand_bound(log_w, kind):
    """Per sample: the mean over observed experts of each one's IWAE bound (or ELBO); 0 if none."""
    per_sample = []
    for i in range(N):
        terms = []
        for (_, sample), values in log_w.items():
            if sample != i:
                continue
            if kind == "elbo":
                terms.append(values.mean())
            else:
                terms.append(torch.logsumexp(values, 0) - math.log(len(values)))
        per_sample.append(torch.stack(terms).mean() if terms else torch.tensor(0.0))
    return torch.stack(per_sample)


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_one_modality_one_sample_is_a_plain_vae_on_z_and_w():
    sizes = {"a": 3}
    model = make_model(
        sizes=sizes, samples_per_expert=1, latent_distribution="normal", bound="iwae"
    )
    batch = make_batch(sizes=sizes, masks={"complete": {"a": [True] * N}})
    torch.manual_seed(4)
    out = model(batch)
    with torch.no_grad():
        raw = model.encoders["a"](batch.data["a"])
        loc, std = raw[:, :4], torch.exp(0.5 * raw[:, 4:].clamp(-20.0, 20.0))
        torch.manual_seed(4)
        z = Normal(loc[None, :, :LATENT], std[None, :, :LATENT]).rsample((1,))[0, 0]
        w = Normal(loc[None, :, LATENT:], std[None, :, LATENT:]).rsample((1,))[0, 0]
        zw = torch.cat([z, w], dim=-1)
        log_w = (
            Normal(model.decoders["a"](zw), 1.0).log_prob(batch.data["a"]).sum(-1)
            + Normal(0.0, 1.0).log_prob(zw).sum(-1)
            - Normal(loc, std).log_prob(zw).sum(-1)
        )
    torch.testing.assert_close(out.loss, -log_w.mean())
    torch.testing.assert_close(out.metrics["bound"], log_w.mean())


@pytest.mark.parametrize("mask", ["complete", "missing"])
@pytest.mark.parametrize(
    ("bound", "family"),
    [
        ("dreg", "laplace"),
        ("iwae", "laplace"),
        ("elbo", "laplace"),
        ("iwae", "normal"),
        ("iwae", "normal_with_softplus"),
        ("elbo", "normal_with_softplus"),
    ],
)
def test_loss_is_the_looser_bound_computed_by_hand(bound, family, mask):
    model = make_model(bound=bound, latent_distribution=family, beta=2.5, learn_shared_prior=True)
    randomize_priors(model)
    batch = make_batch(mask)
    torch.manual_seed(7)
    out = model(batch)
    with torch.no_grad():
        expected = hand_bound(hand_log_weights(model, batch, 7, family), bound)
    if mask == "missing":
        # The sample with no observed modality contributes 0 and still counts.
        assert expected[4] == 0
    torch.testing.assert_close(out.loss, -expected.mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.metrics["bound"], expected.mean(), rtol=1e-5, atol=1e-5)


def test_dreg_has_the_iwae_value_and_the_papers_gradients():
    """Encoders: ``sum_k w~_k^2 d log w_k`` through z and w with q's parameters stopped;
    decoders, b_n and a: the IWAE gradient ``sum_k w~_k d log w_k`` (w~ has no hook)."""
    options = {"samples_per_expert": 4, "learn_shared_prior": True, "beta": 1.5}
    dreg = make_model(bound="dreg", **options)
    randomize_priors(dreg)
    iwae = MMVAEPlus(make_config(bound="iwae", **options))
    iwae.load_state_dict(dreg.state_dict())
    batch = make_batch("missing")

    torch.manual_seed(11)
    dreg_loss = dreg(batch).loss
    dreg_loss.backward()
    dreg_grads = gradients(dreg)
    torch.manual_seed(11)
    iwae_loss = iwae(batch).loss
    iwae_loss.backward()
    iwae_grads = gradients(iwae)
    torch.testing.assert_close(dreg_loss, iwae_loss)

    dreg.zero_grad()
    log_w = hand_log_weights(dreg, batch, 11, detach_q=True)
    observed = {i: sum(1 for (_, n) in log_w if n == i) for i in range(N)}
    surrogate = sum(
        (torch.softmax(values, 0).detach() ** 2 * values).sum() / observed[i]
        for (_, i), values in log_w.items()
    )
    (-surrogate / N).backward()
    hand_grads = gradients(dreg)

    encoders = [name for name in dreg_grads if name.startswith("encoders.")]
    others = [name for name in dreg_grads if not name.startswith("encoders.")]
    assert any(name.startswith("auxiliary_scale_logits.") for name in others)
    assert "joint_prior.scale_logits" in others
    for name in encoders:
        torch.testing.assert_close(dreg_grads[name], hand_grads[name], rtol=1e-4, atol=1e-6)
    for name in others:
        torch.testing.assert_close(dreg_grads[name], iwae_grads[name], rtol=1e-4, atol=1e-6)
    assert not all(torch.allclose(dreg_grads[name], iwae_grads[name]) for name in encoders)


@pytest.mark.parametrize("bound", ["dreg", "iwae"])
def test_the_gradient_reaches_the_auxiliary_and_shared_prior_logits(bound):
    sizes = {"a": 3, "b": 4}
    model = make_model(sizes=sizes, bound=bound, learn_shared_prior=True)
    batch = make_batch(sizes=sizes, masks={"complete": {"a": [True] * N, "b": [True] * N}})
    model(batch).loss.backward()
    for name in sizes:
        assert model.auxiliary_scale_logits[name].grad.abs().sum() > 0, name
    assert model.joint_prior.scale_logits.grad.abs().sum() > 0
    # Without learning, the logits are fixed zeros: unit scales, nothing to train.
    fixed = make_model(sizes=sizes, learn_modality_prior=False)
    assert not any(name.startswith("auxiliary") for name, _ in fixed.named_parameters())
    assert isinstance(fixed.joint_prior.scale_logits, torch.Tensor)
    assert "joint_prior.scale_logits" not in dict(fixed.named_parameters())
    torch.testing.assert_close(fixed.auxiliary_scales(), torch.ones(2, PRIVATE))


@pytest.mark.parametrize("bound", ["dreg", "elbo"])
def test_an_absent_modalitys_auxiliary_prior_gets_zero_gradient(bound):
    # Every bound and latent family with an absent modality: the contract's variants.
    model = make_model(bound=bound, learn_shared_prior=True)
    batch = make_batch("complete")
    batch.mask["b"] = torch.zeros(N, dtype=torch.bool)
    batch.data["b"] = torch.zeros_like(batch.data["b"])
    model(batch).loss.backward()
    # r_b only feeds b's decoder, whose target is absent.
    grad_b = model.auxiliary_scale_logits["b"].grad
    assert torch.equal(grad_b, torch.zeros_like(grad_b))
    assert model.auxiliary_scale_logits["a"].grad.abs().sum() > 0


def test_posterior_given_a_subset_uses_only_its_experts():
    model = make_model(learn_shared_prior=True)
    randomize_priors(model)
    batch = make_batch("missing")
    cond = ["a", "c"]
    z = torch.randn(5, N, LATENT)
    with torch.no_grad():
        posterior = model.posterior(batch, cond)
        experts = hand_experts(model, batch, "laplace")
        prior_z, _, _ = hand_prior_scales(model)
        for i in range(N):
            present = [m for m, name in enumerate(NAMES) if name in cond and batch.mask[name][i]]
            if present:
                mean = torch.stack([experts[m][0][i] for m in present]).mean(0)
                densities = torch.stack(
                    [
                        Laplace(experts[m][0][i], experts[m][1][i]).log_prob(z[:, i]).sum(-1)
                        for m in present
                    ]
                )
                log_q = torch.logsumexp(densities, 0) - math.log(len(present))
            else:
                mean = torch.zeros(LATENT)
                log_q = Laplace(0.0, prior_z).log_prob(z[:, i]).sum(-1)
            torch.testing.assert_close(posterior.mean[i], mean)
            torch.testing.assert_close(posterior.log_prob(z)[:, i], log_q)

        changed = Batch(data={**batch.data, "b": batch.data["b"] + 5.0}, mask=batch.mask)
        torch.manual_seed(3)
        expected = model.predict(batch, cond, n_samples=4)
        torch.manual_seed(3)
        found = model.predict(changed, cond, n_samples=4)
        for name in NAMES:
            torch.testing.assert_close(found[name], expected[name])
        moved = Batch(data={**batch.data, "a": batch.data["a"] + 5.0}, mask=batch.mask)
        assert not torch.allclose(model.posterior(moved, cond).mean, posterior.mean)


def test_mean_prediction_decodes_the_mixture_mean_and_private_means():
    model = make_model()
    batch = make_batch("complete")
    with torch.no_grad():
        out = model.predict(batch, ["a", "c"], gen=["a", "b"], use_mean=True)
        experts = hand_experts(model, batch, "laplace")
        z = (experts[0][0] + experts[2][0]) / 2
        own = model.decoders["a"](torch.cat([z, experts[0][2]], dim=-1))
        cross = model.decoders["b"](torch.cat([z, torch.zeros(N, PRIVATE)], dim=-1))
    torch.testing.assert_close(out["a"], own)
    torch.testing.assert_close(out["b"], cross)


@pytest.mark.parametrize("private_generation", ["prior", "auxiliary"])
def test_generation_draws_unobserved_private_latents_from_p_or_r(private_generation):
    model = make_model(learn_shared_prior=True, private_generation=private_generation)
    with torch.no_grad():
        # p(w) scales about (2.14, 0.29); r_a about (1.46, 0.54), r_b about (0.24, 1.76).
        model.joint_prior.scale_logits.copy_(torch.tensor([0.0, 0.0, 1.0, -1.0]))
        model.auxiliary_scale_logits["a"].copy_(torch.tensor([0.5, -0.5]))
        model.auxiliary_scale_logits["b"].copy_(torch.tensor([-1.0, 1.0]))
    batch = make_batch("missing")
    draws = 4000
    with torch.no_grad():
        privates = model.generation_privates(batch, ["a"], ["a", "b"], draws)
        experts = hand_experts(model, batch, "laplace")
        _, prior_w, auxiliary = hand_prior_scales(model)
    fallback = {"a": prior_w, "b": prior_w}
    if private_generation == "auxiliary":
        fallback = {"a": auxiliary[0], "b": auxiliary[1]}
    assert privates["a"].shape == privates["b"].shape == (draws, N, PRIVATE)
    observed = batch.mask["a"]
    # b is not conditioned on: every sample's w_b comes from p (or r_b), centred.
    torch.testing.assert_close(privates["b"].abs().mean((0, 1)), fallback["b"], rtol=0.03, atol=0.0)
    torch.testing.assert_close(
        privates["b"].mean((0, 1)), torch.zeros(PRIVATE), rtol=0.0, atol=0.03
    )
    # a is: w_a comes from q(w_a | x_a) where x_a is observed, else from the fallback.
    centred = privates["a"][:, observed] - experts[0][2][observed]
    torch.testing.assert_close(centred.abs().mean(0), experts[0][3][observed], rtol=0.08, atol=0.0)
    torch.testing.assert_close(
        privates["a"][:, ~observed].abs().mean((0, 1)), fallback["a"], rtol=0.05, atol=0.0
    )
    # The two fallbacks differ, so the checks above tell them apart.
    assert (prior_w - auxiliary[0]).abs().min() > 0.2
    assert (prior_w - auxiliary[1]).abs().min() > 0.2


@pytest.mark.parametrize("family", ["laplace", "normal"])
def test_joint_nll_matches_a_numerical_integral(family):
    """``log p(X_O) = log int p(z) prod_{n in O} int p(x_n | z, w_n) p(w_n) dw_n dz``."""
    sizes = {"a": 2, "b": 3}
    masks = {
        "missing": {"a": [True, True, False, True, False], "b": [True, False, True, True, False]}
    }
    model = make_model(sizes=sizes, latent_dim=1, private_dim=1, latent_distribution=family)
    with torch.no_grad():
        # Experts that disagree, so the weighting of stratified draws matters, and (normal
        # family) wider than the posterior, so the weights have a finite variance.
        model.encoders["a"].network[-1].bias[0] += 1.0
        model.encoders["b"].network[-1].bias[0] -= 1.0
        for name in sizes:
            model.encoders[name].network[-1].bias[2:] += 0.7
    batch = make_batch("missing", sizes=sizes, masks=masks)
    distribution = FAMILIES[family]
    grid = torch.linspace(-12.0, 12.0, 601)
    step = math.log(float(grid[1] - grid[0]))
    with torch.no_grad():
        log_prior = distribution(0.0, 1.0).log_prob(grid)
        pairs = torch.cartesian_prod(grid, grid)  # (z, w)
        expected = []
        for i in range(N):
            log_joint = log_prior.clone()
            for name in sizes:
                if not batch.mask[name][i]:
                    continue
                mean = model.decoders[name](pairs)
                log_likelihood = Normal(mean, 1.0).log_prob(batch.data[name][i]).sum(-1)
                inner = log_likelihood.reshape(len(grid), len(grid)) + log_prior
                log_joint = log_joint + torch.logsumexp(inner, dim=1) + step
            observed = any(batch.mask[name][i] for name in sizes)
            expected.append(torch.logsumexp(log_joint, 0) + step if observed else torch.tensor(0.0))
        expected = torch.stack(expected)

        torch.manual_seed(0)
        pooled = model.nll(batch, k=20000, chunk_size=5000)
        # K = 3 draws over two experts split 2 + 1. Their weights are unbiased for p(X_O), so
        # the average weight over many copies of the batch converges to it (weighting the
        # draws as if split evenly is off by about 0.1 nat on sample 3).
        copies = 4000
        many = Batch(
            data={m: v.repeat(copies, 1) for m, v in batch.data.items()},
            mask={m: v.repeat(copies) for m, v in batch.mask.items()},
        )
        log_weights = -model.nll(many, k=3).reshape(copies, N)
        uneven = torch.logsumexp(log_weights, 0) - math.log(copies)
    assert pooled[4] == 0
    torch.testing.assert_close(-pooled, expected, rtol=0.0, atol=0.03)
    torch.testing.assert_close(uneven, expected, rtol=0.0, atol=0.04)


def test_config_is_validated_and_round_trips():
    for key, value, message in [
        ("private_dim", 0, "private_dim must be >= 1, found 0"),
        ("samples_per_expert", 0, "samples_per_expert must be >= 1, found 0"),
        ("beta", -1.0, "beta must be >= 0, found -1.0"),
        ("bound", "dreg_looser", r"bound: expected one of \['dreg', 'iwae', 'elbo'\]"),
        ("latent_distribution", "laplace_with_softmax", "latent_distribution: expected one of"),
        ("private_generation", "single_prior", "private_generation: expected one of"),
    ]:
        with pytest.raises(ConfigError, match=message):
            make_config(**{key: value})
    plain = make_config().to_dict()
    plain["bound"] = "iwae_looser"
    with pytest.raises(ConfigError, match="bound"):
        MMVAEPlusConfig.from_dict(plain)
    config = make_config(latent_distribution="normal", private_generation="auxiliary")
    rebuilt = create_model("mmvaeplus", config.to_dict())
    assert isinstance(rebuilt, MMVAEPlus)
    assert rebuilt.config == config
    assert MMVAEPlusConfig(modalities=config.modalities).samples_per_expert == 10


def test_on_incomplete_data_each_decoder_runs_only_where_expert_and_target_are_observed():
    model = make_model(samples_per_expert=2)
    rows = dict.fromkeys(NAMES, 0)

    def count(name):
        def hook(module, inputs, output):
            rows[name] += inputs[0].shape[0]

        return hook

    for name in NAMES:
        model.decoders[name].register_forward_hook(count(name))
    model(make_batch("missing"))
    # Sample 0 has 3 observed experts, 1 and 3 have 2, 2 has 1, 4 none; times K = 2 draws.
    assert rows == {"a": 2 * (3 + 1 + 2), "b": 2 * (3 + 2 + 2), "c": 2 * (3 + 2)}
    rows.update(dict.fromkeys(NAMES, 0))
    model(make_batch("complete"))
    assert rows == dict.fromkeys(NAMES, 2 * 3 * N)
