import math

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Laplace, Normal

from multivae.config import ConfigError
from multivae.nn.likelihoods import ModalityLikelihood


def test_normal_matches_torch_distributions():
    params, target = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    likelihood = ModalityLikelihood("normal", scale=0.7)
    expected = Normal(params, 0.7).log_prob(target).sum((1, 2))
    torch.testing.assert_close(likelihood.log_prob(params, target), expected)


def test_laplace_matches_torch_distributions():
    params, target = torch.randn(4, 6), torch.randn(4, 6)
    likelihood = ModalityLikelihood("laplace", scale=0.75)
    expected = Laplace(params, 0.75).log_prob(target).sum(-1)
    torch.testing.assert_close(likelihood.log_prob(params, target), expected)


def test_bernoulli_on_logits_matches_torch_distributions():
    logits, target = torch.randn(4, 1, 2, 2), torch.randint(0, 2, (4, 1, 2, 2)).float()
    expected = Bernoulli(logits=logits).log_prob(target).sum((1, 2, 3))
    torch.testing.assert_close(ModalityLikelihood("bernoulli").log_prob(logits, target), expected)


def test_categorical_matches_torch_distributions():
    logits, target = torch.randn(5, 10), torch.randint(0, 10, (5,))
    expected = Categorical(logits=logits).log_prob(target)
    torch.testing.assert_close(ModalityLikelihood("categorical").log_prob(logits, target), expected)


def test_one_value_by_hand():
    # log N(1; 0, 1) + log N(2; 0, 1) = -(1 + 4) / 2 - log(2 pi)
    value = ModalityLikelihood("normal").log_prob(torch.zeros(1, 2), torch.tensor([[1.0, 2.0]]))
    assert value.item() == pytest.approx(-2.5 - math.log(2 * math.pi))


@pytest.mark.parametrize("kind", ["normal", "laplace", "bernoulli", "categorical"])
def test_leading_sample_dimensions_broadcast_over_the_target(kind):
    likelihood = ModalityLikelihood(kind)
    if kind == "categorical":
        params, target = torch.randn(7, 4, 3), torch.randint(0, 3, (4,))
    else:
        params, target = torch.randn(7, 4, 2, 3), torch.rand(4, 2, 3)
    batched = likelihood.log_prob(params, target)
    assert batched.shape == (7, 4)
    torch.testing.assert_close(batched[2], likelihood.log_prob(params[2], target))


def test_mask_gives_exact_zero_value_and_gradient():
    params = torch.randn(3, 4, requires_grad=True)
    mask = torch.tensor([True, False, True])
    likelihood = ModalityLikelihood("normal")
    values = likelihood.masked_log_prob(params, torch.randn(3, 4), mask)
    assert values[1] == 0
    values.sum().backward()
    assert torch.all(params.grad[1] == 0) and torch.all(params.grad[0] != 0)


def test_weight_rescales_and_learned_scale_is_a_parameter():
    params, target = torch.randn(2, 3), torch.randn(2, 3)
    plain = ModalityLikelihood("normal").log_prob(params, target)
    torch.testing.assert_close(
        ModalityLikelihood("normal", weight=0.25).log_prob(params, target), 0.25 * plain
    )
    learned = ModalityLikelihood("laplace", scale=2.0, learn_scale=True)
    assert [name for name, _ in learned.named_parameters()] == ["log_scale"]
    assert learned.log_scale.item() == pytest.approx(math.log(2.0))
    assert list(ModalityLikelihood("normal").parameters()) == []


def test_means_and_samples_have_the_data_shape():
    logits = torch.randn(3, 5)
    assert ModalityLikelihood("categorical").mean(logits).tolist() == logits.argmax(-1).tolist()
    torch.testing.assert_close(ModalityLikelihood("bernoulli").mean(logits), logits.sigmoid())
    assert ModalityLikelihood("categorical").sample(logits).shape == (3,)
    draws = ModalityLikelihood("laplace", scale=0.5).sample(torch.zeros(20000))
    # Laplace(0, b) has mean absolute deviation b.
    assert draws.abs().mean().item() == pytest.approx(0.5, rel=0.05)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "poisson"}, "unknown likelihood 'poisson'"),
        ({"kind": "normal", "scale": 0.0}, "scale must be > 0"),
        ({"kind": "bernoulli", "learn_scale": True}, "has no scale to learn"),
    ],
    ids=["unknown-kind", "zero-scale", "bernoulli-scale"],
)
def test_bad_likelihood_options_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ModalityLikelihood(**kwargs)
