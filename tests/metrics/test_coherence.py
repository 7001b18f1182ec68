"""Coherence metrics against stub models whose right answer is computed here independently.

``gaussian-views`` with three tabular views and ten classes (a quantile bin of the latent) gives
quickly trained MLP classifiers. A "perfect" stub returns the true test modality (so coherence
must equal the classifier's own accuracy on the same samples), a "shuffled" stub returns the
modality of other samples (so coherence must sit at chance).
"""

import itertools
import math

import pytest
import torch
from kit.data import builtin

import multivae
from multivae.data import Batch, MultimodalDataset
from multivae.metrics.classifiers import ClassifierError, ClassifierSet, train_classifiers
from multivae.metrics.coherence import CoherenceResult, cross_modal_coherence, joint_coherence

VIEWS = ("view0", "view1", "view2")


@pytest.fixture(scope="module")
def dataset(kit_folder):
    return builtin(
        kit_folder,
        "gaussian-views",
        missing_rate=0.4,
        seed=0,
        num_views=3,
        num_classes=10,
        n_train=1500,
        n_val=400,
        n_test=400,
    )


@pytest.fixture(scope="module")
def classifiers(dataset, tmp_path_factory):
    return train_classifiers(
        dataset,
        tmp_path_factory.mktemp("classifiers") / "set",
        epochs=10,
        batch_size=64,
        lr=3e-3,
        progress=False,
        device="cpu",
    )


@pytest.fixture(scope="module")
def test_batch(dataset):
    return MultimodalDataset(dataset, "test").read_all()


@pytest.fixture(scope="module")
def val_batch(dataset):
    return MultimodalDataset(dataset, "val").read_all()


class PerfectModel:
    """Generates the true modality; its unconditional samples are real complete test rows."""

    modalities = VIEWS

    def __init__(self, samples: Batch | None = None):
        self.samples = samples
        self.cursor = 0
        self.calls = []

    def predict(self, batch, cond, gen=None, n_samples=1):
        present = torch.stack([batch.mask[m] for m in cond]).all(0)
        self.calls.append((tuple(cond), len(batch), bool(present.all())))
        gen = self.modalities if gen is None else gen
        out = {m: batch.data[m] for m in gen}
        if n_samples > 1:
            out = {m: v.expand(n_samples, *v.shape) for m, v in out.items()}
        return out

    def sample(self, n, sampler=None):
        rows = torch.arange(self.cursor, self.cursor + n) % len(self.samples)
        self.cursor += n
        return {m: self.samples.data[m][rows] for m in self.modalities}


class ShuffledModel:
    """Generates the modality of other samples of the batch."""

    modalities = VIEWS

    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)

    def predict(self, batch, cond, gen=None, n_samples=1):
        order = torch.randperm(len(batch), generator=self.generator)
        return {m: batch.data[m][order] for m in gen}

    def sample(self, n, sampler=None):
        return {m: torch.randn(n, 8, generator=self.generator) for m in self.modalities}


def _accuracy(classifiers, name, values, labels):
    return (classifiers.predict(name, values) == labels).double().mean().item()


def test_classifiers_are_good_enough_to_judge(classifiers):
    for name in VIEWS:
        assert classifiers.accuracy[name] > 0.6, classifiers.accuracy


def test_perfect_model_coherence_is_the_classifier_accuracy(classifiers, test_batch):
    assert all(bool(test_batch.mask[m].all()) for m in VIEWS)
    result = cross_modal_coherence(PerfectModel(), test_batch, classifiers, batch_size=64)
    assert isinstance(result, CoherenceResult)
    expected_pairs = {
        (subset, target)
        for k in (1, 2)
        for subset in itertools.combinations(VIEWS, k)
        for target in VIEWS
        if target not in subset
    }
    assert set(result.pairs) == expected_pairs
    for (_, target), value in result.pairs.items():
        assert value == pytest.approx(classifiers.accuracy[target], abs=1e-12)
    assert set(result.counts.values()) == {len(test_batch)}
    mean_accuracy = sum(classifiers.accuracy[m] for m in VIEWS) / 3
    assert result.mean == pytest.approx(mean_accuracy, abs=1e-12)


