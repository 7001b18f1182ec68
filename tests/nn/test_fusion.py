import math

import pytest
import torch
from torch.distributions import Laplace, Normal

from multivae.nn.fusion import (
    laplace_log_density,
    mixture_log_density,
    mixture_of_products,
    normal_log_density,
    product_of_experts,
    stratified_mixture_weights,
    subset_masks,
    subsets,
)


def _experts(m=3, n=4, d=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(m, n, d, generator=generator)
    logvars = torch.randn(m, n, d, generator=generator)
    return means, logvars


def test_product_of_two_experts_and_prior_by_hand():
    # N(1, 1) x N(3, 1/4) x N(0, 1): precisions 1 + 4 + 1 = 6, mean (1*1 + 3*4 + 0) / 6.
    means = torch.tensor([[[1.0]], [[3.0]]])
    logvars = torch.tensor([[[0.0]], [[math.log(0.25)]]])
    mask = torch.ones(2, 1, dtype=torch.bool)
    mean, logvar = product_of_experts(means, logvars, mask, prior_expert=True)
    assert mean.item() == pytest.approx(13 / 6)
    assert logvar.item() == pytest.approx(math.log(1 / 6))
    mean, logvar = product_of_experts(means, logvars, mask, prior_expert=False)
    assert mean.item() == pytest.approx(13 / 5)
    assert logvar.item() == pytest.approx(math.log(1 / 5))


@pytest.mark.parametrize("prior_expert", [True, False], ids=["with-prior", "without-prior"])
def test_product_is_the_precision_weighted_mean(prior_expert):
    means, logvars = _experts()
    mask = torch.ones(3, 4, dtype=torch.bool)
    mean, logvar = product_of_experts(means, logvars, mask, prior_expert=prior_expert)
    precision = (1 / logvars.exp()).sum(0) + (1.0 if prior_expert else 0.0)
    expected_mean = (means / logvars.exp()).sum(0) / precision
    torch.testing.assert_close(mean, expected_mean)
    torch.testing.assert_close(logvar, -precision.log())


def test_a_masked_expert_changes_nothing_and_gets_zero_gradient():
    means, logvars = _experts()
    means.requires_grad_(True)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[1, :2] = False
    mean, logvar = product_of_experts(means, logvars, mask)
    keep = [0, 2]
    reference_mean, reference_logvar = product_of_experts(
        means.detach()[keep], logvars[keep], torch.ones(2, 4, dtype=torch.bool)
    )
    torch.testing.assert_close(mean[:2].detach(), reference_mean[:2])
    torch.testing.assert_close(logvar[:2], reference_logvar[:2])
    (mean.sum() + logvar.sum()).backward()
    assert torch.all(means.grad[1, :2] == 0)
    assert torch.all(means.grad[1, 2:] != 0)


def test_no_expert_and_no_prior_gives_a_finite_standard_normal():
    means, logvars = _experts()
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mean, logvar = product_of_experts(means, logvars, mask, prior_expert=False)
    assert torch.all(mean == 0) and torch.all(logvar == 0)


def test_extreme_log_variances_stay_finite():
    means = torch.zeros(2, 1, 1)
    logvars = torch.tensor([[[-1e4]], [[1e4]]], requires_grad=True)
    mean, logvar = product_of_experts(means, logvars, torch.ones(2, 1, dtype=torch.bool))
    (mean.sum() + logvar.sum()).backward()
    assert torch.isfinite(logvar).all() and torch.isfinite(logvars.grad).all()


def test_normal_and_laplace_densities_match_torch_distributions():
    z = torch.randn(5, 3)
    mean, logvar = torch.randn(5, 3), torch.randn(5, 3)
    expected = Normal(mean, (0.5 * logvar).exp()).log_prob(z).sum(-1)
    torch.testing.assert_close(normal_log_density(z, mean, logvar), expected)
    scale = torch.rand(5, 3) + 0.1
    expected = Laplace(mean, scale).log_prob(z).sum(-1)
    torch.testing.assert_close(laplace_log_density(z, mean, scale), expected)


def test_mixture_density_averages_present_experts_only():
    densities = torch.log(torch.tensor([[0.2, 0.5], [0.4, 0.1], [0.9, 0.3]]))  # (M=3, N=2)
    mask = torch.tensor([[True, True], [True, False], [False, True]])
    result = mixture_log_density(densities, mask)
    torch.testing.assert_close(result, torch.log(torch.tensor([0.3, 0.4])))


def test_mixture_density_with_sample_dimensions_and_no_expert():
    densities = torch.randn(2, 7, 3)  # (M, K, N)
    mask = torch.tensor([[True, False, False], [True, True, False]])
    result = mixture_log_density(densities, mask)
    assert result.shape == (7, 3)
    torch.testing.assert_close(result[:, 1], densities[1, :, 1])
    assert torch.all(result[:, 2] == 0)


def test_stratified_weights_sum_to_one_over_present_experts():
    mask = torch.tensor([[True, True], [False, True], [True, True]])
    weights = stratified_mixture_weights(mask)
    torch.testing.assert_close(weights, torch.tensor([[0.5, 1 / 3], [0.0, 1 / 3], [0.5, 1 / 3]]))


def test_subsets_in_size_order():
    assert subsets(["a", "b", "c"]) == [
        ("a",),
        ("b",),
        ("c",),
        ("a", "b"),
        ("a", "c"),
        ("b", "c"),
        ("a", "b", "c"),
    ]
    assert subsets(["a", "b"], min_size=2) == [("a", "b")]


def test_subset_availability_follows_presence():
    mask = torch.tensor([[True, True, False], [True, False, True]])  # modalities a, b; N = 3
    membership, available = subset_masks([("a",), ("b",), ("a", "b")], ["a", "b"], mask)
    assert membership.tolist() == [[True, False], [False, True], [True, True]]
    assert available.tolist() == [[True, True, False], [True, False, True], [True, False, False]]


def test_mixture_of_products_with_the_full_subset_equals_the_product():
    means, logvars = _experts()
    membership = torch.ones(1, 3, dtype=torch.bool)
    mix_mean, mix_logvar = mixture_of_products(means, logvars, membership, prior_expert=True)
    mean, logvar = product_of_experts(means, logvars, torch.ones(3, 4, dtype=torch.bool))
    torch.testing.assert_close(mix_mean[0], mean)
    torch.testing.assert_close(mix_logvar[0], logvar)


def test_mixture_of_products_per_subset_prior_flags():
    means, logvars = _experts()
    chosen = [(0,), (0, 2)]
    membership = torch.tensor([[True, False, False], [True, False, True]])
    flags = torch.tensor([False, True])
    mix_mean, mix_logvar = mixture_of_products(means, logvars, membership, prior_expert=flags)
    for s, members in enumerate(chosen):
        mean, logvar = product_of_experts(
            means[list(members)],
            logvars[list(members)],
            torch.ones(len(members), 4, dtype=torch.bool),
            prior_expert=bool(flags[s]),
        )
        torch.testing.assert_close(mix_mean[s], mean)
        torch.testing.assert_close(mix_logvar[s], logvar)


def test_select_components_splits_the_batch_or_draws_among_the_available():
    from multivae.nn.fusion import select_components

    available = torch.tensor([[True, True, True, False], [True, False, True, False]])
    split = select_components(available, "split")
    # Sample i takes its available component of rank floor(i * count_i / N).
    assert split.T.tolist() == [[True, False], [True, False], [False, True], [False, False]]
    torch.manual_seed(0)
    drawn = select_components(available, "random")
    assert (drawn.sum(0) == available.any(0)).all() and not (drawn & ~available).any()
    with pytest.raises(ValueError, match="expected 'split' or 'random'"):
        select_components(available, "stratified")
