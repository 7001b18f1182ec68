"""Likelihood metrics against a linear-Gaussian model whose likelihoods are known in closed form.

The model: ``z ~ N(0, I_2)`` and two views ``x_v = W_v z + b_v + s * eps`` decoded by a linear
layer (an MLP decoder without hidden layer). Each ``W_v`` has orthogonal columns, so the exact
posterior given any observed views is a diagonal Gaussian, which the model's ``posterior``
returns. With the exact posterior every importance weight equals ``p(x)``, so even ``K = 1`` is
exact; a deliberately wrong posterior (wider, shifted) must converge to the same values as ``K``
grows. Observed views ``S`` have ``x_S ~ N(b_S, W_S W_S^T + s^2 I)``.
"""

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from multivae.data import (
    Batch,
    DatasetSchema,
    ModalitySpec,
    MultimodalDataset,
    SplitArrays,
    write_dataset,
)
from multivae.metrics.likelihood import conditional_nll, joint_nll, likelihood_report
from multivae.models.base import GaussianPosterior, ModalityConfig, ModelConfig, MultimodalVAE
from multivae.nn.architectures import ArchitectureConfig

VIEW_DIM = 5
LATENT_DIM = 2
NOISE = 0.5
ROWS = 64
COMPLETE = 40
"""Rows 0-39 are complete, 40-51 have only x0, 52-63 only x1."""


@dataclass
class LinearGaussianConfig(ModelConfig):
    proposal_scale: float = 1.0
    proposal_shift: float = 0.0


class LinearGaussian(MultimodalVAE):
    """Linear decoders and the exact posterior, optionally widened and shifted."""

    name = "test-linear-gaussian"
    config_class = LinearGaussianConfig

    def weights(self, name):
        layer = self.decoders[name].network[0]
        return layer.weight, layer.bias

    def posterior(self, batch, cond=None):
        mask = self.condition_mask(batch, cond)
        n = len(batch)
        precision = torch.ones(n, LATENT_DIM)
        weighted = torch.zeros(n, LATENT_DIM)
        for i, name in enumerate(self.modalities):
            weight, bias = self.weights(name)
            variance = self.likelihood(name).log_scale.exp() ** 2
            on = mask[i].float().unsqueeze(-1)
            # W^T W is diagonal: its diagonal is the column norms.
            precision = precision + on * (weight**2).sum(0) / variance
            weighted = weighted + on * ((batch.data[name] - bias) @ weight) / variance
        var = 1 / precision
        mean = var * weighted + self.config.proposal_shift * var.sqrt()
        return GaussianPosterior(mean, torch.log(var * self.config.proposal_scale**2))


def _parameters():
    generator = torch.Generator().manual_seed(0)
    out = {}
    for v, scales in enumerate(([1.5, 0.8], [0.6, 1.2])):
        basis, _ = torch.linalg.qr(torch.randn(VIEW_DIM, LATENT_DIM, generator=generator))
        out[f"x{v}"] = (basis * torch.tensor(scales), torch.randn(VIEW_DIM, generator=generator))
    return out


PARAMETERS = _parameters()


def make_model(scale=1.0, shift=0.0):
    linear = ArchitectureConfig("mlp", {"hidden": []})
    modalities = {
        name: ModalityConfig(shape=(VIEW_DIM,), scale=NOISE, encoder=linear, decoder=linear)
        for name in PARAMETERS
    }
    config = LinearGaussianConfig(
        modalities=modalities, latent_dim=LATENT_DIM, proposal_scale=scale, proposal_shift=shift
    )
    model = LinearGaussian(config)
    with torch.no_grad():
        for name, (weight, bias) in PARAMETERS.items():
            layer = model.decoders[name].network[0]
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
    return model


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(ROWS, LATENT_DIM, generator=generator)
    data, mask = {}, {}
    rows = torch.arange(ROWS)
    mask["x0"] = (rows < COMPLETE) | (rows < 52)
    mask["x1"] = (rows < COMPLETE) | (rows >= 52)
    for name, (weight, bias) in PARAMETERS.items():
        x = z @ weight.T + bias + NOISE * torch.randn(ROWS, VIEW_DIM, generator=generator)
        data[name] = x * mask[name].unsqueeze(-1)
    return Batch(data=data, mask=mask, label=None, sample_id=rows)


def closed_form_nll(batch, names):
    """``-log p(x_S)`` per row for the views ``names`` (float64), NaN where one is absent."""
    weight = torch.cat([PARAMETERS[n][0] for n in names]).double()
    bias = torch.cat([PARAMETERS[n][1] for n in names]).double()
    covariance = weight @ weight.T + NOISE**2 * torch.eye(len(bias), dtype=torch.float64)
    normal = torch.distributions.MultivariateNormal(bias, covariance)
    x = torch.cat([batch.data[n] for n in names], dim=-1).double()
    present = torch.stack([batch.mask[n] for n in names]).all(0)
    return torch.where(present, -normal.log_prob(x), torch.nan)


def expected_joint(batch):
    """NLL of the observed views of each row."""
    both = closed_form_nll(batch, ["x0", "x1"])
    only0 = closed_form_nll(batch, ["x0"])
    only1 = closed_form_nll(batch, ["x1"])
    return torch.where(
        batch.mask["x0"] & batch.mask["x1"], both, torch.where(batch.mask["x0"], only0, only1)
    )


def test_exact_posterior_gives_the_closed_form_with_one_sample(batch):
    model = make_model()
    expected = expected_joint(batch)
    for k in (1, 7):
        result = joint_nll(model, batch, k=k, chunk_size=3, batch_size=16, seed=0)
        torch.testing.assert_close(result["per_sample"], expected, rtol=0, atol=1e-3)
        assert result["count"] == ROWS
        assert result["mean"] == pytest.approx(expected.mean().item(), abs=1e-3)
        assert result["std_error"] == pytest.approx(
            expected.std().item() / math.sqrt(ROWS), rel=1e-3
        )