def test_several_generations_per_sample_are_each_judged(classifiers, test_batch):
    result = cross_modal_coherence(
        PerfectModel(), test_batch, classifiers, subset_sizes=[2], n_samples=3
    )
    assert result.n_samples == 3
    for (_, target), value in result.pairs.items():
        assert value == pytest.approx(classifiers.accuracy[target], abs=1e-12)


def test_absent_conditioning_modalities_exclude_the_sample(classifiers, val_batch):
    model = PerfectModel()
    result = cross_modal_coherence(model, val_batch, classifiers, batch_size=96)
    # The model only ever sees samples whose conditioning modalities are all present.
    assert model.calls and all(all_present for _, _, all_present in model.calls)
    labels = val_batch.label
    for subset, count in result.counts.items():
        rows = torch.stack([val_batch.mask[m] for m in subset]).all(0)
        assert count == int(rows.sum())
        assert 0 < count < len(val_batch)
        for target in VIEWS:
            if target in subset:
                continue
            expected = _accuracy(classifiers, target, val_batch.data[target][rows], labels[rows])
            assert result.pairs[(subset, target)] == pytest.approx(expected, abs=1e-12)


def test_subset_means_average_the_right_pairs(classifiers, val_batch):
    # On incomplete data the pairs differ (different samples count), so a wrong average shows.
    result = cross_modal_coherence(PerfectModel(), val_batch, classifiers)
    pairs = result.pairs
    assert len(set(pairs.values())) > 3
    singles = [
        pairs[(("view0",), "view1")],
        pairs[(("view0",), "view2")],
        pairs[(("view1",), "view0")],
        pairs[(("view1",), "view2")],
        pairs[(("view2",), "view0")],
        pairs[(("view2",), "view1")],
    ]
    doubles = [
        pairs[(("view1", "view2"), "view0")],
        pairs[(("view0", "view2"), "view1")],
        pairs[(("view0", "view1"), "view2")],
    ]
    assert result.per_size[1] == pytest.approx(sum(singles) / 6, abs=1e-12)
    assert result.per_size[2] == pytest.approx(sum(doubles) / 3, abs=1e-12)
    assert result.per_target[1]["view0"] == pytest.approx(
        (pairs[(("view1",), "view0")] + pairs[(("view2",), "view0")]) / 2, abs=1e-12
    )
    assert result.per_target[1]["view2"] == pytest.approx(
        (pairs[(("view0",), "view2")] + pairs[(("view1",), "view2")]) / 2, abs=1e-12
    )
    assert result.per_target[2] == pytest.approx(
        {"view0": doubles[0], "view1": doubles[1], "view2": doubles[2]}, abs=1e-12
    )
    assert result.mean == pytest.approx(sum(singles + doubles) / 9, abs=1e-12)
    only_pairs = cross_modal_coherence(PerfectModel(), val_batch, classifiers, subset_sizes=[2])
    assert set(only_pairs.per_size) == {2}
    assert only_pairs.mean == pytest.approx(sum(doubles) / 3, abs=1e-12)
    exported = result.to_dict()
    assert exported["pairs"]["view1+view2->view0"] == doubles[0]
    assert exported["per_size"]["1"] == result.per_size[1]


def test_shuffled_model_is_at_chance(classifiers, test_batch):
    n = len(test_batch)
    result = cross_modal_coherence(ShuffledModel(), test_batch, classifiers, batch_size=n)
    # Under a random permutation a prediction matches with probability sum_c p(label c) *
    # p(predicted c), about 1/10 on balanced classes.
    for (_, target), value in result.pairs.items():
        predicted = classifiers.predict(target, test_batch.data[target])
        chance = sum(
            (test_batch.label == c).double().mean() * (predicted == c).double().mean()
            for c in range(10)
        ).item()
        assert abs(chance - 0.1) < 0.03
        standard_error = math.sqrt(chance * (1 - chance) / n)
        assert abs(value - chance) < 4 * standard_error, (target, value, chance)
    assert abs(result.mean - 0.1) < 4 * math.sqrt(0.09 / n)


