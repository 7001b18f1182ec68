import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from multivae.objectives import (
    dreg_surrogate,
    elbo,
    iwae_bound,
    kl_normal,
    kl_standard_normal,
    linear_warmup,
    log_mean_exp,
)


def test_kl_by_hand():
    # KL(N(1, 4) || N(0, 1)) = 0.5 * (4 + 1 - 1 - log 4)
    value = kl_standard_normal(torch.tensor([1.0]), torch.tensor([math.log(4.0)]))
    assert value.item() == pytest.approx(0.5 * (4.0 - math.log(4.0)))
    # KL(N(0, 1) || N(2, 1)) = 0.5 * 2^2
    value = kl_normal(torch.zeros(1), torch.zeros(1), torch.tensor([2.0]), torch.zeros(1))
    assert value.item() == pytest.approx(2.0)


def test_kl_matches_torch_distributions_and_sums_dimensions():
    mean_q, logvar_q, mean_p, logvar_p = (torch.randn(6, 3) for _ in range(4))
    expected = kl_divergence(
        Normal(mean_q, (0.5 * logvar_q).exp()), Normal(mean_p, (0.5 * logvar_p).exp())
    ).sum(-1)
    torch.testing.assert_close(kl_normal(mean_q, logvar_q, mean_p, logvar_p), expected)
    torch.testing.assert_close(
        kl_standard_normal(mean_q, logvar_q),
        kl_normal(mean_q, logvar_q, torch.zeros(6, 3), torch.zeros(6, 3)),
    )


def test_elbo_is_reconstruction_minus_weighted_kl():
    torch.testing.assert_close(
        elbo(torch.tensor([-3.0]), torch.tensor([2.0]), beta=0.5), torch.tensor([-4.0])
    )


def test_iwae_with_one_sample_is_the_elbo_estimate():
    log_w = torch.randn(1, 5)
    torch.testing.assert_close(iwae_bound(log_w), log_w[0])


def test_iwae_is_at_least_the_mean_and_at_most_the_max():
    log_w = torch.randn(10, 5) * 3
    bound = iwae_bound(log_w)
    assert torch.all(bound >= log_w.mean(0)) and torch.all(bound <= log_w.max(0).values)
    torch.testing.assert_close(
        log_mean_exp(torch.log(torch.tensor([[1.0], [3.0]]))), torch.log(torch.tensor([2.0]))
    )


def test_iwae_converges_to_the_exact_marginal_likelihood():
    # z ~ N(0, 1), x | z ~ N(z, 1): p(x) = N(x; 0, 2). Proposal q = N(0.3, 1.5^2).
    torch.manual_seed(0)
    x = torch.tensor(1.2)
    exact = Normal(0.0, math.sqrt(2.0)).log_prob(x)
    q = Normal(0.3, 1.5)
    z = q.sample((200000, 1))
    log_w = Normal(0.0, 1.0).log_prob(z) + Normal(z, 1.0).log_prob(x) - q.log_prob(z)
    assert iwae_bound(log_w).item() == pytest.approx(exact.item(), abs=5e-3)
    assert log_w.mean().item() < exact.item() - 0.05


def test_dreg_gradient_matches_its_closed_form():
    # q(z) = N(mu, 1), p(x, z) = N(z; 0, 1) N(x; z, 1). With q's parameters stopped inside
    # log q, d log w / dz = -z + (x - z) + (z - mu); DReG's encoder gradient is
    # sum_k w~_k^2 d log w_k / dz_k (dz / dmu = 1). The decoder-side (here: x) keeps w~_k.
    torch.manual_seed(1)
    mu = torch.tensor(0.4, requires_grad=True)
    x = torch.tensor(1.5, requires_grad=True)
    eps = torch.randn(6, 1, 1)  # (K, N, D)
    z = mu + eps
    log_w = (
        Normal(0.0, 1.0).log_prob(z)
        + Normal(z, 1.0).log_prob(x)
        - Normal(mu.detach(), 1.0).log_prob(z)
    ).sum(-1)
    dreg_surrogate(log_w, z).sum().backward()
    zs = (mu + eps).detach().squeeze(-1)
    weights = torch.softmax(log_w.detach(), dim=0)
    score = -zs + (x.detach() - zs) + (zs - mu.detach())
    assert mu.grad.item() == pytest.approx((weights**2 * score).sum().item(), rel=1e-5)
    # d log w / dx = (z - x): the IWAE weighting for parameters outside q.
    assert x.grad.item() == pytest.approx((weights * (zs - x.detach())).sum().item(), rel=1e-5)


def test_dreg_without_a_sample_reweights_nothing():
    log_w = torch.randn(4, 3, requires_grad=True)
    dreg_surrogate(log_w).sum().backward()
    torch.testing.assert_close(log_w.grad, torch.softmax(log_w.detach(), dim=0))


@pytest.mark.parametrize(
    ("progress", "warmup", "expected"),
    [(0.0, 10.0, 0.0), (2.5, 10.0, 0.25), (10.0, 10.0, 1.0), (50.0, 10.0, 1.0), (3.0, 0.0, 1.0)],
)
def test_linear_warmup(progress, warmup, expected):
    assert linear_warmup(progress, warmup) == pytest.approx(expected)
    assert linear_warmup(progress, warmup, final=2.0) == pytest.approx(2 * expected)


def test_the_mixture_of_experts_bound_averages_each_observed_experts_bound():
    from multivae.objectives import average_over_experts, mixture_of_experts_bound

    torch.manual_seed(0)
    log_w = torch.randn(4, 3, 2, requires_grad=True)  # K=4 draws, M=3 experts, N=2 samples
    mask = torch.tensor([[True, True], [False, True], [True, False]])
    for kind in ("elbo", "iwae"):
        objective, bound = mixture_of_experts_bound(log_w, mask, kind)
        for n in range(2):
            per_expert = [
                log_w[:, m, n].mean()
                if kind == "elbo"
                else torch.logsumexp(log_w[:, m, n], 0) - math.log(4)
                for m in range(3)
                if mask[m, n]
            ]
            torch.testing.assert_close(bound[n], torch.stack(per_expert).mean())
        torch.testing.assert_close(objective, bound)
    # An absent expert passes no gradient.
    average_over_experts(log_w.mean(0), mask).sum().backward()
    assert torch.all(log_w.grad[:, 1, 0] == 0) and torch.all(log_w.grad[:, 2, 1] == 0)
    assert torch.all(log_w.grad[:, 0, 0] != 0)
    with pytest.raises(ValueError, match="unknown kind"):
        mixture_of_experts_bound(log_w, mask, "dreg_looser")


def test_kl_to_experts_sums_the_kls_to_the_observed_experts_only():
    from torch.distributions import Normal, kl_divergence

    from multivae.objectives import kl_to_experts

    torch.manual_seed(1)
    mean, logvar = torch.randn(2, 3), torch.randn(2, 3)
    means, logvars = torch.randn(2, 2, 3), torch.randn(2, 2, 3)
    mask = torch.tensor([[True, False], [True, True]])
    got = kl_to_experts(mean, logvar, means, logvars, mask)
    joint = [Normal(mean[n], (0.5 * logvar[n]).exp()) for n in range(2)]
    for n in range(2):
        expected = sum(
            kl_divergence(joint[n], Normal(means[m, n], (0.5 * logvars[m, n]).exp())).sum()
            for m in range(2)
            if mask[m, n]
        )
        torch.testing.assert_close(got[n], expected)
