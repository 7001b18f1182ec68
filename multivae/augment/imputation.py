"""Imputation: a copy of a dataset whose missing modalities are generated from observed ones."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from multivae.augment.common import (
    PROVENANCE_KEY,
    as_stored,
    check_destination,
    check_int,
    check_model_matches,
    library_version,
    model_device,
    now,
    seeded_eval,
)
from multivae.data.batch import Batch
from multivae.data.fingerprint import dataset_fingerprint
from multivae.data.reader import MultimodalDataset, list_splits, read_schema
from multivae.data.schema import SPLITS
from multivae.data.writer import SplitWriter, check_split_name
from multivae.factory import load_model
from multivae.io import staged_folder, write_output_marker
from multivae.model_folder import model_source
from multivae.models.base import MultimodalVAE

IMPUTATION_METHODS = ("mean", "sample")
"""How :func:`impute_dataset` generates a missing cell (see there)."""


def _impute_batch(
    model: MultimodalVAE, batch: Batch, gen: Sequence[str], method: str
) -> dict[str, torch.Tensor]:
    """Each sample's ``gen`` modalities generated from its observed modalities.

    Conditioning on every modality makes the posterior use, per sample, exactly the modalities
    present in that sample (absent experts are masked), so one call serves every presence
    pattern of the batch.
    """
    cond = list(model.modalities)
    return model.predict(batch, cond=cond, gen=gen, use_mean=(method == "mean"))


def impute_dataset(
    model: MultimodalVAE,
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    splits: Sequence[str] | None = None,
    batch_size: int = 512,
    seed: int = 0,
    progress: bool = True,
    method: str = "mean",
    model_path: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Copy a dataset with every missing modality generated from each sample's observed ones.

    For each sample, the modalities it lacks are decoded from the model's posterior given the
    modalities it has (``model.posterior(batch, cond=all)``, which uses each sample's present
    modalities only). Observed cells are copied unchanged; generated values are clamped to the
    declared value range and cast to the dtype. Every presence flag of the output is true and
    its ``<name>__imputed`` columns are true exactly where the source lacked the modality (or
    was already imputed). Labels, sample ids and row order are kept.

    Args:
        model: The model that generates the missing cells.
        data_dir: The source dataset folder.
        out_dir: The dataset folder to write (not ``data_dir``): new or empty, or
            (``overwrite``) an earlier output of this command, replaced when every split is
            complete; anything else is refused (:func:`multivae.io.claim_output`).
        splits: The splits to impute; every split of the source by default.
        batch_size: Rows read, imputed and written at a time.
        seed: Seed of the random draws of ``method="sample"`` (each split starts from it).
        progress: Show a progress bar.
        method: ``"mean"`` (default, deterministic): the likelihood mean decoded from the
            posterior mean, private latents of missing modalities at their prior mean (zero).
            ``"sample"``: ``model.predict``, the likelihood mean decoded from one posterior
            draw (and private latents from the prior); the same seed and ``batch_size`` give
            the same data.
        model_path: The model's folder, recorded in the provenance (the fingerprint recorded
            is that of the folder ``model`` was loaded from, when it was).
        overwrite: Replace ``out_dir`` when it holds an earlier output of this command.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: For an unknown method, a split the source lacks, a dataset that does not
            match the model or an unusable ``out_dir``.
    """
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed, 0)
    if method not in IMPUTATION_METHODS:
        raise ValueError(
            f"unknown imputation method {method!r}; expected one of {list(IMPUTATION_METHODS)}"
        )
    source = Path(data_dir)
    out = Path(out_dir)
    available = list_splits(source)
    if splits is None:
        chosen = available
    else:
        if isinstance(splits, str):
            raise TypeError(f"expected a list of split names, found the string {splits!r}")
        chosen = list(dict.fromkeys(splits))
        for split in chosen:
            check_split_name(split, where=source)
        absent = [split for split in chosen if split not in available]
        if absent:
            raise ValueError(f"{source}: no splits {absent}; the dataset has {available}")
    if not chosen:
        raise ValueError(f"{source}: expected split folders {list(SPLITS)}, found none")
    check_destination(out, source, command="multivae impute", overwrite=overwrite)
    datasets = {split: MultimodalDataset(source, split) for split in chosen}
    for split, dataset in datasets.items():
        check_model_matches(model, dataset.schema, source / split, model_path)
    device = model_device(model)
    model_folder = model_source(model)
    model_fingerprint = None if model_folder is None else model_folder.fingerprint
    source_fingerprint = dataset_fingerprint(source)
    total = sum(len(dataset) for dataset in datasets.values())
    bar = tqdm(total=total, desc="imputing", unit="sample", disable=not progress)
    try:
        with staged_folder(out) as staging:
            write_output_marker(staging, "dataset", "multivae impute")
            for split, dataset in datasets.items():
                schema = dataset.schema
                provenance: dict[str, Any] = {
                    "operation": "impute",
                    "model": model.name,
                    "model_path": None if model_path is None else str(model_path),
                    "model_fingerprint": model_fingerprint,
                    "method": method,
                    "source": str(source),
                    "source_fingerprint": source_fingerprint,
                    "splits": chosen,
                    "seed": seed,
                    "batch_size": batch_size,
                    "created": now(),
                    "multivae_version": library_version(),
                }
                if PROVENANCE_KEY in schema.extra:
                    provenance["source_provenance"] = schema.extra[PROVENANCE_KEY]
                out_schema = replace(
                    schema, imputed=True, extra={**schema.extra, PROVENANCE_KEY: provenance}
                )
                already = dataset.read_imputed()
                with (
                    seeded_eval(model, seed),
                    SplitWriter(staging, split, out_schema) as writer,
                ):
                    for start in range(0, len(dataset), batch_size):
                        rows = range(start, min(start + batch_size, len(dataset)))
                        block = dataset.__getitems__(rows)
                        missing = {name: ~flags for name, flags in block.present.items()}
                        gen = [name for name in model.modalities if missing[name].any()]
                        data = dict(block.data)
                        if gen:
                            generated = _impute_batch(
                                model, block.to_batch().to(device), gen, method
                            )
                            for name in gen:
                                values = as_stored(schema[name], generated[name])
                                filled = block.data[name].copy()
                                filled[missing[name]] = values[missing[name]]
                                data[name] = filled
                        imputed = {
                            name: missing[name]
                            if already is None
                            else missing[name] | already[name][start : rows.stop]
                            for name in model.modalities
                        }
                        present = {name: np.ones(len(rows), dtype=bool) for name in data}
                        writer.write(data, present, block.labels, block.sample_ids, imputed)
                        bar.update(len(rows))
    finally:
        bar.close()
    return out


def impute_command(
    model_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    seed: int = 0,
    *,
    method: str = "mean",
    splits: Sequence[str] | None = None,
    batch_size: int = 512,
    progress: bool = True,
    overwrite: bool = False,
    revision: str | None = None,
) -> Path:
    """``multivae impute``: fill a dataset's missing modalities with a saved model.

    Args:
        model_dir: The model folder (or Hub repository id).
        data_dir: The source dataset; it must have the model's modalities and shapes.
        out: The dataset folder to write.
        seed: Seed of the random draws (``method="sample"``).
        method: ``mean`` or ``sample`` (see :func:`impute_dataset`).
        splits: The splits to impute; all by default.
        batch_size: Rows imputed at a time.
        progress: Show a progress bar.
        overwrite: Replace ``out`` when it holds an earlier output of this command.
        revision: For a Hub repository id: the branch, tag or commit hash to load.

    Returns:
        The dataset folder.
    """
    model = load_model(model_dir, revision=revision)
    check_model_matches(model, read_schema(data_dir), data_dir, model_dir)
    return impute_dataset(
        model,
        data_dir,
        out,
        splits=splits,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
        method=method,
        model_path=model_dir,
        overwrite=overwrite,
    )
