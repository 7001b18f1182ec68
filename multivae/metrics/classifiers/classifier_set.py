"""A set of classifiers, one per modality: applied to samples, saved and loaded.

A set is a folder: ``classifiers.safetensors`` (every classifier's weights, keyed
``<modality>.<parameter>``) and ``classifiers.json`` (each classifier's architecture and the
accuracies measured when it was trained, and facts about the dataset). No pickle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from multivae.config import check_known_keys, read_json
from multivae.io import staged_folder, write_output_marker
from multivae.metrics.classifiers.architectures import ClassifierError, ModalityClassifier
from multivae.names import CLASSIFIERS_CONFIG_FILE, CLASSIFIERS_WEIGHTS_FILE

FORMAT_VERSION = 1


def check_destination(directory: Path) -> None:
    """Refuse to replace anything but a classifier folder (an empty folder is fine)."""
    if directory.exists() and (
        not directory.is_dir()
        or (any(directory.iterdir()) and not (directory / CLASSIFIERS_CONFIG_FILE).is_file())
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

    def save(self, directory: str | os.PathLike[str], *, command: str | None = None) -> Path:
        """Write the set to ``directory`` atomically (a staging sibling, then a rename).

        ``command``, when given, is recorded in the folder's output marker
        (:func:`multivae.io.write_output_marker`), so that it may replace the set later.

        Raises:
            ClassifierError: If ``directory`` holds something other than a classifier set.
        """
        directory = Path(directory)
        check_destination(directory)
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
            (staging / CLASSIFIERS_CONFIG_FILE).write_text(
                json.dumps(document, indent=2, sort_keys=True)
            )
            save_file(state, str(staging / CLASSIFIERS_WEIGHTS_FILE), metadata={"format": "pt"})
            if command is not None:
                write_output_marker(staging, "classifiers", command)
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
        config_path, weights_path = (
            folder / CLASSIFIERS_CONFIG_FILE,
            folder / CLASSIFIERS_WEIGHTS_FILE,
        )
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{folder}: no {path.name}; not a classifier folder (write one with "
                    "train_classifiers)"
                )
        try:
            document = read_json(config_path.read_text())
            check_known_keys(
                document,
                ("format_version", "num_classes", "dataset", "modalities"),
                str(config_path),
            )
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
