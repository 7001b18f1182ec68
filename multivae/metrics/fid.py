"""FID through torchmetrics, with a pluggable feature network.

FID fits a Gaussian to the features of real and of generated images and reports the Fréchet
distance ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})`` between the two; it is computed by
:class:`torchmetrics.image.fid.FrechetInceptionDistance` (float64 statistics). Features come from
a :class:`FeatureExtractor`:

* :class:`InceptionFeatures`: the standard FID Inception v3 (the TensorFlow weights of the
  original FID code, as ported by torch-fidelity and pytorch-fid), pool3 features (2048-d), with
  weights read from a local file. Nothing is ever downloaded, and untrained weights are never
  used in silence: without a weights file it raises. Its scores, reported as plain ``fid``, are
  comparable with published FIDs (up to the usual sample-size effects).
* :class:`ClassifierFeatures`: any torch module mapping images to features, e.g. the penultimate
  layer of a classifier trained on the dataset; it is reported under its own name
  (:func:`fid_metric_name`), never as plain ``fid``.

Input ranges: :class:`InceptionFeatures` takes float images in ``[0, 1]``; values outside are
clipped to it, then the images are rounded to 8 bits, as if saved to PNG and scored by the
standard tools. :class:`ClassifierFeatures` passes images to its module as they are, in the
range the classifier was trained on; :func:`multivae.metrics.evaluate` clamps generated images
to ``[0, 1]`` (the data range) for both, so that decoders with unbounded likelihoods (Gaussian,
Laplace) are scored on the images one would display.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from multivae.metrics.latents import ArrayLike, as_numpy

INCEPTION_NAME = "inception"
"""Name of :class:`InceptionFeatures`; its FID is reported as plain ``fid``."""
INCEPTION_DIM = 2048
"""Size of the pool3 features of Inception v3."""
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
"""torch-fidelity's file of the FID Inception weights; pytorch-fid distributes them, with the same
hash and state-dict keys, as ``pt_inception-2015-12-05-6726825d.pth``, which works as well."""
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILE
)
"""Where to download :data:`INCEPTION_WEIGHTS_FILE` from, by hand, on a machine with internet."""


class FeatureExtractor(Protocol):
    """A feature network for :func:`fid`, wrapped in a torchmetrics FID metric."""

    name: str
    """Short name of the network; FIDs with it are reported as :func:`fid_metric_name`."""

    def metric(self, images: torch.Tensor) -> FrechetInceptionDistance:
        """An empty FID metric whose network takes images like ``images`` ``(N, C, H, W)``."""
        ...

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` ``(N, C, H, W)`` as the metric's ``update`` takes them."""
        ...


def fid_metric_name(extractor: FeatureExtractor) -> str:
    """``fid`` for Inception features, ``fid_<name>`` for any other feature network."""
    return "fid" if extractor.name == INCEPTION_NAME else f"fid_{extractor.name}"


def _module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter or buffer; the CPU when it has neither."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _missing_inception_weights(what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"InceptionFeatures needs the FID Inception v3 weights in a local file; {what}. "
        f"Download {INCEPTION_WEIGHTS_URL} on a machine with internet access and give its path "
        "(weights are never downloaded, and untrained weights are never used)"
    )


