"""Per-modality classifiers that judge the class of real and generated samples.

Coherence metrics ask whether a generated modality shows the class of the sample it was generated
from; a classifier trained on the real data of that modality answers. :func:`train_classifiers`
trains one :class:`ModalityClassifier` per modality on a labelled dataset and writes the set as a
folder (``classifiers.safetensors`` + ``classifiers.json``, no pickle), which
:meth:`ClassifierSet.load` reads back.

Architectures, by the modality's kind and shape:

* ``conv``: square 28, 32 or 64 pixel images; the project's convolutional encoder body, a ReLU
  and a linear layer to the class logits. Inputs are rescaled from the modality's
  ``value_range`` to ``[0, 1]`` (standardized with train statistics when it has none).
* ``mlp``: every other real-valued modality, flattened and standardized with the mean and
  standard deviation of each value over the present train samples.
* ``embedding``: a categorical modality: an embedding of the class index and an MLP.
* ``tokens``: integer token sequences (``text_tokens`` with a ``value_range``): a mean of token
  embeddings (a bag of tokens) and an MLP.
* ``identity``: a categorical modality that *is* the label. The rule: the modality has
  ``num_categories == num_classes`` and its value equals the label on every present train sample
  (at least one). Its "classifier" returns its value; nothing is trained.

The penultimate activations (:meth:`ModalityClassifier.features`) serve a classifier-based FID.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from multivae.data.batch import Batch, collate
from multivae.data.reader import (
    BlockBatchSampler,
    MultimodalDataset,
    list_splits,
    make_dataloader,
)
from multivae.data.schema import DatasetSchema, ModalitySpec
from multivae.io import staged_folder
from multivae.nn.architectures import CONV_SIZES, ConvEncoder, EmbeddingEncoder, MLPEncoder

FORMAT_VERSION = 1
CONFIG_FILE = "classifiers.json"
WEIGHTS_FILE = "classifiers.safetensors"
DEFAULT_FOLDER = "classifiers"
"""Where :func:`train_classifiers` writes the set by default, inside the dataset folder."""
ARCHITECTURES = ("conv", "mlp", "embedding", "tokens", "identity")
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "conv": {"hidden_dim": 128, "channels": [32, 64, 128, 256]},
    "mlp": {"hidden_dim": 128, "hidden": [256]},
    "embedding": {"hidden_dim": 64, "embedding_dim": 32, "hidden": []},
    "tokens": {"hidden_dim": 128, "embedding_dim": 64, "hidden": []},
    "identity": {},
}
"""Keyword options of each architecture and their defaults."""


class ClassifierError(ValueError):
    """A classifier set that cannot be trained, loaded or used as asked."""


# ------------------------------------------------------------------------------------------------
# Helpers shared by the metrics: batches, devices, evaluation mode.

EvaluationData = Batch | MultimodalDataset
"""What the metrics evaluate on: one in-memory batch, or a dataset split read batch by batch."""


def select_rows(batch: Batch, rows: torch.Tensor) -> Batch:
    """The rows of ``batch`` picked by a boolean mask or an index tensor."""
    return Batch(
        data={name: values[rows] for name, values in batch.data.items()},
        mask={name: flags[rows] for name, flags in batch.mask.items()},
        label=None if batch.label is None else batch.label[rows],
        sample_id=None if batch.sample_id is None else batch.sample_id[rows],
    )


def iter_batches(data: EvaluationData, batch_size: int) -> Iterator[Batch]:
    """Consecutive batches of at most ``batch_size`` rows, in order, so memory stays bounded.

    Args:
        data: A :class:`~multivae.data.batch.Batch` (sliced) or a
            :class:`~multivae.data.reader.MultimodalDataset` (read row group by row group).
        batch_size: Rows per batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, found {batch_size}")
    if isinstance(data, MultimodalDataset):
        # Row by row range, without a DataLoader: a loader draws from torch's random state for
        # its workers' seeds, which would make seeded metrics depend on how data is given.
        for start in range(0, len(data), batch_size):
            yield collate(data.__getitems__(range(start, min(start + batch_size, len(data)))))
        return
    for start in range(0, len(data), batch_size):
        rows = slice(start, start + batch_size)
        yield Batch(
            data={name: values[rows] for name, values in data.data.items()},
            mask={name: flags[rows] for name, flags in data.mask.items()},
            label=None if data.label is None else data.label[rows],
            sample_id=None if data.sample_id is None else data.sample_id[rows],
        )


