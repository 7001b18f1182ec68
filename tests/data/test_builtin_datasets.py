import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from multivae.data import MultimodalDataset, read_schema
from multivae.data.datasets import get_builtin, load_builtin, prepare_builtin


@pytest.fixture(scope="module")
def poly(tmp_path_factory):
    out = tmp_path_factory.mktemp("poly") / "poly-digits"
    return prepare_builtin(
        "poly-digits", out, missing_rate=0.4, seed=3, n_train=2000, n_val=200, n_test=500
    )


def test_poly_digits_shapes_ranges_and_balanced_labels(poly):
    for split, size in (("train", 2000), ("val", 200), ("test", 500)):
        batch = MultimodalDataset(poly, split).read_all()
        assert len(batch) == size
        assert batch.modalities == ("m0", "m1", "m2", "m3", "m4")
        for name in batch.modalities:
            values = batch.data[name]
            assert tuple(values.shape) == (size, 3, 28, 28)
            assert values.min() >= 0.0
            assert values.max() <= 1.0
        counts = np.bincount(batch.label.numpy(), minlength=10)
        assert counts.tolist() == [size // 10] * 10


def test_poly_digits_follows_the_polymnist_scheme(poly):
    batch = MultimodalDataset(poly, "train").read_all()
    assert batch.mask["m0"].all()
    for name in ("m1", "m2", "m3", "m4"):
        rate = 1.0 - batch.mask[name].float().mean().item()
        # 4 standard errors of a Bernoulli(0.4) mean over 2000 samples.
        assert abs(rate - 0.4) < 4 * np.sqrt(0.4 * 0.6 / 2000)
        absent = ~batch.mask[name]
        assert (batch.data[name][absent] == 0).all()
    test = MultimodalDataset(poly, "test").read_all()
    assert all(test.mask[name].all() for name in test.modalities)
    schema = read_schema(poly)
    assert schema.missingness["train"]["scheme"] == "polymnist"
    assert schema.missingness["train"]["rate"] == 0.4
    assert schema.missingness["train"]["always_present"] == "m0"
    assert "test" not in schema.missingness


def _gray(batch, name):
    return batch.data[name].mean(dim=1).reshape(len(batch), -1).numpy()


@pytest.mark.parametrize("name", ["m0", "m3", "m4"])
def test_poly_digits_class_is_readable_in_every_modality(poly, name):
    train = MultimodalDataset(poly, "train").read_all()
    test = MultimodalDataset(poly, "test").read_all()
    keep = train.mask[name].numpy()
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(
        _gray(train, name)[keep], train.label.numpy()[keep]
    )
    accuracy = classifier.score(_gray(test, name), test.label.numpy())
    # Chance is 10%; a linear model on raw shifted pixels, tested on source images never seen
    # in train, reaches 45-80% depending on the texture.
    assert accuracy > 0.3


def test_poly_digits_modalities_do_not_share_the_digit_image(poly):
    test = MultimodalDataset(poly, "test").read_all()
    # The same source digit on another texture would give strongly correlated ink maps; distinct
    # handwriting of the same class correlates much less than 1.
    ink = {
        n: np.abs(_gray(test, n) - np.median(_gray(test, n), axis=1, keepdims=True))
        for n in ("m0", "m1")
    }
    correlations = [np.corrcoef(ink["m0"][i], ink["m1"][i])[0, 1] for i in range(100)]
    assert np.median(correlations) < 0.9


def test_generation_is_deterministic_per_seed(tmp_path):
    kwargs = {"n_train": 30, "n_val": 10, "n_test": 10}
    a = prepare_builtin("poly-digits", tmp_path / "a", missing_rate=0.5, seed=1, **kwargs)
    b = prepare_builtin("poly-digits", tmp_path / "b", missing_rate=0.5, seed=1, **kwargs)
    c = prepare_builtin("poly-digits", tmp_path / "c", missing_rate=0.5, seed=2, **kwargs)
    ta, tb, tc = (pq.read_table(p / "train") for p in (a, b, c))
    assert ta.equals(tb)
    assert not ta.equals(tc)


def test_digits_label_pairs_an_image_with_its_class(tmp_path):
    path = prepare_builtin(
        "digits-label",
        tmp_path / "dl",
        missing_rate=0.3,
        seed=0,
        n_train=1000,
        n_val=100,
        n_test=200,
    )
    batch = MultimodalDataset(path, "train").read_all()
    assert tuple(batch.data["image"].shape) == (1000, 1, 28, 28)
    assert tuple(batch.data["digit"].shape) == (1000,)
    both = batch.mask["digit"]
    assert (batch.data["digit"][both] == batch.label[both]).all()
    assert (batch.data["digit"][~both] == 0).all()
    assert (batch.mask["image"] | batch.mask["digit"]).all()
    spec = read_schema(path)["digit"]
    assert (spec.kind, spec.likelihood, spec.num_categories) == ("categorical", "categorical", 10)
    assert read_schema(path)["image"].likelihood == "bernoulli"


def test_gaussian_views_match_their_stored_ground_truth(tmp_path):
    path = prepare_builtin(
        "gaussian-views",
        tmp_path / "gv",
        seed=5,
        num_views=3,
        latent_dim=2,
        view_dim=4,
        noise_std=0.2,
        n_train=10,
        n_val=10,
        n_test=40000,
    )
    truth = read_schema(path).extra["ground_truth"]
    batch = MultimodalDataset(path, "test").read_all()
    assert batch.modalities == ("view0", "view1", "view2")
    for v, name in enumerate(batch.modalities):
        x = batch.data[name].numpy().astype(np.float64)
        weights = np.array(truth["weights"][v])
        expected_cov = weights @ weights.T + 0.2**2 * np.eye(4)
        np.testing.assert_allclose(x.mean(axis=0), truth["biases"][v], atol=0.03)
        np.testing.assert_allclose(np.cov(x, rowvar=False), expected_cov, atol=0.05)
    counts = np.bincount(batch.label.numpy(), minlength=4) / 40000
    np.testing.assert_allclose(counts, 0.25, atol=0.015)


def test_load_builtin_caches_by_settings(tmp_path):
    first = load_builtin("gaussian-views", cache=tmp_path, n_train=20, n_val=5, n_test=5)
    stamp = os.stat(first / "train").st_mtime_ns
    again = load_builtin("gaussian-views", cache=tmp_path, n_train=20, n_val=5, n_test=5)
    assert again == first
    assert os.stat(again / "train").st_mtime_ns == stamp
    other = load_builtin("gaussian-views", cache=tmp_path, seed=1, n_train=20, n_val=5, n_test=5)
    assert other != first
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()) == sorted(
        [first.name, other.name]
    )


