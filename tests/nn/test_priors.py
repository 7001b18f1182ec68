"""The priors against torch.distributions and closed forms; every model's default priors."""

import pytest
import torch
from kit.models import tiny_model
from torch.distributions import (
    Categorical,
    Independent,
    Laplace,
    MixtureSameFamily,
    Normal,
    kl_divergence,
)

import multivae
from multivae.nn.posteriors import GaussianPosterior, LaplacePosterior
from multivae.nn.priors import LaplacePrior, MixturePrior, StandardNormalPrior


def test_the_standard_normal_scores_samples_and_has_the_gaussian_kl():
    torch.manual_seed(0)
    prior = StandardNormalPrior(3)
    z = torch.randn(5, 4, 3)
    torch.testing.assert_close(prior.log_prob(z), Normal(0.0, 1.0).log_prob(z).sum(-1))
    assert prior.sample((7, 2)).shape == (7, 2, 3)
    mean, logvar = torch.randn(4, 3), torch.randn(4, 3)
    expected = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(prior.kl(GaussianPosterior(mean, logvar)), expected)
    with pytest.raises(NotImplementedError, match="no closed-form KL"):
        prior.kl(LaplacePosterior(mean, logvar.exp()))


def test_the_laplace_prior_has_softmax_scales_and_the_laplace_kl():
    torch.manual_seed(1)
    prior = LaplacePrior(3, learn_scale=True)
    with torch.no_grad():
        prior.scale_logits.copy_(torch.tensor([0.0, 1.0, -1.0]))
    scale = torch.softmax(torch.tensor([0.0, 1.0, -1.0]), 0) * 3
    torch.testing.assert_close(prior.scale(), scale)
    assert prior.scale().sum().item() == pytest.approx(3.0)
    z = torch.randn(6, 3)
    torch.testing.assert_close(prior.log_prob(z), Laplace(0.0, scale).log_prob(z).sum(-1))
    loc, posterior_scale = torch.randn(4, 3), torch.rand(4, 3) + 0.1
    expected = kl_divergence(Laplace(loc, posterior_scale), Laplace(0.0, scale)).sum(-1)
    torch.testing.assert_close(prior.kl(LaplacePosterior(loc, posterior_scale)), expected)
    # Draws have the scales: E|z| = scale for a centred Laplace.
    draws = prior.sample((200_000,))
    torch.testing.assert_close(draws.abs().mean(0), scale, rtol=0.02, atol=0.0)
    draws.sum().backward()
    assert prior.scale_logits.grad is not None  # reparameterized


def test_the_mixture_prior_is_a_logsumexp_of_its_weighted_components():
    torch.manual_seed(2)
    prior = MixturePrior(2, components=3, learn_scale=True)
    with torch.no_grad():
        prior.weight_logits.copy_(torch.tensor([0.0, 1.0, 2.0]))
        prior.logvars.copy_(torch.randn(3, 2) * 0.3)
    reference = MixtureSameFamily(
        Categorical(logits=prior.weight_logits.detach()),
        Independent(Normal(prior.means.detach(), (0.5 * prior.logvars.detach()).exp()), 1),
    )
    z = torch.randn(5, 2) * 2
    torch.testing.assert_close(prior.log_prob(z), reference.log_prob(z))
    draws = prior.sample((100_000,))
    torch.testing.assert_close(draws.mean(0), reference.mean, rtol=0.0, atol=0.03)
    torch.testing.assert_close(prior.mean((4,)), reference.mean.expand(4, 2))
    with pytest.raises(NotImplementedError):
        prior.kl(GaussianPosterior(torch.zeros(1, 2), torch.zeros(1, 2)))
    # One component at the origin with unit variance is N(0, I).
    single = MixturePrior(2, components=1)
    with torch.no_grad():
        single.means.zero_()
    torch.testing.assert_close(single.log_prob(z), StandardNormalPrior(2).log_prob(z))


def test_priors_draw_on_their_parameters_device_or_the_one_given():
    for prior in (LaplacePrior(2, learn_scale=True), MixturePrior(2, 2)):
        assert prior.to("meta").sample((3,)).device.type == "meta"
    assert StandardNormalPrior(2).sample((3,), "meta").device.type == "meta"
    assert StandardNormalPrior(2).mean((3,), "meta").device.type == "meta"


STILL_OVERRIDING = {"mmvaeplus"}
"""Models whose priors are still methods (MMVAE+: one softmax over [z, w] shared by both)."""


@pytest.mark.parametrize("name", multivae.list_models())
def test_every_model_declares_its_priors_as_objects(name):
    model = tiny_model(name, "default", "vectors")
    assert model.shared_prior.dim == model.config.latent_dim
    for modality, dim in model.private_dims.items():
        assert model.private_prior(modality).dim == dim
    # A prior without parameters holds no tensor (DDP would broadcast it in every forward);
    # a learned one may hold state (CMVAE's mask of active clusters).
    if not list(model.shared_prior.parameters()):
        assert not list(model.shared_prior.buffers())
    torch.manual_seed(3)
    z = model.prior_sample(4)
    assert z.shape == (4, model.config.latent_dim)
    if name not in STILL_OVERRIDING:  # the model's prior is the object
        torch.testing.assert_close(model.prior_log_prob(z), model.shared_prior.log_prob(z))
        torch.manual_seed(3)
        torch.testing.assert_close(model.shared_prior.sample((4,)), z)


def test_an_mmvae_saved_with_its_old_prior_key_loads():
    model = tiny_model("mmvae", "default", "vectors")
    with torch.no_grad():
        model.shared_prior.scale_logits.copy_(torch.tensor([0.3, -0.3]))
    state = model.state_dict()
    state["prior_scale_logits"] = state.pop("shared_prior.scale_logits")
    fresh = tiny_model("mmvae", "default", "vectors", seed=1)
    fresh.load_state_dict(state)  # strict
    torch.testing.assert_close(fresh.prior_scale(), model.prior_scale())
