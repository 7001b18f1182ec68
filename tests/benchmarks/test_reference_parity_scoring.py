"""The scoring function of benchmarks/reference_parity.py (no reference venv needed)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "reference_parity.py"


@pytest.fixture(scope="module")
def parity():
    spec = importlib.util.spec_from_file_location("reference_parity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # Its dataclasses look their module up in sys.modules while the class is built.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_balanced_accuracy_weighs_classes_equally(parity):
    labels = np.array([0, 0, 0, 0, 1, 1])
    predicted = np.array([0, 0, 0, 0, 0, 1])
    # Class 0: 4/4, class 1: 1/2; plain accuracy would be 5/6.
    assert parity.balanced_accuracy(predicted, labels) == pytest.approx(0.75)


def test_score_generations_averages_pairs_by_subset_size(parity):
    labels = np.array([0, 1, 2, 0])
    # A "classifier" that reads the class from the first value of each generated row.
    classify = lambda modality, x: np.asarray(x)[:, 0].astype(int)  # noqa: E731
    right = labels[:, None].astype(float)
    wrong = ((labels + 1) % 3)[:, None].astype(float)
    generations = {
        (("a",), "b"): right,
        (("a",), "c"): wrong,
        (("b",), "a"): right,
        (("a", "b"), "c"): right,
    }
    samples = {"a": np.array([[0.0], [1.0]]), "b": np.array([[0.0], [2.0]])}
    scores = parity.score_generations(classify, generations, labels, samples)
    assert scores["pairs"] == {"a->b": 1.0, "a->c": 0.0, "b->a": 1.0, "a+b->c": 1.0}
    assert scores["per_size"] == {"1": pytest.approx(2 / 3), "2": 1.0}
    assert scores["joint"] == 0.5


def test_score_generations_refuses_misaligned_rows(parity):
    with pytest.raises(ValueError, match="2 generations for 3 labels"):
        parity.score_generations(
            lambda m, x: x[:, 0], {(("a",), "b"): np.zeros((2, 1))}, np.array([0, 1, 2])
        )


def test_conditioning_subsets_of_three_modalities(parity):
    assert parity.conditioning_subsets(["a", "b", "c"]) == [
        ("a",),
        ("b",),
        ("c",),
        ("a", "b"),
        ("a", "c"),
        ("b", "c"),
    ]


def _runs(pairs):
    return [
        {"ours": {"per_size": {"1": ours}}, "reference": {"per_size": {"1": ref}}}
        for ours, ref in pairs
    ]


def test_paired_differences_give_a_t_interval_and_a_verdict(parity):
    # Differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1, t(0.975, 2) = 4.302653.
    found = parity.paired_difference(_runs([(0.6, 0.5), (0.7, 0.5), (0.8, 0.5)]), "1")
    assert found["mean"] == pytest.approx(0.2)
    assert found["ci95"] == pytest.approx(4.302653 * 0.1 / 3**0.5, rel=1e-6)
    assert (found["seeds"], found["verdict"]) == (3, "above")
    # Mean -0.05 with an interval that reaches 0: seed noise, a tie.
    tie = parity.paired_difference(_runs([(0.5, 0.6), (0.6, 0.6), (0.55, 0.6)]), "1")
    assert tie["mean"] == pytest.approx(-0.05) and tie["verdict"] == "tie"
    # Every seed lower by about 0.1: below.
    below = parity.paired_difference(_runs([(0.4, 0.5), (0.41, 0.5), (0.39, 0.5)]), "1")
    assert below["verdict"] == "below"
    # Unpaired or single seeds give no interval; a side without the size is left out.
    assert parity.paired_difference(_runs([(0.4, 0.5)]), "1") is None
    assert parity.paired_difference([*_runs([(0.4, 0.5)]), {"ours": {"error": "x"}}], "1") is None


class _Conditional:
    """A model that, like a CVAE with main modality c, generates c from a and b only."""

    def conditionable(self, subset, target=None):
        return {"a", "b"} <= set(subset) and target == "c"


class _Everything:
    def conditionable(self, subset, target=None):
        return target not in subset


def test_generation_pairs_follow_the_models_conditionable(parity):
    assert parity.generation_pairs(_Conditional(), ["a", "b", "c"]) == [(("a", "b"), "c")]
    every = parity.generation_pairs(_Everything(), ["a", "b", "c"])
    assert len(every) == 9  # 3 subsets of 1 with 2 targets each, 3 of 2 with 1 each
    assert (("a",), "b") in every and (("b", "c"), "a") in every


def _data(parity, shapes):
    from pathlib import Path

    return parity.PreparedData(
        dataset="x",
        setting="complete",
        folder=Path("."),
        export=Path("."),
        modalities=tuple(shapes),
        likelihoods=dict.fromkeys(shapes, "normal"),
        shapes=shapes,
        n_train=1,
    )


def test_our_cvae_generates_the_last_modality_from_the_others(parity):
    data = _data(parity, {"m0": (4,), "m1": (4,), "m2": (4,)})
    assert parity.our_pairs(data, "cvae") == [(("m0", "m1"), "m2")]
    assert len(parity.our_pairs(data, "telbo")) == 9


def test_the_reference_scores_only_the_pairs_its_predict_accepts(parity):
    modalities = ["a", "b", "c"]
    every = parity.generation_pairs(_Everything(), modalities)
    # MultiVae's TELBO encodes from one modality or all: no subset of two of three.
    telbo = parity.reference_pairs("telbo", every, modalities)
    assert telbo == [p for p in every if len(p[0]) == 1] and len(telbo) == 6
    # Its CVAE from exactly its conditioning modalities (all but the last here).
    assert parity.reference_pairs("cvae", every, modalities) == [(("a", "b"), "c")]
    assert parity.reference_pairs("jnf", every, modalities) == every
    assert parity.grouped(telbo)[0] == (("a",), ["b", "c"])


def test_two_stage_models_split_the_epochs_alike_on_both_sides(parity):
    assert parity.stage_epochs("telbo", 10) == {"joint": 5, "unimodal": 5}
    assert parity.stage_epochs("jnf", 7) == {"joint": 3, "flows": 4}
    assert parity.stage_epochs("jnf", 1) == {"joint": 1, "flows": 1}
    assert parity.stage_epochs("mvae", 10) is None
    assert parity.total_epochs("jnf", 1) == 2 and parity.total_epochs("mvae", 3) == 3
    _, reference, note = parity.aligned_settings("telbo", "complete", 10)
    assert reference == {"warmup": 5} and "joint 5 + unimodal 5 epochs" in note
    _, reference, _ = parity.aligned_settings("jnf", "complete", 7)
    assert reference == {"warmup": 3}


def test_the_table_prints_rows_without_joint_metrics(parity):
    side = {"per_size": {"2": 0.5}, "joint": None, "joint_nll": None, "samples_per_s": 10.0}
    runs = [
        {
            "dataset": "gaussian-views",
            "setting": "complete",
            "model": "cvae",
            "seed": seed,
            "note": "n",
            "ours": {**side, "per_size": {"2": 0.5 + seed / 10}},
            "reference": side,
        }
        for seed in (0, 1)
    ]
    (row,) = parity.summarize(runs)
    line = parity.markdown([row]).splitlines()[-1]
    cells = [c.strip() for c in line.strip("|").split("|")]
    # ref coh. 1, ref coh. 2, ours coh. 1, ours coh. 2, joint coh. both, joint NLL both.
    assert cells[3:11] == [
        "n/a",
        "0.500 ± 0.000",
        "n/a",
        "0.550 ± 0.071",
        "n/a",
        "n/a",
        "n/a",
        "n/a",
    ]
    assert row["difference_1"] is None and row["difference_2"]["verdict"] == "above"
