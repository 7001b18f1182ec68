"""Per-sample reconstruction errors: mean squared error for any modality, SSIM for images.

Both return one value per sample, shape ``(N,)``, so callers can average over observed samples
only (presence masks) or report spreads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
"""Side of the Gaussian window of SSIM, in pixels (Wang et al. 2004)."""
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


def _gaussian_window(channels: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The normalised 2-D Gaussian window, one copy per channel: ``(channels, 1, 11, 11)``."""
    offsets = torch.arange(SSIM_WINDOW, dtype=dtype, device=device) - (SSIM_WINDOW - 1) / 2
    profile = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    profile = profile / profile.sum()
    window = torch.outer(profile, profile)
    return window.expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW).contiguous()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) of each pair of images.

    Local means, variances and covariance are Gaussian-weighted (11x11 window, sigma 1.5) and
    computed per channel with a grouped ``conv2d`` wherever the window fits inside the image (no
    padding, as in the reference implementation); the SSIM map
    ``(2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))`` with
    ``C1 = (0.01 L)^2`` and ``C2 = (0.03 L)^2`` is averaged over channels and positions.

    Args:
        x: Images of shape ``(N, C, H, W)``, with ``H, W >= 11``.
        y: Images of the same shape.
        data_range: ``L``, the span of pixel values (1 for ``[0, 1]``, 255 for 8-bit).

    Returns:
        Tensor of shape ``(N,)``; 1 for identical images.

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
    x, y = x.to(dtype), y.to(dtype)
    channels = x.shape[1]
    # Local statistics of images centred on their own means: the same (co)variances with far
    # less cancellation in E[x^2] - E[x]^2 (exact zeros for flat images, even in float32). The
    # five maps go through one grouped convolution, one window per channel.
    mean_x = x.mean(dim=(2, 3), keepdim=True)
    mean_y = y.mean(dim=(2, 3), keepdim=True)
    x, y = x - mean_x, y - mean_y
    window = _gaussian_window(5 * channels, dtype, x.device)
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    local = F.conv2d(stacked, window, groups=5 * channels)
    centred_x, centred_y, square_x, square_y, product = local.chunk(5, dim=1)
    mu_x, mu_y = centred_x + mean_x, centred_y + mean_y
    var_x = square_x - centred_x**2
    var_y = square_y - centred_y**2
    cov_xy = product - centred_x * centred_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.mean(dim=(1, 2, 3))
