"""What a dataset folder holds: modalities, split sizes, presence rates and label balance."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from multivae.data.consistency import check_dataset, check_no_nulls
from multivae.data.errors import DataFormatError
from multivae.data.reader import MultimodalDataset, list_splits, read_file_schema, split_files
from multivae.data.schema import LABEL_COLUMN, presence_column


def summarize(root: str | os.PathLike[str], *, validate: bool = False) -> dict[str, Any]:
    """Describe a dataset folder from its metadata, presence flags and labels.

    Only the presence and label columns are read, so this is fast on large datasets. With
    ``validate``, every row group of every split is also decoded and checked against the schema
    (NaN, range, presence consistency), with a progress bar.

    Returns:
        A JSON-ready dictionary with ``name``, ``modalities``, ``num_classes``, ``missingness``
        and, per split, ``rows``, ``files``, ``presence`` (fraction of samples with each
        modality present) and ``label_counts``.
    """
    root = Path(root)
    splits = list_splits(root)
    if not splits:
        raise FileNotFoundError(f"{root}: expected split folders train/, val/ or test/, found none")
    schema = read_file_schema(split_files(root, splits[0])[0])
    if validate:
        # What no file alone can tell: one schema for all splits, unique sample ids, labels.
        check_dataset(root)
    summary: dict[str, Any] = {
        "path": str(root),
        "name": schema.name,
        "modalities": [m.to_dict() for m in schema.modalities],
        "num_classes": schema.num_classes,
        "class_names": None if schema.class_names is None else list(schema.class_names),
        "missingness": schema.missingness,
        "splits": {},
    }
    for split in splits:
        files = split_files(root, split)
        columns = [presence_column(m) for m in schema.modality_names]
        if schema.num_classes is not None:
            columns.append(LABEL_COLUMN)
        for path in files:
            read_file_schema(path)
        if validate:
            # Every row checked first, so that statistics are only taken of valid columns.
            dataset = MultimodalDataset(root, split, cache_size=1)
            for start, _ in tqdm(dataset.row_group_spans, desc=f"validating {split}", unit="group"):
                dataset[start]
        table = pq.ParquetDataset(files).read(columns=columns)
        check_no_nulls(table, root / split)
        rows = table.num_rows
        info: dict[str, Any] = {
            "rows": rows,
            "files": len(files),
            "bytes": sum(p.stat().st_size for p in files),
            "presence": {
                name: float(np.mean(table.column(presence_column(name)).to_numpy()))
                if rows
                else 0.0
                for name in schema.modality_names
            },
        }
        if schema.num_classes is not None:
            labels = table.column(LABEL_COLUMN).to_numpy()
            outside = (labels < 0) | (labels >= schema.num_classes)
            if outside.any():
                raise DataFormatError(
                    f"expected labels in [0, {schema.num_classes - 1}], found "
                    f"{int(labels[np.argmax(outside)])}",
                    where=f"{root / split}",
                    column=LABEL_COLUMN,
                )
            info["label_counts"] = np.bincount(labels, minlength=schema.num_classes).tolist()
        if validate:
            info["validated"] = True
        summary["splits"][split] = info
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as text for a terminal."""
    lines = [f"dataset {summary['name']!r} at {summary['path']}", "", "modalities:"]
    for m in summary["modalities"]:
        value_range = (
            "any" if m["value_range"] is None else "[{:g}, {:g}]".format(*m["value_range"])
        )
        categories = f", {m['num_categories']} categories" if m["num_categories"] else ""
        lines.append(
            f"  {m['name']:<12} shape {tuple(m['shape'])!s:<14} {m['dtype']:<8} {m['kind']:<12} "
            f"range {value_range:<10} likelihood {m['likelihood']}{categories}"
        )
    names = [m["name"] for m in summary["modalities"]]
    lines += ["", "splits (presence rate per modality):"]
    header = f"  {'split':<6} {'rows':>8} {'files':>5} {'MB':>8}  " + " ".join(
        f"{n:>8}" for n in names
    )
    lines.append(header)
    for split, info in summary["splits"].items():
        rates = " ".join(f"{info['presence'][n]:>8.1%}" for n in names)
        lines.append(
            f"  {split:<6} {info['rows']:>8} {info['files']:>5} {info['bytes'] / 2**20:>8.1f}  "
            f"{rates}"
        )
    if summary["num_classes"] is not None:
        lines += ["", f"labels ({summary['num_classes']} classes; count per class, min/max):"]
        for split, info in summary["splits"].items():
            counts = info["label_counts"]
            ratio = min(counts) / max(counts) if max(counts) else 0.0
            lines.append(f"  {split:<6} {counts}  balance {ratio:.2f}")
    if summary["missingness"]:
        lines += ["", "missingness:"]
        for split, record in summary["missingness"].items():
            settings = ", ".join(f"{k}={v}" for k, v in record.items() if k != "scheme")
            lines.append(f"  {split:<6} {record.get('scheme', '?')}: {settings}")
    if any(info.get("validated") for info in summary["splits"].values()):
        lines += ["", "every row group decoded and validated: OK"]
    return "\n".join(lines)
