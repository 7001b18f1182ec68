"""Fréchet distances between feature distributions (FID), with a pluggable feature network.

The Fréchet distance between Gaussians ``N(mu1, S1)`` and ``N(mu2, S2)`` is
``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})``; FID fits a Gaussian to the features of real
and of generated images and reports that distance. Features come from a
:class:`FeatureExtractor`:

* :class:`InceptionFeatures`: torchvision's Inception v3 pool3 features (2048-d), with weights
  read from a local file. Nothing is ever downloaded, and untrained weights are never used in
  silence: without a weights file it raises. Note that torchvision's ImageNet weights are not the
  TensorFlow weights of the original FID code, so scores are comparable with each other but not
  with published FIDs.
* :class:`ClassifierFeatures`: any torch module mapping images to features, e.g. the penultimate
  layer of a classifier trained on the dataset; it is reported under its own name
  (:func:`fid_metric_name`), never as plain ``fid``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from scipy.linalg import LinAlgWarning, sqrtm
from torch import nn
from torchvision.models import inception_v3

from multivae.metrics.latents import ArrayLike, as_numpy

INCEPTION_NAME = "inception"
"""Name of :class:`InceptionFeatures`; its FID is reported as plain ``fid``."""
INCEPTION_SIZE = 299
"""Side of the square input of Inception v3, in pixels."""
INCEPTION_DIM = 2048
"""Size of the pool3 features of Inception v3."""
IMAGINARY_TOLERANCE = 1e-3
"""Largest imaginary part of ``(S1 S2)^{1/2}`` discarded as rounding, relative to its largest
real entry."""


class FeatureExtractor(Protocol):
    """A network mapping images ``(N, C, H, W)`` to features ``(N, F)``."""

    name: str
    """Short name of the network; FIDs with it are reported as :func:`fid_metric_name`."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features of shape ``(N, F)`` of images of shape ``(N, C, H, W)``."""
        ...


def fid_metric_name(extractor: FeatureExtractor) -> str:
    """``fid`` for Inception features, ``fid_<name>`` for any other feature network."""
    return "fid" if extractor.name == INCEPTION_NAME else f"fid_{extractor.name}"


