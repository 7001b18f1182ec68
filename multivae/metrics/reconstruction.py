"""Per-sample reconstruction errors: mean squared error for any modality, SSIM for images.

SSIM is torchmetrics' (:func:`ssim`); the mean squared error is computed here.

Both return one value per sample, shape ``(N,)``, so callers can average over observed samples
only (presence masks) or report spreads.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

SSIM_WINDOW = 11
"""Side of the Gaussian window of SSIM, in pixels (Wang et al. 2004); torchmetrics derives it from
the sigma, ``2 * int(3.5 * sigma + 0.5) + 1``."""
SSIM_SIGMA = 1.5
"""Standard deviation of the Gaussian window of SSIM, in pixels."""
SSIM_K1 = 0.01
"""SSIM luminance stabiliser: ``C1 = (K1 * data_range) ** 2``."""
SSIM_K2 = 0.03
"""SSIM contrast stabiliser: ``C2 = (K2 * data_range) ** 2``."""


def _check_pair(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` unless ``x`` and ``y`` are batches of the same shape."""
    if x.shape != y.shape:
        raise ValueError(f"{what}: shapes differ, {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim < 1:
        raise ValueError(f"{what}: expected a batch (N, ...), found a scalar")


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each sample, averaged over all its values.

    Args:
        x: Batch of shape ``(N, ...)``, images or tabular values.
        y: Batch of the same shape.

    Returns:
        Tensor of shape ``(N,)`` (floating point; integer inputs are promoted to float32).

    Raises:
        ValueError: When the shapes differ.
    """
    _check_pair(x, y, "mse")
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    difference = x.to(dtype) - y.to(dtype)
    return difference.reshape(difference.shape[0], -1).square().mean(dim=1)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) of each pair of images, through torchmetrics.

    :func:`torchmetrics.functional.image.structural_similarity_index_measure` with its defaults,
    those of the reference implementation: a Gaussian window of sigma 1.5 (11x11 taps), ``K1 =
    0.01`` and ``K2 = 0.03``. Its local means, variances and covariance are computed per channel
    on the images reflect-padded by 5 pixels (``torch.nn.functional.pad(mode="reflect")``), so
    the SSIM map
    ``(2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))`` with
    ``C1 = (0.01 L)^2`` and ``C2 = (0.03 L)^2`` covers every pixel and is averaged over channels
    and positions. It runs in float64: torchmetrics' variances ``E[x^2] - E[x]^2`` lose digits in
    float32.

    Args:
        x: Images of shape ``(N, C, H, W)``, with ``H, W >= 11``.
        y: Images of the same shape.
        data_range: ``L``, the span of pixel values (1 for ``[0, 1]``, 255 for 8-bit).

    Returns:
        Tensor of shape ``(N,)`` in the inputs' floating dtype (float32 for integer inputs); 1 for
        identical images.

    Raises:
        ValueError: For non-image (not 4-D) inputs, images smaller than the window, mismatched
            shapes, or a non-positive ``data_range``.
    """
    _check_pair(x, y, "ssim")
    if x.ndim != 4:
        raise ValueError(
            f"ssim: only defined for image batches (N, C, H, W), found shape {tuple(x.shape)}; "
            "use mse for non-image modalities"
        )
    if x.shape[2] < SSIM_WINDOW or x.shape[3] < SSIM_WINDOW:
        raise ValueError(
            f"ssim: images must be at least {SSIM_WINDOW}x{SSIM_WINDOW}, found "
            f"{x.shape[2]}x{x.shape[3]}"
        )
    if data_range <= 0:
        raise ValueError(f"ssim: expected a positive data_range, found {data_range}")
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    similarity = structural_similarity_index_measure(
        x.to(torch.float64),
        y.to(torch.float64),
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_WINDOW,
        reduction="none",
        data_range=float(data_range),
        k1=SSIM_K1,
        k2=SSIM_K2,
    )
    assert isinstance(similarity, torch.Tensor)
    return similarity.to(dtype)
