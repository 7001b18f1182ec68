import numpy as np
import pytest
import torch

from multivae.metrics.latents import clustering_scores, linear_probe_accuracy


def _separated(n_per_class=50, classes=4, dim=3, seed=0):
    # Tight blobs around far-apart centres.
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 20
    labels = np.repeat(np.arange(classes), n_per_class)
    latents = centres[labels] + rng.normal(size=(labels.size, dim)) * 0.1
    order = rng.permutation(labels.size)
    return latents[order], labels[order]


def test_perfectly_separated_clusters_score_one():
    latents, labels = _separated()
    scores = clustering_scores(torch.from_numpy(latents), torch.from_numpy(labels))
    assert scores == pytest.approx({"accuracy": 1.0, "nmi": 1.0, "ari": 1.0})


def test_accuracy_matches_clusters_to_arbitrarily_named_classes():
    latents, labels = _separated(seed=1)
    renamed = np.array([7, 2, 9, 0])[labels]
    assert clustering_scores(latents, renamed)["accuracy"] == pytest.approx(1.0)
    names = np.array(["d", "a", "c", "b"])[labels]
    assert clustering_scores(latents, names)["accuracy"] == pytest.approx(1.0)


def test_accuracy_counts_the_best_matching_only():
    # Two blobs but three classes: one class is split across both blobs. The best matching
    # gives each blob to its majority class, so 1 - (the split class's smaller half) / N.
    latents, blobs = _separated(n_per_class=30, classes=2, seed=2)
    labels = blobs.copy()
    labels[np.flatnonzero(blobs == 0)[:10]] = 2
    scores = clustering_scores(latents, labels, n_clusters=2)
    assert scores["accuracy"] == pytest.approx(1 - 10 / 60)
    assert scores["nmi"] < 1 and scores["ari"] < 1


def test_random_latents_score_near_chance():
    rng = np.random.default_rng(3)
    latents = rng.normal(size=(800, 8))
    labels = rng.integers(0, 4, size=800)
    scores = clustering_scores(latents, labels)
    assert scores["accuracy"] < 0.35
    assert abs(scores["nmi"]) < 0.05
    assert abs(scores["ari"]) < 0.05


def test_clustering_rejects_malformed_inputs():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        clustering_scores(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="labels of shape"):
        clustering_scores(np.zeros((5, 2)), np.zeros(4))


def test_linear_probe_separates_separable_latents():
    latents, labels = _separated(classes=3, seed=4)
    half = labels.size // 2
    accuracy = linear_probe_accuracy(latents[:half], labels[:half], latents[half:], labels[half:])
    assert accuracy == pytest.approx(1.0)


def test_linear_probe_on_noise_is_near_chance():
    rng = np.random.default_rng(5)
    latents = rng.normal(size=(800, 8))
    labels = rng.integers(0, 4, size=800)
    accuracy = linear_probe_accuracy(latents[:400], labels[:400], latents[400:], labels[400:])
    assert accuracy < 0.35


def test_linear_probe_rejects_a_single_class_and_mismatched_dimensions():
    latents = np.random.default_rng(6).normal(size=(10, 2))
    with pytest.raises(ValueError, match="single class"):
        linear_probe_accuracy(latents, np.zeros(10), latents, np.zeros(10))
    with pytest.raises(ValueError, match="dimensions"):
        linear_probe_accuracy(latents, np.arange(10) % 2, latents[:, :1], np.arange(10) % 2)
