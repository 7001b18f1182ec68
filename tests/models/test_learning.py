"""Every registered model learns: cross-modal generation on poly-digits with missing modalities.

Each model trains through the real run path (``run_training``: Parquet files, the training loop,
the saved model folder) in the setting :mod:`kit.learning` gives it, then generates modality m1
from m0 alone for the (complete) test split. The run's judge (:mod:`kit.judges`), trained on
other m1 images and scored on held-out digits, classifies each generated image; cross-modal
coherence is the fraction that matches the input's class. Chance is 10%.

The test also holds each model to its time budget, scaled to this machine's speed
(:mod:`kit.speed`), so that a model whose training slows down fails here instead of pushing the
suite past CI's limit.
"""

import time

import pytest
import torch
from kit.learning import (
    BUDGET_MARGIN,
    COHERENCE_FLOOR,
    LEARNING,
    learning_run,
)
from kit.speed import REFERENCE_SECONDS, speed_factor

import multivae
from multivae.data import MultimodalDataset
from multivae.run import run_training


@pytest.mark.parametrize("name", multivae.list_models())
def test_model_generates_the_right_class_for_a_missing_modality(
    name, learning_data, m1_judge, tmp_path
):
    assert name in LEARNING, f"{name}: give it a learning setting in tests/kit/learning.py"
    setting = LEARNING[name]
    poly_digits = learning_data(setting.num_modalities)
    config = learning_run(
        name,
        poly_digits,
        tmp_path / name,
        num_modalities=setting.num_modalities,
        epochs=setting.epochs,
    )
    start = time.process_time()
    result = run_training(config)
    seconds = time.process_time() - start
    losses = [record["train_loss"] for record in result.history]
    assert losses[-1] < losses[0]
    model = multivae.load_model(result.model_dir)
    test = MultimodalDataset(poly_digits, "test").read_all()
    torch.manual_seed(0)
    generated = model.predict(test, cond=["m0"], gen=["m1"])["m1"]
    coherence = (m1_judge.predict("m1", generated) == test.label).float().mean().item()
    allowed = setting.budget_seconds * speed_factor() * BUDGET_MARGIN
    # Shown by ``pytest -rA``: the figures benchmarks/RESULTS.md records.
    print(f"{name}: coherence {coherence:.3f}, {seconds:.1f} CPU s, allowed {allowed:.1f}")
    print(
        f"speed factor {speed_factor():.3f} (workload {speed_factor() * REFERENCE_SECONDS:.3f} s)"
    )
    assert coherence > COHERENCE_FLOOR, f"{name}: coherence m0 -> m1 {coherence:.3f}"
    assert seconds <= allowed, (
        f"{name}: training took {seconds:.1f} CPU s, over {BUDGET_MARGIN}x its budget of "
        f"{setting.budget_seconds} s scaled by this machine's speed factor "
        f"{speed_factor():.2f} ({allowed:.1f} s); see tests/kit/learning.py"
    )


def test_the_learning_budgets_keep_the_zoo_within_the_suites_share():
    """The budgets of the models written so far, extrapolated to the whole zoo, fit the share."""
    from kit.learning import SUITE_BUDGET_SECONDS

    mean = sum(s.budget_seconds for s in LEARNING.values()) / len(LEARNING)
    assert mean * 23 <= SUITE_BUDGET_SECONDS
