"""The self-describing schema of a multimodal Parquet dataset.

Every Parquet file of a dataset carries, under the schema metadata key ``multivae``, a JSON
document that describes each modality (shape, dtype, kind, value range, suggested likelihood),
the label, and how missingness was generated. Nothing else is needed to train on the files.

Columns of a file:

* one column per modality, named after it: Arrow's canonical fixed-shape tensor extension type
  for modalities with at least one dimension, a plain primitive column for scalar modalities
  (for example a categorical class index);
* one boolean presence column per modality, ``<name>__present``;
* ``sample_id`` (int64), stable across re-generations of the same data;
* ``label`` (int64), when the dataset declares a label.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from multivae.data.errors import DataFormatError

FORMAT_VERSION = 1
METADATA_KEY = b"multivae"
SPLITS = ("train", "val", "test")
PRESENCE_SUFFIX = "__present"
SAMPLE_ID_COLUMN = "sample_id"
LABEL_COLUMN = "label"
KINDS = ("image", "tabular", "categorical", "text_tokens")
LIKELIHOODS = ("normal", "laplace", "bernoulli", "categorical")
DTYPES = ("float16", "float32", "float64", "uint8", "int8", "int16", "int32", "int64")
_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RESERVED = (SAMPLE_ID_COLUMN, LABEL_COLUMN)


def presence_column(modality: str) -> str:
    """Name of the boolean presence column of a modality."""
    return modality + PRESENCE_SUFFIX


@dataclass(frozen=True)
class ModalitySpec:
    """Description of one modality.

    Attributes:
        name: Column name; letters, digits and single underscores, starting with a letter.
        shape: Shape of one sample, without the batch dimension; ``()`` for a scalar.
        dtype: NumPy dtype name of the stored values.
        kind: One of ``image``, ``tabular``, ``categorical``, ``text_tokens``.
        value_range: Inclusive ``(low, high)`` bounds of present values, or ``None``.
        likelihood: Suggested decoder likelihood: ``normal``, ``laplace``, ``bernoulli`` or
            ``categorical``.
        num_categories: Number of classes of a categorical modality (values ``0..K-1``).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str
    value_range: tuple[float, float] | None = None
    likelihood: str = "normal"
    num_categories: int | None = None

    def __post_init__(self) -> None:
        where = f"modality '{self.name}'"
        if not _NAME_PATTERN.match(self.name) or "__" in self.name or self.name in _RESERVED:
            raise DataFormatError(
                "expected a name of letters, digits and single underscores starting with a "
                f"letter and not one of {_RESERVED}, found {self.name!r}",
                where=where,
            )
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if any(s <= 0 for s in self.shape):
            raise DataFormatError(
                f"expected positive dimensions, found shape {self.shape}", where=where
            )
        if self.dtype not in DTYPES:
            raise DataFormatError(f"expected dtype in {DTYPES}, found {self.dtype!r}", where=where)
        if self.kind not in KINDS:
            raise DataFormatError(f"expected kind in {KINDS}, found {self.kind!r}", where=where)
        if self.likelihood not in LIKELIHOODS:
            raise DataFormatError(
                f"expected likelihood in {LIKELIHOODS}, found {self.likelihood!r}", where=where
            )
        if self.value_range is not None:
            low, high = (float(v) for v in self.value_range)
            if not low <= high:
                raise DataFormatError(
                    f"expected value_range low <= high, found {self.value_range}", where=where
                )
            object.__setattr__(self, "value_range", (low, high))
        if self.kind == "categorical":
            if self.num_categories is None or self.num_categories < 2:
                raise DataFormatError(
                    f"a categorical modality needs num_categories >= 2, found "
                    f"{self.num_categories}",
                    where=where,
                )
            if not self.dtype.startswith(("int", "uint")):
                raise DataFormatError(
                    f"a categorical modality stores integer class indices, found dtype "
                    f"{self.dtype}",
                    where=where,
                )
            object.__setattr__(self, "value_range", (0.0, float(self.num_categories - 1)))

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The NumPy dtype of the stored values."""
        return np.dtype(self.dtype)

    @property
    def arrow_type(self) -> pa.DataType:
        """The Arrow type of the modality column."""
        value_type = pa.from_numpy_dtype(self.numpy_dtype)
        if self.shape == ():
            return value_type
        return pa.fixed_shape_tensor(value_type, list(self.shape))

    @property
    def values_per_sample(self) -> int:
        """Number of scalar values in one sample."""
        return int(np.prod(self.shape, dtype=np.int64))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["value_range"] = None if self.value_range is None else list(self.value_range)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModalitySpec:
        """Inverse of :meth:`to_dict`."""
        value_range = raw.get("value_range")
        return cls(
            name=raw["name"],
            shape=tuple(raw["shape"]),
            dtype=raw["dtype"],
            kind=raw["kind"],
            value_range=None if value_range is None else (value_range[0], value_range[1]),
            likelihood=raw.get("likelihood", "normal"),
            num_categories=raw.get("num_categories"),
        )


@dataclass(frozen=True)
class DatasetSchema:
    """Description of a whole dataset, stored in every one of its files.

    Attributes:
        modalities: The modalities, in a fixed order.
        num_classes: Number of label classes, or ``None`` when the dataset has no label.
        class_names: Optional readable names of the classes.
        name: Name of the dataset (for example ``poly-digits``).
        missingness: How presence masks were generated, per split (see
            :mod:`multivae.data.missingness`), or ``None`` for observed missingness.
        extra: Free-form JSON facts about the data (generator parameters, source files).
    """

    modalities: tuple[ModalitySpec, ...]
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    name: str = "dataset"
    missingness: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", tuple(self.modalities))
        if not self.modalities:
            raise DataFormatError("expected at least one modality, found none")
        names = [m.name for m in self.modalities]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise DataFormatError(f"expected unique modality names, found {duplicated} repeated")
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(self.class_names))
            if self.num_classes != len(self.class_names):
                raise DataFormatError(
                    f"expected {self.num_classes} class names, found {len(self.class_names)}"
                )

    @property
    def modality_names(self) -> tuple[str, ...]:
        """Names of the modalities, in order."""
        return tuple(m.name for m in self.modalities)

    def __getitem__(self, name: str) -> ModalitySpec:
        for spec in self.modalities:
            if spec.name == name:
                return spec
        raise KeyError(f"no modality {name!r}; the dataset has {list(self.modality_names)}")

    @property
    def bytes_per_sample(self) -> int:
        """Bytes of modality values in one sample (presence flags and ids excluded)."""
        return sum(m.values_per_sample * m.numpy_dtype.itemsize for m in self.modalities)

    def arrow_schema(self, split: str) -> pa.Schema:
        """The Arrow schema of a file of ``split``, with the JSON description attached."""
        fields = [pa.field(SAMPLE_ID_COLUMN, pa.int64(), nullable=False)]
        for spec in self.modalities:
            fields.append(pa.field(spec.name, spec.arrow_type, nullable=False))
            fields.append(pa.field(presence_column(spec.name), pa.bool_(), nullable=False))
        if self.num_classes is not None:
            fields.append(pa.field(LABEL_COLUMN, pa.int64(), nullable=False))
        return pa.schema(fields, metadata={METADATA_KEY: self.to_json(split).encode()})

    def to_json(self, split: str | None = None) -> str:
        """JSON description; ``split`` names the split the file belongs to."""
        document: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "modalities": [m.to_dict() for m in self.modalities],
            "num_classes": self.num_classes,
            "class_names": None if self.class_names is None else list(self.class_names),
            "missingness": self.missingness,
            "extra": self.extra,
        }
        if split is not None:
            document["split"] = split
        return json.dumps(document, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str | None = None) -> DatasetSchema:
        """Parse the JSON description found in a file's schema metadata."""
        try:
            raw = json.loads(text)
            version = raw.get("format_version")
            if version != FORMAT_VERSION:
                raise DataFormatError(
                    f"expected format_version {FORMAT_VERSION}, found {version!r}", where=where
                )
            class_names = raw.get("class_names")
            return cls(
                modalities=tuple(ModalitySpec.from_dict(m) for m in raw["modalities"]),
                num_classes=raw.get("num_classes"),
                class_names=None if class_names is None else tuple(class_names),
                name=raw.get("name", "dataset"),
                missingness=raw.get("missingness"),
                extra=raw.get("extra") or {},
            )
        except DataFormatError as error:
            if error.where is None and where is not None:
                raise DataFormatError(error.problem, where=where) from None
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise DataFormatError(
                f"unreadable multivae schema metadata ({type(error).__name__}: {error})",
                where=where,
            ) from None
