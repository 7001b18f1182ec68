"""Parity with the reference library MultiVae 1.0.3: same data, same networks, same judges.

For each built-in dataset, setting (complete, or 50% missing as the built-in ``missing_rate``
draws it), model and seed, the same model is trained twice, once with this project and once with
MultiVae 1.0.3, and both are scored by the same classifiers. The models (``MODELS``): JMVAE, MVAE,
MMVAE, MoPoE, MVTCAE, MMVAE+, DMVAE, CRMVAE, CMVAE, TELBO, JNF and CVAE.

* **Data.** ``poly-digits`` with 3 modalities (3x28x28 images, Laplace likelihood with scale 1 as
  its schema suggests) and ``gaussian-views`` with 3 views (8-d vectors, normal likelihood with
  scale 1), generated with ``multivae.data.datasets.prepare_builtin`` (missing rate 0 and 0.5,
  seed 0). Our side reads the Parquet folders (``make_dataloader``, shuffled with the seed); the
  reference gets the same train arrays, presence masks (an ``IncompleteDataset``) and labels,
  exported to ``.npz``, and shuffles with its own ``DataLoader``. The test split is complete in
  both settings, identical, and in the same order on both sides.
* **Networks.** Ours: ``ModalityConfig(encoder=mlp(hidden=[512, 512]), decoder=mlp(hidden=
  [512]))``, latent 16. Reference: modules written in ``reference_parity_worker.py`` with the same
  layers (Linear-ReLU blocks, linear outputs: MultiVae's own default MLP decoder ends in a sigmoid,
  which cannot fit ``gaussian-views``, so it is not used). Both MLPs flatten the images
  themselves. The joint encoders of JMVAE, TELBO and JNF on the reference side are the
  project's, not MultiVae's default: one 512-512-128 feature MLP per modality, concatenated,
  ReLU, an MLP head with our config's default hidden sizes (JMVAE and TELBO [512], JNF [512,
  512]); TELBO's and JNF's (our masked joint encoder) also read one presence bit per modality,
  all 1 on the complete data the reference gets. CVAE on both sides is the project's: one
  feature network per modality (its encoder MLP, 2 x 16 outputs) shared by the posterior head
  (over all three modalities and their presence bits, hidden [512, 512]) and the main modality's
  decoder (the ``mlp`` decoder on the latent, the conditioning features and their presence
  bits); MultiVae's default CVAE networks (copied encoders, a decoder on the raw conditioning
  data) are not used. JNF's flows are each library's default, the same on both: a masked
  autoregressive flow of 2 MADE blocks of 3 hidden layers of 128, no batch norm.
* **Training.** Adam, lr 1e-3 (ours with the fused kernel ``OptimizerConfig`` picks on CPU,
  the same update; the reference with PyTorch's default for-loop), batch 64, ``--epochs``
  epochs (10), no validation set, the weights of the last epoch kept on both sides (ours
  ``keep="last"``; the reference's ``start_keep_best_epoch`` is set past the last epoch). Our
  ``Trainer`` runs with the progress bar off and ``checkpoint_every=0``; MultiVae's
  ``BaseTrainer`` with its console output silenced. Two-stage models (TELBO, JNF): stage 1
  (the joint VAE) gets half of ``--epochs`` (rounded down), stage 2 (TELBO's unimodal
  encoders, JNF's flows) the rest, at least 1 each (:func:`stage_epochs`): ours through
  ``TrainingConfig.stage_epochs``, each stage with a fresh optimizer; the reference's
  ``warmup`` set to stage 1's length, trained by its ``MultistageTrainer``, which resets the
  optimizer at the switch (TELBO: one epoch early, before its last joint epoch, a quirk of
  MultiVae's TELBO left as it is) and restarts from its kept model, here the last epoch's.
* **Model settings.** Each library's defaults, except (the table's notes repeat them):
  MMVAE: both K=10 samples per expert, DReG, Laplace posteriors and prior, and the prior's scale
  learned on both sides (MultiVae's default ``learn_prior=True``; ours is
  ``learn_prior_scale=False``, set to true). MoPoE with 50% missing: ours draws each sample's
  mixture component at random among its available subsets (``mixture_sampling="random"``), as
  MultiVae does for incomplete data. MMVAE+ and DMVAE: 16-d private latents on both sides.
  TELBO: likelihood weights 1 on both sides (MultiVae's default rescaling gives 1 to modalities
  of equal size); MultiVae's unimodal stage computes its KL with the joint encoder's
  log-variance in place of the unimodal one, which cannot be set otherwise (ours: the unimodal
  KL): its unimodal posterior variances collapse (about 1e-4 on ``gaussian-views`` after 10
  epochs, against 0.9 for ours), so its generations from one modality decode near-means, which
  raises its coherence from 1 (ours decoding the posterior means instead of draws scores about
  as high: 0.64 against 0.52 for seed 0, the reference 0.64). JNF: HMC with each library's
  default settings, the same (100 steps of 10 leapfrog steps of 0.01), on the same target for
  subsets of 2 modalities (ours divides the product of experts by the prior ``|S|-1`` times,
  MultiVae once); the chains start from a draw of one expert's flow posterior (ours) or of its
  Gaussian base (MultiVae). CVAE: the main modality is the last
  one, conditioned on the others, and the prior ``N(0, I)`` (both defaults, no prior network).
  With missing data, JMVAE, TELBO, JNF (MultiVae refuses incomplete data) and CVAE (MultiVae's
  ignores the presence masks and reads absent cells as data) have no reference
  (``REFERENCE_COMPLETE_ONLY``).
* **Judges.** One classifier per modality, trained once per dataset by
  ``multivae.metrics.classifiers.train_classifiers`` on the complete dataset's train split, scores
  every generation of both sides: for every conditioning subset of 1 and 2 modalities, each
  modality outside it is generated on the test split (ours ``model.predict``, the reference's
  ``model.predict``), classified, and scored by balanced accuracy (mean per-class recall); the
  coherence from k modalities is the mean over the (subset, target) pairs of size k. The pairs
  are those our model generates (its ``conditionable``, :func:`generation_pairs`: every pair
  but for CVAE, whose one pair is the two conditioning modalities -> the main one, so it has a
  coherence from 2 only); the reference scores those among them its ``predict`` accepts
  (:func:`reference_pairs`: MultiVae's TELBO encodes from one modality or all, so its
  coherence from 2 is n/a). Joint coherence: 1,000 unconditional samples, the fraction on which
  all classifiers agree; n/a for CVAE on both sides (no unconditional generation).
* **Likelihood.** Joint NLL on the first ``--nll-samples`` (200) test samples with K=1000
  importance samples: ours ``model.nll(batch, k=1000)``, the reference's
  ``compute_joint_nll(..., K=1000)`` divided by the number of samples. n/a for CVAE on both
  sides: MultiVae's has no likelihood, ours only the conditional ``-log p(main | others)``.
* **Generation time.** Seconds spent generating the scored pairs (``generation_seconds`` in
  the JSON; JNF's subsets of 2 modalities run HMC on both sides).
* **Speed.** Training samples/s: samples seen over the time spent in the training epochs only
  (ours: the ``Trainer``'s per-epoch ``samples_per_s``; reference: the trainer's ``train_step``
  calls), and the ratio ours / reference (above 1: ours is faster); also over the epochs after
  the first, the *steady* rate, which leaves out one-time costs (``--our-compile`` compiles the
  training step in the first epoch; tens of seconds on CPU, repaid on long runs only).

The reference lives in its own venv, ``benchmarks/.reference-venv`` (created on first use with
``pip install multivae==1.0.3``: it also imports as ``multivae``, so it never goes into the
project's environment), and runs as a subprocess ``python -I reference_parity_worker.py`` from a
temporary folder. Jobs alternate between the two sides (reference, ours, reference, ...) so that
load from other processes hits both alike.

Results: the Markdown table on stdout and in ``benchmarks/results/reference_parity.md``, every
figure per run in ``benchmarks/results/reference_parity.json``; datasets, exports and classifiers
are cached in ``benchmarks/.parity-work/``.

Usage::

    python benchmarks/reference_parity.py --smoke
    python benchmarks/reference_parity.py      # the recorded table (2+ hours on 2 cores)
    python benchmarks/reference_parity.py --models jmvae mvae mmvae mopoe --seeds 0 1 2
    python benchmarks/reference_parity.py --datasets gaussian-views --settings complete --epochs 3
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
PROJECT_ROOT = HERE.parent
REFERENCE_VERSION = "1.0.3"
DEFAULT_VENV = HERE / ".reference-venv"
DEFAULT_WORK = HERE / ".parity-work"
DEFAULT_RESULTS = HERE / "results"
WORKER = HERE / "reference_parity_worker.py"

MODELS = (
    "jmvae",
    "mvae",
    "mmvae",
    "mopoe",
    "mvtcae",
    "mmvaeplus",
    "dmvae",
    "crmvae",
    "cmvae",
    "telbo",
    "jnf",
    "cvae",
)
DATASETS = ("poly-digits", "gaussian-views")
SETTINGS = {"complete": 0.0, "missing50": 0.5}
SETTING_LABELS = {"complete": "complete", "missing50": "50% missing"}
DATASET_PARAMETERS = {
    "poly-digits": {"num_modalities": 3},
    "gaussian-views": {"num_views": 3},
}
DEFAULT_N_TRAIN = {"poly-digits": 10000, "gaussian-views": 2000}
"""Training samples per dataset: 10 epochs of gaussian-views at 2,000 take seconds per model,
which affords 10 seeds; poly-digits (3 x 2,352 inputs) needs more data to leave the mean-image
plateau within 10 epochs."""
DEFAULT_SEEDS = {"gaussian-views": list(range(10)), "poly-digits": [0]}
"""Seeds per dataset: the models' seed-to-seed spread on gaussian-views (up to 0.08 in
coherence for MMVAE) needs 10 for a mean that says something; a poly-digits side-run takes
2-5 minutes on a core."""
DEFAULT_MODELS = {
    "gaussian-views": list(MODELS),
    "poly-digits": [m for m in MODELS if m not in ("mmvae", "mmvaeplus", "cmvae", "jnf")],
}
"""Models per dataset: on poly-digits MMVAE and MMVAE+ decode K = 10 samples per expert into
3 x 2,352 outputs each, about 10 times the decoder work of MVAE's 2-5 minute side-runs (not
measured), so the default run leaves them out (``--datasets poly-digits --models mmvae
mmvaeplus`` runs them). JNF trains as cheaply as JMVAE, but its generations from 2 modalities
run HMC (1,000 leapfrog steps per draw): MultiVae's reruns both image encoders at each step,
120 s for the 256 test samples of ``--smoke`` against 18 s for ours, so about 15-20 minutes
for the 2,000 of a poly-digits run; it is left out too (``--models jnf`` runs it). TELBO and
CVAE cost about what JMVAE does."""
ENCODER_HIDDEN = [512, 512]
DECODER_HIDDEN = [512]
LATENT_DIM = 16
PRIVATE_DIM = 16
JOINT_ENCODER = {"feature_dim": 128, "hidden": [512]}
"""The project's JMVAE joint encoder defaults, rebuilt on the reference side."""
JOINT_ENCODER_MODELS = ("jmvae", "telbo", "jnf", "cvae")
"""Models whose reference side gets the project's joint encoder (:func:`joint_encoder`)."""
STAGES = {"telbo": ("joint", "unimodal"), "jnf": ("joint", "flows")}
"""Two-stage models and our stage names; MultiVae's train stage 1 for ``warmup`` epochs."""
CONDITIONAL_MODELS = ("cvae",)
"""Models that generate only given conditioning data: no unconditional samples and no joint
likelihood on either side (MultiVae's CVAE has neither; ours has the conditional NLL only)."""
REFERENCE_COMPLETE_ONLY = {
    "jmvae": "MultiVae's JMVAE refuses incomplete data",
    "telbo": "MultiVae's TELBO refuses incomplete data",
    "jnf": "MultiVae's JNF refuses incomplete data",
    "cvae": "MultiVae's CVAE ignores the presence masks (reads absent cells as data)",
}
"""Models whose reference side runs on complete data only, and why (the missing-data rows are
ours alone)."""

