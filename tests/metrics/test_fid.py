import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import inception_v3

from multivae.metrics.fid import (
    ClassifierFeatures,
    InceptionFeatures,
    feature_statistics,
    fid,
    fid_from_features,
    fid_metric_name,
    frechet_distance,
)


def _features(n=400, f=8, seed=0):
    # Correlated, non-isotropic features with a non-zero mean.
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(f, f))
    return rng.normal(size=(n, f)) @ mixing + rng.normal(size=f) * 3


def test_features_against_themselves_are_at_distance_zero():
    features = _features()
    scale = np.trace(np.cov(features, rowvar=False))
    assert abs(fid_from_features(features, features)) < 1e-6 * scale


def test_singular_covariances_still_give_the_closed_forms():
    # Fewer samples than features: a rank-9 covariance in 50 dimensions.
    features = _features(n=10, f=50)
    scale = np.trace(np.cov(features, rowvar=False))
    assert abs(fid_from_features(features, features)) < 1e-6 * scale
    # A constant feature makes the covariance product exactly singular (the regularised path).
    features = np.column_stack([_features(f=3), np.full(400, 7.0)])
    shift = np.array([1.0, 0.0, -2.0, 0.5])
    expected = float(shift @ shift)
    assert fid_from_features(features, features + shift) == pytest.approx(expected, rel=1e-6)


def test_a_shift_costs_its_squared_norm():
    features = _features()
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0, -1.0, 0.25, 2.0])
    expected = float(shift @ shift)
    assert fid_from_features(features, features + shift) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("s", [0.5, 2.0])
def test_a_scaling_about_the_mean_matches_the_closed_form(s):
    # N(mu, S) against N(mu, s^2 S): Tr(S) + s^2 Tr(S) - 2 s Tr(S) = Tr(S) (1 - s)^2.
    features = _features(seed=1)
    mean = features.mean(axis=0)
    scaled = mean + s * (features - mean)
    trace = np.trace(np.cov(features, rowvar=False))
    assert fid_from_features(features, scaled) == pytest.approx(trace * (1 - s) ** 2, rel=1e-6)


def test_fid_is_symmetric():
    a, b = _features(seed=2), _features(seed=3) * 1.5 + 1
    assert fid_from_features(a, b) == pytest.approx(fid_from_features(b, a), rel=1e-8)
    assert fid_from_features(a, b) > 0


@pytest.mark.parametrize(("m1", "s1", "m2", "s2"), [(0.0, 1.0, 3.0, 2.0), (-1.5, 0.3, 2.0, 0.3)])
def test_one_dimensional_gaussians(m1, s1, m2, s2):
    distance = frechet_distance(np.array([m1]), np.array([[s1**2]]), np.array([m2]), [[s2**2]])
    assert distance == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2, rel=1e-9)


def test_feature_statistics_and_shape_errors():
    features = _features(n=50, f=3)
    mean, covariance = feature_statistics(torch.from_numpy(features))
    np.testing.assert_allclose(mean, features.mean(axis=0))
    np.testing.assert_allclose(covariance, np.cov(features, rowvar=False))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(features[:1])
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


class _Flatten(nn.Module):
    def forward(self, x):
        return x.flatten(1)


def test_classifier_features_are_named_and_batched():
    module = nn.Sequential(_Flatten(), nn.Dropout(0.9))
    module.train()
    extractor = ClassifierFeatures(module, "classifier")
    assert extractor.name == "classifier"
    assert fid_metric_name(extractor) == "fid_classifier"
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(20, 1, 2, 2, generator=generator)
    # Eval mode (dropout off) makes the features exactly the pixels, in any batch size.
    expected = fid_from_features(real.flatten(1), (real + 0.5).flatten(1))
    assert fid(real, real + 0.5, extractor, batch_size=3) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(4 * 0.25, rel=1e-6)
    assert module.training
    with pytest.raises(ValueError, match="inception"):
        ClassifierFeatures(module, "inception")


def test_inception_without_a_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights"):
        InceptionFeatures(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="untrained weights are never used"):
        InceptionFeatures(None)
    wrong = tmp_path / "wrong.pt"
    torch.save({"weight": torch.zeros(3)}, wrong)
    with pytest.raises(ValueError, match="not an Inception v3 state dict"):
        InceptionFeatures(wrong)


def test_inception_loads_a_local_state_dict_and_gives_pool3_features(tmp_path):
    # Random weights: this checks the loading path, the preprocessing and the shapes only, not
    # meaningful features (with default BatchNorm statistics they are tiny, so compare relatively).
    reference = inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / "inception.pt"
    torch.save(reference.state_dict(), path)
    extractor = InceptionFeatures(path)
    assert fid_metric_name(extractor) == "fid"
    # Inception at 299x299 is slow on a CPU: one 28x28 image, as grayscale and as RGB.
    gray = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    rgb = gray.expand(-1, 3, -1, -1)
    rgb_features = extractor(rgb)
    gray_features = extractor(gray)
    assert rgb_features.shape == gray_features.shape == (1, 2048)
    scale = rgb_features.abs().max().item()
    assert scale > 0 and torch.isfinite(rgb_features).all()
    torch.testing.assert_close(gray_features, rgb_features, rtol=1e-4, atol=1e-4 * scale)
    # The same numbers as the saved network's pool3 output on the resized input in [-1, 1].
    reference.fc = nn.Identity()
    with torch.no_grad():
        resized = F.interpolate(rgb, size=(299, 299), mode="bilinear", align_corners=False)
        expected = reference.eval()(2 * resized - 1)
    torch.testing.assert_close(rgb_features, expected, rtol=1e-4, atol=1e-4 * scale)