class InceptionFeatures:
    """The standard FID Inception v3 (pool3, 2048-d) with weights from a local file.

    The network is torchmetrics' default FID extractor (torch-fidelity's port of the TensorFlow
    Inception of the original FID code), with the TensorFlow-compatible bilinear resize to
    299x299 (torchmetrics' ``antialias=False``). Images ``(N, 1 or 3, H, W)`` are floats in
    ``[0, 1]``: they are clipped to it, rounded to 8 bits and grayscale is repeated to RGB.

    The weights file is :data:`INCEPTION_WEIGHTS_FILE` from :data:`INCEPTION_WEIGHTS_URL` (a
    state dict of the FID Inception, 1008-class head included). torchvision's ImageNet Inception
    v3 (``Inception_V3_Weights.IMAGENET1K_V1``) is another network, whose scores are not
    comparable with published FIDs: its state dicts are recognised and refused.

    Args:
        weights_path: The local weights file.
        device: Where to run the network; the CPU when ``None``.

    Raises:
        FileNotFoundError: When ``weights_path`` is ``None`` or not a file.
        ValueError: When the file is not a state dict of the FID Inception v3.
        ModuleNotFoundError: When torch-fidelity, which provides the network, is not installed.
    """

    name = INCEPTION_NAME

    def __init__(
        self,
        weights_path: str | os.PathLike[str] | None,
        device: str | torch.device | None = None,
    ) -> None:
        if weights_path is None:
            raise _missing_inception_weights("none was given")
        path = Path(weights_path)
        if not path.is_file():
            raise _missing_inception_weights(f"{path} is not a file")
        if importlib.util.find_spec("torch_fidelity") is None:
            raise ModuleNotFoundError(
                "InceptionFeatures needs torch-fidelity (the FID Inception network): "
                "pip install torch-fidelity"
            )
        _check_inception_state_dict(path)
        try:
            # torch-fidelity reads the file with ``weights_only=False``; the check above has read
            # it with ``weights_only=True``, so it holds nothing but tensors.
            metric = FrechetInceptionDistance(
                feature=INCEPTION_DIM,
                feature_extractor_weights_path=str(path),
                antialias=False,
            )
        except (RuntimeError, OSError) as error:
            raise ValueError(
                f"{path}: not loadable as the FID Inception v3 ({INCEPTION_WEIGHTS_FILE}): {error}"
            ) from error
        self.path = path
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self._metric = metric.to(self.device)

    def metric(self, images: torch.Tensor) -> FrechetInceptionDistance:
        """The (reset) FID metric holding the network."""
        self._metric.reset()
        return self._metric

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` uint8 images on the network's device from floats in ``[0, 1]``."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"InceptionFeatures: expected images of shape (N, 1 or 3, H, W), found "
                f"{tuple(images.shape)}"
            )
        pixels = (images.to(self.device, torch.float32).clamp(0, 1) * 255).round()
        return pixels.to(torch.uint8).expand(-1, 3, -1, -1)


def _check_inception_state_dict(path: Path) -> None:
    """Raise ``ValueError`` unless ``path`` holds a state dict shaped like the FID Inception."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: not a readable torch state dict ({error})") from error
    if not isinstance(state, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        raise ValueError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    head = state.get("fc.weight")
    if any(str(key).startswith("AuxLogits.") for key in state) or (
        head is not None and head.shape[0] == 1000
    ):
        raise ValueError(
            f"{path}: this is torchvision's ImageNet Inception v3, not the FID Inception; its "
            f"scores are not comparable with published FIDs. Use {INCEPTION_WEIGHTS_FILE} "
            f"({INCEPTION_WEIGHTS_URL})"
        )
    if head is None or tuple(head.shape) != (1008, INCEPTION_DIM):
        found = "no fc.weight" if head is None else f"fc.weight of shape {tuple(head.shape)}"
        raise ValueError(
            f"{path}: not a state dict of the FID Inception v3 ({INCEPTION_WEIGHTS_FILE}): "
            f"expected fc.weight of shape (1008, {INCEPTION_DIM}), found {found}"
        )


class _EvalFeatures(nn.Module):
    """A module's flattened float64 features, in eval mode and without gradients.

    torchmetrics reads the feature size from ``num_features``; the wrapped module's previous
    mode is restored after each call.
    """

    def __init__(self, module: nn.Module, num_features: int) -> None:
        super().__init__()
        self.module = module
        self.num_features = num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                features: torch.Tensor = self.module(images.to(_module_device(self.module)))
        finally:
            self.module.train(was_training)
        return features.reshape(features.shape[0], -1).double()


class ClassifierFeatures:
    """Features from any torch module, reported under the module's own name.

    Meant for the penultimate layer of a classifier trained on the dataset; the FID it gives is
    reported as ``fid_<name>`` (:func:`fid_metric_name`). The module runs in eval mode (its
    previous mode is restored afterwards), without gradients and on the device of its
    parameters; images reach it as they are, and its features are flattened to ``(N, F)``.

    Args:
        module: Maps a batch of images to features.
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

    def metric(self, images: torch.Tensor) -> FrechetInceptionDistance:
        """A new FID metric over the module's features (their size read off one image)."""
        probe = _EvalFeatures(self.module, 0)(images[:1])
        network = _EvalFeatures(self.module, probe.shape[1])
        metric = FrechetInceptionDistance(feature=network, normalize=True)
        return metric.to(_module_device(self.module))

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """The images as they are (the module moves them to its device)."""
        return images


def fid(
    real_images: torch.Tensor,
    fake_images: torch.Tensor,
    extractor: FeatureExtractor,
    batch_size: int = 256,
) -> float:
    """FID between two image sets under a feature network, through torchmetrics.

    Args:
        real_images: Images of shape ``(N, C, H, W)``, ``N >= 2``.
        fake_images: Images of shape ``(M, C, H, W)``, ``M >= 2``.
        extractor: The feature network; report the result as :func:`fid_metric_name`.
        batch_size: Images per forward pass.

    Returns:
        The Fréchet distance between Gaussians fitted to the two feature sets (non-negative:
        rounding below zero is clamped).

    Raises:
        ValueError: On a non-positive batch size, fewer than two images on either side, images
            the network does not take, or features that are not finite.
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
        metric = extractor.metric(real_images)
        try:
            for real, images in ((True, real_images), (False, fake_images)):
                for batch in torch.split(images, batch_size):
                    metric.update(extractor.prepare(batch), real=real)
            try:
                value = float(metric.compute())
            except RuntimeError as error:  # torch.linalg.LinAlgError, from non-finite features
                raise ValueError(
                    f"fid: the Fréchet distance of the {extractor.name} features failed "
                    f"({error}); are they finite?"
                ) from error
        finally:
            metric.reset()
    if not math.isfinite(value):
        raise ValueError(
            f"fid: the {extractor.name} features of the images are not finite (FID {value})"
        )
    return max(value, 0.0)


def fid_from_features(real: ArrayLike, fake: ArrayLike) -> float:
    """FID between two precomputed feature sets ``(N, F)`` and ``(M, F)``, through torchmetrics.

    Raises:
        ValueError: When either set is not 2-D with at least two rows, or their widths differ.
    """
    real_features = torch.tensor(as_numpy(real), dtype=torch.float64)
    fake_features = torch.tensor(as_numpy(fake), dtype=torch.float64)
    for what, features in (("real", real_features), ("fake", fake_features)):
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(
                f"fid_from_features: expected {what} features of shape (N, F) with N >= 2, "
                f"found {tuple(features.shape)}"
            )
    if real_features.shape[1] != fake_features.shape[1]:
        raise ValueError(
            f"fid_from_features: the feature sizes differ, {real_features.shape[1]} and "
            f"{fake_features.shape[1]}"
        )
    extractor = ClassifierFeatures(nn.Flatten(), "features")
    return fid(real_features[:, None, None], fake_features[:, None, None], extractor)