PRIVATE_LATENT_MODELS = ("mmvaeplus", "dmvae", "cmvae")
PRIVATE_DIM_FIELDS = ("private_dim", "modality_dim", "style_dim", "modalities_specific_dim")
"""Names our config may give the private latent size (the first one the config has is set)."""


# ------------------------------------------------------------------------------------------------
# Aligned settings per model: (ours, reference, note)


def aligned_settings(
    model: str, setting: str, epochs: int | None = None
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Config overrides for our model and the reference's, and the note for the table.

    ``epochs``: the run's ``--epochs``, which two-stage models split (:func:`stage_epochs`);
    without it the note gives the rule and the reference's ``warmup`` is left out.
    """
    if model in STAGES:
        first, second = STAGES[model]
        if epochs is None:
            split, reference = f"{first} half the epochs, {second} the rest", {}
        else:
            lengths = stage_epochs(model, epochs)
            assert lengths is not None
            split = f"{first} {lengths[first]} + {second} {lengths[second]} epochs"
            reference = {"warmup": lengths[first]}
        joint = joint_encoder(model)
        head = f"joint encoder ours ({joint['feature_dim']}-d features, head {joint['hidden']})"
        if model == "telbo":
            return (
                {},
                reference,
                f"stages {split} both (reference: warmup, its optimizer reset before its last "
                f"joint epoch); {head} both; reference's unimodal KL uses the joint "
                "log-variance; reference infers from 1 or all modalities (no coh. 2)",
            )
        return (
            {},
            reference,
            f"stages {split} both (reference: warmup); {head} both; flows MAF 2 blocks of "
            "3x128 both (defaults); HMC 100 steps of 10 leapfrog steps of 0.01 both (defaults; "
            "the same target for 2 modalities; chains start: ours a flow draw, reference a "
            "base Gaussian draw)",
        )
    if model == "cvae":
        joint = joint_encoder(model)
        return (
            {},
            {},
            "main = last modality given the others both (coh. 2 is that one pair); prior "
            f"N(0, I) both (defaults); reference networks as ours (shared feature MLPs, head "
            f"{joint['hidden']}, decoder on z and the features of C); joint coh. and NLL "
            "n/a (conditional)",
        )
    if model == "mmvae":
        return (
            {"samples_per_expert": 10, "learn_prior_scale": True},
            {"K": 10, "learn_prior": True},
            "K=10 both; prior scale learned both (ours set)",
        )
    if model == "mopoe" and setting != "complete":
        return (
            {"mixture_sampling": "random"},
            {},
            "ours mixture_sampling=random (reference's rule on masks)",
        )
    if model in PRIVATE_LATENT_MODELS:
        # The reference's size: one int (MMVAE+) or one per modality (DMVAE), filled in by
        # run_reference; ours by our_config.
        return {}, {}, f"private latents {PRIVATE_DIM}-d both"
    return {}, {}, "defaults both"


def stage_epochs(model: str, epochs: int) -> dict[str, int] | None:
    """Our stage name -> epochs for a two-stage model, ``None`` for the others.

    Stage 1 gets half of ``epochs`` (rounded down), stage 2 the rest, each at least 1 (so a
    1-epoch ``--smoke`` run trains 2). Both sides get the same split: MultiVae's ``warmup`` is
    stage 1's length.
    """
    if model not in STAGES:
        return None
    first = max(1, epochs // 2)
    second = max(1, epochs - first)
    return dict(zip(STAGES[model], (first, second), strict=True))


def total_epochs(model: str, epochs: int) -> int:
    """Epochs a run of ``model`` trains, over all its stages."""
    lengths = stage_epochs(model, epochs)
    return epochs if lengths is None else sum(lengths.values())


def joint_encoder(model: str) -> dict[str, Any]:
    """Our model's joint encoder, as the worker rebuilds it on the reference side.

    ``feature_dim``: each modality's feature size (CVAE: its encoder's ``2 latent_dim``
    outputs); ``hidden``: the head's hidden sizes, our config's defaults; ``presence_bits``:
    whether the head also reads one presence bit per modality (the project's masked joint
    encoder: TELBO, JNF, CVAE; constant 1 on complete data).
    """
    from multivae import get_model_class

    defaults = {f.name: f.default for f in dataclasses.fields(get_model_class(model).config_class)}
    if model == "cvae":
        return {
            "feature_dim": 2 * LATENT_DIM,
            "hidden": list(defaults["joint_hidden"]),
            "presence_bits": True,
        }
    return {
        "feature_dim": int(defaults["joint_feature_dim"]),
        "hidden": list(defaults["joint_hidden"]),
        "presence_bits": model != "jmvae",
    }


REFERENCE_CLASS = {
    "jmvae": "JMVAE",
    "mvae": "MVAE",
    "mmvae": "MMVAE",
    "mopoe": "MoPoE",
    "mvtcae": "MVTCAE",
    "mmvaeplus": "MMVAEPlus",
    "dmvae": "DMVAE",
    "crmvae": "CRMVAE",
    "cmvae": "CMVAE",
    "telbo": "TELBO",
    "jnf": "JNF",
    "cvae": "CVAE",
}


# ------------------------------------------------------------------------------------------------
# The reference environment


def reference_python(venv: Path) -> Path:
    """The interpreter of the reference venv."""
    return venv / "bin" / "python"


def ensure_reference_venv(venv: Path) -> Path:
    """Create the reference venv with MultiVae 1.0.3 if it is absent; check that it imports."""
    python = reference_python(venv)
    if not python.exists():
        print(f"creating {venv} with multivae=={REFERENCE_VERSION} (a few minutes)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", f"multivae=={REFERENCE_VERSION}"],
            check=True,
        )
    probe = (
        "import importlib.metadata as m, sys, multivae, torch; "
        "print(m.version('multivae'), multivae.__file__, torch.__version__, sys.prefix)"
    )
    with tempfile.TemporaryDirectory() as outside:
        found = subprocess.run(
            [str(python), "-I", "-c", probe],
            cwd=outside,
            capture_output=True,
            text=True,
            env=_clean_env(),
        )
    if found.returncode != 0:
        raise SystemExit(f"the reference venv {venv} does not import multivae:\n{found.stderr}")
    version, location, torch_version, prefix = found.stdout.split()
    if version != REFERENCE_VERSION or not Path(location).resolve().is_relative_to(
        Path(prefix).resolve()
    ):
        raise SystemExit(
            f"{venv}: expected multivae {REFERENCE_VERSION} inside the venv, found {version} at "
            f"{location}"
        )
    print(f"reference: multivae {version} (torch {torch_version}) at {location}", flush=True)
    return python


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TQDM_DISABLE"] = "1"
    return env


# ------------------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass
class PreparedData:
    """One dataset in one setting: its folder and its export for the reference."""

    dataset: str
    setting: str
    folder: Path
    export: Path
    modalities: tuple[str, ...]
    likelihoods: dict[str, str]
    shapes: dict[str, tuple[int, ...]]
    n_train: int


def prepare_data(work: Path, dataset: str, setting: str, sizes: Mapping[str, int]) -> PreparedData:
    """Generate (once) the built-in dataset and export its train and test arrays to ``.npz``."""
    from multivae.data import MultimodalDataset
    from multivae.data.datasets import prepare_builtin

    parameters = {**DATASET_PARAMETERS[dataset], **sizes}
    tag = "-".join(f"{k}{v}" for k, v in sorted(parameters.items()))
    folder = work / "data" / f"{dataset}-{setting}-{tag}"
    if not (folder / "test").exists():
        prepare_builtin(dataset, folder, missing_rate=SETTINGS[setting], seed=0, **parameters)
    export = folder.with_suffix(".npz")
    train = MultimodalDataset(folder, "train")
    schema = train.schema
    if not export.exists():
        batch = train.read_all()
        test = MultimodalDataset(folder, "test").read_all()
        assert batch.label is not None and test.label is not None
        arrays = {"train__label": batch.label.numpy(), "test__label": test.label.numpy()}
        for name in schema.modality_names:
            arrays[f"train__{name}"] = batch.data[name].numpy()
            arrays[f"train__mask__{name}"] = batch.mask[name].numpy()
            arrays[f"test__{name}"] = test.data[name].numpy()
        partial = export.with_suffix(".tmp.npz")
        np.savez(partial, **arrays)
        partial.replace(export)
    return PreparedData(
        dataset=dataset,
        setting=setting,
        folder=folder,
        export=export,
        modalities=tuple(schema.modality_names),
        likelihoods={spec.name: spec.likelihood for spec in schema.modalities},
        shapes={spec.name: tuple(spec.shape) for spec in schema.modalities},
        n_train=len(train),
    )


def judges(work: Path, complete: PreparedData, epochs: int) -> Any:
    """Per-modality classifiers trained once on the complete dataset's train split."""
    from multivae.metrics.classifiers import ClassifierSet, train_classifiers

    folder = work / "classifiers" / f"{complete.folder.name}-e{epochs}"
    if not (folder / "classifiers.json").exists():
        print(f"training the judges of {complete.dataset} ({epochs} epochs)", flush=True)
        train_classifiers(
            complete.folder, folder, epochs=epochs, seed=0, progress=False, device="cpu"
        )
    classifiers = ClassifierSet.load(folder)
    print(f"judges of {complete.dataset}: test accuracy {classifiers.accuracy}", flush=True)
    return classifiers