def model_device(model: object) -> torch.device:
    """The device of a model's first parameter; the CPU for objects without parameters."""
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        for parameter in parameters():
            if isinstance(parameter, torch.Tensor):
                return parameter.device
    return torch.device("cpu")


@contextmanager
def evaluation_mode(model: object) -> Iterator[None]:
    """Put a module in evaluation mode for the block and restore its mode after it."""
    if not isinstance(model, nn.Module):
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run the block under torch's random state seeded with ``seed``, then restore the caller's.

    ``None`` leaves the random state alone.
    """
    if seed is None:
        yield
        return
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# ------------------------------------------------------------------------------------------------
# One classifier


class _TokenBag(nn.Module):
    """The mean embedding of the tokens of a sequence, then an MLP."""

    def __init__(
        self, vocabulary: int, output_dim: int, embedding_dim: int, hidden: Sequence[int]
    ) -> None:
        super().__init__()
        self.vocabulary = vocabulary
        self.embedding = nn.Embedding(vocabulary, embedding_dim)
        self.network = MLPEncoder((embedding_dim,), output_dim, tuple(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(N, output_dim)`` from token indices ``(N, *shape)``."""
        tokens = x.reshape(x.shape[0], -1).long()
        out: torch.Tensor = self.network(self.embedding(tokens).mean(1))
        return out


def default_architecture(spec: ModalitySpec) -> tuple[str, int | None]:
    """The architecture a modality gets by default, and its number of categories (or ``None``).

    The identity is never a default: :func:`train_classifiers` picks it from the data.
    """
    if spec.kind == "categorical":
        return "embedding", spec.num_categories
    if (
        spec.kind == "text_tokens"
        and np.issubdtype(spec.numpy_dtype, np.integer)
        and spec.value_range is not None
        and spec.value_range[0] >= 0
    ):
        return "tokens", int(spec.value_range[1]) + 1
    shape = spec.shape
    if spec.kind == "image" and len(shape) == 3 and shape[1] == shape[2] and shape[1] in CONV_SIZES:
        return "conv", None
    return "mlp", None


