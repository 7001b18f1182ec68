"""The latents a sampler is fitted on, and fitting a sampler on a model's encoded data.

A sampler fitted here records the model whose latents it models (its folder and fingerprint,
when the model was loaded from or saved to a folder: :func:`multivae.model_folder.model_source`);
:func:`check_sampler_model` refuses to draw a model's latents from a sampler of another model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from multivae.config import ConfigError, check_known_keys, read_json
from multivae.data.batch import Batch
from multivae.io import staged_folder
from multivae.model_folder import ModelSource, model_source
from multivae.models.base import MultimodalVAE
from multivae.names import JOINT_SAMPLER_FILE, PRIVATE_SAMPLERS_FOLDER, SHARED_SAMPLER_FOLDER
from multivae.samplers.base import CONFIG_FILE, LatentSampler, create_sampler


def _chunks(batch: Batch, size: int) -> Iterator[Batch]:
    """``batch`` in consecutive pieces of at most ``size`` rows."""
    for start in range(0, len(batch), size):
        rows = slice(start, start + size)
        yield Batch(
            data={name: values[rows] for name, values in batch.data.items()},
            mask={name: flags[rows] for name, flags in batch.mask.items()},
            label=None if batch.label is None else batch.label[rows],
            sample_id=None if batch.sample_id is None else batch.sample_id[rows],
        )


def encode_latents(
    model: MultimodalVAE,
    data: Batch | Iterable[Batch],
    cond: Sequence[str] | None = None,
    use_mean: bool = True,
    batch_size: int = 512,
    *,
    drop_unobserved: bool = True,
) -> torch.Tensor:
    """Encode data into the shared latents a sampler is fitted on.

    Each sample's latent comes from ``model.posterior(batch, cond)``: its mean (``use_mean``)
    or one draw from it (from the global torch RNG), given the sample's observed ``cond``
    modalities (all modalities by default). The model runs in eval mode under
    ``torch.no_grad`` on its own device; its train/eval mode is restored afterwards.

    Only the shared latent is encoded. For a model with private latents (MoPoE with
    ``private_dim > 0``), a sampler fitted on these latents models the shared space alone:
    ``model.sample(n, sampler=s)`` takes ``z`` from ``s.sample(n)`` and each decoder's private
    part from the model's prior (``w_m ~ N(0, I)``), unless the sampler is a
    :class:`JointSampler` (:func:`fit_joint_sampler`), whose private samplers are fitted on
    :func:`encode_private_latents`.

    Args:
        model: A model of the zoo.
        data: One batch (encoded ``batch_size`` rows at a time) or an iterable of batches,
            such as a ``DataLoader`` from :func:`multivae.make_dataloader` (each batch also
            split into pieces of at most ``batch_size`` rows).
        cond: The modalities the latents are inferred from; all by default.
        use_mean: The posterior mean (deterministic) rather than one posterior sample.
        batch_size: Most rows encoded at once.
        drop_unobserved: Leave out samples with none of the ``cond`` modalities observed
            (their posterior is the model's prior, which says nothing about the data). With
            ``cond=None`` every sample of a multivae dataset has an observed modality.

    Returns:
        Float32 CPU latents ``(N, latent_dim)``, in the order of the data, ``N`` the number of
        samples kept.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"encode_latents: expected batch_size >= 1, found {batch_size!r}")
    names = model.modalities if cond is None else tuple(cond)
    batches: Iterable[Batch] = [data] if isinstance(data, Batch) else data
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    latents = []
    try:
        with torch.no_grad():
            for whole in batches:
                if not isinstance(whole, Batch):
                    raise TypeError(
                        f"encode_latents: expected Batch objects, found {type(whole).__name__}"
                    )
                for batch in _chunks(whole, batch_size):
                    batch = batch.to(device)
                    posterior = model.posterior(batch, cond)
                    z = posterior.mean if use_mean else posterior.rsample(1)[0]
                    if drop_unobserved:
                        observed = torch.stack([batch.mask[m] for m in names]).any(dim=0)
                        z = z[observed]
                    latents.append(z.to(device="cpu", dtype=torch.float32))
    finally:
        model.train(was_training)
    if not latents:
        raise ValueError("encode_latents: expected at least one batch, found none")
    return torch.cat(latents)


