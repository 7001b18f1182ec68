"""Training the judges: one classifier per modality on a labelled dataset, saved as a set."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from multivae.data.fingerprint import dataset_fingerprint
from multivae.data.reader import BlockBatchSampler, MultimodalDataset, list_splits, make_dataloader
from multivae.data.schema import DatasetSchema, ModalitySpec
from multivae.io import claim_output
from multivae.metrics.classifiers.architectures import ClassifierError, ModalityClassifier
from multivae.metrics.classifiers.classifier_set import ClassifierSet
from multivae.metrics.shared import iter_batches, seeded
from multivae.names import CLASSIFIERS_SUFFIX

TRAIN_CLASSIFIERS_COMMAND = "multivae train-classifiers"


def default_classifier_dir(dataset_dir: str | os.PathLike[str]) -> Path:
    """Where a dataset's classifiers go by default: ``DATA-classifiers``, beside ``DATA``.

    Outputs never land inside a dataset's folder, so the judges live next to it;
    :func:`multivae.metrics.evaluate` looks for them there.
    """
    root = Path(dataset_dir).resolve()
    return root.parent / f"{root.name}{CLASSIFIERS_SUFFIX}"


@dataclass
class _Survey:
    """What one pass over the train split tells about each modality."""

    present: dict[str, int] = field(default_factory=dict)
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    squares: dict[str, torch.Tensor] = field(default_factory=dict)
    equals_label: dict[str, bool] = field(default_factory=dict)


def _survey(dataset: MultimodalDataset, names: Sequence[str], batch_size: int) -> _Survey:
    survey = _Survey()
    for name in names:
        shape = dataset.schema[name].shape
        survey.present[name] = 0
        survey.sums[name] = torch.zeros(shape, dtype=torch.float64)
        survey.squares[name] = torch.zeros(shape, dtype=torch.float64)
        survey.equals_label[name] = True
    for batch in iter_batches(dataset, batch_size):
        assert batch.label is not None
        for name in names:
            rows = batch.mask[name]
            values = batch.data[name][rows]
            survey.present[name] += int(rows.sum())
            as_double = values.to(torch.float64)
            survey.sums[name] += as_double.sum(0)
            survey.squares[name] += (as_double**2).sum(0)
            if values.dim() == 1 and survey.equals_label[name]:
                survey.equals_label[name] = bool(torch.equal(values.long(), batch.label[rows]))
    return survey


def _normalization(
    spec: ModalitySpec, survey: _Survey, classifier: ModalityClassifier
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift and scale of the inputs: the value range for images, train statistics otherwise."""
    if classifier.architecture == "conv" and spec.value_range is not None:
        low, high = spec.value_range
        return torch.tensor(low), torch.tensor(high - low if high > low else 1.0)
    count = max(survey.present[spec.name], 1)
    mean = survey.sums[spec.name] / count
    std = (survey.squares[spec.name] / count - mean**2).clamp_min(0).sqrt()
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return mean.float(), std.float()


@torch.no_grad()
def _evaluate(
    classifiers: Mapping[str, ModalityClassifier],
    dataset: MultimodalDataset,
    batch_size: int,
    device: torch.device,
) -> dict[str, float | None]:
    """Accuracy of each classifier on the present samples of a split (``None``: none)."""
    correct = dict.fromkeys(classifiers, 0)
    seen = dict.fromkeys(classifiers, 0)
    for classifier in classifiers.values():
        classifier.eval()
    for batch in iter_batches(dataset, batch_size):
        assert batch.label is not None
        for name, classifier in classifiers.items():
            rows = batch.mask[name]
            if not bool(rows.any()):
                continue
            predicted = classifier(batch.data[name][rows].to(device)).argmax(-1).cpu()
            correct[name] += int((predicted == batch.label[rows]).sum())
            seen[name] += int(rows.sum())
    return {name: correct[name] / seen[name] if seen[name] else None for name in classifiers}


def _dataset_facts(root: Path, schema: DatasetSchema, sizes: Mapping[str, int]) -> dict[str, Any]:
    return {
        "name": schema.name,
        "path": str(root.resolve()),
        "num_classes": schema.num_classes,
        "class_names": None if schema.class_names is None else list(schema.class_names),
        "modalities": {
            spec.name: {"shape": list(spec.shape), "kind": spec.kind, "dtype": spec.dtype}
            for spec in schema.modalities
        },
        "splits": dict(sizes),
        "fingerprint": dataset_fingerprint(root),
        "schema_sha256": hashlib.sha256(schema.to_json().encode()).hexdigest(),
    }