class ModalityClassifier(nn.Module):
    """A classifier of one modality: samples ``(N, *shape)`` to ``num_classes`` logits.

    Args:
        shape: Shape of one sample (``()`` for a class index).
        kind: The modality's kind (``image``, ``tabular``, ``categorical``, ``text_tokens``).
        num_classes: Number of label classes.
        architecture: One of :data:`ARCHITECTURES` (see the module's documentation).
        num_categories: Number of categories (vocabulary size for ``tokens``); needed by
            ``embedding``, ``tokens`` and ``identity``.
        options: Keyword options of the architecture; see :data:`DEFAULT_OPTIONS`.

    Raises:
        ClassifierError: For an unknown architecture or option, or one that does not fit the
            modality.
    """

    def __init__(
        self,
        shape: Sequence[int],
        kind: str,
        num_classes: int,
        architecture: str,
        *,
        num_categories: int | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ClassifierError(
                f"unknown classifier architecture {architecture!r}; expected one of "
                f"{list(ARCHITECTURES)}"
            )
        if num_classes < 2:
            raise ClassifierError(f"a classifier needs num_classes >= 2, found {num_classes}")
        options = dict(options or {})
        unknown = sorted(set(options) - set(DEFAULT_OPTIONS[architecture]))
        if unknown:
            raise ClassifierError(
                f"unknown options {unknown} for the {architecture!r} classifier; expected some "
                f"of {sorted(DEFAULT_OPTIONS[architecture])}"
            )
        self.shape = tuple(int(s) for s in shape)
        self.kind = kind
        self.num_classes = num_classes
        self.architecture = architecture
        self.num_categories = num_categories
        self.options: dict[str, Any] = {**DEFAULT_OPTIONS[architecture], **options}
        if architecture in ("embedding", "tokens", "identity") and num_categories is None:
            raise ClassifierError(f"the {architecture!r} classifier needs num_categories")
        if architecture == "identity" and num_categories != num_classes:
            raise ClassifierError(
                f"the identity classifier needs num_categories == num_classes, found "
                f"{num_categories} and {num_classes}"
            )
        hidden_dim = int(self.options.get("hidden_dim", num_classes))
        self.body: nn.Module
        if architecture == "conv":
            if (
                len(self.shape) != 3
                or self.shape[1] != self.shape[2]
                or self.shape[1] not in CONV_SIZES
            ):
                raise ClassifierError(
                    f"the conv classifier takes (C, S, S) images with S in {sorted(CONV_SIZES)}, "
                    f"found shape {self.shape}"
                )
            self.body = ConvEncoder(self.shape, hidden_dim, tuple(self.options["channels"]))
        elif architecture == "mlp":
            self.body = MLPEncoder(self.shape, hidden_dim, tuple(self.options["hidden"]))
        elif architecture == "embedding":
            assert num_categories is not None
            self.body = EmbeddingEncoder(
                num_categories,
                hidden_dim,
                int(self.options["embedding_dim"]),
                tuple(self.options["hidden"]),
            )
        elif architecture == "tokens":
            assert num_categories is not None
            self.body = _TokenBag(
                num_categories,
                hidden_dim,
                int(self.options["embedding_dim"]),
                tuple(self.options["hidden"]),
            )
        else:
            self.body = nn.Identity()
        self.head: nn.Module = (
            nn.Identity() if architecture == "identity" else nn.Linear(hidden_dim, num_classes)
        )
        if self.normalized:
            self.register_buffer("input_shift", torch.zeros(self.shape))
            self.register_buffer("input_scale", torch.ones(self.shape))

    @classmethod
    def for_spec(
        cls,
        spec: ModalitySpec,
        num_classes: int,
        *,
        identity: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> ModalityClassifier:
        """The default classifier of a modality (the identity when ``identity``)."""
        architecture, num_categories = default_architecture(spec)
        if identity:
            architecture = "identity"
        return cls(
            spec.shape,
            spec.kind,
            num_classes,
            architecture,
            num_categories=num_categories,
            options=None if identity else options,
        )

    @classmethod
    def from_description(cls, description: Mapping[str, Any]) -> ModalityClassifier:
        """Inverse of :meth:`description` (weights not included)."""
        architecture = description["architecture"]
        return cls(
            tuple(description["shape"]),
            str(description["kind"]),
            int(description["num_classes"]),
            str(architecture["name"]),
            num_categories=architecture.get("num_categories"),
            options=architecture.get("kwargs") or {},
        )

    def description(self) -> dict[str, Any]:
        """JSON-ready description from which :meth:`from_description` rebuilds the module."""
        return {
            "shape": list(self.shape),
            "kind": self.kind,
            "num_classes": self.num_classes,
            "architecture": {
                "name": self.architecture,
                "kwargs": self.options,
                "num_categories": self.num_categories,
            },
        }

    @property
    def normalized(self) -> bool:
        """Whether inputs are shifted and scaled before the body (real-valued architectures)."""
        return self.architecture in ("conv", "mlp")

    @property
    def trainable(self) -> bool:
        """Whether the classifier has weights to train (all but the identity)."""
        return self.architecture != "identity"

    def set_normalization(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        """Inputs become ``(x - shift) / scale``; both broadcast to the sample shape."""
        if not self.normalized:
            raise ClassifierError(f"the {self.architecture!r} classifier takes no normalization")
        with torch.no_grad():
            self.get_buffer("input_shift").copy_(torch.as_tensor(shift).expand(self.shape))
            self.get_buffer("input_scale").copy_(torch.as_tensor(scale).expand(self.shape))

    def _one_hot(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(x.long().clamp(0, self.num_classes - 1), self.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``(N, hidden_dim)`` (one-hot classes for the identity)."""
        if self.architecture == "identity":
            return self._one_hot(x).float()
        if self.normalized:
            x = (x.float() - self.get_buffer("input_shift")) / self.get_buffer("input_scale")
        out: torch.Tensor = F.relu(self.body(x))
        return out

    def feature_extractor(self) -> nn.Module:
        """A module whose forward is :meth:`features` (for FID code that calls a module)."""
        return _Features(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, num_classes)``.

        The identity gives ``0`` for its class and ``-inf`` elsewhere (the log-probabilities of a
        point mass).
        """
        if self.architecture == "identity":
            return torch.where(self._one_hot(x) == 1, 0.0, float("-inf"))
        out: torch.Tensor = self.head(self.features(x))
        return out


class _Features(nn.Module):
    """A classifier's penultimate activations as a module."""

    def __init__(self, classifier: ModalityClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(N, F)`` of samples ``(N, *shape)``."""
        return self.classifier.features(x)


# ------------------------------------------------------------------------------------------------
# A set of classifiers


def _check_destination(directory: Path) -> None:
    """Refuse to replace anything but a classifier folder (an empty folder is fine)."""
    if directory.exists() and (
        not directory.is_dir()
        or (any(directory.iterdir()) and not (directory / CONFIG_FILE).is_file())
    ):
        raise ClassifierError(
            f"{directory} exists and is not a classifier folder; give a new or empty folder"
        )


class ClassifierSet:
    """One classifier per modality, with the accuracies measured when they were trained.

    Args:
        classifiers: Modality name -> its classifier.
        num_classes: Number of label classes (every classifier's output size).
        test_accuracy: Modality name -> accuracy on the test split (``None``: not measured).
        val_accuracy: Modality name -> accuracy on the validation split of the selected epoch.
        dataset: Facts about the dataset the classifiers were trained on (JSON-ready).
        source: The folder the set was loaded from, for messages.
    """

    def __init__(
        self,
        classifiers: Mapping[str, ModalityClassifier],
        num_classes: int,
        *,
        test_accuracy: Mapping[str, float | None] | None = None,
        val_accuracy: Mapping[str, float | None] | None = None,
        dataset: Mapping[str, Any] | None = None,
        source: str | None = None,
    ) -> None:
        for name, classifier in classifiers.items():
            if classifier.num_classes != num_classes:
                raise ClassifierError(
                    f"classifier {name!r} has {classifier.num_classes} classes, expected "
                    f"{num_classes}"
                )
            classifier.eval()
        self.classifiers = dict(classifiers)
        self.num_classes = num_classes
        self.accuracy: dict[str, float | None] = {
            name: (test_accuracy or {}).get(name) for name in self.classifiers
        }
        """Test accuracy of each classifier (``None`` where there was no test sample)."""
        self.val_accuracy: dict[str, float | None] = {
            name: (val_accuracy or {}).get(name) for name in self.classifiers
        }
        self.dataset = dict(dataset or {})
        self.source = source
        self.device = torch.device("cpu")
        self.to(self.device)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Names of the modalities that have a classifier."""
        return tuple(self.classifiers)

    def __contains__(self, name: object) -> bool:
        return name in self.classifiers

    def __getitem__(self, name: str) -> ModalityClassifier:
        self.require([name])
        return self.classifiers[name]

    def require(self, modalities: Sequence[str]) -> None:
        """Raise a clear error unless every modality of ``modalities`` has a classifier.

        Raises:
            ClassifierError: Naming the modalities without a classifier.
        """
        if isinstance(modalities, str):
            raise TypeError(f"expected a list of modality names, found the string {modalities!r}")
        missing = [name for name in modalities if name not in self.classifiers]
        if missing:
            where = f" at {self.source}" if self.source else ""
            raise ClassifierError(
                f"no classifier for modalities {missing}; the classifier set{where} has "
                f"{list(self.classifiers)} (train the missing ones with train_classifiers)"
            )

    def to(self, device: torch.device | str) -> ClassifierSet:
        """Move every classifier to ``device``; returns the set itself."""
        self.device = torch.device(device)
        for classifier in self.classifiers.values():
            classifier.to(self.device)
        return self

    @torch.no_grad()
    def _apply(self, name: str, x: torch.Tensor, batch_size: int, features: bool) -> torch.Tensor:
        classifier = self[name]
        trailing = len(classifier.shape)
        if x.dim() < trailing + 1 or tuple(x.shape[x.dim() - trailing :]) != classifier.shape:
            raise ValueError(
                f"classifier {name!r}: expected a batch of samples of shape {classifier.shape} "
                f"(after any leading dimensions), found a tensor of shape {tuple(x.shape)}"
            )
        leading = x.shape[: x.dim() - trailing]
        flat = x.reshape(-1, *classifier.shape)
        apply = classifier.features if features else classifier
        outputs = [
            apply(flat[start : start + batch_size].to(self.device))
            for start in range(0, flat.shape[0], batch_size)
        ]
        out = torch.cat(outputs) if outputs else apply(flat.to(self.device))
        return out.reshape(*leading, out.shape[-1]).to(x.device)

    def logits(self, name: str, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Class logits ``(..., N, num_classes)`` of samples ``(..., N, *shape)``."""
        return self._apply(name, x, batch_size, features=False)

    def predict(self, name: str, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Predicted classes ``(..., N)`` of samples ``(..., N, *shape)`` of modality ``name``."""
        return self.logits(name, x, batch_size).argmax(-1)

    def features(self, name: str, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Penultimate activations ``(..., N, F)`` of samples ``(..., N, *shape)``."""
        return self._apply(name, x, batch_size, features=True)

    # --------------------------------------------------------------------------------------------
    # Saving and loading

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the set to ``directory`` atomically (a staging sibling, then a rename).

        Raises:
            ClassifierError: If ``directory`` holds something other than a classifier set.
        """
        directory = Path(directory)
        _check_destination(directory)
        document = {
            "format_version": FORMAT_VERSION,
            "num_classes": self.num_classes,
            "dataset": self.dataset,
            "modalities": {
                name: {
                    **classifier.description(),
                    "test_accuracy": self.accuracy.get(name),
                    "val_accuracy": self.val_accuracy.get(name),
                }
                for name, classifier in self.classifiers.items()
            },
        }
        state = {
            f"{name}.{key}": value.detach().contiguous().cpu()
            for name, classifier in self.classifiers.items()
            for key, value in classifier.state_dict().items()
        }
        with staged_folder(directory) as staging:
            (staging / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True))
            save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        return directory

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], map_location: str | torch.device = "cpu"
    ) -> ClassifierSet:
        """Read a set written by :meth:`save` (or :func:`train_classifiers`).

        Raises:
            FileNotFoundError: If the folder has no classifier files.
            ClassifierError: If the files are unreadable or disagree with each other.
        """
        folder = Path(directory)
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{folder}: no {path.name}; not a classifier folder (write one with "
                    "train_classifiers)"
                )
        try:
            document = json.loads(config_path.read_text())
            version = document["format_version"]
            num_classes = int(document["num_classes"])
            entries = document["modalities"]
            if version != FORMAT_VERSION:
                raise ClassifierError(
                    f"{config_path}: expected format_version {FORMAT_VERSION}, found {version}"
                )
            classifiers = {
                name: ModalityClassifier.from_description(entry) for name, entry in entries.items()
            }
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            if isinstance(error, ClassifierError):
                raise
            raise ClassifierError(
                f"{config_path}: unreadable classifier description ({type(error).__name__}: "
                f"{error})"
            ) from None
        state = load_file(str(weights_path), device=str(map_location))
        used: set[str] = set()
        for name, classifier in classifiers.items():
            prefix = f"{name}."
            own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            try:
                classifier.load_state_dict(own, strict=True)
            except RuntimeError as error:
                raise ClassifierError(
                    f"{weights_path}: weights of {name!r} do not match its description ({error})"
                ) from None
            used.update(prefix + k for k in own)
        unused = sorted(set(state) - used)
        if unused:
            raise ClassifierError(f"{weights_path}: weights of no described classifier: {unused}")
        loaded = cls(
            classifiers,
            num_classes,
            test_accuracy={n: e.get("test_accuracy") for n, e in entries.items()},
            val_accuracy={n: e.get("val_accuracy") for n, e in entries.items()},
            dataset=document.get("dataset") or {},
            source=str(folder),
        )
        return loaded.to(map_location)


# ------------------------------------------------------------------------------------------------
# Training


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
) -> ClassifierSet:
    """Train one classifier per modality on a labelled dataset and save the set.

    Each classifier trains with Adam on the ``train`` split, on the samples where its modality
    is present. After every epoch it is scored on the present samples of ``val`` (when the
    dataset has that split) and the epoch with the best validation accuracy is kept (the last
    epoch without ``val``); its accuracy on ``test`` (when present) is recorded. Training runs
    under its own seeded random state, so the caller's is left untouched.

    Args:
        dataset_dir: Dataset folder with a labelled ``train`` split.
        out_dir: Where to write the set; ``dataset_dir/classifiers`` by default.
        epochs: Passes over the train split.
        batch_size: Rows per training batch (before keeping the present samples).
        lr: Adam's learning rate.
        seed: Seed of the initial weights and of the shuffling.
        modalities: Modalities to train classifiers for; all by default.
        progress: Show a progress bar over epochs.
        device: Where to train; CUDA when available by default.
        options: Modality name -> architecture options (see :data:`DEFAULT_OPTIONS`).

    Returns:
        The trained set, on ``device``.

    Raises:
        ClassifierError: For a dataset without labels, an unknown modality, or a modality
            never present in the train split.
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
    folder = Path(out_dir) if out_dir is not None else root / DEFAULT_FOLDER
    _check_destination(folder)
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
    result.save(folder)
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
