"""mmJSD against its objective, worked out by hand with torch.distributions.

The dynamic prior is checked against closed forms for one expert, and against a loop over the
experts with explicit weights ``pi_k`` for several. Sampling is made deterministic by replaying
the seed: ``MMJSD.objective`` documents its draws (with ``mixture_sampling="random"``,
``torch.rand((N,))`` for the expert choice; then ``torch.randn((N, D))`` for the shared latent;
then ``torch.randn((1, N, private_dim))`` for each modality's private latent in order), so the
hand computation reseeds and draws the same noise. Everything else is written here with Python
loops, independently of the model's code.
"""

import math

import pytest
import torch
from kit.models import vector_batch
from torch.distributions import Normal, kl_divergence

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.factory import create_model
from multivae.models.base import ModalityConfig
from multivae.models.mmjsd import MMJSD, MMJSDConfig, dynamic_prior, jensen_shannon_regularizer
from multivae.nn.architectures import ArchitectureConfig

SIZES = {"a": 3, "b": 4, "c": 3}
NAMES = list(SIZES)
LATENT = 2
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
MLP = ArchitectureConfig("mlp", {"hidden": [8]})


def make_config(sizes=SIZES, **options):
    modalities = {
        name: ModalityConfig(shape=(size,), encoder=MLP, decoder=MLP)
        for name, size in sizes.items()
    }
    return MMJSDConfig(modalities=modalities, latent_dim=LATENT, **options)


def make_model(seed=0, **options):
    torch.manual_seed(seed)
    return MMJSD(make_config(**options))


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


def alpha_geometric_mean(experts, weights):
    """Mean and standard deviation of prod_k q_k^{pi_k} (normalized), for Normal experts."""
    precision = sum(pi / expert.variance for expert, pi in zip(experts, weights, strict=True))
    weighted = sum(
        pi * expert.mean / expert.variance for expert, pi in zip(experts, weights, strict=True)
    )
    return weighted / precision, precision.rsqrt()


def hand_jensen_shannon(experts, weights):
    """(sum_k pi_k KL(q_k || f), f) with f the weighted geometric mean of the experts."""
    mean, std = alpha_geometric_mean(experts, weights)
    f = Normal(mean, std)
    divergence = sum(
        pi * kl_divergence(expert, f).sum() for expert, pi in zip(experts, weights, strict=True)
    )
    return divergence, f


def hand_loss(model, batch, seed):
    """``-mean_n [sum_{m in O} log p(x_m|z,w_m) - beta JS_n - beta_style sum_{m in O} KL_w]``.

    ``JS_n = sum_{k in O + {0}} KL(q_k || f) / (|O| + 1)``; ``z`` from the mixture over ``O``;
    a sample with nothing observed counts as 0.
    """
    config = model.config
    posteriors = hand_posteriors(model, batch)
    torch.manual_seed(seed)
    if config.mixture_sampling == "random":
        uniform = torch.rand(N)
    shared_noise = torch.randn(N, LATENT)
    private_noise = [
        torch.randn(1, N, config.private_dim)[0] if config.private_dim else None for _ in NAMES
    ]
    standard = Normal(torch.zeros(LATENT), torch.ones(LATENT))
    objectives = []
    for n in range(N):
        present = [name for name in NAMES if batch.mask[name][n]]
        if not present:
            objectives.append(torch.zeros(()))
            continue
        experts = [
            Normal(posteriors[name][0][n], torch.exp(0.5 * posteriors[name][1][n]))
            for name in present
        ]
        weights = [1 / (len(present) + 1)] * (len(present) + 1)
        divergence, _ = hand_jensen_shannon([standard, *experts], weights)
        if config.mixture_sampling == "split":
            rank = n * len(present) // N
        else:
            rank = int(uniform[n] * len(present))
        z = experts[rank].mean + experts[rank].stddev * shared_noise[n]
        reconstruction = torch.zeros(())
        kl_private = torch.zeros(())
        for i, name in enumerate(NAMES):
            if name not in present:
                continue
            latent = z
            if config.private_dim:
                w_mean, w_logvar = posteriors[name][2][n], posteriors[name][3][n]
                w_std = torch.exp(0.5 * w_logvar)
                latent = torch.cat([z, w_mean + w_std * private_noise[i][n]])
                kl_private = (
                    kl_private + kl_divergence(Normal(w_mean, w_std), Normal(0.0, 1.0)).sum()
                )
            params = model.decoders[name](latent.unsqueeze(0))[0]
            reconstruction = (
                reconstruction + Normal(params, 1.0).log_prob(batch.data[name][n]).sum()
            )
        objectives.append(
            reconstruction - config.beta * divergence - config.beta_style * kl_private
        )
    return -torch.stack(objectives).mean()


