"""Data augmentation and imputation with a trained model, written as multivae datasets.

* :func:`sample_dataset` generates a fully synthetic dataset: ``n`` samples of every modality
  decoded from latents drawn from the model's prior or from a sampler fitted on encoded data
  (see :mod:`multivae.samplers`). Every presence flag is true.
* :func:`impute_dataset` copies a dataset and fills each sample's missing modalities with what
  the model generates from that sample's observed ones. Observed values are copied unchanged,
  every presence flag becomes true, and a ``<name>__imputed`` column per modality marks the
  generated cells (the schema sets ``imputed``; see :mod:`multivae.data.schema`).

Both write through :class:`~multivae.data.SplitWriter` in chunks, so memory stays bounded, and
build the output folder under a temporary name that replaces ``out_dir`` only when every split is
complete. Generated values are clamped to the value range the dataset declares and cast to its
dtype, so the output passes the same validation as any dataset. The dataset's description
records where the data came from under ``extra["provenance"]``: the operation, the model's name
and folder, the sampler or method, the seed, the sizes, the creation time and the library
version. The same inputs and seed give the same data.

:func:`sample_command` and :func:`impute_command` load a model folder and check that a dataset
matches its modalities before calling these; the ``multivae sample`` and ``multivae impute``
commands call them.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from multivae.data.batch import Batch
from multivae.data.reader import MultimodalDataset, list_splits, make_dataloader, read_schema
from multivae.data.schema import SPLITS, DatasetSchema, ModalitySpec
from multivae.data.writer import SplitWriter, check_split_name
from multivae.hub import load_model
from multivae.io import staged_folder
from multivae.models.base import MultimodalVAE
from multivae.samplers import (
    JointSampler,
    LatentSampler,
    create_sampler,
    encode_latents,
    fit_joint_sampler,
    load_sampler,
)

if TYPE_CHECKING:
    from multivae.metrics.classifiers import ClassifierSet

PROVENANCE_KEY = "provenance"
"""Key of :attr:`DatasetSchema.extra` under which generated datasets record their provenance."""

IMPUTATION_METHODS = ("mean", "sample")
"""How :func:`impute_dataset` generates a missing cell (see there)."""

__all__ = [
    "IMPUTATION_METHODS",
    "PROVENANCE_KEY",
    "check_model_matches",
    "impute_command",
    "impute_dataset",
    "sample_command",
    "sample_dataset",
    "schema_from_model",
]


# ------------------------------------------------------------------------------------------------
# Helpers


def _library_version() -> str:
    try:
        return importlib.metadata.version("multivae")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - an uninstalled checkout
        return "unknown"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _device(model: MultimodalVAE) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def _seeded_eval(model: MultimodalVAE, seed: int) -> Iterator[None]:
    """Run the block in eval mode, without gradients, under torch's RNG seeded with ``seed``.

    The caller's random state (CPU and the model's GPU) and the model's mode are restored.
    """
    device = _device(model)
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            yield
    finally:
        model.train(was_training)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"expected an integer {name} >= {minimum}, found {value!r}")
    return value


def _as_stored(spec: ModalitySpec, values: torch.Tensor) -> np.ndarray[Any, Any]:
    """Generated values in the form the dataset stores: clamped to the range, in its dtype.

    Integer dtypes get the values rounded first (class indices already are integers).
    """
    array = values.detach().cpu().numpy()
    dtype = spec.numpy_dtype
    low, high = spec.value_range if spec.value_range is not None else (-np.inf, np.inf)
    if np.issubdtype(dtype, np.integer):
        if np.issubdtype(array.dtype, np.floating):
            array = np.rint(array)
        info = np.iinfo(dtype)
        low, high = max(low, float(info.min)), min(high, float(info.max))
    if spec.value_range is not None or np.issubdtype(dtype, np.integer):
        array = np.clip(array, low, high)
    return np.ascontiguousarray(array.astype(dtype, copy=False))


def _check_destination(out_dir: Path, *sources: Path | None) -> None:
    """Refuse an ``out_dir`` that is a source of the data or holds something else than splits."""
    for source in sources:
        if source is not None and out_dir.resolve() == source.resolve():
            raise ValueError(
                f"{out_dir}: the output folder is the source dataset; give another folder"
            )
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ValueError(f"{out_dir} exists and is a file; give a folder for the dataset")
        foreign = sorted(
            p.name for p in out_dir.iterdir() if p.name not in SPLITS and not p.name.startswith(".")
        )
        if foreign:
            raise ValueError(
                f"{out_dir} exists and is not a multivae dataset (found {foreign}); give a new "
                "or empty folder, or a dataset folder to replace"
            )


def schema_from_model(model: MultimodalVAE, name: str | None = None) -> DatasetSchema:
    """A dataset description for a model's modalities, when the training data's is not at hand.

    Shapes and likelihoods come from the model's config. Categorical modalities store int64
    class indices; the others float32, with the range ``[0, 1]`` for a Bernoulli likelihood
    and no declared range otherwise. Three-dimensional modalities are images, the others
    tabular (or categorical).

    Args:
        model: The model.
        name: Name of the dataset; ``<model name>-samples`` by default.
    """
    modalities = []
    for modality, config in model.config.modalities.items():
        shape = tuple(int(s) for s in config.shape)
        if config.likelihood == "categorical":
            spec = ModalitySpec(
                modality,
                shape,
                "int64",
                "categorical" if shape == () else "text_tokens",
                likelihood="categorical",
                num_categories=config.num_categories,
            )
        else:
            spec = ModalitySpec(
                modality,
                shape,
                "float32",
                "image" if len(shape) == 3 else "tabular",
                value_range=(0.0, 1.0) if config.likelihood == "bernoulli" else None,
                likelihood=config.likelihood,
            )
        modalities.append(spec)
    return DatasetSchema(tuple(modalities), name=name or f"{model.name}-samples")


def check_model_matches(
    model: MultimodalVAE,
    schema: DatasetSchema,
    where: str | os.PathLike[str],
    model_where: str | os.PathLike[str] | None = None,
) -> None:
    """Refuse a dataset whose modalities or shapes differ from the model's.

    Args:
        model: The model.
        schema: The dataset's description.
        where: The dataset's folder (or another description of it), for the message.
        model_where: The model's folder, for the message.

    Raises:
        ValueError: Listing the expected and the found modalities with their shapes.
    """
    expected = {m: tuple(int(s) for s in c.shape) for m, c in model.config.modalities.items()}
    found = {spec.name: spec.shape for spec in schema.modalities}
    if expected == found:
        return
    model_text = f"model '{model.name}'" + (f" at {model_where}" if model_where else "")
    if set(expected) != set(found):
        problem = (
            f"expected the modalities of the {model_text}: {list(expected)}, found {list(found)}"
        )
    else:
        differing = {m: (expected[m], found[m]) for m in expected if expected[m] != found[m]}
        problem = "expected the shapes of the {}, found different ones: {}".format(
            model_text,
            "; ".join(f"{m}: expected {e}, found {f}" for m, (e, f) in differing.items()),
        )
    raise ValueError(
        f"{where}: the dataset does not match the model: {problem} (expected "
        f"{_with_shapes(expected)}, found {_with_shapes(found)})"
    )


def _with_shapes(shapes: Mapping[str, tuple[int, ...]]) -> str:
    return "[" + ", ".join(f"{m} {s}" for m, s in shapes.items()) + "]"


# ------------------------------------------------------------------------------------------------
# Synthetic datasets


def _resolve_sampler(
    model: MultimodalVAE,
    sampler: str | LatentSampler | JointSampler,
    fit_data: str | os.PathLike[str] | Batch | None,
    options: Mapping[str, Any],
    batch_size: int,
) -> tuple[LatentSampler | JointSampler | None, dict[str, Any]]:
    """The sampler to draw latents from (``None``: the model's own prior) and its record.

    A sampler kind is fitted on the shared latent and, for models with private latents, on
    each modality's private latent (:func:`~multivae.samplers.fit_joint_sampler`). Must run
    under the seeded random state: fitting may draw random numbers.
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
        return sampler, {"kind": sampler.kind, "options": sampler.config(), "fitted": "given"}
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
    record = {"kind": sampler, "options": fitted.config(), "fitted": "fit_data"}
    return fitted, record


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
        out_dir: The dataset folder to write; an existing dataset there is replaced when the new
            one is complete, anything else there is refused.
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
        model_path: The model's folder, recorded in the provenance.
        label_with: Classifiers whose prediction on the first modality becomes the label
            (the output has no label without them).
        save_sampler: A folder to save the sampler in (not for the prior), so the same
            latents can be drawn again with :func:`~multivae.samplers.load_sampler`.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: For ``n < 1``, a sampler kind to fit without ``fit_data``, a sampler of
            another latent dimension, a dataset that does not match the model, or an unusable
            ``out_dir``.
    """
    _check_int("n", n, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("seed", seed, 0)
    check_split_name(split, where=out_dir)
    out = Path(out_dir)
    fit_folder = None if fit_data is None or isinstance(fit_data, Batch) else Path(fit_data)
    _check_destination(out, fit_folder)
    if schema is None:
        schema = (
            schema_from_model(model) if fit_folder is None else read_schema(fit_folder, "train")
        )
    check_model_matches(model, schema, fit_folder or "the given schema", model_path)
    label_modality = model.modalities[0]
    if label_with is not None:
        label_with.require([label_modality])
    device = _device(model)
    specs = {spec.name: spec for spec in schema.modalities}
    with _seeded_eval(model, seed):
        fitted, sampler_record = _resolve_sampler(
            model, sampler, fit_data, dict(sampler_options or {}), batch_size
        )
        if fit_folder is not None:
            sampler_record["fit_data"] = str(fit_folder)
        if save_sampler is not None:
            if fitted is None:
                raise ValueError("save_sampler: the prior has nothing to save; fit a sampler")
            fitted.save(save_sampler)
            sampler_record["saved_to"] = str(save_sampler)
        # Draws start from the seed whether the sampler was fitted here or given: the same
        # seed gives the same data from a sampler and from its saved copy.
        torch.manual_seed(seed)
        provenance = {
            "operation": "sample",
            "model": model.name,
            "model_path": None if model_path is None else str(model_path),
            "latent_dim": model.config.latent_dim,
            "sampler": sampler_record,
            "seed": seed,
            "n": n,
            "batch_size": batch_size,
            "split": split,
            "created": _now(),
            "multivae_version": _library_version(),
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
                for start in range(0, n, batch_size):
                    count = min(batch_size, n - start)
                    generated = model.sample(count, sampler=fitted)
                    data = {name: _as_stored(specs[name], generated[name]) for name in specs}
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


# ------------------------------------------------------------------------------------------------
# Imputation


def _impute_batch(
    model: MultimodalVAE, batch: Batch, gen: Sequence[str], method: str
) -> dict[str, torch.Tensor]:
    """Each sample's ``gen`` modalities generated from its observed modalities.

    Conditioning on every modality makes the posterior use, per sample, exactly the modalities
    present in that sample (absent experts are masked), so one call serves every presence
    pattern of the batch.
    """
    cond = list(model.modalities)
    if method == "sample":
        return model.predict(batch, cond=cond, gen=gen)
    z = model.posterior(batch, cond).mean
    out = {}
    for name in gen:
        # Models with private latents append them after the shared one; a missing modality's
        # private latent has no posterior, so it takes its prior mean, zero.
        extra = model.decoder_latent_dim(name) - z.shape[-1]
        latent = z if extra <= 0 else torch.cat([z, z.new_zeros((*z.shape[:-1], extra))], -1)
        params = model.decode(latent, [name])[name]
        out[name] = model.likelihood(name).mean(params)
    return out


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
        out_dir: The dataset folder to write (not ``data_dir``); an existing dataset there is
            replaced when every split is complete, anything else there is refused.
        splits: The splits to impute; every split of the source by default.
        batch_size: Rows read, imputed and written at a time.
        seed: Seed of the random draws of ``method="sample"`` (each split starts from it).
        progress: Show a progress bar.
        method: ``"mean"`` (default, deterministic): the likelihood mean decoded from the
            posterior mean, private latents of missing modalities at their prior mean (zero).
            ``"sample"``: ``model.predict``, the likelihood mean decoded from one posterior
            draw (and private latents from the prior); the same seed and ``batch_size`` give
            the same data.
        model_path: The model's folder, recorded in the provenance.

    Returns:
        ``out_dir``.

    Raises:
        ValueError: For an unknown method, a split the source lacks, a dataset that does not
            match the model or an unusable ``out_dir``.
    """
    _check_int("batch_size", batch_size, 1)
    _check_int("seed", seed, 0)
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
    _check_destination(out, source)
    datasets = {split: MultimodalDataset(source, split) for split in chosen}
    for split, dataset in datasets.items():
        check_model_matches(model, dataset.schema, source / split, model_path)
    device = _device(model)
    total = sum(len(dataset) for dataset in datasets.values())
    bar = tqdm(total=total, desc="imputing", unit="sample", disable=not progress)
    try:
        with staged_folder(out) as staging:
            for split, dataset in datasets.items():
                schema = dataset.schema
                provenance: dict[str, Any] = {
                    "operation": "impute",
                    "model": model.name,
                    "model_path": None if model_path is None else str(model_path),
                    "method": method,
                    "source": str(source),
                    "splits": chosen,
                    "seed": seed,
                    "batch_size": batch_size,
                    "created": _now(),
                    "multivae_version": _library_version(),
                }
                if PROVENANCE_KEY in schema.extra:
                    provenance["source_provenance"] = schema.extra[PROVENANCE_KEY]
                out_schema = replace(
                    schema, imputed=True, extra={**schema.extra, PROVENANCE_KEY: provenance}
                )
                already = dataset.read_imputed()
                with (
                    _seeded_eval(model, seed),
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
                                values = _as_stored(schema[name], generated[name])
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


# ------------------------------------------------------------------------------------------------
# What the command line calls


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
            latents from.
        sampler_options: Options of the sampler kind to fit.
        batch_size: Samples generated at a time.
        split: The split written.
        progress: Show a progress bar.
        save_sampler: Where to save the fitted sampler (see :func:`sample_dataset`).

    Returns:
        The dataset folder.
    """
    model = load_model(model_dir)
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
    )


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

    Returns:
        The dataset folder.
    """
    model = load_model(model_dir)
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
    )
