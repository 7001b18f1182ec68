"""Seeded presence-mask generators: rates, the at-least-one rule, determinism and their record.

Rates are compared with their exact expectation within 4 standard errors. The generators keep
one modality, chosen uniformly, in a sample that drew none, so the expected missing rate of
modality ``j`` is ``r_j - prod_k(r_k) / M`` rather than ``r_j``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from multivae.data import (
    DatasetSchema,
    ModalitySpec,
    MultimodalDataset,
    SplitArrays,
    apply_presence,
    missing_completely_at_random,
    missing_not_at_random_by_class,
    polymnist_scheme,
    read_schema,
    write_dataset,
)

N = 20_000
MODALITIES = ("m0", "m1", "m2", "m3")


def expected_missing(rates: np.ndarray) -> np.ndarray:
    """Exact expected missing rate of each modality after the keep-one-uniformly rule."""
    rates = np.asarray(rates, dtype=np.float64)
    return rates - np.prod(rates) / rates.size


def assert_rate(observed_missing: np.ndarray, expected: float) -> None:
    """The share of ``True`` in ``observed_missing`` is within 4 standard errors of ``expected``."""
    n = observed_missing.size
    error = np.sqrt(max(expected * (1 - expected), 1 / n) / n)
    assert abs(observed_missing.mean() - expected) <= 4 * error, (
        observed_missing.mean(),
        expected,
        n,
    )


def stacked(present: dict[str, np.ndarray], names=MODALITIES) -> np.ndarray:
    return np.stack([present[m] for m in names], axis=1)


# ----------------------------------------------------------------------------------------------
# MCAR
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.8])
def test_mcar_rate_per_modality(rate):
    masks = missing_completely_at_random(N, MODALITIES, rate, seed=1)
    assert set(masks.present) == set(MODALITIES)
    expected = expected_missing([rate] * len(MODALITIES))
    for j, name in enumerate(MODALITIES):
        flags = masks.present[name]
        assert flags.shape == (N,)
        assert flags.dtype == np.bool_
        assert_rate(~flags, expected[j])
    assert stacked(masks.present).any(axis=1).all()
    if rate == 0.0:
        assert stacked(masks.present).all()


def test_mcar_modalities_are_dropped_independently():
    masks = missing_completely_at_random(N, MODALITIES, 0.5, seed=2)
    both = ~masks.present["m0"] & ~masks.present["m1"]
    # 0.25 less the samples where all four were dropped and m2 or m3 was kept instead.
    assert_rate(both, 0.25 - 0.5**4 / 2)


def test_mcar_rates_per_modality_from_a_dict():
    rates = {"m0": 0.05, "m1": 0.5, "m2": 0.9}  # m3 not given: never dropped
    masks = missing_completely_at_random(N, MODALITIES, rates, seed=3)
    for name, rate in rates.items():
        assert_rate(~masks.present[name], rate)
    assert masks.present["m3"].all()
    assert masks.record["rates"] == {"m0": 0.05, "m1": 0.5, "m2": 0.9, "m3": 0.0}


def test_mcar_dict_with_every_modality_uses_each_rate():
    rates = {"m0": 0.7, "m1": 0.2, "m2": 0.95, "m3": 0.6}
    masks = missing_completely_at_random(N, MODALITIES, rates, seed=4)
    expected = expected_missing([rates[m] for m in MODALITIES])
    for j, name in enumerate(MODALITIES):
        assert_rate(~masks.present[name], expected[j])
    assert stacked(masks.present).any(axis=1).all()


def test_mcar_rate_one_keeps_exactly_one_modality_chosen_uniformly():
    masks = missing_completely_at_random(N, MODALITIES, 1.0, seed=5)
    table = stacked(masks.present)
    assert (table.sum(axis=1) == 1).all()
    for j in range(len(MODALITIES)):
        assert_rate(table[:, j], 1 / len(MODALITIES))


def test_mcar_single_modality_is_always_present():
    masks = missing_completely_at_random(100, ["only"], 0.9, seed=0)
    assert masks.present["only"].all()


def test_mcar_is_deterministic_given_the_seed():
    first = missing_completely_at_random(1000, MODALITIES, 0.4, seed=11)
    again = missing_completely_at_random(1000, MODALITIES, 0.4, seed=11)
    other = missing_completely_at_random(1000, MODALITIES, 0.4, seed=12)
    for name in MODALITIES:
        np.testing.assert_array_equal(first.present[name], again.present[name])
    assert any(not np.array_equal(first.present[m], other.present[m]) for m in MODALITIES)
    assert first.record == again.record
    assert first.record["seed"] == 11
    assert other.record["seed"] == 12


# ----------------------------------------------------------------------------------------------
# PolyMNIST scheme
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
def test_polymnist_keeps_the_first_modality_and_drops_the_others(rate):
    masks = polymnist_scheme(N, MODALITIES, rate, seed=6)
    assert masks.present["m0"].all()
    for name in MODALITIES[1:]:
        # No keep-one rule: m0 is always there, so the others are dropped with rate p exactly.
        assert_rate(~masks.present[name], rate)
    assert masks.record["scheme"] == "polymnist"
    assert masks.record["always_present"] == "m0"
    assert masks.record["rate"] == rate


def test_polymnist_is_deterministic_given_the_seed():
    first = polymnist_scheme(1000, MODALITIES, 0.5, seed=1)
    again = polymnist_scheme(1000, MODALITIES, 0.5, seed=1)
    other = polymnist_scheme(1000, MODALITIES, 0.5, seed=2)
    for name in MODALITIES:
        np.testing.assert_array_equal(first.present[name], again.present[name])
    assert any(not np.array_equal(first.present[m], other.present[m]) for m in MODALITIES)


# ----------------------------------------------------------------------------------------------
# MNAR by class
# ----------------------------------------------------------------------------------------------

MNAR_RATES = np.array(
    [
        [0.1, 0.5, 0.0, 0.3],
        [0.9, 0.9, 0.9, 0.9],
        [0.0, 0.0, 0.6, 1.0],
    ]
)


def test_mnar_observed_rates_per_class_match_the_matrix():
    labels = np.random.default_rng(0).integers(0, 3, size=3 * N)
    masks = missing_not_at_random_by_class(labels, MODALITIES, MNAR_RATES, seed=7)
    table = stacked(masks.present)
    assert table.any(axis=1).all()
    for c in range(3):
        of_class = table[labels == c]
        assert len(of_class) > N // 2
        expected = expected_missing(MNAR_RATES[c])
        for j in range(len(MODALITIES)):
            assert_rate(~of_class[:, j], expected[j])
    # Class 2 never drops m0 and m1 and always drops m3.
    assert table[labels == 2][:, :2].all()
    assert not table[labels == 2][:, 3].any()


def test_mnar_accepts_nested_lists_and_is_deterministic():
    labels = np.random.default_rng(1).integers(0, 3, size=2000)
    first = missing_not_at_random_by_class(labels, MODALITIES, MNAR_RATES.tolist(), seed=3)
    again = missing_not_at_random_by_class(labels, MODALITIES, MNAR_RATES, seed=3)
    other = missing_not_at_random_by_class(labels, MODALITIES, MNAR_RATES, seed=4)
    for name in MODALITIES:
        np.testing.assert_array_equal(first.present[name], again.present[name])
    assert any(not np.array_equal(first.present[m], other.present[m]) for m in MODALITIES)
    assert first.record["rates"] == MNAR_RATES.tolist()
    assert first.record["modalities"] == list(MODALITIES)


# ----------------------------------------------------------------------------------------------
# Bad parameters
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [-0.01, 1.01, -1.0, 2.0, float("nan")])
def test_bad_rates_are_refused(rate):
    with pytest.raises(ValueError, match=r"expected a missing rate in \[0, 1\]"):
        missing_completely_at_random(10, MODALITIES, rate, seed=0)
    with pytest.raises(ValueError, match=r"rate of m1: expected a missing rate in \[0, 1\]"):
        missing_completely_at_random(10, MODALITIES, {"m0": 0.2, "m1": rate}, seed=0)
    with pytest.raises(ValueError, match=r"expected a missing rate in \[0, 1\]"):
        polymnist_scheme(10, MODALITIES, rate, seed=0)
    matrix = np.full((3, 4), 0.5)
    matrix[1, 2] = rate
    with pytest.raises(ValueError, match=r"rate matrix: expected a missing rate in \[0, 1\]"):
        missing_not_at_random_by_class(np.zeros(10, dtype=int), MODALITIES, matrix, seed=0)


def test_rates_naming_unknown_modalities_are_refused():
    with pytest.raises(ValueError, match=r"unknown modalities \['m9'\]"):
        missing_completely_at_random(10, MODALITIES, {"m0": 0.1, "m9": 0.2}, seed=0)


@pytest.mark.parametrize(
    "shape", [(4,), (3, 3), (3, 5), (2, 2, 4), (0,)], ids=lambda s: "x".join(map(str, s))
)
def test_mnar_matrix_of_the_wrong_shape_is_refused(shape):
    with pytest.raises(ValueError, match=r"expected a rate matrix of shape \(num_classes, 4\)"):
        missing_not_at_random_by_class(np.zeros(5, dtype=int), MODALITIES, np.zeros(shape), 0)


@pytest.mark.parametrize("bad_label", [-1, 3, 10])
def test_mnar_labels_outside_the_matrix_are_refused(bad_label):
    labels = np.array([0, 1, 2, bad_label, 0])
    with pytest.raises(ValueError, match=r"expected labels in \[0, 2\]"):
        missing_not_at_random_by_class(labels, MODALITIES, MNAR_RATES, seed=0)


def test_polymnist_without_modalities_is_refused():
    with pytest.raises(ValueError, match="at least one modality"):
        polymnist_scheme(10, [], 0.5, seed=0)


# ----------------------------------------------------------------------------------------------
# apply_presence
# ----------------------------------------------------------------------------------------------


def test_apply_presence_zeroes_exactly_the_absent_cells_and_keeps_dtypes():
    rng = np.random.default_rng(0)
    data = {
        "image": rng.integers(1, 256, size=(50, 3, 4, 4), dtype=np.uint8),
        "vec": rng.uniform(1.0, 2.0, size=(50, 5)).astype(np.float32),
        "digit": rng.integers(1, 10, size=50, dtype=np.int64),
    }
    originals = {name: values.copy() for name, values in data.items()}
    masks = missing_completely_at_random(50, list(data), 0.5, seed=1)
    out = apply_presence(data, masks.present)
    assert set(out) == set(data)
    for name, values in out.items():
        flags = masks.present[name]
        assert 0 < flags.sum() < 50
        assert values.dtype == data[name].dtype
        assert values.shape == data[name].shape
        np.testing.assert_array_equal(values[flags], originals[name][flags])
        assert (values[~flags] == 0).all()
        # Inputs are all non-zero, so the zeros are exactly the absent cells.
        assert ((values == 0).reshape(50, -1).all(axis=1) == ~flags).all()
        # The input is left untouched.
        np.testing.assert_array_equal(data[name], originals[name])


# ----------------------------------------------------------------------------------------------
# The record
# ----------------------------------------------------------------------------------------------


def all_records(seed) -> dict[str, dict]:
    labels = np.random.default_rng(0).integers(0, 3, size=40)
    return {
        "mcar": missing_completely_at_random(40, MODALITIES, 0.3, seed=seed).record,
        "mcar_dict": missing_completely_at_random(
            40, MODALITIES, {"m0": np.float32(0.25)}, seed=seed
        ).record,
        "polymnist": polymnist_scheme(40, MODALITIES, 0.5, seed=seed).record,
        "mnar": missing_not_at_random_by_class(labels, MODALITIES, MNAR_RATES, seed=seed).record,
    }


@pytest.mark.parametrize("seed", [7, np.int64(7)], ids=["int-seed", "numpy-seed"])
def test_records_are_json_serializable(seed):
    for name, record in all_records(seed).items():
        restored = json.loads(json.dumps(record))
        assert restored == record, name
        assert restored["seed"] == 7, name
        assert "scheme" in restored, name


def test_records_stored_in_file_metadata_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    schema_modalities = tuple(
        ModalitySpec(m, (2,), "float32", "tabular", (-1.0, 1.0)) for m in MODALITIES
    )
    splits = {}
    records = {}
    for split, rows, seed in (("train", 60, 1), ("val", 20, 2)):
        labels = rng.integers(0, 3, size=rows)
        if split == "train":
            masks = missing_not_at_random_by_class(labels, MODALITIES, MNAR_RATES, seed=seed)
        else:
            masks = missing_completely_at_random(rows, MODALITIES, {"m1": 0.5}, seed=seed)
        data = {m: rng.uniform(-1, 1, size=(rows, 2)).astype(np.float32) for m in MODALITIES}
        splits[split] = SplitArrays(apply_presence(data, masks.present), masks.present, labels)
        records[split] = masks.record
    schema = DatasetSchema(modalities=schema_modalities, num_classes=3, missingness=records)
    write_dataset(tmp_path, schema, splits, row_group_bytes=10 * 32, file_bytes=30 * 32)

    assert read_schema(tmp_path).missingness == json.loads(json.dumps(records))
    assert read_schema(tmp_path, "val").missingness["val"] == records["val"]
    for split, arrays in splits.items():
        dataset = MultimodalDataset(tmp_path, split)
        assert dataset.schema.missingness["train"] == records["train"]
        assert dataset.schema.missingness["train"]["rates"] == MNAR_RATES.tolist()
        batch = dataset.read_all()
        for name in MODALITIES:
            np.testing.assert_array_equal(batch.mask[name].numpy(), arrays.present[name])
