"""Checks of a whole dataset folder, beyond what each file says of itself.

Each file is checked on its own when it is read (:mod:`multivae.data.validation`); what no file
alone can tell is checked here, by :func:`check_dataset`:

* every split has files and rows, and every file of every split describes the same modalities,
  classes and imputation flags as the first file of the first split;
* no sample id, presence flag or label is null;
* a ``label`` column exists exactly when the schema declares classes;
* ``sample_id`` is unique across all files of all splits (a file copied twice, a sample in two
  splits, the same id twice in one file are refused).

Only schemas and the ``sample_id`` column are read: the cost is a few bytes per row.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from multivae.data.errors import DataFormatError
from multivae.data.reader import list_splits, read_file_schema, split_files
from multivae.data.schema import LABEL_COLUMN, SAMPLE_ID_COLUMN, DatasetSchema, presence_column


def check_no_nulls(table: pa.Table, where: str | Path) -> None:
    """Refuse a null cell in the flag columns (sample ids, presence flags, labels) read."""
    for column in table.column_names:
        nulls = table.column(column).null_count
        if nulls:
            raise DataFormatError(
                f"found {nulls} null cells; expected a value in every row (presence flags "
                "true or false, a sample id and a label per sample)",
                where=str(where),
                column=column,
            )


def _describe(schema: DatasetSchema) -> str:
    modalities = ", ".join(
        f"{spec.name} {tuple(spec.shape)} {spec.dtype}" for spec in schema.modalities
    )
    return f"modalities [{modalities}], num_classes {schema.num_classes}, imputed {schema.imputed}"


def check_dataset(root: str | os.PathLike[str]) -> DatasetSchema:
    """Check that the splits of a dataset folder form one consistent dataset; return its schema.

    Raises:
        DataFormatError: Naming the file (and column, row) and what disagrees with what.
    """
    root = Path(root)
    splits = list_splits(root)
    if not splits:
        raise DataFormatError("expected train, val or test splits, found none", where=str(root))
    reference: tuple[Path, DatasetSchema] | None = None
    seen: dict[int, tuple[Path, int]] = {}
    for split in splits:
        rows = 0
        for path in split_files(root, split):
            schema = read_file_schema(path)
            if reference is None:
                reference = (path, schema)
            elif (
                schema.modalities != reference[1].modalities
                or schema.num_classes != reference[1].num_classes
                or schema.imputed != reference[1].imputed
            ):
                raise DataFormatError(
                    f"expected the dataset's schema ({_describe(reference[1])}, from "
                    f"{reference[0].relative_to(root)}), found {_describe(schema)}",
                    file=path,
                )
            columns = set(pq.read_schema(path).names)
            if schema.num_classes is None and LABEL_COLUMN in columns:
                raise DataFormatError(
                    "found a label column but the schema declares no classes (num_classes is "
                    "null): set num_classes or drop the column",
                    file=path,
                    column=LABEL_COLUMN,
                )
            flags = [SAMPLE_ID_COLUMN, *(presence_column(m) for m in schema.modality_names)]
            if schema.num_classes is not None:
                flags.append(LABEL_COLUMN)
            table = pq.read_table(path, columns=flags)
            check_no_nulls(table, path)
            ids = table.column(SAMPLE_ID_COLUMN).to_numpy()
            _check_unique(root, path, ids, seen)
            rows += len(ids)
        if rows == 0:
            raise DataFormatError(
                f"expected at least one row in each split, found 0 in "
                f"{len(split_files(root, split))} file(s); remove the empty split folder or "
                "write rows into it",
                where=str(root / split),
            )
    assert reference is not None
    return reference[1]


def _check_unique(
    root: Path, path: Path, ids: np.ndarray, seen: dict[int, tuple[Path, int]]
) -> None:
    """Refuse an id already seen in this file or an earlier one; remember this file's ids."""
    values, first_rows, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        value = int(values[np.argmax(counts > 1)])
        rows = np.flatnonzero(ids == value)[:2]
        raise DataFormatError(
            f"expected unique sample_id values, found {value} in rows {int(rows[0])} and "
            f"{int(rows[1])} of the same file",
            file=path,
            column=SAMPLE_ID_COLUMN,
        )
    for value, row in zip(values.tolist(), first_rows.tolist(), strict=True):
        earlier = seen.get(value)
        if earlier is not None:
            hint = ""
            if earlier[0].parent != path.parent:
                hint = (
                    "; a dataset written before ids were numbered across splits: write it again "
                    "(multivae prepare-data / convert)"
                )
            raise DataFormatError(
                f"expected unique sample_id values across files and splits, found {value} "
                f"here (row {row}) and in {earlier[0].relative_to(root)} (row {earlier[1]})" + hint,
                file=path,
                column=SAMPLE_ID_COLUMN,
            )
        seen[value] = (path, row)