def fit_sampler(
    model: MultimodalVAE,
    data: Batch | Iterable[Batch],
    kind: str,
    *,
    cond: Sequence[str] | None = None,
    use_mean: bool = True,
    **options: Any,
) -> LatentSampler:
    """A sampler of kind ``kind`` fitted on ``encode_latents(model, data, cond, use_mean)``.

    Args:
        model: A model of the zoo.
        data: A batch or an iterable of batches (see :func:`encode_latents`).
        kind: ``prior``, ``gmm``, ``maf`` or ``iaf`` (a key of
            :data:`~multivae.samplers.SAMPLERS`).
        cond: The modalities the latents are inferred from; all by default.
        use_mean: Fit on posterior means rather than posterior samples.
        options: The sampler's options (see its class).

    Returns:
        The fitted sampler; pass it to ``model.sample(n, sampler=...)``. Its ``fitted_on``
        records the model's folder and fingerprint when the model has one.
    """
    sampler = create_sampler(kind, **options)
    sampler.fit(encode_latents(model, data, cond=cond, use_mean=use_mean))
    record_fitted_on(sampler, _model_record(model_source(model)))
    return sampler


def _model_record(source: ModelSource | None) -> dict[str, str]:
    if source is None:
        return {}
    return {"model": str(source.folder), "model_fingerprint": source.fingerprint}


def record_fitted_on(sampler: LatentSampler | JointSampler, entries: Mapping[str, str]) -> None:
    """Add ``entries`` (``model``, ``data`` and their fingerprints) to the sampler's record.

    A :class:`JointSampler` records them in its shared and every private sampler.
    """
    parts = (
        [sampler]
        if isinstance(sampler, LatentSampler)
        else [sampler.shared, *sampler.private_samplers.values()]
    )
    for part in parts:
        part.fitted_on.update(entries)


def check_sampler_model(
    sampler: LatentSampler | JointSampler, model: MultimodalVAE, where: str | os.PathLike[str]
) -> None:
    """Refuse a sampler fitted on the latents of another model than ``model``.

    The sampler's recorded ``model_fingerprint`` is compared with the fingerprint of the folder
    ``model`` was loaded from. Nothing is checked when either is unknown: a sampler saved
    before samplers recorded their model, or fitted on latents alone, and a model built in
    memory (or changed since it was loaded) are accepted as they are.

    Args:
        sampler: The fitted sampler.
        model: The model whose latents it is to draw.
        where: The sampler (its folder, or a description), for the message.

    Raises:
        ValueError: Naming both models, by folder and fingerprint.
    """
    recorded = sampler.fitted_on.get("model_fingerprint")
    source = model_source(model)
    if recorded is None or source is None or recorded == source.fingerprint:
        return
    raise ValueError(
        f"{where}: expected a sampler fitted on the latents of {source.folder} (fingerprint "
        f"{source.fingerprint}), found one fitted on those of "
        f"{sampler.fitted_on.get('model', 'another model')} (fingerprint {recorded}); fit a "
        "sampler on this model's latents instead"
    )


def encode_private_latents(
    model: MultimodalVAE, data: Batch | Iterable[Batch], batch_size: int = 512
) -> dict[str, torch.Tensor]:
    """Each modality's private posterior means over the samples where it is observed.

    Returns an empty mapping for a model without private latents (see
    :meth:`~multivae.models.base.MultimodalVAE.private_latent_means`).
    """
    batches = [data] if isinstance(data, Batch) else data
    found: dict[str, list[torch.Tensor]] = {name: [] for name in model.modalities}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                for piece in _chunks(batch, batch_size):
                    piece = piece.to(next(model.parameters()).device)
                    means = model.private_latent_means(piece)
                    if not means:
                        return {}
                    for name, mean in means.items():
                        found[name].append(mean[piece.mask[name]].cpu())
    finally:
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in found.items() if parts}