def _sqrtm_of_product(
    sigma1: NDArray[np.float64], sigma2: NDArray[np.float64]
) -> tuple[NDArray[Any], bool]:
    """``sqrtm(sigma1 @ sigma2)`` and whether it is trustworthy as it is.

    Untrustworthy means scipy flagged the product as singular or ill-conditioned, the root holds
    NaN or infinite values, or it has a significant imaginary part.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LinAlgWarning)
        root = np.asarray(sqrtm(sigma1 @ sigma2))
    flagged = any(issubclass(w.category, LinAlgWarning) for w in caught)
    return root, not flagged and bool(np.isfinite(root).all()) and _imaginary_part_is_small(root)


def _imaginary_part_is_small(root: NDArray[Any]) -> bool:
    """Whether a (possibly complex) matrix is real up to :data:`IMAGINARY_TOLERANCE`."""
    if not np.iscomplexobj(root):
        return True
    scale = max(float(np.abs(root.real).max()), np.finfo(np.float64).tiny)
    return float(np.abs(root.imag).max()) <= IMAGINARY_TOLERANCE * scale


def frechet_distance(
    mu1: ArrayLike,
    sigma1: ArrayLike,
    mu2: ArrayLike,
    sigma2: ArrayLike,
    eps: float = 1e-6,
) -> float:
    """Fréchet (2-Wasserstein squared) distance between two Gaussians.

    ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})``, computed in float64. When the product of
    the covariances is singular or ill-conditioned (fewer samples than features, or constant
    features), ``eps`` times the mean variance is added to both diagonals and the distance is that
    between the regularised Gaussians: the trace terms use the regularised covariances too, so two
    equal singular covariances still give exactly zero. Tiny imaginary parts left by the matrix
    square root are discarded; the result is clamped at zero against rounding.

    Args:
        mu1: Mean of shape ``(F,)``.
        sigma1: Covariance of shape ``(F, F)``.
        mu2: Mean of shape ``(F,)``.
        sigma2: Covariance of shape ``(F, F)``.
        eps: Relative regularisation of singular products.

    Returns:
        The distance, a non-negative float.

    Raises:
        ValueError: On mismatched shapes, non-finite inputs, or a square root with a significant
            imaginary part even after regularisation.
    """
    m1 = np.atleast_1d(as_numpy(mu1).astype(np.float64))
    m2 = np.atleast_1d(as_numpy(mu2).astype(np.float64))
    s1 = np.atleast_2d(as_numpy(sigma1).astype(np.float64))
    s2 = np.atleast_2d(as_numpy(sigma2).astype(np.float64))
    size = m1.shape[0]
    if m1.ndim != 1 or m2.shape != (size,) or s1.shape != (size, size) or s2.shape != (size, size):
        raise ValueError(
            f"frechet_distance: expected means (F,) and covariances (F, F), found means "
            f"{m1.shape}, {m2.shape} and covariances {s1.shape}, {s2.shape}"
        )
    if not all(np.isfinite(a).all() for a in (m1, m2, s1, s2)):
        raise ValueError("frechet_distance: means or covariances contain NaN or infinite values")
    root, trustworthy = _sqrtm_of_product(s1, s2)
    if not trustworthy:
        scale = max(float(np.trace(s1)), float(np.trace(s2))) / size
        offset = eps * (scale if scale > 0 else 1.0) * np.eye(size)
        s1, s2 = s1 + offset, s2 + offset
        root, _ = _sqrtm_of_product(s1, s2)
        if not np.isfinite(root).all():
            raise ValueError("frechet_distance: the matrix square root is not finite")
    if not _imaginary_part_is_small(root):
        raise ValueError(
            f"frechet_distance: the square root of the covariance product has an imaginary part "
            f"of {float(np.abs(root.imag).max()):.3g}; are the covariances positive semi-definite?"
        )
    root = root.real
    difference = m1 - m2
    distance = float(difference @ difference + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))
    return max(distance, 0.0)


def feature_statistics(features: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean ``(F,)`` and unbiased covariance ``(F, F)`` of features ``(N, F)``, in float64.

    Raises:
        ValueError: When ``features`` is not 2-D, has fewer than two rows, or is not finite.
    """
    array = as_numpy(features).astype(np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(
            f"feature_statistics: expected features of shape (N, F) with N >= 2, found "
            f"{array.shape}"
        )
    if not np.isfinite(array).all():
        raise ValueError("feature_statistics: features contain NaN or infinite values")
    mean = array.mean(axis=0)
    covariance = np.atleast_2d(np.cov(array, rowvar=False))
    return mean, covariance


def fid_from_features(real: ArrayLike, fake: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(N, F)`` and ``(M, F)``."""
    mu1, sigma1 = feature_statistics(real)
    mu2, sigma2 = feature_statistics(fake)
    return frechet_distance(mu1, sigma1, mu2, sigma2)


def _module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer; the CPU when it has neither."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


class InceptionFeatures:
    """Inception v3 pool3 features (2048-d) with weights from a local file.

    Images are expected in ``[0, 1]`` with 1 (repeated to RGB) or 3 channels, any size: they are
    resized to 299x299 (bilinear) and scaled to ``[-1, 1]``, the input of torchvision's ImageNet
    Inception v3 (equivalent to its ImageNet normalisation followed by ``transform_input``).

    The weights file is a ``state_dict`` of ``torchvision.models.inception_v3``, saved with
    ``torch.save``; e.g. on a machine with internet access::

        model = inception_v3(weights=Inception_V3_Weights.IMAGENET1K_V1)
        torch.save(model.state_dict(), "inception_v3.pt")

    The classifier head (``fc``) and auxiliary head (``AuxLogits``) are not used and may be
    missing from the file; every other weight must be present.

    Args:
        weights_path: The local weights file.
        device: Where to run the network; the CPU when ``None``.

    Raises:
        FileNotFoundError: When ``weights_path`` is ``None`` or not a file.
        ValueError: When the file is not an Inception v3 state dict.
    """

    name = INCEPTION_NAME

    def __init__(
        self,
        weights_path: str | os.PathLike[str] | None,
        device: str | torch.device | None = None,
    ) -> None:
        if weights_path is None:
            raise FileNotFoundError(
                "InceptionFeatures needs a local Inception v3 weights file (a torchvision "
                "inception_v3 state_dict saved with torch.save); none was given, and untrained "
                "weights are never used"
            )
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no Inception v3 weights file there (a torchvision inception_v3 "
                "state_dict saved with torch.save); weights are never downloaded"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"{path}: not a readable torch state dict ({error})") from error
        if not isinstance(state, Mapping) or not all(
            isinstance(value, torch.Tensor) for value in state.values()
        ):
            raise ValueError(f"{path}: expected a state dict of tensors, found {type(state)}")
        trunk = {
            key: value for key, value in state.items() if not key.startswith(("fc.", "AuxLogits."))
        }
        model = inception_v3(weights=None, aux_logits=True, init_weights=False)
        model.aux_logits = False
        model.AuxLogits = None
        model.fc = nn.Identity()
        try:
            model.load_state_dict(trunk, strict=True)
        except RuntimeError as error:
            raise ValueError(f"{path}: not an Inception v3 state dict ({error})") from error
        self.path = path
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.model: nn.Module = model.to(self.device).eval().requires_grad_(False)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Pool3 features ``(N, 2048)`` of images ``(N, 1 or 3, H, W)`` in ``[0, 1]``."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"InceptionFeatures: expected images of shape (N, 1 or 3, H, W), found "
                f"{tuple(images.shape)}"
            )
        x = images.to(self.device, torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(
            x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False
        )
        with torch.no_grad():
            features: torch.Tensor = self.model(2 * x - 1)
        return features


class ClassifierFeatures:
    """Features from any torch module, reported under the module's own name.

    Meant for the penultimate layer of a classifier trained on the dataset; the FID it gives is
    reported as ``fid_<name>`` (:func:`fid_metric_name`). The module runs in eval mode (its
    previous mode is restored afterwards) and without gradients; features are flattened to
    ``(N, F)``.

    Args:
        module: Maps a batch of images to features; runs on the device of its parameters.
        name: Short name, e.g. ``classifier``. Must not be ``inception``.

    Raises:
        ValueError: When ``name`` is empty or ``inception``.
    """

    def __init__(self, module: nn.Module, name: str) -> None:
        if not name or name == INCEPTION_NAME:
            raise ValueError(
                f"ClassifierFeatures: name must be non-empty and not {INCEPTION_NAME!r}, "
                f"found {name!r}"
            )
        self.module = module
        self.name = name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Features ``(N, F)`` of a batch of images."""
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                features: torch.Tensor = self.module(images.to(_module_device(self.module)))
        finally:
            self.module.train(was_training)
        return features.reshape(features.shape[0], -1)


def _batched_features(
    images: torch.Tensor, extractor: FeatureExtractor, batch_size: int
) -> torch.Tensor:
    """Features of all images, computed ``batch_size`` at a time, as float64 on the CPU."""
    chunks = [
        extractor(batch).detach().to("cpu", torch.float64)
        for batch in torch.split(images, batch_size)
    ]
    return torch.cat(chunks)


def fid(
    real_images: torch.Tensor,
    fake_images: torch.Tensor,
    extractor: FeatureExtractor,
    batch_size: int = 256,
) -> float:
    """FID between two image sets under a feature network.

    Args:
        real_images: Images of shape ``(N, C, H, W)``, ``N >= 2``.
        fake_images: Images of shape ``(M, C, H, W)``, ``M >= 2``.
        extractor: The feature network; report the result as :func:`fid_metric_name`.
        batch_size: Images per forward pass.

    Returns:
        The Fréchet distance between Gaussians fitted to the two feature sets.

    Raises:
        ValueError: On a non-positive batch size, or fewer than two images on either side.
    """
    if batch_size < 1:
        raise ValueError(f"fid: expected a positive batch_size, found {batch_size}")
    for what, images in (("real", real_images), ("fake", fake_images)):
        if images.ndim != 4 or images.shape[0] < 2:
            raise ValueError(
                f"fid: expected {what} images of shape (N, C, H, W) with N >= 2, found "
                f"{tuple(images.shape)}"
            )
    with torch.no_grad():
        real = _batched_features(real_images, extractor, batch_size)
        fake = _batched_features(fake_images, extractor, batch_size)
    return fid_from_features(real, fake)
