"""CMVAE against MMVAE+, against the paper's explicit expectation, and its clusters by hand.

With one cluster at the origin the cluster prior is MMVAE+'s ``F(0, 1)``, so on the same weights
and the same seed the two models give the same loss (CMVAE adds nothing to MMVAE+'s draws). The
prior's logsumexp is checked against the paper's form ``E_{q(c|z)}[log pi_c + log p(z|c) - log
q(c|z)]`` written with torch.distributions; cluster prediction against votes set by hand.
"""

import math

import pytest
import torch
from kit.models import vector_batch
from torch.distributions import Laplace, Normal

from multivae.config import ConfigError
from multivae.factory import create_model
from multivae.models.base import ModalityConfig
from multivae.models.cmvae import CMVAE, CMVAEConfig
from multivae.models.mmvaeplus import MMVAEPlus, MMVAEPlusConfig
from multivae.nn.architectures import ArchitectureConfig
from multivae.nn.priors import ClusterPrior

SIZES = {"a": 3, "b": 4, "c": 2}
NAMES = list(SIZES)
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


def make_config(config_class=CMVAEConfig, **options):
    mlp = ArchitectureConfig("mlp", {"hidden": [8]})
    modalities = {
        name: ModalityConfig(shape=(size,), encoder=mlp, decoder=mlp)
        for name, size in SIZES.items()
    }
    options.setdefault("samples_per_expert", 2)
    options.setdefault("private_dim", 2)
    options.setdefault("latent_dim", 2)
    return config_class(modalities=modalities, **options)


def make_model(seed=0, **options):
    torch.manual_seed(seed)
    return CMVAE(make_config(**options))


def make_batch(mask="complete", seed=1):
    return vector_batch(SIZES, MASKS[mask], seed)


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("family", ["laplace", "normal"])
@pytest.mark.parametrize("bound", ["dreg", "iwae", "elbo"])
def test_one_cluster_at_the_origin_is_mmvaeplus(bound, family, mask):
    options = {"bound": bound, "latent_distribution": family, "beta": 2.5}
    cmvae = make_model(n_clusters=1, **options)
    with torch.no_grad():
        cmvae.shared_prior.means.zero_()
    mmvaeplus = MMVAEPlus(make_config(MMVAEPlusConfig, **options))
    missing, unexpected = mmvaeplus.load_state_dict(cmvae.state_dict(), strict=False)
    assert missing == []
    assert sorted(unexpected) == [
        "shared_prior.active",
        "shared_prior.means",
        "shared_prior.weight_logits",
    ]
    batch = make_batch(mask)
    losses = []
    for model in (cmvae, mmvaeplus):
        torch.manual_seed(7)
        loss = model(batch).loss
        loss.backward()
        losses.append((loss, model.encoders["a"].parameters().__next__().grad))
    assert torch.equal(losses[0][0], losses[1][0])
    torch.testing.assert_close(losses[0][1], losses[1][1], rtol=1e-6, atol=1e-7)
    # The cluster's mean learns through log p(z) (its logit has gradient 0: pi_1 = 1 always).
    assert cmvae.shared_prior.means.grad is not None
    assert cmvae.shared_prior.means.grad.abs().sum() > 0


@pytest.mark.parametrize("family", ["laplace", "normal"])
def test_the_logsumexp_is_the_papers_explicit_expectation(family):
    torch.manual_seed(3)
    prior = ClusterPrior(3, clusters=4, family=family)
    with torch.no_grad():
        prior.weight_logits.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
        prior.active[2] = False
    z = 2.0 * torch.randn(6, 3)
    distribution = Laplace if family == "laplace" else Normal
    log_pi = torch.log_softmax(prior.weight_logits.detach()[[0, 1, 3]], dim=0)
    log_conditional = torch.stack(
        [distribution(prior.means.detach()[c], 1.0).log_prob(z).sum(-1) for c in (0, 1, 3)], -1
    )
    q = torch.softmax(log_pi + log_conditional, dim=-1)  # q(c|z) = p(c|z), as the reference
    explicit = (q * (log_pi + log_conditional - torch.log(q))).sum(-1)
    torch.testing.assert_close(prior.log_prob(z), explicit)
    posterior = prior.cluster_log_posterior(z).exp()
    assert torch.equal(posterior[:, 2], torch.zeros(6))
    torch.testing.assert_close(posterior[:, [0, 1, 3]], q)


