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
from multivae.nn.priors import LaplacePrior, MixturePrior, SoftmaxScalePrior, StandardNormalPrior


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
    # The model's prior is the object: no model overrides the base's methods.
    torch.testing.assert_close(model.prior_log_prob(z), model.shared_prior.log_prob(z))
    torch.manual_seed(3)
    torch.testing.assert_close(model.shared_prior.sample((4,)), z)
    for modality in model.private_dims:
        w = model.private_prior_sample(modality, (4,))
        torch.testing.assert_close(
            model.private_prior_log_prob(modality, w), model.private_prior(modality).log_prob(w)
        )


def test_an_mmvae_saved_with_its_old_prior_key_loads():
    model = tiny_model("mmvae", "default", "vectors")
    with torch.no_grad():
        model.shared_prior.scale_logits.copy_(torch.tensor([0.3, -0.3]))
    state = model.state_dict()
    state["prior_scale_logits"] = state.pop("shared_prior.scale_logits")
    fresh = tiny_model("mmvae", "default", "vectors", seed=1)
    fresh.load_state_dict(state)  # strict
    torch.testing.assert_close(fresh.prior_scale(), model.prior_scale())


def test_slices_of_a_softmax_prior_share_its_logits_and_score_their_own_dimensions():
    joint = SoftmaxScalePrior(5, "laplace", learn_scale=True)
    with torch.no_grad():
        joint.scale_logits.copy_(torch.tensor([0.5, -0.5, 1.0, 0.0, -1.0]))
    head, tail = joint.slice(0, 2), joint.slice(2, 5)
    scales = torch.softmax(joint.scale_logits.detach(), 0) * 5
    torch.testing.assert_close(head.scale(), scales[:2])
    torch.testing.assert_close(tail.scale(), scales[2:])
    # The slices hold nothing: the joint's logits are saved once, by their owner.
    assert not list(head.parameters()) and not list(head.buffers())
    z = torch.randn(7, 5)
    hand = Laplace(torch.zeros(5), scales).log_prob(z)
    torch.testing.assert_close(head.log_prob(z[:, :2]), hand[:, :2].sum(-1))
    torch.testing.assert_close(head.log_prob(z[:, :2]) + tail.log_prob(z[:, 2:]), joint.log_prob(z))
    # A gradient through a slice reaches the joint's logits.
    tail.log_prob(z[:, 2:]).sum().backward()
    assert joint.scale_logits.grad is not None and joint.scale_logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="start < stop"):
        joint.slice(3, 3)


def test_an_mmvaeplus_saved_with_its_old_prior_key_loads_and_keeps_one_copy_of_the_logits():
    model = tiny_model("mmvaeplus", "auxiliary-generation", "vectors")
    state = model.state_dict()
    assert [key for key in state if "scale_logits" in key and "auxiliary" not in key] == [
        "joint_prior.scale_logits"
    ]
    with torch.no_grad():
        model.joint_prior.scale_logits.normal_()
    state = model.state_dict()
    state["prior_scale_logits"] = state.pop("joint_prior.scale_logits")
    fresh = tiny_model("mmvaeplus", "auxiliary-generation", "vectors", seed=1)
    fresh.load_state_dict(state)  # strict
    torch.testing.assert_close(fresh.prior_scale(), model.prior_scale())
    d = model.config.latent_dim
    torch.testing.assert_close(fresh.shared_prior.scale(), model.prior_scale()[:d])
    for modality in fresh.modalities:
        torch.testing.assert_close(fresh.private_prior(modality).scale(), model.prior_scale()[d:])
