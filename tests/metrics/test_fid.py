import importlib.util
import socket

import numpy as np
import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as fidelity_inception
from torch import nn
from torchvision.models import inception_v3

from multivae.metrics.fid import (
    ClassifierFeatures,
    InceptionFeatures,
    fid,
    fid_from_features,
    fid_metric_name,
)


def _exact_moments(mean, covariance, n, seed):
    # n samples whose sample mean and (unbiased) sample covariance are exactly the given ones:
    # whiten a random sample, then colour it, so the closed form holds up to rounding only.
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return np.asarray(mean) + z @ np.linalg.cholesky(covariance).T


def _sqrtm_psd(matrix):
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def _closed_form(mu1, s1, mu2, s2):
    # ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}), with Tr (S1 S2)^{1/2} computed as
    # Tr (S1^{1/2} S2 S1^{1/2})^{1/2} (the same eigenvalues), from symmetric eigendecompositions:
    # independent of torchmetrics' eigenvalues of the non-symmetric product.
    root = _sqrtm_psd(s1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0, None)).sum()
    difference = np.asarray(mu1) - np.asarray(mu2)
    return float(difference @ difference + np.trace(s1) + np.trace(s2) - 2 * cross)


def _as_images(features):
    # (N, F) features as (N, 1, 1, F) "images" for a flattening feature network.
    return torch.from_numpy(np.ascontiguousarray(features))[:, None, None, :]


def _flatten_features():
    return ClassifierFeatures(nn.Flatten(), "features")


def _rotation(angle):
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


GAUSSIAN_PAIRS = {
    "diagonal": (
        [0.0, 1.0, -1.0],
        np.diag([1.0, 4.0, 0.25]),
        [0.5, 0.0, -1.0],
        np.diag([2.0, 1.0, 0.25]),
    ),
    # S2 is a rotated, stretched S1: the covariances do not commute, so (S1 S2)^{1/2} is not the
    # product of the roots.
    "non_diagonal": (
        [1.0, 2.0],
        np.diag([1.0, 0.2]),
        [-1.0, 0.5],
        _rotation(0.6) @ np.diag([3.0, 0.5]) @ _rotation(0.6).T,
    ),
}


@pytest.mark.parametrize("pair", GAUSSIAN_PAIRS)
def test_fid_of_two_gaussians_matches_the_closed_form(pair):
    mu1, s1, mu2, s2 = GAUSSIAN_PAIRS[pair]
    expected = _closed_form(mu1, s1, mu2, s2)
    # A hand check of the diagonal closed form: ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2.
    if pair == "diagonal":
        by_hand = 0.25 + 1 + 0 + (1 - 2**0.5) ** 2 + (2 - 1) ** 2 + 0
        assert expected == pytest.approx(by_hand, rel=1e-12)
    real = _exact_moments(mu1, s1, 500, seed=0)
    fake = _exact_moments(mu2, s2, 300, seed=1)
    # Exact sample moments: only rounding separates the estimate from the closed form.
    assert fid(_as_images(real), _as_images(fake), _flatten_features()) == pytest.approx(
        expected, rel=1e-9
    )
    assert fid_from_features(real, fake) == pytest.approx(expected, rel=1e-9)


def test_fid_of_independent_gaussian_samples_approaches_the_closed_form():
    # Plain i.i.d. samples: with n = 100000 the estimate's spread around the closed form
    # (2.4216) is about 0.018 (measured over 40 seeds at n = 20000: 0.040, shrinking as
    # 1/sqrt(n)); 0.09 is five of those.
    mu1, s1, mu2, s2 = GAUSSIAN_PAIRS["diagonal"]
    rng = np.random.default_rng(0)
    real = rng.multivariate_normal(mu1, s1, size=100_000)
    fake = rng.multivariate_normal(mu2, s2, size=100_000)
    expected = _closed_form(mu1, s1, mu2, s2)
    assert abs(fid_from_features(real, fake) - expected) < 0.09


def _features(n=400, f=8, seed=0):
    # Correlated, non-isotropic features with a non-zero mean.
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, f)) @ rng.normal(size=(f, f)) + rng.normal(size=f) * 3


def test_a_set_against_itself_is_at_distance_zero():
    features = _features()
    scale = np.trace(np.cov(features, rowvar=False))
    images = _as_images(features)
    assert fid(images, images.clone(), _flatten_features(), batch_size=7) <= 1e-10 * scale
    # Fewer samples than features: a singular (rank-9) covariance in 50 dimensions.
    features = _features(n=10, f=50)
    scale = np.trace(np.cov(features, rowvar=False))
    assert fid_from_features(features, features) <= 1e-8 * scale


def test_a_shift_costs_its_squared_norm_and_fid_is_symmetric():
    features = _features()
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0, -1.0, 0.25, 2.0])
    expected = float(shift @ shift)
    assert fid_from_features(features, features + shift) == pytest.approx(expected, rel=1e-8)
    a, b = _features(seed=2), _features(seed=3) * 1.5 + 1
    assert fid_from_features(a, b) == pytest.approx(fid_from_features(b, a), rel=1e-8)
    assert fid_from_features(a, b) > 0


def test_fid_errors_say_what_was_expected_and_found():
    images = torch.rand(5, 1, 2, 2)
    extractor = _flatten_features()
    with pytest.raises(ValueError, match=r"real images of shape \(N, C, H, W\) with N >= 2"):
        fid(images[:1], images, extractor)
    with pytest.raises(ValueError, match=r"fake images .* found \(5, 4\)"):
        fid(images, images.flatten(1), extractor)
    with pytest.raises(ValueError, match="positive batch_size, found 0"):
        fid(images, images, extractor, batch_size=0)
    with pytest.raises(ValueError, match=r"feature sizes differ, 3 and 2"):
        fid_from_features(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"found \(4,\)"):
        fid_from_features(np.zeros(4), np.zeros((4, 2)))
    broken = images.clone()
    broken[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="features"):
        fid(images, broken, extractor)


