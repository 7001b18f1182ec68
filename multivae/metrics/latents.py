"""How much class structure the latent space holds: k-means clustering and a linear probe.

Both take latents ``(N, D)`` (posterior means, typically) and class labels ``(N,)``, as torch
tensors or NumPy arrays. Clustering is unsupervised: k-means clusters are matched one-to-one to
classes (Hungarian matching on the contingency table) before measuring accuracy, and NMI and ARI
need no matching at all. The linear probe is supervised: a logistic regression on standardized
latents, fitted on one split and scored on another.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ArrayLike = torch.Tensor | NDArray[Any]
"""A torch tensor (any device) or a NumPy array."""

KMEANS_N_INIT = 10
"""k-means restarts from different centroid seeds; the best inertia wins."""
PROBE_MAX_ITER = 5000
"""L-BFGS iterations for the linear probe: far more than standardized latents need."""


def as_numpy(values: ArrayLike) -> NDArray[Any]:
    """``values`` as a NumPy array on the CPU, detached from any autograd graph."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _latents_and_labels(
    latents: ArrayLike, labels: ArrayLike, what: str
) -> tuple[NDArray[np.float64], NDArray[Any]]:
    """Validate one ``(N, D)`` latent array and its ``(N,)`` labels."""
    points = as_numpy(latents).astype(np.float64)
    classes = as_numpy(labels)
    if points.ndim != 2:
        raise ValueError(f"{what}: expected latents of shape (N, D), found {points.shape}")
    if classes.ndim != 1 or classes.shape[0] != points.shape[0]:
        raise ValueError(
            f"{what}: expected labels of shape ({points.shape[0]},), found {classes.shape}"
        )
    if not np.isfinite(points).all():
        raise ValueError(f"{what}: latents contain NaN or infinite values")
    return points, classes


def clustering_scores(
    latents: ArrayLike,
    labels: ArrayLike,
    n_clusters: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Cluster the latents with k-means and compare the clusters with the classes.

    Args:
        latents: Array of shape ``(N, D)``.
        labels: Class labels of shape ``(N,)`` (any hashable values NumPy can sort).
        n_clusters: Number of k-means clusters; the number of distinct labels when ``None``.
        seed: Seed of the k-means initialisation.

    Returns:
        ``accuracy``: fraction of samples whose cluster is matched to their class under the best
        one-to-one matching of clusters to classes (clusters or classes left unmatched when their
        numbers differ count as errors); ``nmi``: normalized mutual information; ``ari``: adjusted
        Rand index. All in ``[0, 1]`` except ARI, which can be slightly negative.

    Raises:
        ValueError: On malformed shapes, or fewer samples than clusters.
    """
    points, classes = _latents_and_labels(latents, labels, "clustering_scores")
    k = len(np.unique(classes)) if n_clusters is None else n_clusters
    if k < 1 or points.shape[0] < k:
        raise ValueError(
            f"clustering_scores: need 1 <= n_clusters <= N, found n_clusters={k} and "
            f"N={points.shape[0]}"
        )
    clusters = KMeans(n_clusters=k, n_init=KMEANS_N_INIT, random_state=seed).fit_predict(points)
    return cluster_agreement(clusters, classes)


def cluster_agreement(clusters: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """Compare cluster assignments with the classes (see :func:`clustering_scores`).

    Args:
        clusters: Cluster indices of shape ``(N,)`` (k-means', or a clustering model's own).
        labels: Class labels of shape ``(N,)``.

    Returns:
        ``accuracy`` under the best one-to-one matching of clusters to classes, ``nmi`` and
        ``ari``.

    Raises:
        ValueError: When the shapes differ or there are no samples.
    """
    assigned, classes = as_numpy(clusters), as_numpy(labels)
    if assigned.ndim != 1 or assigned.shape != classes.shape or assigned.shape[0] == 0:
        raise ValueError(
            f"cluster_agreement: expected clusters and labels of one shape (N,) with N >= 1, "
            f"found {assigned.shape} and {classes.shape}"
        )
    # Rows are classes, columns clusters; the assignment maximises the matched samples.
    table = contingency_matrix(classes, assigned)
    rows, columns = linear_sum_assignment(table, maximize=True)
    return {
        "accuracy": float(table[rows, columns].sum()) / assigned.shape[0],
        "nmi": float(normalized_mutual_info_score(classes, assigned)),
        "ari": float(adjusted_rand_score(classes, assigned)),
    }


def linear_probe_accuracy(
    train_latents: ArrayLike,
    train_labels: ArrayLike,
    test_latents: ArrayLike,
    test_labels: ArrayLike,
    seed: int = 0,
) -> float:
    """Test accuracy of a logistic regression fitted on standardized training latents.

    Args:
        train_latents: Array of shape ``(N, D)``.
        train_labels: Class labels of shape ``(N,)``, at least two distinct classes.
        test_latents: Array of shape ``(M, D)``.
        test_labels: Class labels of shape ``(M,)``.
        seed: Seed of the solver (only matters for solvers that shuffle).

    Returns:
        Fraction of test samples classified correctly.

    Raises:
        ValueError: On malformed shapes, mismatched latent sizes, or a single training class.
    """
    x_train, y_train = _latents_and_labels(train_latents, train_labels, "linear_probe (train)")
    x_test, y_test = _latents_and_labels(test_latents, test_labels, "linear_probe (test)")
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(
            f"linear_probe_accuracy: train latents have {x_train.shape[1]} dimensions, test "
            f"latents {x_test.shape[1]}"
        )
    if len(np.unique(y_train)) < 2:
        raise ValueError("linear_probe_accuracy: the training labels hold a single class")
    if x_test.shape[0] == 0:
        raise ValueError("linear_probe_accuracy: no test samples")
    probe = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=PROBE_MAX_ITER, random_state=seed)
    )
    probe.fit(x_train, y_train)
    return float(accuracy_score(y_test, probe.predict(x_test)))