def test_unknown_names_get_a_suggestion(tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'poly-digits'"):
        get_builtin("poly-digit")
    with pytest.raises(ValueError, match="Did you mean 'n_train'"):
        prepare_builtin("poly-digits", tmp_path / "x", n_trian=3)


def test_prepare_refuses_a_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=r"holds files multivae prepare-data did not"):
            prepare_builtin(
                "gaussian-views", tmp_path, n_train=5, n_val=5, n_test=5, overwrite=overwrite
            )
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    # Nor inside a dataset.
    prepare_builtin("gaussian-views", tmp_path / "gv", n_train=5, n_val=5, n_test=5)
    with pytest.raises(FileExistsError, match=r"inside the dataset .*gv; outputs never land"):
        prepare_builtin(
            "gaussian-views", tmp_path / "gv" / "train" / "x", n_train=5, n_val=5, n_test=5
        )


def test_prepare_replaces_an_existing_dataset_and_leaves_no_temporary_folder(tmp_path):
    out = tmp_path / "gv"
    prepare_builtin("gaussian-views", out, seed=0, n_train=5, n_val=5, n_test=5)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # Its own earlier output is replaced only when asked.
    with pytest.raises(FileExistsError, match=r"holds an earlier dataset .*pass --overwrite"):
        prepare_builtin("gaussian-views", out, seed=1, n_train=7, n_val=5, n_test=5)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # A killed writer's staging folder (a process that no longer exists) is cleaned up.
    stale = tmp_path / ".gv.tmp-999999999-0123456789ab"
    (stale / "train").mkdir(parents=True)
    prepare_builtin("gaussian-views", out, seed=1, n_train=7, n_val=5, n_test=5, overwrite=True)
    assert len(MultimodalDataset(out, "train")) == 7
    assert (
        json.loads(pq.read_schema(next((out / "train").glob("*.parquet"))).metadata[b"multivae"])[
            "extra"
        ]["seed"]
        == 1
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gv"]
