import numpy as np
import pytest
import torch

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
    torch.testing.assert_close(ssim(x, x.clone()), torch.ones(3), rtol=0, atol=1e-12)
    # Also far from zero, where E[x^2] - E[x]^2 cancels most.
    torch.testing.assert_close(ssim(x + 10, x + 10), torch.ones(3), rtol=0, atol=1e-12)


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


def test_ssim_rejects_non_images():
    with pytest.raises(ValueError, match="only defined for image batches"):
        ssim(torch.rand(4, 10), torch.rand(4, 10))
    with pytest.raises(ValueError, match="at least 11x11, found 8x12"):
        ssim(torch.rand(1, 1, 8, 12), torch.rand(1, 1, 8, 12))
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(torch.rand(1, 1, 12, 12), torch.rand(1, 3, 12, 12))
    with pytest.raises(ValueError, match="positive data_range, found 0"):
        ssim(torch.rand(1, 1, 12, 12), torch.rand(1, 1, 12, 12), data_range=0)


def _ssim_reference(a, b, data_range=1.0):
    # SSIM of two (H, W) arrays written out with NumPy: an 11x11 Gaussian window of sigma 1.5,
    # local statistics on the image reflect-padded by 5 (NumPy's "reflect" leaves the edge pixel
    # out, as torch's does), so the map has one value per pixel, averaged.
    taps = np.exp(-(np.arange(-5, 6) ** 2) / (2 * 1.5**2))
    window = np.outer(taps, taps) / taps.sum() ** 2

    def local(values):
        padded = np.pad(values, 5, mode="reflect")
        patches = np.lib.stride_tricks.sliding_window_view(padded, (11, 11))
        return np.einsum("ijkl,kl->ij", patches, window)

    mu_a, mu_b = local(a), local(b)
    var_a, var_b = local(a * a) - mu_a**2, local(b * b) - mu_b**2
    cov = local(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    return (ssim_map / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))).mean()


def _per_image_reference(x, y, data_range=1.0):
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return [
        np.mean([_ssim_reference(x[i, c], y[i, c], data_range) for c in range(x.shape[1])])
        for i in range(x.shape[0])
    ]


@pytest.mark.parametrize(("dy", "dx"), [(0, 1), (2, 0), (-3, 4), (4, -4)])
def test_ssim_of_a_shifted_copy_matches_the_formula(dy, dx):
    # Two 32x36 crops of the same smooth images, the second moved by (dy, dx) pixels.
    base = _images(n=2, c=3, size=44, seed=3).double()
    x = base[:, :, 4:36, 4:40]
    y = base[:, :, 4 + dy : 36 + dy, 4 + dx : 40 + dx]
    result = ssim(x, y)
    assert result.dtype == torch.float64
    np.testing.assert_allclose(result.numpy(), _per_image_reference(x, y), rtol=1e-10)
    assert (result < 0.999).all()


def test_ssim_matches_the_formula_on_noisy_8_bit_images_in_float32():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(2, 1, 20, 24)).astype(np.float32)
    y = np.clip(np.round(x + rng.normal(0, 40, size=x.shape)), 0, 255).astype(np.float32)
    result = ssim(torch.from_numpy(x), torch.from_numpy(y), data_range=255)
    assert result.dtype == torch.float32
    expected = _per_image_reference(x, y, data_range=255)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-6)
    # Integer images are scored too, as float32.
    as_integers = ssim(torch.from_numpy(x).int(), torch.from_numpy(y).int(), data_range=255)
    assert as_integers.dtype == torch.float32
    np.testing.assert_allclose(as_integers.numpy(), expected, rtol=1e-6)