class JointSampler:
    """A sampler of the shared latent plus one per modality's private latent.

    ``model.sample(n, sampler=joint)`` draws ``z`` from :attr:`shared` and each modality's
    private latent from :attr:`private_samplers` (instead of the private prior).

    Saved as a folder: ``joint.json`` (``{"format_version": 1, "kind": "joint", "shared":
    KIND, "private": [modalities]}``), the shared sampler's folder in ``shared/`` and each
    private one in ``private/<modality>/`` (see :meth:`LatentSampler.save`; each records what
    it was fitted on, and the shared one's record is the joint sampler's :attr:`fitted_on`).
    """

    def __init__(self, shared: LatentSampler, private: dict[str, LatentSampler]) -> None:
        self.shared = shared
        self.private_samplers = private

    @property
    def kind(self) -> str:
        """The shared sampler's kind."""
        return self.shared.kind

    @property
    def dim(self) -> int:
        """Dimension of the shared latent."""
        return self.shared.dim

    @property
    def fitted_on(self) -> dict[str, str]:
        """What the shared sampler was fitted on (see :attr:`LatentSampler.fitted_on`)."""
        return self.shared.fitted_on

    @property
    def is_fitted(self) -> bool:
        """Whether the shared and every private sampler are fitted."""
        return self.shared.is_fitted and all(s.is_fitted for s in self.private_samplers.values())

    def config(self) -> dict[str, Any]:
        """The shared sampler's options, and which modalities have a private sampler."""
        return {**self.shared.config(), "private": sorted(self.private_samplers)}

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws of the shared latent."""
        return self.shared.sample(n, generator)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write every sampler into one folder, atomically.

        Raises:
            SamplerNotFittedError: If a sampler is not fitted.
            ValueError: For a path that is a file or a folder of something else.
        """
        directory = Path(directory)
        if directory.exists() and not (directory.is_dir() and _is_sampler_folder(directory)):
            raise ValueError(
                f"{directory} exists and is not a sampler folder; give a new or empty folder"
            )
        with staged_folder(directory) as staging:
            self.shared.save(staging / SHARED_FOLDER)
            for name, sampler in self.private_samplers.items():
                sampler.save(staging / PRIVATE_FOLDER / name)
            document = {
                "format_version": JOINT_FORMAT_VERSION,
                "kind": "joint",
                "shared": self.shared.kind,
                "private": sorted(self.private_samplers),
            }
            (staging / JOINT_FILE).write_text(json.dumps(document, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> JointSampler:
        """Load a folder written by :meth:`save`; nothing in it is executed.

        Raises:
            FileNotFoundError: For a missing folder, ``joint.json`` or sampler folder.
            ConfigError: For an unreadable ``joint.json`` or another format version.
        """
        folder = Path(directory)
        path = folder / JOINT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no {JOINT_FILE}; expected a JointSampler folder")
        try:
            document = read_json(path.read_text())
            version, names = document["format_version"], document["private"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ConfigError(f"{path}: unreadable joint sampler config ({error!r})") from None
        if version != JOINT_FORMAT_VERSION:
            raise ConfigError(f"{path}: expected format_version 1, found {version!r}")
        check_known_keys(document, ("format_version", "kind", "shared", "private"), str(path))
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{path}: expected 'private' to list modality names, found {names}")
        return cls(
            LatentSampler.load(folder / SHARED_FOLDER),
            {name: LatentSampler.load(folder / PRIVATE_FOLDER / name) for name in names},
        )


JOINT_FORMAT_VERSION = 1
JOINT_FILE = JOINT_SAMPLER_FILE
SHARED_FOLDER = SHARED_SAMPLER_FOLDER
PRIVATE_FOLDER = PRIVATE_SAMPLERS_FOLDER


def _is_sampler_folder(folder: Path) -> bool:
    names = {p.name for p in folder.iterdir()}
    return not names or JOINT_FILE in names or CONFIG_FILE in names


def load_sampler(directory: str | os.PathLike[str]) -> LatentSampler | JointSampler:
    """Load a saved sampler folder of any kind: a :class:`JointSampler` or a single sampler.

    Raises:
        FileNotFoundError: For a missing folder or file.
        ConfigError: For an unreadable config, another format version, an unknown kind or
            unknown options.
        ValueError: For tensors that do not match the config.
    """
    if (Path(directory) / JOINT_FILE).is_file():
        return JointSampler.load(directory)
    return LatentSampler.load(directory)


def fit_joint_sampler(
    model: MultimodalVAE, data: Batch | Iterable[Batch], kind: str, **options: Any
) -> LatentSampler | JointSampler:
    """A sampler of ``kind`` for the shared latent, and one per private latent space.

    Each modality's private sampler is fitted on that modality's observed samples; a model
    without private latents gets the shared sampler alone. ``data`` is a batch or a
    re-iterable collection of batches (a ``DataLoader``): it is read twice.
    """
    shared = fit_sampler(model, data, kind, **options)
    private = {
        name: create_sampler(kind, **options).fit(latents)
        for name, latents in encode_private_latents(model, data).items()
    }
    if not private:
        return shared
    joint = JointSampler(shared, private)
    record_fitted_on(joint, shared.fitted_on)
    return joint
