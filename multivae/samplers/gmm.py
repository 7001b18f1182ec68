"""A Gaussian mixture over the latents, fitted by scikit-learn, sampled and scored with torch."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from multivae.samplers.base import LatentSampler, expect_tensors, register_sampler

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def _full_matrices(
    values: np.ndarray[Any, Any], covariance_type: str, k: int, d: int
) -> torch.Tensor:
    """``(K, D, D)`` matrices from scikit-learn's per-type layout of covariances or precisions.

    ``full``: ``(K, D, D)``; ``tied``: one ``(D, D)``; ``diag``: ``(K, D)`` diagonals;
    ``spherical``: ``(K,)`` scalars.
    """
    array = torch.from_numpy(np.asarray(values, dtype=np.float64))
    if covariance_type == "full":
        return array
    if covariance_type == "tied":
        return array.expand(k, d, d).clone()
    if covariance_type == "diag":
        return torch.diag_embed(array)
    return array.reshape(k, 1, 1) * torch.eye(d, dtype=torch.float64)


@register_sampler
class GaussianMixtureSampler(LatentSampler):
    """A mixture of Gaussians fitted with scikit-learn's ``GaussianMixture`` (EM).

    After :meth:`fit` the sampler keeps only the mixture's parameters, in float64 and in full
    form whatever ``covariance_type`` (the tied, diagonal or spherical matrices expanded to
    ``(K, D, D)``): ``weights`` ``(K,)``, ``means`` ``(K, D)``, ``covariances`` and
    ``precisions_cholesky`` ``(K, D, D)`` (scikit-learn's fitted ``weights_``, ``means_``,
    ``covariances_`` and ``precisions_cholesky_``). Sampling and scoring are done with torch
    from these parameters, so a loaded sampler needs no scikit-learn object, draws with a
    ``torch.Generator`` and is identical to the one saved. :meth:`log_prob` computes what
    scikit-learn's ``score_samples`` does (per component, ``log N`` through the precision's
    Cholesky factor, then ``logsumexp`` with the log weights), up to float64 rounding.

    Args:
        n_components: Number of mixture components ``K``.
        covariance_type: ``full``, ``tied``, ``diag`` or ``spherical`` (as scikit-learn).
        seed: ``random_state`` of the EM initialization.
        max_iter: Most EM iterations.
    """

    kind: ClassVar[str] = "gmm"

    def __init__(
        self,
        n_components: int = 10,
        covariance_type: str = "full",
        seed: int = 0,
        max_iter: int = 100,
    ) -> None:
        super().__init__()
        for name, value, minimum in (
            ("n_components", n_components, 1),
            ("seed", seed, 0),
            ("max_iter", max_iter, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"gmm: expected an integer {name} >= {minimum}, found {value!r}")
        if covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"gmm: expected covariance_type in {list(COVARIANCE_TYPES)}, found "
                f"{covariance_type!r}"
            )
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.seed = seed
        self.max_iter = max_iter
        self.weights = torch.empty(0, dtype=torch.float64)
        self.means = torch.empty(0, dtype=torch.float64)
        self.covariances = torch.empty(0, dtype=torch.float64)
        self.precisions_cholesky = torch.empty(0, dtype=torch.float64)
        self._covariance_cholesky = torch.empty(0, dtype=torch.float64)

    def config(self) -> dict[str, Any]:
        """The constructor options."""
        return {
            "n_components": self.n_components,
            "covariance_type": self.covariance_type,
            "seed": self.seed,
            "max_iter": self.max_iter,
        }

    def min_samples(self) -> tuple[int, str]:
        """At least one latent per component (scikit-learn's requirement)."""
        return self.n_components, f"one per component, n_components={self.n_components}"

    def _set(
        self,
        weights: torch.Tensor,
        means: torch.Tensor,
        covariances: torch.Tensor,
        precisions_cholesky: torch.Tensor,
    ) -> None:
        self.weights = weights.to(torch.float64)
        self.means = means.to(torch.float64)
        self.covariances = covariances.to(torch.float64)
        self.precisions_cholesky = precisions_cholesky.to(torch.float64)
        factor, info = torch.linalg.cholesky_ex(self.covariances)
        if bool((info != 0).any()):
            raise ValueError("gmm: covariances are not positive definite")
        self._covariance_cholesky = factor

    def _fit(self, latents: torch.Tensor) -> None:
        mixture = GaussianMixture(
            n_components=self.n_components,
            covariance_type=self.covariance_type,
            random_state=self.seed,
            max_iter=self.max_iter,
        )
        mixture.fit(latents.to(torch.float64).numpy())
        k, d = self.n_components, latents.shape[1]
        self._set(
            torch.from_numpy(np.asarray(mixture.weights_, dtype=np.float64)),
            torch.from_numpy(np.asarray(mixture.means_, dtype=np.float64)),
            _full_matrices(mixture.covariances_, self.covariance_type, k, d),
            _full_matrices(mixture.precisions_cholesky_, self.covariance_type, k, d),
        )

    def _sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn((n, self.dim, 1), dtype=torch.float64, generator=generator)
        draws = self.means[component] + (self._covariance_cholesky[component] @ noise)[..., 0]
        return draws.to(torch.float32)

    def _log_prob(self, z: torch.Tensor) -> torch.Tensor:
        x = z.to(torch.float64)
        # y_k = (x - mu_k) P_k with P_k P_k^T the precision: |y_k|^2 is the Mahalanobis term.
        y = torch.einsum("nd,kde->nke", x, self.precisions_cholesky) - torch.einsum(
            "kd,kde->ke", self.means, self.precisions_cholesky
        )
        log_det = torch.log(torch.diagonal(self.precisions_cholesky, dim1=1, dim2=2)).sum(dim=1)
        log_gauss = -0.5 * (self.dim * math.log(2 * math.pi) + y.square().sum(dim=2)) + log_det
        return torch.logsumexp(log_gauss + torch.log(self.weights), dim=1).to(z.dtype)

    def _state(self) -> dict[str, torch.Tensor]:
        return {
            "weights": self.weights,
            "means": self.means,
            "covariances": self.covariances,
            "precisions_cholesky": self.precisions_cholesky,
        }

    def _restore(self, dim: int, tensors: dict[str, torch.Tensor]) -> None:
        k = self.n_components
        expect_tensors(
            tensors,
            {
                "weights": (k,),
                "means": (k, dim),
                "covariances": (k, dim, dim),
                "precisions_cholesky": (k, dim, dim),
            },
        )
        self._set(
            tensors["weights"],
            tensors["means"],
            tensors["covariances"],
            tensors["precisions_cholesky"],
        )
