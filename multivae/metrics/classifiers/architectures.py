"""The judges' architectures: one classifier per modality, chosen by its kind and shape.

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

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from multivae.data.schema import ModalitySpec
from multivae.nn.architectures import CONV_SIZES, ConvEncoder, EmbeddingEncoder, MLPEncoder

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