def test_cluster_prior_draws_a_cluster_by_weight_then_z_given_it():
    torch.manual_seed(4)
    prior = ClusterPrior(2, clusters=3, family="laplace")
    with torch.no_grad():
        prior.means.copy_(torch.tensor([[-40.0, 0.0], [0.0, 0.0], [40.0, 0.0]]))
        prior.weight_logits.copy_(torch.tensor([0.0, math.log(3.0), 5.0]))
        prior.active[2] = False  # the heaviest cluster, pruned: never drawn
    draws = prior.sample((40_000,))
    first = (draws[:, 0] < -20).float().mean()
    assert draws[:, 0].max() < 20
    assert first.item() == pytest.approx(0.25, abs=0.01)
    torch.testing.assert_close(
        draws[draws[:, 0] > -20].abs().mean(0), torch.ones(2), rtol=0.03, atol=0.0
    )
    torch.testing.assert_close(prior.mean((2,)), torch.tensor([[-10.0, 0.0]] * 2))


def test_pruned_clusters_get_no_probability_and_the_loss_stays_finite(tmp_path):
    model = make_model(n_clusters=3)
    with torch.no_grad():
        model.active_clusters[1] = False
    batch = make_batch("missing")
    torch.manual_seed(2)
    loss = model(batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    assert model.shared_prior.weight_logits.grad[1] == 0
    assert torch.equal(model.shared_prior.means.grad[1], torch.zeros(2))
    log_pi = model.shared_prior.log_weights()
    assert log_pi[1] == -math.inf
    torch.testing.assert_close(log_pi[[0, 2]].exp().sum(), torch.tensor(1.0))
    z = torch.randn(50, 2) + model.shared_prior.means[1].detach()  # near the pruned cluster
    assert torch.equal(model.shared_prior.cluster_log_posterior(z).exp()[:, 1], torch.zeros(50))
    assert (model.predict_clusters(batch) != 1).all()
    assert model.latent_report() == {
        "n_clusters": 3,
        "active_clusters": 2,
        "cluster_weights": [pytest.approx(0.5), pytest.approx(0.5)],
    }
    # The mask is saved and restored exactly.
    model.save_pretrained(tmp_path / "model")
    loaded = CMVAE.from_pretrained(tmp_path / "model")
    assert torch.equal(loaded.active_clusters, torch.tensor([True, False, True]))
    model.eval()
    loaded.eval()
    torch.manual_seed(5)
    expected = model(batch).loss
    torch.manual_seed(5)
    assert torch.equal(loaded(batch).loss, expected)


def test_prune_clusters_keeps_the_count_with_the_lowest_mean_score():
    model = make_model(n_clusters=5)
    parameters = [id(p) for p in model.parameters()]
    batches = [make_batch("complete", seed=1), make_batch("missing", seed=2)]
    torch.manual_seed(6)
    scores = model.prune_clusters(batches)
    assert list(scores) == [5, 4, 3, 2]
    assert all(math.isfinite(score) for score in scores.values())
    assert int(model.active_clusters.sum()) == min(scores, key=lambda kept: scores[kept])
    assert [id(p) for p in model.parameters()] == parameters  # the optimizer's references hold
    torch.manual_seed(2)
    assert torch.isfinite(model(batches[1]).loss)
    with torch.no_grad():
        model.active_clusters.copy_(torch.tensor([True, False, False, False, False]))
    with pytest.raises(ValueError, match="needs >= 2 active clusters, found 1"):
        model.prune_clusters(batches)


def test_predict_clusters_votes_among_observed_modalities():
    model = make_model(n_clusters=4)
    centres = torch.tensor([[-30.0, 0.0], [-10.0, 0.0], [10.0, 0.0], [30.0, 0.0]])
    with torch.no_grad():
        model.shared_prior.means.copy_(centres)
    # Expert m's shared mean for sample i sits on cluster votes[m][i].
    votes = torch.tensor(
        [
            [0, 3, 2, 3, 0],  # a (absent from samples 1 and 4)
            [0, 1, 3, 2, 1],  # b (absent from samples 2 and 4)
            [1, 1, 3, 1, 2],  # c (absent from samples 2, 3 and 4)
        ]
    )
    loc = centres[votes]
    scale = torch.full_like(loc, 1e-3)
    private = torch.zeros(3, N, 2)
    model.expert_parameters = lambda batch, cond=None: (loc, scale, private, private)
    batch = make_batch("missing")
    # 0: a, b vote 0, c votes 1 -> 0; 1: b, c vote 1 (a's 3 is absent) -> 1; 2: only a -> 2;
    # 3: a votes 3, b votes 2, tie -> the smaller, 2; 4: nothing observed -> -1.
    expected = torch.tensor([0, 1, 2, 2, -1])
    assert torch.equal(model.predict_clusters(batch, use_mean=True), expected)
    assert torch.equal(model.predict_clusters(batch), expected)  # draws at scale 1e-3
    with torch.no_grad():
        model.active_clusters[2] = False  # sample 2's and 3's cluster: the nearest active wins
    assert torch.equal(model.predict_clusters(batch, use_mean=True), torch.tensor([0, 1, 1, 1, -1]))


def test_prior_sampling_and_scoring_use_the_cluster_prior():
    model = make_model(n_clusters=3)
    torch.manual_seed(8)
    z = model.prior_sample(6)
    torch.manual_seed(8)
    torch.testing.assert_close(model.shared_prior.sample((6,)), z)
    torch.testing.assert_close(model.prior_log_prob(z), model.shared_prior.log_prob(z))
    # p(w) stays MMVAE+'s F(0, 1).
    w = torch.randn(4, 2)
    torch.testing.assert_close(
        model.private_prior_log_prob("a", w), Laplace(0.0, 1.0).log_prob(w).sum(-1)
    )


def test_config_is_validated_and_round_trips():
    with pytest.raises(ConfigError, match="cmvae: n_clusters must be >= 1, found 0"):
        make_config(n_clusters=0)
    with pytest.raises(ConfigError, match="cmvae: learn_shared_prior must be false"):
        make_config(learn_shared_prior=True)
    with pytest.raises(ConfigError, match="private_dim must be >= 1"):
        make_config(private_dim=0)
    config = make_config(n_clusters=7, latent_distribution="normal")
    rebuilt = create_model("cmvae", config.to_dict())
    assert isinstance(rebuilt, CMVAE)
    assert rebuilt.config == config
    assert rebuilt.shared_prior.means.shape == (7, 2)
    assert rebuilt.shared_prior.family == "normal"
    assert rebuilt.capabilities.clustering
    assert rebuilt.capabilities.private_latents
    assert CMVAEConfig(modalities=config.modalities).n_clusters == 10
    torch.manual_seed(0)
    means = ClusterPrior(2, 1000).means.detach()
    assert -1.0 <= float(means.min()) < -0.99
    assert 0.99 < float(means.max()) <= 1.0


def test_evaluate_scores_the_models_own_clusters_against_the_labels():
    from multivae.metrics.evaluate import _clusters
    from multivae.metrics.latents import cluster_agreement

    model = make_model(n_clusters=3)
    batch = make_batch("missing")
    predicted = _clusters(  # in chunks of 2 rows
        lambda rows: model.predict_clusters(rows, use_mean=True), batch, size=2
    )
    assert torch.equal(predicted, model.predict_clusters(batch, use_mean=True))
    assert predicted[4] == -1
    # Clusters that rename the classes agree perfectly; accuracy counts the best matching.
    assert cluster_agreement(torch.tensor([2, 2, 0, 1]), torch.tensor([5, 5, 7, 8])) == {
        "accuracy": 1.0,
        "nmi": pytest.approx(1.0),
        "ari": pytest.approx(1.0),
    }
    assert cluster_agreement([0, 0, 0, 0], [1, 1, 2, 2])["accuracy"] == 0.5
    with pytest.raises(ValueError, match="cluster_agreement: expected clusters and labels"):
        cluster_agreement([0, 1], [0])
