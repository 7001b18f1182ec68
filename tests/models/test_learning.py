"""Every model learns: cross-modal generation on poly-digits with missing modalities.

Each model trains through the real run path (``run_training``: Parquet files, the training loop,
the saved model folder) on ``poly-digits`` with three modalities (five for MMVAE+) and half of
those other than m0 missing, then generates the image of modality m1 from m0 alone for the
(complete) test split. A small classifier, trained here on other real m1 images, judges the
class of each generated image; cross-modal coherence is the fraction that matches the input's
class. Chance is 10%.
"""

import pytest
import torch
from torch import nn

import multivae
from multivae.data import MultimodalDataset
from multivae.data.datasets import prepare_builtin
from multivae.run import run_training
from multivae.run_config import MLflowConfig, RunConfig
from multivae.training import TrainingConfig
from multivae.training.config import OptimizerConfig

COHERENCE_FLOOR = 0.25
"""2.5 times chance. Measured on 2 CPU cores with these settings (torch 2.14), m0 -> m1: JMVAE
0.34, MVAE 0.48, MMVAE 0.47, MoPoE 0.55, MVTCAE 0.48 (with beta 1; at beta 2.5 it was still at
0.12 after 10 epochs), DMVAE 0.46 on three modalities, MMVAE+ 0.45 on five. The models leave the
mean-image plateau (coherence exactly 0.1) after 5-6 epochs of 63 steps; the learning rate of
3e-3 and batches of 32 make that happen within the time a test can take."""
MODEL_OPTIONS = {
    "jmvae": {"warmup": 2.0, "alpha": 1.0},
    "mvae": {"warmup": 2.0},
    "mmvae": {"samples_per_expert": 1},
    "mopoe": {},
    "mvtcae": {"beta": 1.0},
    "mmvaeplus": {"samples_per_expert": 1, "private_dim": 4},
    "dmvae": {"private_dim": 2},
}
EPOCHS = {
    "jmvae": 10,
    "mvae": 12,
    "mmvae": 12,
    "mopoe": 10,
    "mvtcae": 12,
    "mmvaeplus": 12,
    "dmvae": 10,
}
MODALITIES = {"mmvaeplus": 5}
"""Modalities of the dataset a model learns on: 3 unless named here. On three, MMVAE+'s private
latents can carry the digit for a modality's own reconstruction while only two cross terms push
it into the shared latent: with Laplace latents it stayed on the plateau for 12-18 epochs (seeds
0 and 1), and Gaussian latents left it for some seeds only. On five (four cross terms) it learns.
The decoders' cost grows with the square of the modalities for the mixture models."""


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Poly-digits with half of m1, m2, ... missing, built once per number of modalities."""
    built = {}

    def dataset(num_modalities):
        if num_modalities not in built:
            built[num_modalities] = prepare_builtin(
                "poly-digits",
                tmp_path_factory.mktemp("learning") / f"poly-digits-{num_modalities}",
                missing_rate=0.5,
                seed=0,
                num_modalities=num_modalities,
                n_train=2000,
                n_val=200,
                n_test=500,
            )
        return built[num_modalities]

    return dataset


@pytest.fixture(scope="module")
def m1_classifier(tmp_path_factory):
    # The judge learns from 2,000 complete m1 images of the same generator (the same seed gives
    # the same digit pools and backgrounds), not from the half of them the models see.
    judge_data = prepare_builtin(
        "poly-digits",
        tmp_path_factory.mktemp("judge") / "poly-digits",
        seed=0,
        num_modalities=2,
        n_train=2000,
        n_val=500,
        n_test=10,
    )
    torch.manual_seed(0)
    train = MultimodalDataset(judge_data, "train").read_all()
    images, labels = train.data["m1"], train.label
    classifier = nn.Sequential(
        nn.Conv2d(3, 16, 4, 2, 1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, 2, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    )
    optimizer = torch.optim.Adam(classifier.parameters(), lr=2e-3)
    for _ in range(15):
        order = torch.randperm(len(images))
        for start in range(0, len(images), 64):
            rows = order[start : start + 64]
            loss = nn.functional.cross_entropy(classifier(images[rows]), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    classifier.eval()
    held_out = MultimodalDataset(judge_data, "val").read_all()
    with torch.no_grad():
        predicted = classifier(held_out.data["m1"]).argmax(-1)
    accuracy = (predicted == held_out.label).float().mean().item()
    # The judge must be trustworthy before it judges anything (on digits it never saw).
    assert accuracy > 0.85, accuracy
    return classifier


@pytest.mark.parametrize("name", sorted(MODEL_OPTIONS))
def test_model_generates_the_right_class_for_a_missing_modality(
    name, datasets, m1_classifier, tmp_path
):
    poly_digits = datasets(MODALITIES.get(name, 3))
    config = RunConfig(
        model=name,
        data=str(poly_digits),
        model_config={"latent_dim": 16, **MODEL_OPTIONS[name]},
        training=TrainingConfig(
            epochs=EPOCHS[name],
            batch_size=32,
            optimizer=OptimizerConfig("Adam", {"lr": 3e-3}),
            progress_bar=False,
        ),
        output_dir=str(tmp_path / name),
        mlflow=MLflowConfig(enabled=False),
    )
    result = run_training(config)
    losses = [record["train_loss"] for record in result.history]
    assert losses[-1] < losses[0]
    model = multivae.load_model(result.model_dir)
    test = MultimodalDataset(poly_digits, "test").read_all()
    torch.manual_seed(0)
    generated = model.predict(test, cond=["m0"], gen=["m1"])["m1"]
    with torch.no_grad():
        predicted = m1_classifier(generated).argmax(-1)
    coherence = (predicted == test.label).float().mean().item()
    assert coherence > COHERENCE_FLOOR, f"{name}: coherence m0 -> m1 {coherence:.3f}"
