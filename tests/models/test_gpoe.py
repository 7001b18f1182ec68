"""gPoE against its fusion and loss worked out by hand (MODELS_SPEC section 16's hand tests)."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from multivae.config import ConfigError
from multivae.data.batch import Batch
from multivae.factory import create_model
from multivae.models.base import ModalityConfig
from multivae.models.gpoe import GPoEConfig
from multivae.nn.fusion import product_of_experts

SIZES = {"a": 3, "b": 4, "c": 2}
LATENT = 2
N = 4
MISSING = {"a": [True, False, True, True], "b": [True, True, False, False], "c": [True] * 4}


def make_model(sizes=SIZES, seed=0, **options):
    torch.manual_seed(seed)
    modalities = {name: ModalityConfig(shape=(size,)) for name, size in sizes.items()}
    return create_model("gpoe", GPoEConfig(modalities=modalities, latent_dim=LATENT, **options))


def make_batch(present=None, sizes=SIZES, seed=1):
    generator = torch.Generator().manual_seed(seed)
    mask = {name: torch.tensor((present or {}).get(name, [True] * N)) for name in sizes}
    data = {
        name: torch.where(mask[name].unsqueeze(-1), torch.randn(N, size, generator=generator), 0.0)
        for name, size in sizes.items()
    }
    return Batch(data=data, mask=mask)


def experts(model, batch):
    with torch.no_grad():
        means, logvars = model.unimodal_posteriors(batch)
    return means, logvars


@pytest.mark.parametrize(
    ("weights", "present"), [("rescale", None), ("drop", MISSING)], ids=["complete", "drop"]
)
def test_unit_weights_give_the_product_of_experts_without_prior(weights, present):
    # (Rescaled, the weights of an incomplete sample become M / |O|: not a plain product.)
    model = make_model(incomplete_weights=weights)
    with torch.no_grad():
        model.fusion_weights.fill_(1.0)
    batch = make_batch(present)
    means, logvars = experts(model, batch)
    mask = model.condition_mask(batch, None)
    expected = product_of_experts(means, logvars, mask, prior_expert=False)
    posterior = model.posterior(batch)
    torch.testing.assert_close(posterior.mean, expected[0])
    torch.testing.assert_close(posterior.logvar, expected[1])


def test_equal_weights_on_identical_experts_return_that_expert():
    model = make_model()  # alpha = 1/M
    mean, logvar = torch.randn(N, LATENT), torch.randn(N, LATENT)
    fused = model.fuse(
        mean.expand(3, N, LATENT), logvar.expand(3, N, LATENT), torch.ones(3, N, dtype=torch.bool)
    )
    torch.testing.assert_close(fused[0], mean)
    torch.testing.assert_close(fused[1], logvar)


def hand_loss(model, batch, noise, rescale=True):
    """The module docstring's loss, sample by sample, from the experts' parameters."""
    means, logvars = experts(model, batch)
    alpha = model.fusion_weights.detach().clamp(0, 1)
    names = list(model.modalities)
    losses = []
    for n in range(N):
        observed = [i for i, m in enumerate(names) if batch.mask[m][n]]
        if not observed:
            losses.append(torch.tensor(0.0))
            continue
        weights = alpha[observed]
        if rescale:
            weights = weights * alpha.sum(0) / alpha[observed].sum(0)
        precision = (weights / logvars[observed, n].exp()).sum(0)
        mean = (weights * means[observed, n] / logvars[observed, n].exp()).sum(0) / precision
        std = precision.rsqrt()
        z = mean + std * noise[n]
        log_p = 0.0
        for i in observed:
            decoded = model.decoders[names[i]](z.unsqueeze(0))[0]
            log_p = log_p + Normal(decoded, 1.0).log_prob(batch.data[names[i]][n]).sum()
        kl = kl_divergence(Normal(mean, std), Normal(0.0, 1.0)).sum()
        losses.append(-log_p / len(observed) + model.config.beta * kl)
    return torch.stack(losses)


@pytest.mark.parametrize("rescale", [True, False], ids=["rescale", "drop"])
@pytest.mark.parametrize("present", [None, MISSING], ids=["complete", "missing"])
def test_the_loss_is_the_papers_computed_by_hand(rescale, present):
    options = {} if rescale else {"incomplete_weights": "drop"}
    model = make_model(beta=0.7, **options)
    with torch.no_grad():
        model.fusion_weights.copy_(torch.rand(3, LATENT))
    batch = make_batch(present)
    torch.manual_seed(5)
    output = model.objective(batch)
    torch.manual_seed(5)
    noise = torch.randn(N, LATENT)
    with torch.no_grad():
        expected = hand_loss(model, batch, noise, rescale)
    torch.testing.assert_close(output.loss.detach(), expected, rtol=1e-5, atol=1e-5)


def test_one_modality_is_a_vae_elbo():
    sizes = {"a": 3}
    model = make_model(sizes=sizes, beta=1.5)
    batch = make_batch(sizes=sizes)
    torch.manual_seed(2)
    output = model.objective(batch)
    means, logvars = experts(model, batch)
    torch.manual_seed(2)
    z = means[0] + (0.5 * logvars[0]).exp() * torch.randn(N, LATENT)
    with torch.no_grad():
        decoded = model.decoders["a"](z)
        log_p = Normal(decoded, 1.0).log_prob(batch.data["a"]).sum(-1)
        kl = kl_divergence(Normal(means[0], (0.5 * logvars[0]).exp()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(output.loss.detach(), -log_p + 1.5 * kl, rtol=1e-5, atol=1e-5)


def test_weights_out_of_range_are_used_clamped_and_projected_after_a_step():
    model = make_model()
    with torch.no_grad():
        model.fusion_weights.copy_(torch.tensor([[2.0, -1.0], [0.5, 0.5], [0.5, 3.0]]))
    expected = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.5, 1.0]])
    torch.testing.assert_close(model.fusion(), expected)
    batch = make_batch()
    loss = model(batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.project_weights()
    assert model.fusion_weights.min() >= 0 and model.fusion_weights.max() <= 1


def test_a_dimension_without_weight_falls_back_to_the_standard_normal():
    model = make_model(incomplete_weights="drop")
    with torch.no_grad():
        model.fusion_weights.copy_(torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]))
    posterior = model.posterior(make_batch())
    torch.testing.assert_close(posterior.mean[:, 0], torch.zeros(N))
    torch.testing.assert_close(posterior.logvar[:, 0], torch.zeros(N))


def test_the_weights_are_trained_and_saved(tmp_path):
    model = make_model()
    model(make_batch(MISSING)).loss.backward()
    assert model.fusion_weights.grad is not None and model.fusion_weights.grad.abs().sum() > 0
    with torch.no_grad():
        model.fusion_weights.copy_(torch.rand(3, LATENT))
    loaded = type(model).from_pretrained(model.save_pretrained(tmp_path / "model"))
    assert torch.equal(loaded.fusion_weights, model.fusion_weights)


def test_config_is_validated():
    with pytest.raises(ConfigError, match="beta must be >= 0"):
        make_model(beta=-1.0)
    with pytest.raises(ConfigError, match="incomplete_weights: expected one of"):
        make_model(incomplete_weights="rescaled")


def test_the_training_loop_projects_the_weights_after_every_step(tmp_path):
    from multivae.training import Trainer, TrainingConfig

    model = make_model()
    calls = []
    project = model.project_weights
    model.project_weights = lambda: (calls.append(1), project())[1]
    batches = [make_batch(MISSING, seed=s) for s in range(3)]
    config = TrainingConfig(epochs=2, progress_bar=False, device="cpu")
    Trainer(model, config, tmp_path / "run").fit(batches, batches[:1])
    assert len(calls) == 2 * len(batches)
    assert model.fusion_weights.min() >= 0 and model.fusion_weights.max() <= 1