def test_wrong_proposal_converges_to_the_closed_form_as_k_grows(batch):
    model = make_model(scale=1.4, shift=0.5)
    expected = expected_joint(batch)
    results = {k: joint_nll(model, batch, k=k, chunk_size=250, seed=0) for k in (1, 1000)}
    errors = {k: (r["per_sample"] - expected).abs().mean().item() for k, r in results.items()}
    # K = 1 is a single-sample ELBO: on average its NLL exceeds the true one by the KL from the
    # proposal to the true posterior (about 0.9 nats here).
    assert results[1]["mean"] > expected.mean().item() + 0.3
    assert errors[1] > 0.5
    assert errors[1000] < 0.03
    assert errors[1] > 20 * errors[1000]
    assert results[1000]["mean"] == pytest.approx(expected.mean().item(), abs=0.01)


def test_chunking_over_k_changes_nothing(batch, monkeypatch):
    draws = []
    rsample = GaussianPosterior.rsample

    def recording_rsample(self, n_samples):
        draws.append(n_samples)
        return rsample(self, n_samples)

    monkeypatch.setattr(GaussianPosterior, "rsample", recording_rsample)
    model = make_model(scale=1.6, shift=0.7)
    # 8 rows x 2 latent dimensions: every draw is a whole number of 16-value blocks of torch's
    # CPU normal generator, so chunks of K consume the random stream exactly like one chunk.
    whole = joint_nll(model, batch, k=400, chunk_size=400, batch_size=8, seed=3)
    assert set(draws) == {400}
    draws.clear()
    chunked = joint_nll(model, batch, k=400, chunk_size=50, batch_size=8, seed=3)
    assert set(draws) == {50} and len(draws) == (400 // 50) * (ROWS // 8)
    torch.testing.assert_close(chunked["per_sample"], whole["per_sample"], rtol=1e-6, atol=1e-6)
    other_seed = joint_nll(model, batch, k=400, chunk_size=50, batch_size=8, seed=4)
    assert not torch.equal(other_seed["per_sample"], whole["per_sample"])


def test_seed_reproduces_and_leaves_the_callers_random_state_alone(batch):
    model = make_model(scale=1.6, shift=0.7)
    state = torch.get_rng_state()
    first = joint_nll(model, batch, k=20, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    second = joint_nll(model, batch, k=20, seed=5)
    assert torch.equal(first["per_sample"], second["per_sample"])


def test_conditional_nll_matches_the_closed_form_on_complete_rows(batch):
    model = make_model()
    expected = closed_form_nll(batch, ["x0", "x1"]) - closed_form_nll(batch, ["x0"])
    errors = {}
    for k in (10, 4000):
        result = conditional_nll(
            model, batch, cond=["x0"], gen=["x1"], k=k, chunk_size=1000, seed=0
        )
        # Rows without x0 (nothing to condition on) or without x1 (nothing scored) are left out.
        assert result["count"] == COMPLETE
        assert bool(result["per_sample"][COMPLETE:].isnan().all())
        errors[k] = (result["per_sample"][:COMPLETE] - expected[:COMPLETE]).abs().mean().item()
    assert errors[4000] < 0.03
    assert errors[4000] < errors[10] / 5
    assert result["mean"] == pytest.approx(expected[:COMPLETE].mean().item(), abs=0.02)


def test_report_has_joint_conditionals_and_throughput(batch):
    model = make_model()
    report = likelihood_report(model, batch, k=1000, chunk_size=500, batch_size=32, seed=0)
    assert report["k"] == 1000
    assert report["joint"]["count"] == ROWS
    assert report["joint"]["mean"] == pytest.approx(expected_joint(batch).mean().item(), abs=1e-3)
    assert set(report["conditional"]) == {"x0", "x1"}
    given_x1 = closed_form_nll(batch, ["x0", "x1"]) - closed_form_nll(batch, ["x1"])
    assert report["conditional"]["x0"]["count"] == COMPLETE
    assert report["conditional"]["x0"]["mean"] == pytest.approx(
        given_x1[:COMPLETE].mean().item(), abs=0.05
    )
    assert report["throughput"] > 0
    assert report["seconds"] > 0


def test_dataset_split_gives_the_same_values_as_a_batch(batch, tmp_path):
    schema = DatasetSchema(
        modalities=tuple(ModalitySpec(n, (VIEW_DIM,), "float32", "tabular") for n in PARAMETERS),
        name="linear-gaussian",
    )
    arrays = SplitArrays(
        data={n: v.numpy() for n, v in batch.data.items()},
        present={n: v.numpy() for n, v in batch.mask.items()},
        sample_ids=np.arange(ROWS),
    )
    root = write_dataset(tmp_path / "data", schema, {"test": arrays})
    model = make_model(scale=1.6, shift=0.7)
    from_batch = joint_nll(model, batch, k=10, batch_size=16, seed=2)
    from_files = joint_nll(model, MultimodalDataset(root, "test"), k=10, batch_size=16, seed=2)
    torch.testing.assert_close(from_files["per_sample"], from_batch["per_sample"])


def test_bad_arguments_are_refused(batch):
    model = make_model()
    with pytest.raises(ValueError, match="'zz'"):
        conditional_nll(model, batch, cond=["zz"])
    with pytest.raises(ValueError, match="both conditioned on and scored"):
        conditional_nll(model, batch, cond=["x0"], gen=["x0", "x1"])
    with pytest.raises(TypeError, match="string"):
        joint_nll(model, batch, gen="x0")
    with pytest.raises(ValueError, match="k and chunk_size"):
        joint_nll(model, batch, k=0)