# ------------------------------------------------------------------------------------------------
# Scoring: one function for both sides


def balanced_accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present in ``labels`` of the fraction predicted right."""
    recalls = [float(np.mean(predicted[labels == c] == c)) for c in np.unique(labels)]
    return float(np.mean(recalls))


def score_generations(
    classify: Any,
    generations: Mapping[tuple[tuple[str, ...], str], np.ndarray],
    labels: np.ndarray,
    samples: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Coherences of one model's generations, judged by ``classify(modality, array) -> classes``.

    Args:
        classify: Maps a modality name and an array of generated samples ``(N, *shape)`` to
            predicted classes ``(N,)``.
        generations: ``(conditioning subset, target modality)`` -> generated target, one row per
            test sample, in the order of ``labels``.
        labels: The test labels.
        samples: Modality -> unconditional samples (same count for every modality), or ``None``.

    Returns:
        ``pairs`` (``"m0+m1->m2"`` -> balanced accuracy), ``per_size`` (subset size, as a
        string, -> mean over its pairs) and ``joint`` (fraction of unconditional samples on which
        all classifiers agree, or ``None``).
    """
    pairs: dict[str, float] = {}
    by_size: dict[int, list[float]] = {}
    for (subset, target), generated in generations.items():
        if len(generated) != len(labels):
            raise ValueError(
                f"{'+'.join(subset)}->{target}: {len(generated)} generations for "
                f"{len(labels)} labels"
            )
        value = balanced_accuracy(np.asarray(classify(target, generated)), labels)
        pairs[f"{'+'.join(subset)}->{target}"] = value
        by_size.setdefault(len(subset), []).append(value)
    joint = None
    if samples:
        predicted = np.stack([np.asarray(classify(m, x)) for m, x in samples.items()])
        joint = float(np.mean((predicted == predicted[0]).all(0)))
    return {
        "pairs": pairs,
        "per_size": {str(k): float(np.mean(v)) for k, v in sorted(by_size.items())},
        "joint": joint,
    }


