"""``multivae evaluate``: every metric of a trained model on a dataset, as JSON and figures.

:func:`evaluate` loads a model folder and a dataset, checks that they match, and writes
``metrics.json`` and ``figures/*.png`` into the output folder:

* ``likelihood``: joint NLL and each modality's NLL given the others, importance-sampled with
  ``k`` samples (1000 by default) on the first ``likelihood_samples`` test samples (the costliest
  metric: ``likelihood_samples x k`` decoder passes per modality, so it runs on a subset);
* ``coherence``: cross-modal coherence from every subset to every other modality, averaged per
  subset size, judged by the dataset's classifiers (``multivae train-classifiers``), whose test
  accuracies are reported beside them under ``classifiers``;
* ``samplers``: for each sampler (``prior``, ``gmm``, ...; fitted on train-set latents), the
  joint coherence of unconditional samples and the FID (torchmetrics) of every image modality
  against test images, generated images clamped to ``[0, 1]``: the standard FID Inception-v3
  (``fid``, comparable with published FIDs) when ``inception_weights`` names its local weights
  file, otherwise the library-trained classifier's features, reported as ``fid_classifier``;
* ``reconstruction``: per modality, MSE (and SSIM, torchmetrics', for images of at least 11x11)
  of its reconstruction from itself;
* ``latents``: k-means accuracy, NMI and ARI of the test latents given all observed modalities,
  and the accuracy of a linear probe trained on train latents, per subset of modalities; for a
  clustering model (``predict_clusters``), the same three scores of its own clusters;
* figures: conditional generations from each subset, unconditional samples per sampler, a 2-D
  embedding of the latents coloured by label, reconstructions.

``metrics.json`` also records what it is the evaluation of: the model (``model``, ``model_path``
and ``model_fingerprint``, :func:`multivae.model_folder.model_fingerprint`; ``None`` for a model
that was never loaded from or saved to a folder) and the data (``data`` and
``data_fingerprint``), so that publishing it with another model is refused
(:func:`multivae.hub.hub_folder`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from multivae.config import Config, ConfigError
from multivae.data.batch import Batch
from multivae.data.fingerprint import dataset_fingerprint
from multivae.data.reader import MultimodalDataset
from multivae.io import atomic_write_text, claim_output, staged_folder, write_output_marker
from multivae.metrics.classifiers import ClassifierSet, default_classifier_dir
from multivae.metrics.coherence import cross_modal_coherence, joint_coherence
from multivae.metrics.fid import (
    ClassifierFeatures,
    FeatureExtractor,
    InceptionFeatures,
    fid,
    fid_metric_name,
)
from multivae.metrics.figures import (
    save_conditional_grid,
    save_dropout_rates,
    save_embedding_plot,
    save_image_grid,
    save_reconstructions,
)
from multivae.metrics.latents import (
    cluster_agreement,
    clustering_scores,
    linear_probe_accuracy,
)
from multivae.metrics.likelihood import likelihood_report
from multivae.metrics.reconstruction import SSIM_WINDOW, mse, ssim
from multivae.metrics.shared import select_rows
from multivae.model_folder import model_source
from multivae.models.base import MultimodalVAE
from multivae.names import (
    DROPOUT_FIGURE,
    FIGURES_FOLDER,
    LATENTS_FIGURE,
    METRICS_FILE,
    RECONSTRUCTIONS_FIGURE,
    conditional_figure,
    samples_figure,
)


@dataclass
class EvaluationConfig(Config):
    """What :func:`evaluate` computes.

    Attributes:
        split: The dataset split evaluated.
        max_samples: Evaluate on the first N samples of the split (all when ``None``).
        k: Importance samples per test sample for the likelihoods.
        chunk_size: Importance samples drawn at a time (bounds memory).
        likelihood_samples: Test samples the likelihoods are computed on (0: skip). The
            estimates report their standard error over these samples; 50 samples at K=1000 take
            about 90 s for poly-digits on 2 CPU cores (joint and five conditionals).
        samplers: Latent samplers for unconditional generation (``prior``, ``gmm``, ``maf``,
            ``iaf``); the non-prior ones are fitted on train-set latents.
        n_generated: Unconditional samples per sampler (joint coherence, FID).
        fit_samples: Train samples whose latents fit the samplers and the linear probe.
        classifiers: Folder of the classifiers; by default ``DATA-classifiers`` beside the
            dataset, which must have been trained on this very dataset (its fingerprint).
        inception_weights: Local file of the FID Inception-v3 weights (torch-fidelity's
            ``weights-inception-2015-12-05-6726825d.pth``, :class:`InceptionFeatures`); without
            it FID uses the classifiers' features and is reported as ``fid_classifier``.
        figures: Write the figures.
        figure_samples: Samples per figure.
        batch_size: Samples per forward pass.
        precision: ``fp32``, or ``bf16`` to generate under bfloat16 autocast for the
            generation metrics (coherences, unconditional samples, reconstructions, figures);
            likelihoods, latents, samplers and FID statistics stay in float32. On CPUs with
            AVX-512 BF16 or AMX, and on GPUs, it makes the convolutional decoders several times
            faster; coherences move by the noise of a few generated pixels.
        seed: Seed of the whole evaluation.
    """

    split: str = "test"
    max_samples: int | None = None
    k: int = 1000
    chunk_size: int = 100
    likelihood_samples: int = 50
    samplers: list[str] = field(default_factory=lambda: ["prior", "gmm"])
    n_generated: int = 1000
    fit_samples: int = 5000
    classifiers: str | None = None
    inception_weights: str | None = None
    figures: bool = True
    figure_samples: int = 8
    batch_size: int = 256
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0


def check_compatible(model: MultimodalVAE, dataset: MultimodalDataset) -> None:
    """Refuse a dataset whose modalities or shapes differ from the model's.

    Raises:
        ConfigError: Listing what the model expects and what the dataset holds.
    """
    expected = {m: tuple(model.config.modalities[m].shape) for m in model.modalities}
    found = {spec.name: tuple(spec.shape) for spec in dataset.schema.modalities}
    if expected != found:
        raise ConfigError(
            f"{dataset.root}: the model ({model.name}) expects modalities {expected}, the dataset "
            f"holds {found}"
        )


def _is_image(shape: Sequence[int]) -> bool:
    return len(shape) == 3 and shape[0] in (1, 3)


def _head(dataset: MultimodalDataset, n: int | None) -> Batch:
    batch = dataset.read_all()
    if n is not None and n < len(batch):
        batch = select_rows(batch, torch.arange(n))
    return batch


def _latents(
    model: MultimodalVAE, batch: Batch, cond: Sequence[str] | None, size: int
) -> torch.Tensor:
    parts = []
    for start in range(0, len(batch), size):
        rows = select_rows(batch, torch.arange(start, min(start + size, len(batch))))
        parts.append(model.posterior(rows, cond).mean)
    return torch.cat(parts)


def _clusters(
    predict_clusters: Callable[[Batch], torch.Tensor], batch: Batch, size: int
) -> torch.Tensor:
    """A clustering model's predicted clusters, ``(N,)``: ``-1`` where nothing is observed."""
    parts = []
    for start in range(0, len(batch), size):
        rows = select_rows(batch, torch.arange(start, min(start + size, len(batch))))
        parts.append(predict_clusters(rows).cpu())
    return torch.cat(parts)


