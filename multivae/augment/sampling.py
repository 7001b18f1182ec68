"""Synthetic datasets: samples of every modality generated from latents, for augmentation."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    schema_from_model,
    seeded_eval,
)
from multivae.data.batch import Batch
from multivae.data.fingerprint import dataset_fingerprint
from multivae.data.reader import MultimodalDataset, make_dataloader, read_schema
from multivae.data.schema import DatasetSchema
from multivae.data.writer import SplitWriter, check_split_name
from multivae.factory import load_model
from multivae.io import claim_output, staged_folder, write_output_marker
from multivae.model_folder import model_source
from multivae.models.base import MultimodalVAE
from multivae.samplers import (
    JointSampler,
    LatentSampler,
    check_sampler_model,
    create_sampler,
    encode_latents,
    fit_joint_sampler,
    load_sampler,
    record_fitted_on,
)

if TYPE_CHECKING:
    from multivae.metrics.classifiers import ClassifierSet

SAMPLE_COMMAND = "multivae sample"


def _resolve_sampler(
    model: MultimodalVAE,
    sampler: str | LatentSampler | JointSampler,
    fit_data: str | os.PathLike[str] | Batch | None,
    options: Mapping[str, Any],
    batch_size: int,
) -> tuple[LatentSampler | JointSampler | None, dict[str, Any]]:
    """The sampler to draw latents from (``None``: the model's own prior) and its record.

    A sampler kind is fitted on the shared latent and, for models with private latents, on
    each modality's private latent (:func:`~multivae.samplers.fit_joint_sampler`); a sampler
    fitted here records the model and ``fit_data`` (a folder) by fingerprint. A given fitted
    sampler is refused when it records another model. Must run under the seeded random state:
    fitting may draw random numbers.
    """
    latent_dim = model.config.latent_dim
    if isinstance(sampler, LatentSampler | JointSampler):
        if options:
            raise ValueError(
                f"sampler_options {dict(options)} apply to a sampler kind to fit; found an "
                f"already built {sampler.kind!r} sampler"
            )
        if not sampler.is_fitted:
            if isinstance(sampler, JointSampler):
                raise ValueError("the joint sampler is not fitted; fit it with fit_joint_sampler")
            if fit_data is None:
                raise ValueError(
                    f"the {sampler.kind!r} sampler is not fitted and no fit_data was given: fit "
                    "it first, or give fit_data (a dataset folder whose train split is encoded)"
                )
            sampler.fit(encode_latents(model, _fit_batches(fit_data, batch_size)))
            _record_fit(sampler, model, fit_data)
        check_sampler_model(sampler, model, f"the given {sampler.kind!r} sampler")
        if sampler.dim != latent_dim:
            raise ValueError(
                f"the {sampler.kind!r} sampler was fitted on latents of dimension {sampler.dim}, "
                f"but the model '{model.name}' has latent_dim {latent_dim}"
            )
        private = getattr(sampler, "private_samplers", {})
        unknown = sorted(set(private) - set(model.modalities))
        if unknown:
            raise ValueError(
                f"the {sampler.kind!r} sampler has private samplers for {unknown}, which the "
                f"model '{model.name}' does not have (modalities {list(model.modalities)})"
            )
        record = {"kind": sampler.kind, "options": sampler.config(), "fitted": "given"}
        return sampler, {**record, "fitted_on": dict(sampler.fitted_on)}
    if not isinstance(sampler, str):
        raise TypeError(
            f"expected a sampler kind or a LatentSampler, found {type(sampler).__name__}"
        )
    if sampler == "prior":
        if options:
            raise ValueError(f"the prior takes no sampler_options, found {dict(options)}")
        return None, {"kind": "prior", "options": {}}
    create_sampler(sampler, **options)  # Unknown kinds and options fail here, before any work.
    if fit_data is None:
        raise ValueError(
            f"sampler kind {sampler!r} must be fitted on encoded data: give fit_data (a dataset "
            "folder whose train split is encoded) or a fitted LatentSampler, or use 'prior'"
        )
    fitted = fit_joint_sampler(model, _fit_batches(fit_data, batch_size), sampler, **options)
    _record_fit(fitted, model, fit_data)
    record = {"kind": sampler, "options": fitted.config(), "fitted": "fit_data"}
    return fitted, {**record, "fitted_on": dict(fitted.fitted_on)}


def _record_fit(
    sampler: LatentSampler | JointSampler,
    model: MultimodalVAE,
    fit_data: str | os.PathLike[str] | Batch,
) -> None:
    """Record the model (by folder and fingerprint) and the ``fit_data`` folder in the sampler."""
    source = model_source(model)
    if source is not None:
        entries = {"model": str(source.folder), "model_fingerprint": source.fingerprint}
        record_fitted_on(sampler, entries)
    if not isinstance(fit_data, Batch):
        folder = Path(fit_data)
        entries = {"data": str(folder.resolve()), "data_fingerprint": dataset_fingerprint(folder)}
        record_fitted_on(sampler, entries)


def _fit_batches(fit_data: str | os.PathLike[str] | Batch, batch_size: int) -> Any:
    """A batch, or a loader over the train split of a dataset folder, to encode."""
    if isinstance(fit_data, Batch):
        return fit_data
    return make_dataloader(MultimodalDataset(fit_data, "train"), batch_size)


def sample_dataset(
    model: MultimodalVAE,
    n: int,
    out_dir: str | os.PathLike[str],
    *,
    sampler: str | LatentSampler | JointSampler = "prior",
    fit_data: str | os.PathLike[str] | Batch | None = None,
    seed: int = 0,
    batch_size: int = 1024,
    split: str = "train",
    sampler_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    schema: DatasetSchema | None = None,
    model_path: str | os.PathLike[str] | None = None,
    label_with: ClassifierSet | None = None,
    save_sampler: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Generate a synthetic dataset of ``n`` samples, every modality present.

    Latents come from the model's prior (``sampler="prior"``), from a fitted
    :class:`~multivae.samplers.LatentSampler` or :class:`~multivae.samplers.JointSampler`, or
    from a sampler of the named kind fitted here on the posterior means of ``fit_data``'s train
    split (:func:`~multivae.samplers.fit_joint_sampler`: models with private latents also get
    one sampler per private space).
    Each modality is the likelihood mean decoded from them (``model.sample``), clamped to the
    dataset's declared value range and cast to its dtype.

    Args:
        model: The generating model.
        n: Number of samples (``>= 1``).
        out_dir: The dataset folder to write: new or empty, or (``overwrite``) an earlier
            output of this command, replaced when the new one is complete; anything else is
            refused (:func:`multivae.io.claim_output`).
        sampler: ``"prior"``, a sampler kind to fit on ``fit_data`` (``gmm``, ``maf``, ``iaf``),
            or a :class:`~multivae.samplers.LatentSampler` (fitted, or fitted on ``fit_data``).
        fit_data: A dataset folder (its train split is encoded) or a batch; its schema also
            describes the output when it is a folder.
        seed: Seed of every random draw (fitting, then sampling from the seed again); the same
            seed, inputs and ``batch_size`` give the same data, from a sampler fitted here as
            from its saved copy.
        batch_size: Samples generated and written at a time.
        split: The split the samples are written to.
        sampler_options: Options of the sampler kind to fit (see its class).
        progress: Show a progress bar.
        schema: Description of the output's modalities; by default ``fit_data``'s, else built
            from the model's config (:func:`schema_from_model`).
        model_path: The model's folder, recorded in the provenance (the fingerprint recorded
            is that of the folder ``model`` was loaded from, when it was).
        label_with: Classifiers whose prediction on the first modality becomes the label
            (the output has no label without them).
        save_sampler: A folder to save the sampler in (not for the prior), so the same
            latents can be drawn again with :func:`~multivae.samplers.load_sampler`; the one
            output rule applies to it (:func:`multivae.io.claim_output`, kind ``sampler``).
        overwrite: Replace ``out_dir`` (and ``save_sampler``) when it holds an earlier output
            of this command.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: For ``n < 1``, a sampler kind to fit without ``fit_data``, a sampler of
            another latent dimension or fitted on another model's latents, a dataset that does
            not match the model, or an unusable ``out_dir``.
    """
    check_int("n", n, 1)
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed, 0)
    check_split_name(split, where=out_dir)
    out = Path(out_dir)
    fit_folder = None if fit_data is None or isinstance(fit_data, Batch) else Path(fit_data)
    check_destination(out, fit_folder, command="multivae sample", overwrite=overwrite)
    if save_sampler is not None:
        claim_output(
            save_sampler, "sampler", SAMPLE_COMMAND, overwrite=overwrite, option="--save-sampler"
        )
    if schema is None:
        schema = (
            schema_from_model(model) if fit_folder is None else read_schema(fit_folder, "train")
        )
    check_model_matches(model, schema, fit_folder or "the given schema", model_path)
    label_modality = model.modalities[0]
    if label_with is not None:
        label_with.require([label_modality])
    device = model_device(model)
    specs = {spec.name: spec for spec in schema.modalities}
    source = model_source(model)
    with seeded_eval(model, seed):
        fitted, sampler_record = _resolve_sampler(
            model, sampler, fit_data, dict(sampler_options or {}), batch_size
        )
        if fit_folder is not None:
            sampler_record["fit_data"] = str(fit_folder)
        if save_sampler is not None:
            if fitted is None:
                raise ValueError("save_sampler: the prior has nothing to save; fit a sampler")
            fitted.save(save_sampler)
            write_output_marker(save_sampler, "sampler", SAMPLE_COMMAND)
            sampler_record["saved_to"] = str(save_sampler)
        # Draws start from the seed whether the sampler was fitted here or given: the same
        # seed gives the same data from a sampler and from its saved copy.
        torch.manual_seed(seed)
        provenance = {
            "operation": "sample",
            "model": model.name,
            "model_path": None if model_path is None else str(model_path),
            "model_fingerprint": None if source is None else source.fingerprint,
            "latent_dim": model.config.latent_dim,
            "sampler": sampler_record,
            "seed": seed,
            "n": n,
            "batch_size": batch_size,
            "split": split,
            "created": now(),
            "multivae_version": library_version(),
        }
        if label_with is not None:
            provenance["labels"] = {
                "classifier_of": label_modality,
                "classifiers": label_with.source,
            }
        num_classes = None if label_with is None else label_with.num_classes
        class_names = schema.class_names if schema.num_classes == num_classes else None
        out_schema = DatasetSchema(
            schema.modalities,
            num_classes=num_classes,
            class_names=class_names,
            name=f"{schema.name}-samples" if fit_folder is not None else schema.name,
            missingness=None,
            extra={PROVENANCE_KEY: provenance},
        )
        bar = tqdm(total=n, desc=f"sampling {split}", unit="sample", disable=not progress)
        try:
            with staged_folder(out) as staging, SplitWriter(staging, split, out_schema) as writer:
                write_output_marker(staging, "dataset", SAMPLE_COMMAND)
                for start in range(0, n, batch_size):
                    count = min(batch_size, n - start)
                    generated = model.sample(count, sampler=fitted)
                    data = {name: as_stored(specs[name], generated[name]) for name in specs}
                    labels = None
                    if label_with is not None:
                        values = torch.from_numpy(data[label_modality]).to(device)
                        labels = label_with.predict(label_modality, values).cpu().numpy()
                    present = {name: np.ones(count, dtype=bool) for name in specs}
                    writer.write(data, present, labels)
                    bar.update(count)
        finally:
            bar.close()
    return out