def test_joint_coherence_of_real_samples_is_the_classifiers_agreement(classifiers, test_batch):
    n = 250
    model = PerfectModel(test_batch)
    value = joint_coherence(model, classifiers, n=n, batch_size=64)
    predicted = torch.stack([classifiers.predict(m, test_batch.data[m][:n]) for m in VIEWS])
    expected = (predicted == predicted[0]).all(0).double().mean().item()
    assert value == pytest.approx(expected, abs=1e-12)
    assert model.cursor == n
    # Unrelated noise views rarely agree three times by chance.
    assert joint_coherence(ShuffledModel(), classifiers, n=n) < expected


def test_missing_classifier_and_missing_labels_are_refused(classifiers, test_batch):
    partial = ClassifierSet({"view0": classifiers.classifiers["view0"]}, 10)
    with pytest.raises(ClassifierError, match="'view1', 'view2'"):
        cross_modal_coherence(PerfectModel(), test_batch, partial)
    with pytest.raises(ClassifierError, match="'view1', 'view2'"):
        joint_coherence(PerfectModel(test_batch), partial, n=10)
    unlabelled = Batch(data=test_batch.data, mask=test_batch.mask)
    with pytest.raises(ValueError, match="labelled"):
        cross_modal_coherence(PerfectModel(), unlabelled, classifiers)
    with pytest.raises(ValueError, match="between 1 and 2"):
        cross_modal_coherence(PerfectModel(), test_batch, classifiers, subset_sizes=[3])


def test_a_real_model_and_a_dataset_split_work(classifiers, dataset):
    schema = MultimodalDataset(dataset, "val").schema
    config = multivae.get_model_class("mvae").config_class.from_schema(schema, latent_dim=2)
    model = multivae.create_model("mvae", config)
    model.train()
    val = MultimodalDataset(dataset, "val")
    result = cross_modal_coherence(model, val, classifiers, batch_size=128)
    full = val.read_all()
    for subset, count in result.counts.items():
        assert count == int(torch.stack([full.mask[m] for m in subset]).all(0).sum())
    assert all(0.0 <= v <= 1.0 for v in result.pairs.values())
    assert 0.0 <= joint_coherence(model, classifiers, n=100, batch_size=32) <= 1.0
    assert model.training


class OneWayModel(PerfectModel):
    """A model that can condition on view0 (alone or with others) but not without it."""

    def conditionable(self, subset, target=None):
        return "view0" in subset


def test_subsets_a_model_cannot_condition_on_are_not_applicable(classifiers, test_batch):
    model = OneWayModel()
    result = cross_modal_coherence(model, test_batch, classifiers, batch_size=64)
    assert result.not_applicable == [("view1",), ("view2",), ("view1", "view2")]
    assert {cond for cond, _, _ in model.calls} == {
        ("view0",),
        ("view0", "view1"),
        ("view0", "view2"),
    }
    assert {subset for subset, _ in result.pairs} == {
        ("view0",),
        ("view0", "view1"),
        ("view0", "view2"),
    }
    assert result.to_dict()["not_applicable"] == ["view1", "view2", "view1+view2"]


class MainTargetModel(PerfectModel):
    """A conditional model: generates only view2, from any subset holding view0."""

    def conditionable(self, subset, target=None):
        return "view0" in subset and target in (None, "view2")


def test_targets_a_model_cannot_generate_are_not_applicable(classifiers, test_batch):
    model = MainTargetModel()
    result = cross_modal_coherence(model, test_batch, classifiers, batch_size=64)
    assert set(result.pairs) == {(("view0",), "view2"), (("view0", "view1"), "view2")}
    assert {cond for cond, _, _ in model.calls} == {("view0",), ("view0", "view1")}
    # view0+view2 leaves only view1 to generate, which the model cannot: the whole subset.
    assert result.not_applicable == [("view1",), ("view2",), ("view0", "view2"), ("view1", "view2")]
    assert result.not_applicable_pairs == [(("view0",), "view1")]
    assert result.to_dict()["not_applicable_pairs"] == ["view0->view1"]