def _reconstruction_subset(model: MultimodalVAE, name: str) -> list[str] | None:
    """What ``name`` is reconstructed from: itself, or a conditional model's own subset.

    ``[name]`` when the model conditions on it alone (``None`` when not: DVCCA's secondary
    views); for a conditional model, the smallest subset holding ``name`` that the model
    generates it from (a CVAE: its main modality with its conditioning ones), or ``None``.
    """
    if not model.capabilities.conditional:
        return [name] if model.conditionable([name]) else None
    for subset in _subsets(model.modalities):
        if name in subset and model.conditionable(subset) and model.conditionable(subset, name):
            return list(subset)
    return None


def _inferable_rows(model: MultimodalVAE, batch: Batch) -> torch.Tensor:
    """``(N,)`` the rows whose observed modalities the model infers from.

    Every row for a joint model; for a conditional model, those its ``conditionable`` accepts
    (a CVAE: the rows holding all its conditioning modalities).
    """
    if not model.capabilities.conditional:
        return torch.ones(len(batch), dtype=torch.bool)
    presence = torch.stack([batch.mask[m].cpu() for m in model.modalities]).t()
    patterns, index = torch.unique(presence, dim=0, return_inverse=True)
    accepted = torch.tensor(
        [
            model.conditionable([m for m, seen in zip(model.modalities, row, strict=True) if seen])
            for row in patterns.tolist()
        ],
        dtype=torch.bool,
    )
    return accepted[index]