class _Flatten(nn.Module):
    def forward(self, x):
        return x.flatten(1)


def test_classifier_features_are_named_batched_and_run_in_eval_mode():
    module = nn.Sequential(_Flatten(), nn.Dropout(0.9))
    module.train()
    extractor = ClassifierFeatures(module, "classifier")
    assert extractor.name == "classifier"
    assert fid_metric_name(extractor) == "fid_classifier"
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(20, 1, 2, 2, generator=generator, dtype=torch.float64)
    # Eval mode (dropout off) makes the features exactly the pixels, in any batch size: a shift
    # of 0.5 in each of the 4 pixels costs 4 * 0.25.
    assert fid(real, real + 0.5, extractor, batch_size=3) == pytest.approx(1.0, rel=1e-9)
    assert module.training
    with pytest.raises(ValueError, match="inception"):
        ClassifierFeatures(module, "inception")


def _fid_inception_file(path):
    # An untrained network with the FID Inception's state dict: torchvision's Inception v3 with
    # the FID head (1008 classes, no auxiliary head) has exactly torch-fidelity's keys and
    # shapes. Kaiming-initialised convolutions keep its features of order one.
    torch.manual_seed(0)
    network = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(network.state_dict(), path)
    return path


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("no download allowed")

    monkeypatch.setattr(fidelity_inception, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_inception_loads_a_local_file_offline_and_scores_like_torch_fidelity(tmp_path, offline):
    path = _fid_inception_file(tmp_path / "inception.pt")
    extractor = InceptionFeatures(path)
    assert fid_metric_name(extractor) == "fid"
    # Two grayscale images whose pixels are exact 8-bit levels.
    levels = torch.randint(0, 256, (2, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    images = levels / 255
    # The reference: torch-fidelity's own network, weights and forward pass on the 8-bit RGB
    # images (TensorFlow-compatible resize), loaded from the same file.
    reference = fidelity_inception.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
    )
    with torch.no_grad():
        features = reference(levels.to(torch.uint8).expand(-1, 3, -1, -1))[0].double()
    gap = float((features[0] - features[1]).square().sum())
    assert gap > 1e-3
    # Identical sets: zero.
    assert fid(images, images.clone(), extractor) <= 1e-6 * gap
    # Against two copies of the first image (zero covariance), the closed form from the
    # reference features: ||(f1 - f0) / 2||^2 + Tr S_real = gap / 4 + gap / 2.
    copies = images[[0, 0]]
    assert fid(images, copies, extractor) == pytest.approx(0.75 * gap, rel=1e-3)


def test_inception_input_is_clipped_rounded_to_8_bits_and_made_rgb(tmp_path, offline):
    extractor = InceptionFeatures(_fid_inception_file(tmp_path / "inception.pt"))
    levels = torch.arange(256, dtype=torch.float64).reshape(1, 1, 16, 16)
    prepared = extractor.prepare((levels / 255).float())
    assert prepared.dtype == torch.uint8 and prepared.shape == (1, 3, 16, 16)
    assert torch.equal(prepared[0, 0].long(), levels[0, 0].long())
    assert torch.equal(prepared[:, 0], prepared[:, 2])
    # Rounded to the nearest level, not truncated.
    below, above = (levels[:, :, :, :8] + 0.4) / 255, (levels[:, :, :, :8] + 0.6) / 255
    assert torch.equal(extractor.prepare(below)[0, 0].long(), levels[0, 0, :, :8].long())
    assert torch.equal(extractor.prepare(above)[0, 0].long(), levels[0, 0, :, :8].long() + 1)
    # Values outside [0, 1] (unbounded decoders) are clipped, not wrapped around.
    outside = torch.tensor([-0.3, 1.4, 0.5]).reshape(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert extractor.prepare(outside)[0, :, 0, 0].tolist() == [0, 255, 128]
    with pytest.raises(ValueError, match=r"\(N, 1 or 3, H, W\), found \(2, 2, 4, 4\)"):
        extractor.prepare(torch.zeros(2, 2, 4, 4))


def test_inception_without_its_weights_file_is_a_clear_error(tmp_path, offline, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"missing\.pt is not a file.*never downloaded"):
        InceptionFeatures(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match=r"none was given.*untrained weights"):
        InceptionFeatures(None)
    wrong = tmp_path / "wrong.pt"
    torch.save({"weight": torch.zeros(3)}, wrong)
    with pytest.raises(ValueError, match=r"not a state dict of the FID Inception.*no fc\.weight"):
        InceptionFeatures(wrong)
    torchvision_imagenet = tmp_path / "torchvision.pt"
    torch.save(inception_v3(weights=None, init_weights=False).state_dict(), torchvision_imagenet)
    with pytest.raises(ValueError, match="torchvision's ImageNet Inception v3"):
        InceptionFeatures(torchvision_imagenet)
    # The right head but a missing layer: torch-fidelity's strict loading fails, reworded.
    incomplete = tmp_path / "incomplete.pt"
    state = torch.load(_fid_inception_file(tmp_path / "inception.pt"), weights_only=True)
    del state["Mixed_7c.branch_pool.conv.weight"]
    torch.save(state, incomplete)
    with pytest.raises(ValueError, match=r"(?s)not loadable as the FID Inception.*Mixed_7c"):
        InceptionFeatures(incomplete)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "torch_fidelity" else real_find_spec(name, *args),
    )
    with pytest.raises(ModuleNotFoundError, match="pip install torch-fidelity"):
        InceptionFeatures(tmp_path / "inception.pt")