def test_one_standard_expert_gives_a_standard_dynamic_prior_and_no_divergence():
    means, logvars = torch.zeros(1, 3, LATENT), torch.zeros(1, 3, LATENT)
    mask = torch.ones(1, 3, dtype=torch.bool)
    mean, logvar = dynamic_prior(means, logvars, mask)
    torch.testing.assert_close(mean, torch.zeros(3, LATENT))
    torch.testing.assert_close(logvar, torch.zeros(3, LATENT))
    regularizer = jensen_shannon_regularizer(means, logvars, mask, mean, logvar)
    torch.testing.assert_close(regularizer, torch.zeros(3))

    # The same through a one-modality model whose encoder outputs q_1 = N(0, 1).
    model = MMJSD(make_config(sizes={"a": 3}))
    with torch.no_grad():
        model.encoders["a"].network[-1].weight.zero_()
        model.encoders["a"].network[-1].bias.zero_()
    batch = Batch(data={"a": torch.randn(4, 3)}, mask={"a": torch.ones(4, dtype=torch.bool)})
    torch.testing.assert_close(model(batch).metrics["regularizer"], torch.zeros(()))


@pytest.mark.parametrize(("mu", "sigma"), [(1.5, 0.5), (-2.0, 1.0), (0.3, 3.0)])
def test_one_expert_with_equal_weights_has_the_closed_form_dynamic_prior(mu, sigma):
    means = torch.full((1, 1, LATENT), mu)
    logvars = torch.full((1, 1, LATENT), 2 * math.log(sigma))
    mask = torch.ones(1, 1, dtype=torch.bool)
    mean, logvar = dynamic_prior(means, logvars, mask)
    torch.testing.assert_close(mean, torch.full((1, LATENT), mu / (sigma**2 + 1)))
    torch.testing.assert_close(logvar.exp(), torch.full((1, LATENT), 2 * sigma**2 / (sigma**2 + 1)))
    # pi = (1/2, 1/2): half of each expert's KL to f.
    f = Normal(mean[0], torch.exp(0.5 * logvar[0]))
    expected = 0.5 * (
        kl_divergence(Normal(torch.zeros(LATENT), 1.0), f).sum()
        + kl_divergence(Normal(means[0, 0], sigma), f).sum()
    )
    torch.testing.assert_close(
        jensen_shannon_regularizer(means, logvars, mask, mean, logvar), expected.reshape(1)
    )


def test_dynamic_prior_of_the_observed_experts_and_the_prior_with_equal_weights():
    generator = torch.Generator().manual_seed(0)
    means = torch.randn(3, N, LATENT, generator=generator)
    logvars = torch.randn(3, N, LATENT, generator=generator)
    mask = torch.tensor([MASKS["missing"][name] for name in NAMES])
    mean, logvar = dynamic_prior(means, logvars, mask)
    regularizer = jensen_shannon_regularizer(means, logvars, mask, mean, logvar)
    for n in range(N):
        experts = [Normal(torch.zeros(LATENT), torch.ones(LATENT))] + [
            Normal(means[m, n], torch.exp(0.5 * logvars[m, n])) for m in range(3) if mask[m, n]
        ]
        divergence, f = hand_jensen_shannon(experts, [1 / len(experts)] * len(experts))
        torch.testing.assert_close(mean[n], f.mean)
        torch.testing.assert_close(torch.exp(0.5 * logvar[n]), f.stddev)
        torch.testing.assert_close(regularizer[n], divergence)
    # Nothing observed (sample 4): f is the prior and the divergence 0.
    torch.testing.assert_close(regularizer[4], torch.zeros(()))


@pytest.mark.parametrize("sampling", ["split", "random"])
@pytest.mark.parametrize("mask", ["complete", "missing"])
@pytest.mark.parametrize("private_dim", [0, 2], ids=["shared-only", "private"])
def test_loss_is_the_mmjsd_objective_computed_by_hand(private_dim, mask, sampling):
    model = make_model(private_dim=private_dim, beta=2.0, beta_style=0.5, mixture_sampling=sampling)
    batch = make_batch(mask)
    torch.manual_seed(7)
    output = model(batch)
    with torch.no_grad():
        expected = hand_loss(model, batch, 7)
    torch.testing.assert_close(output.loss, expected, rtol=1e-5, atol=1e-5)
    expected_parts = {"reconstruction", "regularizer"} | ({"kl_private"} if private_dim else set())
    assert set(output.metrics) == expected_parts


def test_a_batch_with_nothing_observed_has_zero_loss_and_zero_gradients():
    model = make_model(private_dim=2)
    batch = make_batch("complete")
    empty = Batch(
        data={name: torch.zeros_like(values) for name, values in batch.data.items()},
        mask={name: torch.zeros(N, dtype=torch.bool) for name in NAMES},
    )
    loss = model(empty).loss
    assert loss == 0
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.all(parameter.grad == 0), name


