"""Checks shared by the writer and the reader: one implementation of every rule of the format."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from multivae.data.errors import DataFormatError
from multivae.data.schema import (
    LABEL_COLUMN,
    DatasetSchema,
    ModalitySpec,
    imputed_column,
    presence_column,
)


def check_modality(
    spec: ModalitySpec,
    values: np.ndarray[Any, Any],
    present: np.ndarray[Any, Any],
    *,
    file: str | None = None,
    row_offset: int = 0,
) -> None:
    """Check one modality's values of a chunk of rows against its description.

    Args:
        spec: The modality's description.
        values: Array of shape ``(rows, *spec.shape)``.
        present: Boolean array of shape ``(rows,)``.
        file: File the rows come from or go to, for the message.
        row_offset: Index of the chunk's first row within that file, for the message.

    Raises:
        DataFormatError: On a shape or dtype mismatch, a non-zero value in an absent cell, a
            NaN or infinite value, or a value outside ``spec.value_range``.
    """
    column = spec.name
    if values.shape[1:] != spec.shape:
        raise DataFormatError(
            f"expected samples of shape {spec.shape}, found {values.shape[1:]}",
            file=file,
            column=column,
        )
    if values.dtype != spec.numpy_dtype:
        raise DataFormatError(
            f"expected dtype {spec.dtype}, found {values.dtype}", file=file, column=column
        )
    if present.shape != values.shape[:1]:
        raise DataFormatError(
            f"expected {values.shape[0]} presence flags, found shape {present.shape}",
            file=file,
            column=presence_column(column),
        )
    if values.shape[0] == 0:
        return
    # One min and one max per row answer every question below without copying the values.
    flat = values.reshape(values.shape[0], -1)
    row_min, row_max = flat.min(axis=1), flat.max(axis=1)
    nonzero_absent = ~present & ((row_min != 0) | (row_max != 0))
    if nonzero_absent.any():
        raise DataFormatError(
            "presence flag is false but the stored value is not all zeros (a missing "
            "modality's cell must hold zeros)",
            file=file,
            column=column,
            row=row_offset + int(np.argmax(nonzero_absent)),
        )
    if np.issubdtype(values.dtype, np.floating):
        not_finite = present & ~(np.isfinite(row_min) & np.isfinite(row_max))
        if not_finite.any():
            row = int(np.argmax(not_finite))
            found = "NaN" if np.isnan(flat[row]).any() else "an infinite value"
            raise DataFormatError(
                f"expected finite values, found {found}",
                file=file,
                column=column,
                row=row_offset + row,
            )
    if spec.value_range is not None:
        range_low, range_high = spec.value_range
        outside = present & ((row_min < range_low) | (row_max > range_high))
        if outside.any():
            row = int(np.argmax(outside))
            row_values = flat[row]
            offending = row_values[(row_values < range_low) | (row_values > range_high)][0]
            raise DataFormatError(
                f"expected values in [{range_low:g}, {range_high:g}], found {offending.item()!r}",
                file=file,
                column=column,
                row=row_offset + row,
            )


def check_chunk(
    schema: DatasetSchema,
    data: Mapping[str, np.ndarray[Any, Any]],
    present: Mapping[str, np.ndarray[Any, Any]],
    labels: np.ndarray[Any, Any] | None,
    *,
    file: str | None = None,
    row_offset: int = 0,
    imputed: Mapping[str, np.ndarray[Any, Any]] | None = None,
) -> None:
    """Check a chunk of rows of every modality, its presence flags, imputation flags and labels.

    Args:
        schema: The dataset's description.
        data: Modality name -> values ``(rows, *shape)``.
        present: Modality name -> boolean presence flags ``(rows,)``.
        labels: Integer labels ``(rows,)``, or ``None``.
        file: File the rows come from or go to, for the message.
        row_offset: Index of the chunk's first row within that file, for the message.
        imputed: Modality name -> boolean flags ``(rows,)`` of imputed cells; required when
            ``schema.imputed`` and refused otherwise.

    Raises:
        DataFormatError: On any violation of the format, naming file, column and row.
    """
    rows = None
    for spec in schema.modalities:
        if spec.name not in data:
            raise DataFormatError("missing modality column", file=file, column=spec.name)
        if spec.name not in present:
            raise DataFormatError(
                "missing presence column", file=file, column=presence_column(spec.name)
            )
        flags = present[spec.name]
        if flags.dtype != np.bool_:
            raise DataFormatError(
                f"expected boolean presence flags, found dtype {flags.dtype}",
                file=file,
                column=presence_column(spec.name),
            )
        values = data[spec.name]
        if rows is None:
            rows = values.shape[0]
        elif values.shape[0] != rows:
            raise DataFormatError(
                f"expected {rows} rows like the other modalities, found {values.shape[0]}",
                file=file,
                column=spec.name,
            )
        check_modality(spec, values, flags, file=file, row_offset=row_offset)
    unknown = sorted(set(data) - set(schema.modality_names))
    if unknown:
        raise DataFormatError(
            f"expected modalities {list(schema.modality_names)}, found extra {unknown}", file=file
        )
    any_present = np.zeros(rows or 0, dtype=bool)
    for name in schema.modality_names:
        any_present |= present[name]
    if not any_present.all():
        raise DataFormatError(
            "expected at least one modality present in every sample, found none present",
            file=file,
            row=row_offset + int(np.argmin(any_present)),
        )
    check_imputed(schema, present, imputed, rows or 0, file=file, row_offset=row_offset)
    if schema.num_classes is None:
        if labels is not None:
            raise DataFormatError(
                "labels given but the schema declares no label (num_classes is None)",
                file=file,
                column=LABEL_COLUMN,
            )
        return
    if labels is None:
        raise DataFormatError(
            f"missing labels: the schema declares {schema.num_classes} classes",
            file=file,
            column=LABEL_COLUMN,
        )
    if labels.shape != (rows,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(
            f"expected {rows} integer labels, found shape {labels.shape} dtype {labels.dtype}",
            file=file,
            column=LABEL_COLUMN,
        )
    outside = (labels < 0) | (labels >= schema.num_classes)
    if outside.any():
        row = int(np.argmax(outside))
        raise DataFormatError(
            f"expected labels in [0, {schema.num_classes - 1}], found {int(labels[row])}",
            file=file,
            column=LABEL_COLUMN,
            row=row_offset + row,
        )


def check_imputed(
    schema: DatasetSchema,
    present: Mapping[str, np.ndarray[Any, Any]],
    imputed: Mapping[str, np.ndarray[Any, Any]] | None,
    rows: int,
    *,
    file: str | None = None,
    row_offset: int = 0,
) -> None:
    """Check the ``<name>__imputed`` flags of a chunk against the schema and presence flags.

    Raises:
        DataFormatError: When flags are given for a schema without ``imputed`` (or missing for
            one with it), are not boolean ``(rows,)``, or mark an absent cell as imputed.
    """
    if not schema.imputed:
        if imputed is not None:
            raise DataFormatError(
                "imputation flags given but the schema does not declare them (imputed is false)",
                file=file,
            )
        return
    if imputed is None:
        raise DataFormatError(
            "missing imputation flags: the schema declares imputed columns", file=file
        )
    unknown = sorted(set(imputed) - set(schema.modality_names))
    if unknown:
        raise DataFormatError(
            f"expected imputation flags of {list(schema.modality_names)}, found extra {unknown}",
            file=file,
        )
    for name in schema.modality_names:
        column = imputed_column(name)
        if name not in imputed:
            raise DataFormatError("missing imputation column", file=file, column=column)
        flags = imputed[name]
        if flags.dtype != np.bool_ or flags.shape != (rows,):
            raise DataFormatError(
                f"expected {rows} boolean imputation flags, found shape {flags.shape} dtype "
                f"{flags.dtype}",
                file=file,
                column=column,
            )
        absent = flags & ~present[name]
        if absent.any():
            raise DataFormatError(
                "imputation flag is true but the presence flag is false (an imputed cell holds "
                "generated values and is present)",
                file=file,
                column=column,
                row=row_offset + int(np.argmax(absent)),
            )