def _reconstruction(model: MultimodalVAE, batch: Batch, size: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in model.modalities:
        cond = _reconstruction_subset(model, name)
        if cond is None:
            out[name] = {"not_applicable": f"{model.name} does not reconstruct {name}"}
            continue
        present = torch.stack([batch.mask[m] for m in cond]).all(0).nonzero().squeeze(-1)
        if len(present) == 0:
            continue
        rows = select_rows(batch, present)
        errors, similarities = [], []
        for start in range(0, len(rows), size):
            part = select_rows(rows, torch.arange(start, min(start + size, len(rows))))
            generated = model.predict(part, cond=cond, gen=[name])[name].float()
            target = part.data[name].float()
            if model.config.modalities[name].likelihood == "categorical":
                errors.append((generated != target).float())
                continue
            # The scores themselves stay in float32 under a bf16 generation autocast.
            with torch.autocast(device_type=target.device.type, enabled=False):
                errors.append(mse(generated, target))
                shape = model.config.modalities[name].shape
                if _is_image(shape) and min(target.shape[-2:]) >= SSIM_WINDOW:
                    similarities.append(ssim(generated, target))
        key = "error_rate" if model.config.modalities[name].likelihood == "categorical" else "mse"
        out[name] = {key: torch.cat(errors).mean().item(), "count": len(rows)}
        if similarities:
            out[name]["ssim"] = torch.cat(similarities).mean().item()
    return out


def _subsets(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    return [s for k in range(1, len(modalities) + 1) for s in combinations(modalities, k)]


def _probes(
    model: MultimodalVAE, train: Batch, test: Batch, size: int, seed: int
) -> dict[str, Any]:
    per_subset: dict[str, float] = {}
    per_size: dict[int, list[float]] = {}
    # A conditional model infers only from the whole subset (a CVAE: all its conditions).
    rows_of = "all" if model.capabilities.conditional else "any"
    for subset in _subsets(model.modalities):
        if not model.conditionable(subset):
            continue
        usable_train = getattr(torch.stack([train.mask[m] for m in subset]), rows_of)(0)
        usable_test = getattr(torch.stack([test.mask[m] for m in subset]), rows_of)(0)
        if usable_train.sum() < 10 or usable_test.sum() < 1:
            continue
        train_rows = select_rows(train, usable_train)
        test_rows = select_rows(test, usable_test)
        assert train_rows.label is not None and test_rows.label is not None
        accuracy = linear_probe_accuracy(
            _latents(model, train_rows, list(subset), size),
            train_rows.label,
            _latents(model, test_rows, list(subset), size),
            test_rows.label,
            seed=seed,
        )
        per_subset["+".join(subset)] = accuracy
        per_size.setdefault(len(subset), []).append(accuracy)
    return {
        "per_subset": per_subset,
        "per_size": {str(k): sum(v) / len(v) for k, v in per_size.items()},
    }


def _generation_precision(
    config: EvaluationConfig, model: MultimodalVAE
) -> AbstractContextManager[Any]:
    """bfloat16 autocast on the model's device when ``config.precision`` asks for it."""
    device = next(model.parameters()).device
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"
    )


def _classifiers_for(data_dir: Path, folder: str | None) -> ClassifierSet:
    """The judges: ``folder`` as given, or the dataset's own (trained on this very data)."""
    classifier_dir = Path(folder) if folder else default_classifier_dir(data_dir)
    if not classifier_dir.exists():
        raise ConfigError(
            f"{classifier_dir}: no classifiers to judge coherence; train them with "
            f"`multivae train-classifiers {data_dir}` (or name a folder: --set classifiers=DIR)"
        )
    classifiers = ClassifierSet.load(classifier_dir)
    trained_on = (classifiers.dataset or {}).get("fingerprint")
    expected = None if folder else dataset_fingerprint(data_dir)
    if expected is not None and trained_on != expected:
        raise ConfigError(
            f"{classifier_dir}: expected the classifiers of {data_dir} (fingerprint "
            f"{expected}), found ones trained on other data (fingerprint "
            f"{trained_on}); retrain them with `multivae train-classifiers {data_dir} "
            "--overwrite`, or name these with --set classifiers=DIR"
        )
    return classifiers


def _extractors(
    config: EvaluationConfig,
    classifiers: ClassifierSet,
    images: Sequence[str],
    device: torch.device,
) -> dict[str, FeatureExtractor]:
    """Each image modality's FID feature network.

    One Inception for all, on ``device``, when ``config.inception_weights`` names its weights
    file; otherwise the modality's classifier.
    """
    if config.inception_weights is not None and images:
        inception = InceptionFeatures(config.inception_weights, device)
        return dict.fromkeys(images, inception)
    return {
        name: ClassifierFeatures(classifiers[name].feature_extractor(), "classifier")
        for name in images
    }


EVALUATE_COMMAND = "multivae evaluate"


def evaluate(
    model_dir: str | os.PathLike[str] | MultimodalVAE,
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: EvaluationConfig | None = None,
    *,
    progress: bool = True,
    overwrite: bool = False,
    revision: str | None = None,
) -> dict[str, Any]:
    """Compute every metric of a model on a dataset; write ``metrics.json`` and figures.

    Args:
        model_dir: A model folder (or repo id), or a loaded model.
        data_dir: The dataset folder (with ``train/`` for the samplers and probes, and the
            evaluated split); its classifiers in ``DATA-classifiers`` beside it unless the
            config names another folder.
        out_dir: Where ``metrics.json`` and ``figures/`` go: a new or empty folder, or (with
            ``overwrite``) an earlier evaluation (:func:`multivae.io.claim_output`), replaced
            only once the new one is complete.
        config: What to compute (defaults: :class:`EvaluationConfig`).
        progress: Show a progress bar over the metric groups.
        overwrite: Replace ``out_dir`` when it holds an earlier evaluation.
        revision: For a Hub repository id: the branch, tag or commit hash to load.

    Returns:
        The metrics, as written to ``metrics.json``.

    Raises:
        ConfigError: For a dataset that does not match the model, or classifiers that are
            missing for one of its modalities (the message says how to train them).
    """
    from multivae.factory import load_model
    from multivae.samplers import fit_joint_sampler

    config = config or EvaluationConfig()
    data_dir = Path(data_dir)
    out_dir = Path(out_dir)
    if isinstance(model_dir, MultimodalVAE) and revision is not None:
        raise ValueError(f"revision {revision!r}: given with a loaded model, which has none")
    model = (
        model_dir
        if isinstance(model_dir, MultimodalVAE)
        else load_model(model_dir, revision=revision)
    )
    model.eval()
    # What the evaluation is of, by fingerprint: publishing it with another model is refused.
    source = model_source(model)
    model_path = None if isinstance(model_dir, MultimodalVAE) else str(model_dir)
    if model_path is None and source is not None:
        model_path = str(source.folder)
    test_set = MultimodalDataset(data_dir, config.split)
    train_set = MultimodalDataset(data_dir, "train")
    check_compatible(model, test_set)
    classifiers = _classifiers_for(data_dir, config.classifiers)
    classifiers.require(model.modalities)
    test = _head(test_set, config.max_samples)
    train = _head(train_set, config.fit_samples)
    if test.label is None:
        raise ConfigError(f"{data_dir}/{config.split}: coherence needs labels, found none")
    images = [m for m in model.modalities if _is_image(model.config.modalities[m].shape)]
    claim_output(out_dir, "evaluation", EVALUATE_COMMAND, overwrite=overwrite)
    # Everything goes to a staging folder that replaces out_dir only when complete: a failed
    # evaluation leaves the previous one whole, never new figures beside old metrics.
    with staged_folder(out_dir) as staging:
        figures = staging / FIGURES_FOLDER
        metrics: dict[str, Any] = {
            "model": model.name,
            "model_path": model_path,
            "model_fingerprint": None if source is None else source.fingerprint,
            "data": str(data_dir),
            "data_fingerprint": dataset_fingerprint(data_dir),
            "split": config.split,
            "samples": len(test),
            "config": config.to_dict(),
            "classifiers": {"test_accuracy": dict(classifiers.accuracy)},
            "seconds": {},
        }
        steps = ["likelihood", "coherence", "samplers", "reconstruction", "latents", "figures"]
        bar = tqdm(steps, desc="evaluate", disable=not progress)
        torch.manual_seed(config.seed)
        with torch.no_grad():
            for step in bar:
                bar.set_postfix_str(step)
                started = time.perf_counter()
                if step == "likelihood" and not model.capabilities.tractable_likelihood:
                    metrics["likelihood"] = {
                        "not_applicable": f"{model.name} defines no likelihood"
                    }
                elif step == "likelihood" and config.likelihood_samples > 0:
                    subset = select_rows(
                        test, torch.arange(min(config.likelihood_samples, len(test)))
                    )
                    metrics["likelihood"] = likelihood_report(
                        model,
                        subset,
                        config.k,
                        config.chunk_size,
                        config.batch_size,
                        seed=config.seed,
                    )
                elif step == "coherence":
                    with _generation_precision(config, model):
                        metrics["coherence"] = cross_modal_coherence(
                            model, test, classifiers, batch_size=config.batch_size
                        ).to_dict()
                elif step == "samplers" and model.capabilities.conditional:
                    metrics["samplers"] = {
                        "not_applicable": f"{model.name} generates only given conditioning data"
                    }
                elif step == "samplers":
                    metrics["samplers"] = {}
                    device = next(model.parameters()).device
                    extractors = _extractors(config, classifiers, images, device)
                    for kind in config.samplers:
                        sampler = (
                            None
                            if kind == "prior"
                            else fit_joint_sampler(model, train, kind, seed=config.seed)
                        )
                        with _generation_precision(config, model):
                            entry: dict[str, Any] = {
                                "joint_coherence": joint_coherence(
                                    model,
                                    classifiers,
                                    config.n_generated,
                                    sampler,
                                    config.batch_size,
                                )
                            }
                            generated = {
                                name: values.float()
                                for name, values in model.sample(
                                    config.n_generated, sampler
                                ).items()
                            }
                        for name in images:
                            extractor = extractors[name]
                            real = test.data[name][test.mask[name]]
                            entry.setdefault(fid_metric_name(extractor), {})[name] = fid(
                                real, generated[name].clamp(0, 1), extractor, config.batch_size
                            )
                        if config.figures and images:
                            save_image_grid(
                                [generated[m][: config.figure_samples].clamp(0, 1) for m in images],
                                figures / samples_figure(kind),
                                row_titles=images,
                                title=f"unconditional samples ({kind})",
                            )
                        metrics["samplers"][kind] = entry
                elif step == "reconstruction":
                    with _generation_precision(config, model):
                        metrics["reconstruction"] = _reconstruction(model, test, config.batch_size)
                elif step == "latents":
                    inferable = select_rows(test, _inferable_rows(model, test))
                    assert inferable.label is not None
                    latents = _latents(model, inferable, None, config.batch_size)
                    metrics["latents"] = {
                        "clustering": clustering_scores(
                            latents,
                            inferable.label,
                            n_clusters=classifiers.num_classes,
                            seed=config.seed,
                        ),
                        "linear_probe": _probes(model, train, test, config.batch_size, config.seed),
                    }
                    report = model.latent_report()
                    if report is not None:
                        metrics["latents"]["model_report"] = report
                    predict_clusters = getattr(model, "predict_clusters", None)
                    if predict_clusters is not None:  # a clustering model's own clusters (CMVAE)
                        predicted = _clusters(predict_clusters, test, config.batch_size)
                        voted = predicted >= 0
                        if voted.any():
                            metrics["latents"]["model_clusters"] = cluster_agreement(
                                predicted[voted], test.label.cpu()[voted]
                            )
                    if config.figures:
                        save_embedding_plot(
                            latents,
                            inferable.label,
                            figures / LATENTS_FIGURE,
                            title="test latents (PCA)",
                        )
                        if report is not None and "dropout_rates" in report:
                            save_dropout_rates(
                                report["dropout_rates"],
                                report["dropout_threshold"],
                                figures / DROPOUT_FIGURE,
                            )
                elif step == "figures" and config.figures and images:
                    with _generation_precision(config, model):
                        _conditional_figures(model, test, images, figures, config.figure_samples)
                metrics["seconds"][step] = time.perf_counter() - started
        _check_finite(metrics)
        atomic_write_text(staging / METRICS_FILE, json.dumps(metrics, indent=2, sort_keys=True))
        write_output_marker(staging, "evaluation", EVALUATE_COMMAND)
    return metrics


def _conditional_figures(
    model: MultimodalVAE, test: Batch, images: Sequence[str], folder: Path, count: int
) -> None:
    complete = torch.stack([test.mask[m] for m in model.modalities]).all(0)
    rows = select_rows(test, complete.nonzero().squeeze(-1)[:count])
    if len(rows) == 0:
        return
    for subset in _subsets(images):
        targets = [m for m in images if m not in subset and model.conditionable(subset, m)]
        if not targets or not model.conditionable(subset):
            continue
        generated = model.predict(rows, cond=list(subset), gen=targets)
        save_conditional_grid(
            {m: rows.data[m] for m in subset},
            {m: generated[m].clamp(0, 1) for m in targets},
            folder / conditional_figure(subset),
            title=f"generated from {', '.join(subset)}",
        )
    shown = [(m, cond) for m in images if (cond := _reconstruction_subset(model, m))]
    if not shown:
        return
    name, cond = shown[0]
    reconstructed = model.predict(rows, cond=cond, gen=[name])[name]
    save_reconstructions(
        rows.data[name], reconstructed.clamp(0, 1), folder / RECONSTRUCTIONS_FIGURE
    )


def _check_finite(value: Any, where: str = "metrics") -> None:
    """Refuse to write NaN or infinite metrics: they would hide a broken model or metric."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key != "config":
                _check_finite(item, f"{where}.{key}")
    elif isinstance(value, float) and not math.isfinite(value):
        raise FloatingPointError(f"{where} is {value}")
