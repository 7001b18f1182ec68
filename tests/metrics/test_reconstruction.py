import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from multivae.metrics.reconstruction import mse, ssim


def _images(n=3, c=3, size=28, seed=0):
    # Smooth images in [0.2, 0.8]: structure for SSIM to see.
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, c, size // 4, size // 4, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    return 0.2 + 0.6 * smooth


def test_mse_by_hand():
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    y = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 3.0]])
    # (0 + 1 + 4 + 9) / 4 and (0 + 0 + 0 + 4) / 4.
    torch.testing.assert_close(mse(x, y), torch.tensor([3.5, 1.0]))
    images = torch.zeros(2, 1, 2, 2)
    other = images.clone()
    other[1, 0, 0, 0] = 2.0
    torch.testing.assert_close(mse(images, other), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="shapes differ"):
        mse(x, y[:1])


def test_ssim_of_an_image_with_itself_is_one():
    x = _images()
    torch.testing.assert_close(ssim(x, x), torch.ones(3))


def test_ssim_decreases_as_noise_grows():
    x = _images(n=2, c=1, size=32, seed=1)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    scores = torch.stack([ssim(x, x + std * noise) for std in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4)])
    assert (scores[1:] < scores[:-1]).all(), scores
    assert (scores[-1] < 0.5).all()


@pytest.mark.parametrize(
    ("a", "b", "data_range"), [(0.2, 0.7, 1.0), (0.5, 0.5, 1.0), (40, 200, 255)]
)
def test_ssim_of_constant_images_has_a_closed_form(a, b, data_range):
    # Zero variances: the structure term is C2 / C2 = 1, leaving the luminance term.
    x = torch.full((1, 2, 12, 15), float(a))
    y = torch.full((1, 2, 12, 15), float(b))
    c1 = (0.01 * data_range) ** 2
    expected = (2 * a * b + c1) / (a**2 + b**2 + c1)
    assert ssim(x, y, data_range=data_range).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("dy", "dx"), [(0, 0), (0, 2), (-3, 4), (5, -5)])
def test_ssim_uses_an_11x11_gaussian_window_of_sigma_one_and_a_half(dy, dx):
    # On 11x11 images the window fits once. Against a black image, one white pixel at offset
    # (dy, dx) from the centre with window weight w gives means 0 and w, variances 0 and w - w^2
    # and covariance 0, so SSIM = C1 / (w^2 + C1) * C2 / (w - w^2 + C2).
    taps = [math.exp(-(t**2) / (2 * 1.5**2)) for t in range(-5, 6)]
    w = taps[5 + dy] * taps[5 + dx] / sum(taps) ** 2
    c1, c2 = 0.01**2, 0.03**2
    expected = c1 / (w**2 + c1) * c2 / (w - w**2 + c2)
    x = torch.zeros(1, 1, 11, 11)
    y = x.clone()
    y[0, 0, 5 + dy, 5 + dx] = 1.0
    assert ssim(x, y).item() == pytest.approx(expected, rel=1e-5)


def test_ssim_rejects_non_images():
    with pytest.raises(ValueError, match="only defined for image batches"):
        ssim(torch.rand(4, 10), torch.rand(4, 10))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_ssim_matches_a_scipy_gaussian_filter_reference():
    # An independent computation: scipy's Gaussian filter (radius int(3.5 * 1.5 + 0.5) = 5, so
    # 11 taps) with the borders cropped where the window does not fit, per channel.
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 20, 24))
    y = np.clip(x + 0.2 * rng.normal(size=x.shape), 0, 1)

    def reference(a, b):
        def local(values):
            return gaussian_filter(values, sigma=1.5, truncate=3.5)[5:-5, 5:-5]

        mu_a, mu_b = local(a), local(b)
        var_a, var_b = local(a * a) - mu_a**2, local(b * b) - mu_b**2
        cov = local(a * b) - mu_a * mu_b
        c1, c2 = 0.01**2, 0.03**2
        ssim_map = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
        return (ssim_map / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))).mean()

    expected = [np.mean([reference(x[i, c], y[i, c]) for c in range(3)]) for i in range(2)]
    result = ssim(torch.from_numpy(x), torch.from_numpy(y))
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-10)