@pytest.mark.parametrize("sampling", ["split", "random"])
def test_unobserved_experts_are_never_selected(sampling):
    model = make_model(mixture_sampling=sampling)
    generator = torch.Generator().manual_seed(0)
    mask = torch.rand(3, 200, generator=generator) < 0.5
    mask[:, :5] = False
    torch.manual_seed(1)
    chosen = model.select_experts(mask)
    assert not (chosen & ~mask).any()
    assert torch.equal(chosen.sum(0), mask.any(0).long())
    assert torch.equal(chosen.any(1), mask.any(1))


def test_split_divides_a_complete_batch_evenly_among_the_experts():
    chosen = make_model().select_experts(torch.ones(3, 9, dtype=torch.bool)).long().argmax(0)
    assert chosen.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_subset_posterior_is_the_mixture_of_the_observed_cond_experts():
    model = make_model(private_dim=2)
    assert model.config.conditioning == "mixture"
    batch = make_batch("missing")
    z = torch.randn(4, N, LATENT)
    with torch.no_grad():
        posteriors = hand_posteriors(model, batch)
        for cond in (["a", "b"], ["c"], NAMES):
            posterior = model.posterior(batch, cond)
            for n in range(N):
                experts = [
                    Normal(posteriors[name][0][n], torch.exp(0.5 * posteriors[name][1][n]))
                    for name in cond
                    if batch.mask[name][n]
                ]
                if not experts:
                    experts = [Normal(torch.zeros(LATENT), torch.ones(LATENT))]
                mean = torch.stack([expert.mean for expert in experts]).mean(0)
                densities = torch.stack([e.log_prob(z[:, n]).sum(-1) for e in experts])
                log_q = torch.logsumexp(densities, 0) - math.log(len(experts))
                torch.testing.assert_close(posterior.mean[n], mean)
                torch.testing.assert_close(posterior.log_prob(z)[:, n], log_q)


def test_dynamic_prior_conditioning_is_f_of_the_observed_cond_experts():
    model = make_model(conditioning="dynamic_prior")
    batch = make_batch("missing")
    with torch.no_grad():
        posteriors = hand_posteriors(model, batch)
        for cond in (["a", "b"], NAMES):
            posterior = model.posterior(batch, cond)
            for n in range(N):
                experts = [Normal(torch.zeros(LATENT), torch.ones(LATENT))] + [
                    Normal(posteriors[name][0][n], torch.exp(0.5 * posteriors[name][1][n]))
                    for name in cond
                    if batch.mask[name][n]
                ]
                mean, std = alpha_geometric_mean(experts, [1 / len(experts)] * len(experts))
                torch.testing.assert_close(posterior.mean[n], mean)
                torch.testing.assert_close(torch.exp(0.5 * posterior.logvar[n]), std)


def test_private_latents_shapes_and_generation():
    private = 3
    model = make_model(private_dim=private)
    for name in NAMES:
        assert model.encoders[name].network[-1].out_features == 2 * (LATENT + private)
        assert model.decoders[name].network[0].in_features == LATENT + private
    assert model.capabilities.private_latents
    assert not make_model().capabilities.private_latents
    batch = make_batch("missing")
    out = model.predict(batch, cond=["a"], gen=["b", "c"], n_samples=2)
    assert {name: x.shape for name, x in out.items()} == {"b": (2, N, 4), "c": (2, N, 3)}
    nll = model.nll(batch, k=12, chunk_size=5)
    assert nll.shape == (N,)
    assert torch.isfinite(nll).all()


def test_config_round_trip_and_bad_configs():
    config = make_config(
        private_dim=2, mixture_sampling="random", conditioning="dynamic_prior", beta=2.5
    )
    rebuilt = create_model("mmjsd", config.to_dict())
    assert isinstance(rebuilt, MMJSD)
    assert rebuilt.config == config
    assert (make_config().beta, make_config().beta_style) == (5.0, 3.0)

    with pytest.raises(ConfigError, match="private_dim must be >= 0, found -1"):
        make_config(private_dim=-1)
    with pytest.raises(ConfigError, match=r"beta must be >= 0, found -1\.0"):
        make_config(beta=-1.0)
    with pytest.raises(ConfigError, match=r"beta_style must be >= 0, found -0\.5"):
        make_config(beta_style=-0.5)
    with pytest.raises(ConfigError, match="mixture_sampling"):
        make_config(mixture_sampling="stratified")
    with pytest.raises(ConfigError, match="conditioning"):
        make_config(conditioning="product")