def sample_command(
    model_dir: str | os.PathLike[str],
    n: int,
    out: str | os.PathLike[str],
    sampler_kind: str | None = "prior",
    fit_data: str | os.PathLike[str] | None = None,
    seed: int = 0,
    sampler_dir: str | os.PathLike[str] | None = None,
    *,
    sampler_options: Mapping[str, Any] | None = None,
    batch_size: int = 1024,
    split: str = "train",
    progress: bool = True,
    save_sampler: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    revision: str | None = None,
) -> Path:
    """``multivae sample``: generate a synthetic dataset with a saved model.

    Args:
        model_dir: The model folder (or Hub repository id).
        n: Number of samples.
        out: The dataset folder to write.
        sampler_kind: ``prior`` or a kind to fit on ``fit_data``; with ``sampler_dir``, ``None``
            or the saved sampler's kind.
        fit_data: A dataset folder: its train split fits the sampler, its schema describes the
            output; it must have the model's modalities and shapes.
        seed: Seed of every random draw.
        sampler_dir: A saved sampler folder (:func:`~multivae.samplers.load_sampler`) to draw
            latents from; refused when it records another model than ``model_dir``'s (one
            saved before samplers recorded their model is taken unchecked).
        sampler_options: Options of the sampler kind to fit.
        batch_size: Samples generated at a time.
        split: The split written.
        progress: Show a progress bar.
        save_sampler: Where to save the fitted sampler (see :func:`sample_dataset`).
        overwrite: Replace ``out`` when it holds an earlier output of this command.
        revision: For a Hub repository id: the branch, tag or commit hash to load.

    Returns:
        The dataset folder.
    """
    model = load_model(model_dir, revision=revision)
    if fit_data is not None:
        check_model_matches(model, read_schema(fit_data), fit_data, model_dir)
    sampler: str | LatentSampler | JointSampler = "prior" if sampler_kind is None else sampler_kind
    if sampler_dir is not None:
        loaded = load_sampler(sampler_dir)
        if sampler_kind not in (None, "prior", loaded.kind):
            raise ValueError(
                f"{sampler_dir}: holds a {loaded.kind!r} sampler, but sampler kind "
                f"{sampler_kind!r} was asked for"
            )
        check_sampler_model(loaded, model, sampler_dir)
        sampler = loaded
    return sample_dataset(
        model,
        n,
        out,
        sampler=sampler,
        fit_data=fit_data,
        seed=seed,
        batch_size=batch_size,
        split=split,
        sampler_options=sampler_options,
        progress=progress,
        model_path=model_dir,
        save_sampler=save_sampler,
        overwrite=overwrite,
    )