def classifier_function(classifiers: Any) -> Any:
    """``classify(modality, array)`` through a :class:`ClassifierSet`."""
    import torch

    def classify(modality: str, array: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            predicted = classifiers.predict(modality, torch.as_tensor(np.asarray(array)))
        return predicted.cpu().numpy()

    return classify


def conditioning_subsets(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every subset of 1 and 2 modalities, in order."""
    return [s for k in (1, 2) for s in itertools.combinations(modalities, k) if k < len(modalities)]


Pair = tuple[tuple[str, ...], str]
"""A scored generation: (conditioning subset, target modality)."""


def generation_pairs(model: Any, modalities: Sequence[str]) -> list[Pair]:
    """The (subset, target) pairs our built ``model`` generates: its ``conditionable``.

    Every subset of :func:`conditioning_subsets` with every modality outside it, for most
    models; a CVAE only its conditioning modalities -> its main modality.
    """
    return [
        (subset, target)
        for subset in conditioning_subsets(modalities)
        for target in modalities
        if target not in subset and model.conditionable(subset, target)
    ]


def reference_pairs(model: str, pairs: Sequence[Pair], modalities: Sequence[str]) -> list[Pair]:
    """The pairs among ours that the reference's ``predict`` accepts.

    MultiVae's TELBO encodes from one modality or all of them (it raises for other subsets);
    its CVAE from its conditioning modalities exactly (here every modality but the last).
    """
    if model == "telbo":
        return [(s, t) for s, t in pairs if len(s) in (1, len(modalities))]
    if model == "cvae":
        return [(s, t) for s, t in pairs if set(s) == set(modalities[:-1])]
    return list(pairs)


def grouped(pairs: Sequence[Pair]) -> list[tuple[tuple[str, ...], list[str]]]:
    """The pairs as (subset, targets), subsets in their first order."""
    targets: dict[tuple[str, ...], list[str]] = {}
    for subset, target in pairs:
        targets.setdefault(subset, []).append(target)
    return list(targets.items())


# ------------------------------------------------------------------------------------------------
# One run on each side


@dataclasses.dataclass
class RunSettings:
    """What every run shares."""

    epochs: int
    batch_size: int
    lr: float
    nll_samples: int
    nll_k: int
    unconditional: int
    device: str
    threads: int
    our_keep: str
    our_compile: bool = False
    """``--our-compile``: our side trains with ``TrainingConfig(compile=True)``."""
    our_cuda_graphs: bool = False
    """``--our-cuda-graphs``: with ``--our-compile`` on CUDA, ``cuda_graphs=True``."""
    our_precision: str = "fp32"
    """``--our-precision``: our side's ``TrainingConfig.precision`` (``bf16``: autocast)."""
    ours_set: dict[str, Any] = dataclasses.field(default_factory=dict)
    """``--ours-set`` overrides of our model config (experiments; named in the table's notes)."""
    our_cache_size: int | None = None
    """``--our-cache-size``: row groups our train reader caches (its shuffle window is half);
    ``None``: the reader's default."""


def run_reference(
    python: Path,
    data: PreparedData,
    model: str,
    seed: int,
    settings: RunSettings,
    classify: Any,
    labels: np.ndarray,
    pairs: Sequence[Pair] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one model with MultiVae 1.0.3 in its venv; score its generations.

    ``pairs``: the (subset, target) pairs our side generates (every one by default); the
    reference generates those its ``predict`` accepts (:func:`reference_pairs`).
    """
    _, reference_config, _ = aligned_settings(model, data.setting, settings.epochs)
    if model in ("mmvaeplus", "cmvae"):
        reference_config = {**reference_config, "modalities_specific_dim": PRIVATE_DIM}
    elif model == "dmvae":
        reference_config = {
            **reference_config,
            "modalities_specific_dim": dict.fromkeys(data.modalities, PRIVATE_DIM),
        }
    elif model == "cvae":
        reference_config = {
            **reference_config,
            "main_modality": data.modalities[-1],
            "conditioning_modalities": list(data.modalities[:-1]),
        }
    if pairs is None:
        pairs = [(s, m) for s in conditioning_subsets(data.modalities) for m in data.modalities]
        pairs = [(s, m) for s, m in pairs if m not in s]
    generations = grouped(reference_pairs(model, pairs, data.modalities))
    conditional = model in CONDITIONAL_MODELS
    with tempfile.TemporaryDirectory(prefix="multivae-parity-") as tmp:
        job = {
            "project_root": str(PROJECT_ROOT),
            "data": str(data.export),
            "out": str(Path(tmp) / "out"),
            "model": model,
            "seed": seed,
            "setting": data.setting,
            "modalities": list(data.modalities),
            "likelihoods": data.likelihoods,
            "scales": dict.fromkeys(data.modalities, 1.0),
            "latent_dim": LATENT_DIM,
            "private_dim": PRIVATE_DIM if model in PRIVATE_LATENT_MODELS else 0,
            "encoder_hidden": ENCODER_HIDDEN,
            "decoder_hidden": DECODER_HIDDEN,
            "joint_encoder": joint_encoder(model) if model in JOINT_ENCODER_MODELS else None,
            "config": reference_config,
            "epochs": total_epochs(model, settings.epochs),
            "batch_size": settings.batch_size,
            "lr": settings.lr,
            "subsets": [list(s) for s, _ in generations],
            "generations": [[list(s), targets] for s, targets in generations],
            "unconditional": 0 if conditional else settings.unconditional,
            "nll": {"n": settings.nll_samples, "k": settings.nll_k}
            if settings.nll_k and not conditional
            else None,
            "device": settings.device,
            "threads": settings.threads,
        }
        job_file = Path(tmp) / "job.json"
        job_file.write_text(json.dumps(job))
        began = time.perf_counter()
        done = subprocess.run(
            [str(python), "-I", str(WORKER), str(job_file)],
            cwd=tmp,
            env=_clean_env(),
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - began
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-12:]
            return {"error": "\n".join(tail), "wall_seconds": wall}
        report = json.loads(Path(job["out"] + ".json").read_text())
        with np.load(job["out"] + ".npz") as arrays:
            # A subset the reference failed on is missing (its error is in the report).
            generated = {
                (s, m): arrays[f"cond={'+'.join(s)}|gen={m}"]
                for s, targets in generations
                for m in targets
                if f"cond={'+'.join(s)}|gen={m}" in arrays.files
            }
            samples = {
                m: arrays[f"sample|gen={m}"]
                for m in data.modalities
                if f"sample|gen={m}" in arrays.files
            }
            scores = score_generations(classify, generated, labels, samples or None)
    return {
        **scores,
        "joint_nll": report.get("joint_nll"),
        "nll_seconds": report.get("nll_seconds"),
        "generation_seconds": report.get("generation_seconds"),
        "samples_per_s": report["samples_per_s"],
        "steady_samples_per_s": steady_rate(data.n_train, report.get("epoch_seconds")),
        "train_seconds": report["train_seconds"],
        "epoch_seconds": report.get("epoch_seconds"),
        "wall_seconds": wall,
        "errors": report.get("errors") or {},
    }


def our_config(
    data: PreparedData, model: str, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The plain-data config of our model: the same networks, likelihoods and latent size."""
    from multivae import get_model_class

    ours, _, _ = aligned_settings(model, data.setting)
    fields = {f.name for f in dataclasses.fields(get_model_class(model).config_class)}
    config: dict[str, Any] = {
        "latent_dim": LATENT_DIM,
        "modalities": {
            m: {
                "shape": list(data.shapes[m]),
                "likelihood": data.likelihoods[m],
                "scale": 1.0,
                "encoder": {"name": "mlp", "kwargs": {"hidden": ENCODER_HIDDEN}},
                "decoder": {"name": "mlp", "kwargs": {"hidden": DECODER_HIDDEN}},
            }
            for m in data.modalities
        },
    }
    if model in PRIVATE_LATENT_MODELS:
        name = next((f for f in PRIVATE_DIM_FIELDS if f in fields), None)
        if name is None:
            raise ValueError(f"{model}: no private latent size among {PRIVATE_DIM_FIELDS}")
        config[name] = PRIVATE_DIM
    if model == "cvae":
        config["main_modality"] = data.modalities[-1]
        config["conditioning_modalities"] = list(data.modalities[:-1])
    ours = {**ours, **(overrides or {})}
    unknown = sorted(set(ours) - fields)
    if unknown:
        raise ValueError(f"{model}: our config has no {unknown} (aligned settings or --ours-set)")
    config.update(ours)
    return config


def run_ours(
    data: PreparedData,
    model_name: str,
    seed: int,
    settings: RunSettings,
    classify: Any,
    test: Any,
    labels: np.ndarray,
    pairs: Sequence[Pair] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one model with this project; score its generations.

    ``pairs``: the (subset, target) pairs to generate; by default the model's own
    (:func:`generation_pairs`). A conditional model draws no unconditional samples and has no
    joint NLL.
    """
    import torch

    import multivae
    from multivae.data import MultimodalDataset, make_dataloader
    from multivae.training import Trainer, TrainingConfig

    torch.manual_seed(seed)
    model = multivae.create_model(model_name, our_config(data, model_name, settings.ours_set))
    if pairs is None:
        pairs = generation_pairs(model, data.modalities)
    stages = stage_epochs(model_name, settings.epochs)
    config = TrainingConfig.from_dict(
        {
            "epochs": settings.epochs if stages is None else max(stages.values()),
            "stage_epochs": stages,
            "batch_size": settings.batch_size,
            "optimizer": {"name": "Adam", "kwargs": {"lr": settings.lr}},
            "seed": seed,
            "keep": settings.our_keep,
            "checkpoint_every": 0,
            "progress_bar": False,
            "device": settings.device,
            "compile": settings.our_compile,
            "precision": settings.our_precision,
            "cuda_graphs": settings.our_cuda_graphs,
        }
    )
    cache = {} if settings.our_cache_size is None else {"cache_size": settings.our_cache_size}
    train = MultimodalDataset(data.folder, "train", **cache)
    loader = make_dataloader(train, settings.batch_size, shuffle=True, seed=seed)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="multivae-parity-ours-") as tmp:
        result = Trainer(model, config, tmp).fit(loader)
    epoch_seconds = [len(train) / float(r["samples_per_s"]) for r in result.history]
    train_seconds = sum(epoch_seconds)
    device = next(model.parameters()).device
    model.eval()
    conditional = bool(model.capabilities.conditional)
    generations: dict[Pair, np.ndarray] = {}
    chunk = 500
    generation_began = time.perf_counter()
    with torch.no_grad():
        for subset, targets in grouped(pairs):
            parts: dict[str, list[np.ndarray]] = {m: [] for m in targets}
            for start in range(0, len(labels), chunk):
                rows = _rows(test, start, start + chunk).to(device)
                predicted = model.predict(rows, cond=list(subset), gen=targets)
                for m in targets:
                    parts[m].append(predicted[m].float().cpu().numpy())
            for m in targets:
                generations[(subset, m)] = np.concatenate(parts[m])
        generation_seconds = time.perf_counter() - generation_began
        samples = None
        if settings.unconditional and not conditional:
            drawn = model.sample(settings.unconditional)
            samples = {m: drawn[m].float().cpu().numpy() for m in data.modalities}
    scores = score_generations(classify, generations, labels, samples)
    nll = nll_seconds = None
    # A conditional model's nll is -log p(main | conditions): not the joint NLL of the table.
    if settings.nll_k and not conditional:
        nll_began = time.perf_counter()
        rows = _rows(test, 0, settings.nll_samples).to(device)
        with torch.no_grad():
            nll = float(model.nll(rows, k=settings.nll_k).mean())
        nll_seconds = time.perf_counter() - nll_began
    return {
        **scores,
        "joint_nll": nll,
        "nll_seconds": nll_seconds,
        "generation_seconds": generation_seconds,
        "samples_per_s": len(train) * len(epoch_seconds) / train_seconds,
        "steady_samples_per_s": steady_rate(len(train), epoch_seconds),
        "train_seconds": train_seconds,
        "epoch_seconds": epoch_seconds,
        "wall_seconds": time.perf_counter() - began,
        "errors": {},
    }


def steady_rate(samples_per_epoch: int, epoch_seconds: Sequence[float] | None) -> float | None:
    """Training samples/s over the epochs after the first (which holds compilation and warm-up).

    ``None`` without per-epoch times or with a single epoch.
    """
    if not epoch_seconds or len(epoch_seconds) < 2:
        return None
    return samples_per_epoch * (len(epoch_seconds) - 1) / float(sum(epoch_seconds[1:]))


def _rows(batch: Any, start: int, stop: int) -> Any:
    from multivae.data import Batch

    return Batch(
        data={k: v[start:stop] for k, v in batch.data.items()},
        mask={k: v[start:stop] for k, v in batch.mask.items()},
        label=None if batch.label is None else batch.label[start:stop],
        sample_id=None if batch.sample_id is None else batch.sample_id[start:stop],
    )


# ------------------------------------------------------------------------------------------------
# The table


def _mean_std(values: Sequence[float | None], digits: int = 3) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "n/a"
    mean = statistics.fmean(present)
    if len(present) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(present):.{digits}f}"


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, setting, model, note), over its seeds.

    The note is part of the key, so that runs with other settings (``--ours-set``,
    ``--our-compile``) merged into one table stay in rows of their own.
    """
    rows = []

    def key(run: Mapping[str, Any]) -> tuple[str, str, str, str]:
        return run["dataset"], run["setting"], run["model"], run.get("note", "")

    for row_key in dict.fromkeys(key(r) for r in runs):
        dataset, setting, model, _ = row_key
        group = [r for r in runs if key(r) == row_key]
        row: dict[str, Any] = {
            "dataset": dataset,
            "setting": setting,
            "model": model,
            "seeds": [r["seed"] for r in group],
        }
        for side in ("reference", "ours"):
            results = [r[side] for r in group if r.get(side) and "per_size" in r[side]]
            row[side] = {
                "coherence_1": [r["per_size"].get("1") for r in results],
                "coherence_2": [r["per_size"].get("2") for r in results],
                "joint_coherence": [r.get("joint") for r in results],
                "joint_nll": [r.get("joint_nll") for r in results],
                "samples_per_s": [r.get("samples_per_s") for r in results],
                "steady_samples_per_s": [r.get("steady_samples_per_s") for r in results],
                "errors": sorted(
                    {
                        str(r[side].get("error") or r[side].get("skipped"))
                        for r in group
                        if r.get(side) and ("error" in r[side] or "skipped" in r[side])
                    }
                ),
            }
        ours, ref = _mean(row["ours"]["samples_per_s"]), _mean(row["reference"]["samples_per_s"])
        row["speed_ratio"] = ours / ref if ours and ref else None
        ours = _mean(row["ours"]["steady_samples_per_s"])
        ref = _mean(row["reference"]["steady_samples_per_s"])
        row["steady_speed_ratio"] = ours / ref if ours and ref else None
        for size in ("1", "2"):
            row[f"difference_{size}"] = paired_difference(group, size)
        row["note"] = group[0].get("note", "")
        rows.append(row)
    return rows


def paired_difference(group: Sequence[Mapping[str, Any]], size: str) -> dict[str, Any] | None:
    """Ours minus the reference's coherence from ``size`` modalities, paired by seed.

    The mean over the seeds both sides ran, the half-width of its 95% confidence interval
    (Student's t on the per-seed differences) and the verdict: ``above`` (mean >= 0),
    ``tie`` (below 0 but the interval reaches 0: not distinguishable from seed noise) or
    ``below`` (the whole interval under 0). ``None`` without two paired seeds.
    """
    from scipy import stats

    differences = [
        run["ours"]["per_size"][size] - run["reference"]["per_size"][size]
        for run in group
        if all(size in (run.get(side) or {}).get("per_size", {}) for side in ("ours", "reference"))
    ]
    if len(differences) < 2:
        return None
    mean = statistics.fmean(differences)
    half = float(stats.t.ppf(0.975, len(differences) - 1)) * statistics.stdev(differences)
    half /= len(differences) ** 0.5
    verdict = "above" if mean >= 0 else ("tie" if mean + half >= 0 else "below")
    return {"mean": mean, "ci95": half, "seeds": len(differences), "verdict": verdict}


def _difference_cell(difference: Mapping[str, Any] | None) -> str:
    if difference is None:
        return "n/a"
    return f"{difference['mean']:+.3f} ± {difference['ci95']:.3f} ({difference['verdict']})"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table, one line per (dataset, setting, model)."""
    lines = [
        "| dataset | setting | model | ref coh. 1 | ref coh. 2 | ours coh. 1 | ours coh. 2 "
        "| ref joint coh. | ours joint coh. | ref joint NLL | ours joint NLL | ref samples/s "
        "| ours samples/s | ours/ref speed | ours/ref speed after epoch 1 "
        "| ours - ref coh. 1 (95% CI) | ours - ref coh. 2 (95% CI) | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ref, ours = row["reference"], row["ours"]
        notes = [row["note"]] + [f"reference: {e.splitlines()[-1]}" for e in ref["errors"]]
        notes += [f"ours: {e.splitlines()[-1]}" for e in ours["errors"]]
        speed = lambda v: "n/a" if _mean(v) is None else f"{_mean(v):,.0f}"  # noqa: E731
        lines.append(
            "| "
            + " | ".join(
                [
                    row["dataset"],
                    SETTING_LABELS[row["setting"]],
                    row["model"],
                    _mean_std(ref["coherence_1"]),
                    _mean_std(ref["coherence_2"]),
                    _mean_std(ours["coherence_1"]),
                    _mean_std(ours["coherence_2"]),
                    _mean_std(ref["joint_coherence"]),
                    _mean_std(ours["joint_coherence"]),
                    _mean_std(ref["joint_nll"], 1),
                    _mean_std(ours["joint_nll"], 1),
                    speed(ref["samples_per_s"]),
                    speed(ours["samples_per_s"]),
                    "n/a" if row["speed_ratio"] is None else f"{row['speed_ratio']:.2f}",
                    "n/a"
                    if row.get("steady_speed_ratio") is None
                    else f"{row['steady_speed_ratio']:.2f}",
                    _difference_cell(row.get("difference_1")),
                    _difference_cell(row.get("difference_2")),
                    "; ".join(n for n in notes if n),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        help=f"default: per dataset, {DEFAULT_MODELS} (mopoe alone with --smoke)",
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument(
        "--seeds", nargs="+", type=int, help=f"default: per dataset, {DEFAULT_SEEDS}"
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--n-train",
        type=int,
        default=None,
        help=f"training samples per dataset (default: {DEFAULT_N_TRAIN})",
    )
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--nll-samples", type=int, default=200)
    parser.add_argument("--nll-k", type=int, default=1000, help="0 skips the NLL")
    parser.add_argument("--unconditional", type=int, default=1000, help="0 skips joint coherence")
    parser.add_argument("--classifier-epochs", type=int, default=10)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads on both sides (torch.set_num_threads); 1 by default: on the shared "
        "2-core machine 2 threads per process ran both sides about 10x slower",
    )
    parser.add_argument(
        "--our-keep",
        default="last",
        choices=["last", "best"],
        help="which weights our Trainer keeps (the reference keeps the last here); 'best' is "
        "our Trainer's default, the lowest training loss",
    )
    parser.add_argument(
        "--our-compile",
        action="store_true",
        help="our side trains with TrainingConfig(compile=True) (see the steady samples/s)",
    )
    parser.add_argument(
        "--our-cuda-graphs",
        action="store_true",
        help="with --our-compile on CUDA: replay our compiled step as CUDA graphs",
    )
    parser.add_argument(
        "--our-precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="our side's training precision (bf16: autocast to bfloat16; for the GPU benchmark)",
    )
    parser.add_argument(
        "--ours-set",
        nargs="+",
        type=ours_override,
        default=[],
        metavar="KEY=VALUE",
        help="override our model config (VALUE read as YAML), e.g. incomplete_weights=reference",
    )
    parser.add_argument(
        "--our-cache-size",
        type=int,
        default=None,
        help="row groups our train reader caches (the shuffle mixes half of them at a time)",
    )
    parser.add_argument(
        "--sides", nargs="+", default=["reference", "ours"], choices=["reference", "ours"]
    )
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS / "reference_parity.json")
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="run nothing: combine the runs of earlier result files into --out (and its .md)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="1 seed, 1 epoch, 512 train samples, MoPoE only, small NLL: proves the wiring",
    )
    args = parser.parse_args(argv)
    args.work = args.work.resolve()  # the reference's worker runs from a temporary folder
    if args.smoke:
        args.seeds, args.epochs, args.n_train, args.n_test = [0], 1, 512, 256
        args.models = args.models or ["mopoe"]
        args.nll_samples, args.nll_k, args.unconditional, args.classifier_epochs = 20, 100, 200, 2
        if args.out == DEFAULT_RESULTS / "reference_parity.json":
            args.out = args.work / "smoke" / "reference_parity.json"
    return args


def ours_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--ours-set``, the value read as YAML (``0.5``, ``true``, ``[1, 2]``)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, found {text!r}")
    return key, yaml.safe_load(value)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and write its table and results."""
    args = parse_args(argv)
    # A terminated benchmark raises SystemExit, so subprocess.run kills the running worker too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.perf_counter()
    if args.merge:
        merge(args)
        return
    python = ensure_reference_venv(args.venv) if "reference" in args.sides else None

    import torch

    import multivae
    from multivae.data import MultimodalDataset

    torch.set_num_threads(args.threads)
    registered = set(multivae.list_models())
    for model in sorted(set(args.models or MODELS) - registered):
        print(
            f"skipping {model}: not registered in this project yet "
            f"(multivae.list_models() = {sorted(registered)})",
            flush=True,
        )
    settings = RunSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        nll_samples=args.nll_samples,
        nll_k=args.nll_k,
        unconditional=args.unconditional,
        device=args.device,
        threads=args.threads,
        our_keep=args.our_keep,
        our_compile=args.our_compile,
        our_precision=args.our_precision,
        our_cuda_graphs=args.our_cuda_graphs,
        ours_set=dict(args.ours_set),
        our_cache_size=args.our_cache_size,
    )
    runs: list[dict[str, Any]] = []
    for dataset in args.datasets:
        n_train = args.n_train or DEFAULT_N_TRAIN[dataset]
        sizes = {"n_train": n_train, "n_val": min(1000, n_train // 5), "n_test": args.n_test}
        prepared = {s: prepare_data(args.work, dataset, s, sizes) for s in SETTINGS}
        classifiers = judges(args.work, prepared["complete"], args.classifier_epochs)
        classify = classifier_function(classifiers)
        for setting in args.settings:
            data = prepared[setting]
            test = MultimodalDataset(data.folder, "test").read_all()
            assert test.label is not None
            labels = test.label.numpy()
            models = [m for m in args.models or DEFAULT_MODELS[dataset] if m in registered]
            seeds = args.seeds or DEFAULT_SEEDS[dataset]
            pairs = {m: our_pairs(data, m, settings.ours_set) for m in models}
            for model, seed in itertools.product(models, seeds):
                _, _, note = aligned_settings(model, setting, settings.epochs)
                if args.our_keep != "last":
                    note += f"; ours keep={args.our_keep}"
                if settings.our_compile:
                    note += "; ours compile=true"
                if settings.our_cuda_graphs:
                    note += "; ours cuda_graphs=true"
                if settings.our_precision != "fp32":
                    note += f"; ours precision={settings.our_precision}"
                for key, value in settings.ours_set.items():
                    note += f"; ours {key}={value}"
                if settings.our_cache_size is not None:
                    note += f"; ours cache_size={settings.our_cache_size}"
                run: dict[str, Any] = {
                    "dataset": dataset,
                    "setting": setting,
                    "model": model,
                    "seed": seed,
                    "note": note,
                }
                for side in args.sides:
                    began = time.perf_counter()
                    if side == "reference":
                        assert python is not None
                        if model in REFERENCE_COMPLETE_ONLY and setting != "complete":
                            run[side] = {"skipped": REFERENCE_COMPLETE_ONLY[model]}
                            continue
                        run[side] = run_reference(
                            python, data, model, seed, settings, classify, labels, pairs[model]
                        )
                    else:
                        try:
                            run[side] = run_ours(
                                data, model, seed, settings, classify, test, labels, pairs[model]
                            )
                        except Exception as error:  # one failed run must not stop the rest
                            run[side] = {"error": f"{type(error).__name__}: {error}"}
                    result = run[side]
                    summary = (
                        result.get("error", "").splitlines()[-1:]
                        if "error" in result
                        else [
                            f"coherence {result['per_size']} joint {result['joint']} "
                            f"nll {result['joint_nll']} samples/s {result['samples_per_s']:,.0f} "
                            f"generation {result.get('generation_seconds') or 0:.0f}s"
                        ]
                    )
                    print(
                        f"[{time.perf_counter() - started:7.0f}s] {dataset} {setting} {model} "
                        f"seed {seed} {side} ({time.perf_counter() - began:.0f}s): "
                        f"{' '.join(summary)}",
                        flush=True,
                    )
                runs.append(run)
                write_results(args, runs, time.perf_counter() - started, torch.__version__)
    print(markdown(summarize(runs)))


def our_pairs(
    data: PreparedData, model: str, overrides: Mapping[str, Any] | None = None
) -> list[Pair] | None:
    """The (subset, target) pairs our model generates, both sides' to score.

    ``None`` (each side's default) when our model cannot be built: ``run_ours`` then reports
    that error.
    """
    import multivae

    try:
        built = multivae.create_model(model, our_config(data, model, overrides))
    except Exception:
        return None
    return generation_pairs(built, data.modalities)


def merge(args: argparse.Namespace) -> None:
    """Combine the runs of earlier result files (later files win, side by side)."""
    runs: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    seconds = 0.0
    sources = []
    for path in args.merge:
        document = json.loads(path.read_text())
        seconds += float(document.get("seconds", 0.0))
        sources.append({"file": str(path), "command": document.get("command")})
        for run in document["runs"]:
            key = (run["dataset"], run["setting"], run["model"], run["seed"])
            # A later file replaces only the sides it ran (e.g. a --sides reference rerun).
            runs[key] = {**runs.get(key, {}), **run}
    order = sorted(
        runs,
        key=lambda k: (DATASETS.index(k[0]), list(SETTINGS).index(k[1]), MODELS.index(k[2]), k[3]),
    )
    import torch

    write_results(args, [runs[k] for k in order], seconds, torch.__version__, sources)
    print(markdown(summarize([runs[k] for k in order])))


def write_results(
    args: argparse.Namespace,
    runs: list[dict[str, Any]],
    seconds: float,
    torch_version: str,
    sources: list[dict[str, Any]] | None = None,
) -> None:
    """The JSON of every run and the summary, and the Markdown table beside it."""
    rows = summarize(runs)
    document = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch_version,
        },
        "reference": f"multivae=={REFERENCE_VERSION}",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seconds": seconds,
        "merged_from": sources,
        "summary": rows,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_suffix(".tmp")
    partial.write_text(json.dumps(document, indent=1, default=str))
    partial.replace(args.out)
    args.out.with_suffix(".md").write_text(markdown(rows) + "\n")


if __name__ == "__main__":
    main()