def train_classifiers(
    dataset_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    modalities: Sequence[str] | None = None,
    progress: bool = True,
    *,
    device: str | torch.device | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    overwrite: bool = False,
) -> ClassifierSet:
    """Train one classifier per modality on a labelled dataset and save the set.

    Each classifier trains with Adam on the ``train`` split, on the samples where its modality
    is present. After every epoch it is scored on the present samples of ``val`` (when the
    dataset has that split) and the epoch with the best validation accuracy is kept (the last
    epoch without ``val``); its accuracy on ``test`` (when present) is recorded. Training runs
    under its own seeded random state, so the caller's is left untouched.

    Args:
        dataset_dir: Dataset folder with a labelled ``train`` split.
        out_dir: Where to write the set; ``DATA-classifiers`` beside the dataset by default
            (:func:`default_classifier_dir`). A new or empty folder, or with ``overwrite`` an
            earlier set written by this function (:func:`multivae.io.claim_output`), replaced
            only once the new one is saved; never a folder inside the dataset.
        epochs: Passes over the train split.
        batch_size: Rows per training batch (before keeping the present samples).
        lr: Adam's learning rate.
        seed: Seed of the initial weights and of the shuffling.
        modalities: Modalities to train classifiers for; all by default.
        progress: Show a progress bar over epochs.
        device: Where to train; CUDA when available by default.
        options: Modality name -> architecture options (see :data:`DEFAULT_OPTIONS`).
        overwrite: Replace ``out_dir`` when it holds an earlier set.

    Returns:
        The trained set, on ``device``.

    Raises:
        ClassifierError: For a dataset without labels, an unknown modality, or a modality
            never present in the train split.
        FileExistsError: For an output folder the rule of :func:`multivae.io.claim_output`
            refuses.
    """
    root = Path(dataset_dir)
    splits = list_splits(root)
    if "train" not in splits:
        raise ClassifierError(f"{root}: classifiers train on a 'train' split; found {splits}")
    train = MultimodalDataset(root, "train")
    schema = train.schema
    if schema.num_classes is None:
        raise ClassifierError(
            f"{root}: the dataset has no labels (its schema declares no num_classes), so there "
            "is nothing to train classifiers on; coherence metrics need a labelled dataset"
        )
    num_classes = schema.num_classes
    names = list(schema.modality_names if modalities is None else modalities)
    unknown = [name for name in names if name not in schema.modality_names]
    if unknown or not names:
        raise ClassifierError(
            f"unknown modalities {unknown} (or none asked); the dataset has "
            f"{list(schema.modality_names)}"
        )
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, found {epochs}")
    folder = Path(out_dir) if out_dir is not None else default_classifier_dir(root)
    claim_output(folder, "classifiers", TRAIN_CLASSIFIERS_COMMAND, overwrite=overwrite)
    options = options or {}
    held_out = {s: MultimodalDataset(root, s) for s in ("val", "test") if s in splits}
    target = torch.device(
        device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    survey = _survey(train, names, batch_size)
    for name in names:
        if survey.present[name] == 0:
            raise ClassifierError(
                f"modality {name!r} is never present in the train split of {root}"
            )

    with seeded(seed, target):
        classifiers: dict[str, ModalityClassifier] = {}
        for name in names:
            spec = schema[name]
            identity = (
                spec.kind == "categorical"
                and spec.num_categories == num_classes
                and survey.equals_label[name]
            )
            classifier = ModalityClassifier.for_spec(
                spec, num_classes, identity=identity, options=options.get(name)
            )
            if classifier.normalized:
                classifier.set_normalization(*_normalization(spec, survey, classifier))
            classifiers[name] = classifier.to(target)
        trainable = {name: c for name, c in classifiers.items() if c.trainable}
        optimizers = {
            name: torch.optim.Adam(c.parameters(), lr=lr) for name, c in trainable.items()
        }
        best_state = {name: _copy_state(c) for name, c in trainable.items()}
        best_val: dict[str, float | None] = {name: None for name in classifiers}
        loader = make_dataloader(train, batch_size, shuffle=True, seed=seed)
        bar = tqdm(range(epochs), desc="classifiers", unit="epoch", disable=not progress)
        for epoch in bar:
            if isinstance(loader.batch_sampler, BlockBatchSampler):
                loader.batch_sampler.set_epoch(epoch)
            losses = _train_epoch(trainable, optimizers, loader, target)
            if "val" in held_out:
                scores = _evaluate(trainable, held_out["val"], batch_size, target)
                for name, score in scores.items():
                    previous = best_val[name]
                    # Without a present validation sample, the latest epoch is kept.
                    if score is None or previous is None or score > previous:
                        best_val[name] = score
                        best_state[name] = _copy_state(trainable[name])
                bar.set_postfix(val=_summary(scores))
            else:
                best_state = {name: _copy_state(c) for name, c in trainable.items()}
                bar.set_postfix(loss=_summary(losses))
        for name, classifier in trainable.items():
            classifier.load_state_dict(best_state[name])
    accuracy: dict[str, dict[str, float | None]] = {
        split: _evaluate(classifiers, dataset, batch_size, target)
        for split, dataset in held_out.items()
    }
    sizes: dict[str, int] = {"train": len(train)}
    sizes.update({split: len(dataset) for split, dataset in held_out.items()})
    result = ClassifierSet(
        classifiers,
        num_classes,
        test_accuracy=accuracy.get("test"),
        val_accuracy=accuracy.get("val"),
        dataset=_dataset_facts(root, schema, sizes),
    )
    result.save(folder, command=TRAIN_CLASSIFIERS_COMMAND)
    result.source = str(folder)
    return result.to(target)


def _copy_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


def _summary(values: Mapping[str, float | None]) -> str:
    return " ".join(f"{name}={value:.3f}" for name, value in values.items() if value is not None)


def _train_epoch(
    classifiers: Mapping[str, ModalityClassifier],
    optimizers: Mapping[str, torch.optim.Optimizer],
    loader: Iterable[Any],
    device: torch.device,
) -> dict[str, float | None]:
    """One pass over the train split; returns each classifier's mean training loss."""
    totals = dict.fromkeys(classifiers, 0.0)
    counts = dict.fromkeys(classifiers, 0)
    for classifier in classifiers.values():
        classifier.train()
    for batch in loader:
        assert batch.label is not None
        for name, classifier in classifiers.items():
            rows = batch.mask[name]
            if not bool(rows.any()):
                continue
            x = batch.data[name][rows].to(device)
            y = batch.label[rows].to(device)
            loss = F.cross_entropy(classifier(x), y)
            optimizers[name].zero_grad()
            torch.autograd.backward(loss)
            optimizers[name].step()
            totals[name] += float(loss.detach()) * len(y)
            counts[name] += len(y)
    return {name: totals[name] / counts[name] if counts[name] else None for name in classifiers}
