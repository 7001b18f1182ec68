"""Per-modality classifiers: they learn, report honestly, save and load exactly, and refuse clearly.

The image classifiers train on a small ``poly-digits`` (half of m1-m4 missing); the rules for
categorical modalities, the default folder and the seeding are checked on a tiny tabular
dataset written here.
"""

import json

import numpy as np
import pytest
import torch
from kit.data import builtin

from multivae.data import DatasetSchema, ModalitySpec, MultimodalDataset, SplitArrays, write_dataset
from multivae.data.fingerprint import dataset_fingerprint
from multivae.io import read_output_marker
from multivae.metrics.classifiers import ClassifierError, ClassifierSet, train_classifiers
from multivae.names import CLASSIFIERS_CONFIG_FILE, CLASSIFIERS_WEIGHTS_FILE

SMALL_CONV = {"channels": [16, 32], "hidden_dim": 64}


@pytest.fixture(scope="module")
def poly_digits(kit_folder):
    return builtin(
        kit_folder, "poly-digits", missing_rate=0.5, seed=0, n_train=1000, n_val=200, n_test=300
    )


@pytest.fixture(scope="module")
def trained(poly_digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("classifier-set") / "set"
    classifiers = train_classifiers(
        poly_digits,
        out,
        epochs=4,
        batch_size=32,
        lr=3e-3,
        modalities=["m0", "m1"],
        progress=False,
        device="cpu",
        options={"m0": SMALL_CONV, "m1": SMALL_CONV},
    )
    return classifiers, out


def test_image_classifier_beats_chance_and_reports_its_test_accuracy(poly_digits, trained):
    classifiers, out = trained
    test = MultimodalDataset(poly_digits, "test").read_all()
    predicted = classifiers.predict("m0", test.data["m0"])
    measured = (predicted == test.label).double().mean().item()
    # Chance is 0.1 on ten balanced classes.
    assert measured > 0.6
    assert classifiers.accuracy["m0"] == pytest.approx(measured, abs=1e-12)
    document = json.loads((out / CLASSIFIERS_CONFIG_FILE).read_text())
    entry = document["modalities"]["m0"]
    assert entry["test_accuracy"] == pytest.approx(measured, abs=1e-12)
    assert entry["shape"] == [3, 28, 28]
    assert entry["kind"] == "image"
    assert entry["num_classes"] == 10
    assert entry["architecture"]["name"] == "conv"
    assert entry["architecture"]["kwargs"]["channels"] == [16, 32]
    assert 0.0 <= entry["val_accuracy"] <= 1.0
    assert document["dataset"]["name"] == "poly-digits"
    assert document["dataset"]["splits"] == {"train": 1000, "val": 200, "test": 300}
    assert sorted(document["modalities"]) == ["m0", "m1"]


def test_validation_accuracy_is_measured_on_present_samples_only(poly_digits, trained):
    classifiers, _ = trained
    val = MultimodalDataset(poly_digits, "val").read_all()
    rows = val.mask["m1"]
    assert not bool(rows.all())
    predicted = classifiers.predict("m1", val.data["m1"][rows])
    measured = (predicted == val.label[rows]).double().mean().item()
    assert classifiers.val_accuracy["m1"] == pytest.approx(measured, abs=1e-12)


def test_saved_set_loads_with_identical_predictions_and_features(poly_digits, trained):
    classifiers, out = trained
    loaded = ClassifierSet.load(out)
    test = MultimodalDataset(poly_digits, "test").read_all()
    for name in ("m0", "m1"):
        assert torch.equal(
            loaded.predict(name, test.data[name]), classifiers.predict(name, test.data[name])
        )
        assert torch.equal(
            loaded.features(name, test.data[name]), classifiers.features(name, test.data[name])
        )
    extractor = loaded["m0"].feature_extractor()
    with torch.no_grad():
        assert torch.equal(extractor(test.data["m0"]), loaded.features("m0", test.data["m0"]))
    assert loaded.accuracy == classifiers.accuracy
    assert loaded.val_accuracy == classifiers.val_accuracy
    assert loaded.modalities == ("m0", "m1")


def test_predict_keeps_leading_sample_dimensions(poly_digits, trained):
    classifiers, _ = trained
    images = MultimodalDataset(poly_digits, "test").read_all().data["m0"][:10]
    stacked = torch.stack([images, images.flip(0)])
    predicted = classifiers.predict("m0", stacked, batch_size=3)
    assert predicted.shape == (2, 10)
    assert torch.equal(predicted[0], classifiers.predict("m0", images))
    assert torch.equal(predicted[1], classifiers.predict("m0", images.flip(0)))
    assert classifiers.features("m0", stacked).shape == (2, 10, 64)
    with pytest.raises(ValueError, match=r"\(3, 28, 28\)"):
        classifiers.predict("m0", images[:, :, :14])


def test_require_names_the_missing_modalities(trained):
    _, out = trained
    loaded = ClassifierSet.load(out)
    loaded.require(["m0", "m1"])
    with pytest.raises(ClassifierError, match="'zz'") as caught:
        loaded.require(["m0", "zz"])
    assert "'m0'" not in str(caught.value).split(";")[0]
    with pytest.raises(ClassifierError, match="'m4'"):
        loaded.predict("m4", torch.zeros(1, 3, 28, 28))


def test_load_refuses_a_folder_without_classifiers(tmp_path):
    with pytest.raises(FileNotFoundError, match=CLASSIFIERS_CONFIG_FILE):
        ClassifierSet.load(tmp_path)


# ------------------------------------------------------------------------------------------------
# A tiny tabular dataset: a real-valued view, a categorical that is the label, and one that is not.


def _tiny_schema(labelled: bool) -> DatasetSchema:
    return DatasetSchema(
        modalities=(
            ModalitySpec("x", (4,), "float32", "tabular"),
            ModalitySpec("tag", (), "int64", "categorical", num_categories=3),
            ModalitySpec("shifted", (), "int64", "categorical", num_categories=3),
        ),
        num_classes=3 if labelled else None,
        name="tiny",
    )


def _tiny_split(n: int, seed: int, labelled: bool) -> SplitArrays:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    x = np.zeros((n, 4), dtype=np.float32)
    x[np.arange(n), labels] = 5.0
    x += 10.0 + rng.standard_normal((n, 4)).astype(np.float32)
    data = {"x": x, "tag": labels.astype(np.int64), "shifted": ((labels + 1) % 3).astype(np.int64)}
    present = {name: rng.random(n) < 0.8 for name in data}
    # Every sample keeps at least one modality (the format requires it).
    present["x"] |= ~(present["tag"] | present["shifted"])
    data = {
        name: np.where(present[name].reshape(-1, *[1] * (v.ndim - 1)), v, 0).astype(v.dtype)
        for name, v in data.items()
    }
    return SplitArrays(data, present, labels.astype(np.int64) if labelled else None)


def _tiny_dataset(root, labelled: bool = True):
    splits = {
        split: _tiny_split(n, seed, labelled)
        for split, n, seed in (("train", 300, 1), ("val", 60, 2), ("test", 60, 3))
    }
    return write_dataset(root, _tiny_schema(labelled), splits)


def test_categorical_rule_default_folder_and_progress_bar(tmp_path):
    root = _tiny_dataset(tmp_path / "tiny")
    classifiers = train_classifiers(root, epochs=8, batch_size=32, lr=1e-2, progress=True)
    # Beside the dataset, never inside it: the dataset's folder holds only what wrote it.
    folder = tmp_path / "tiny-classifiers"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny", "tiny-classifiers"]
    assert sorted(p.name for p in root.iterdir()) == ["test", "train", "val"]
    assert (folder / CLASSIFIERS_CONFIG_FILE).is_file() and (
        folder / CLASSIFIERS_WEIGHTS_FILE
    ).is_file()
    assert read_output_marker(folder)["kind"] == "classifiers"
    document = json.loads((folder / CLASSIFIERS_CONFIG_FILE).read_text())
    assert document["dataset"]["fingerprint"] == dataset_fingerprint(root)
    architectures = {m: e["architecture"]["name"] for m, e in document["modalities"].items()}
    # "tag" equals the label wherever present: the identity. "shifted" has as many categories
    # as there are classes but is not the label: it gets a trained embedding classifier.
    assert architectures == {"x": "mlp", "tag": "identity", "shifted": "embedding"}
    assert classifiers.accuracy["tag"] == 1.0
    assert classifiers.accuracy["shifted"] > 0.9
    assert classifiers.accuracy["x"] > 0.9
    values = torch.tensor([2, 0, 1, 1])
    assert torch.equal(classifiers.predict("tag", values), values)
    loaded = ClassifierSet.load(folder)
    assert torch.equal(loaded.predict("shifted", values), torch.tensor([1, 2, 0, 0]))
    assert loaded.features("tag", values).shape == (4, 3)


def test_training_is_seeded_and_leaves_the_global_random_state_alone(tmp_path):
    root = _tiny_dataset(tmp_path / "tiny")
    state = torch.get_rng_state()
    first = train_classifiers(root, tmp_path / "a", epochs=2, modalities=["x"], progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    second = train_classifiers(root, tmp_path / "b", epochs=2, modalities=["x"], progress=False)
    other = train_classifiers(
        root, tmp_path / "c", epochs=2, modalities=["x"], seed=1, progress=False
    )
    x = torch.randn(50, 4) + 10
    assert torch.equal(first.logits("x", x), second.logits("x", x))
    assert not torch.equal(first.logits("x", x), other.logits("x", x))


def test_unlabelled_dataset_is_refused_clearly(tmp_path):
    root = _tiny_dataset(tmp_path / "unlabelled", labelled=False)
    with pytest.raises(ClassifierError, match="no labels"):
        train_classifiers(root, epochs=1, progress=False)
    assert not (tmp_path / "unlabelled-classifiers").exists()


def test_unknown_modality_and_foreign_output_folder_are_refused(tmp_path):
    root = _tiny_dataset(tmp_path / "tiny")
    with pytest.raises(ClassifierError, match="'zz'"):
        train_classifiers(root, modalities=["x", "zz"], epochs=1, progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds files multivae train-classifiers did not"):
        train_classifiers(root, foreign, modalities=["tag"], epochs=1, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(FileExistsError, match="inside the dataset"):
        train_classifiers(root, root / "classifiers", modalities=["tag"], progress=False)
    assert not (root / "classifiers").exists()


def test_an_earlier_set_is_replaced_only_when_asked(tmp_path):
    root = _tiny_dataset(tmp_path / "tiny")
    train_classifiers(root, epochs=1, modalities=["x"], progress=False)
    folder = tmp_path / "tiny-classifiers"
    before = (folder / CLASSIFIERS_WEIGHTS_FILE).read_bytes()
    with pytest.raises(FileExistsError, match=r"holds an earlier classifiers .*--overwrite"):
        train_classifiers(root, epochs=1, modalities=["x"], seed=1, progress=False)
    assert (folder / CLASSIFIERS_WEIGHTS_FILE).read_bytes() == before
    train_classifiers(root, epochs=1, modalities=["x"], seed=1, progress=False, overwrite=True)
    assert (folder / CLASSIFIERS_WEIGHTS_FILE).read_bytes() != before
    assert read_output_marker(folder)["kind"] == "classifiers"
