"""The sampler base class, the sampler registry and sampler folders.

A saved sampler is a folder:

* ``sampler.json``: ``{"format_version": 1, "kind": KIND, "config": {...}, "dim": D}``: the
  sampler's constructor options as plain data and the dimension it was fitted on, and
  ``"fitted_on"`` when known: the model whose latents it was fitted on (``model``, its folder,
  and ``model_fingerprint``, :func:`multivae.model_folder.model_fingerprint`) and the data
  (``data`` and ``data_fingerprint``, :func:`multivae.data.fingerprint.dataset_fingerprint`);
* ``sampler.safetensors``: its fitted tensors (none for the prior).

A folder saved before samplers recorded ``fitted_on`` still loads, with nothing recorded.

Loading reads the JSON, builds the registered sampler class from its options and restores the
tensors; nothing in the folder is executed and nothing is unpickled.
"""

from __future__ import annotations

import abc
import difflib
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from multivae.config import ConfigError, check_known_keys, read_json
from multivae.io import staged_folder
from multivae.names import OUTPUT_MARKER_FILE, SAMPLER_CONFIG_FILE, SAMPLER_WEIGHTS_FILE

FORMAT_VERSION = 1
CONFIG_FILE = SAMPLER_CONFIG_FILE
"""The same name, for :mod:`multivae.samplers.encode`, which imports it from here."""

SamplerClass = TypeVar("SamplerClass", bound="type[LatentSampler]")
SAMPLERS: dict[str, type[LatentSampler]] = {}
"""Sampler kind -> class: ``prior``, ``gmm``, ``maf`` and ``iaf`` once :mod:`multivae.samplers`
is imported."""


class SamplerNotFittedError(RuntimeError):
    """A sampler was used (sampled, scored, saved) before :meth:`LatentSampler.fit`."""


def register_sampler(cls: SamplerClass) -> SamplerClass:
    """Class decorator: register a sampler class under its ``kind``."""
    if cls.kind in SAMPLERS and SAMPLERS[cls.kind] is not cls:
        raise ValueError(f"a sampler of kind {cls.kind!r} is already registered")
    SAMPLERS[cls.kind] = cls
    return cls


def _sampler_class(kind: str, where: str) -> type[LatentSampler]:
    if kind not in SAMPLERS:
        close = difflib.get_close_matches(str(kind), SAMPLERS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"{where}unknown sampler kind {kind!r}; expected one of {sorted(SAMPLERS)}.{hint}"
        )
    return SAMPLERS[kind]


def _check_options(cls: type[LatentSampler], options: dict[str, Any], where: str) -> None:
    """Refuse option names the sampler's constructor does not take."""
    known = cls.option_names()
    unknown = sorted(set(options) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"{where}{cls.__name__}: unknown options {unknown}; expected some of {list(known)}."
            f"{hint}"
        )


def create_sampler(kind: str, **options: Any) -> LatentSampler:
    """A new, unfitted sampler of kind ``kind`` (a key of :data:`SAMPLERS`) with ``options``.

    Raises:
        ConfigError: For an unknown kind or option name (with the closest known name).
    """
    cls = _sampler_class(kind, "")
    _check_options(cls, options, "")
    return cls(**options)


def load_sampler(directory: str | os.PathLike[str]) -> LatentSampler:
    """Load a sampler folder written by :meth:`LatentSampler.save`, whatever its kind."""
    return LatentSampler.load(directory)


def _write_folder_atomically(directory: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(staging)`` on a fresh hidden sibling folder, then move it to ``directory``.

    Readers see the old folder or the complete new one, never a partial one. An existing
    ``directory`` is replaced only when it is empty or a sampler folder.
    """
    if directory.exists():
        if not directory.is_dir():
            raise ValueError(f"{directory} exists and is a file; give a folder path")
        foreign = [
            p.name
            for p in directory.iterdir()
            if p.name not in (SAMPLER_CONFIG_FILE, SAMPLER_WEIGHTS_FILE, OUTPUT_MARKER_FILE)
        ]
        if foreign:
            raise ValueError(
                f"{directory} exists and is not a sampler folder (found {sorted(foreign)}); "
                "give a new or empty folder, or one written by LatentSampler.save"
            )
    with staged_folder(directory) as staging:
        write(staging)


class LatentSampler(abc.ABC):
    """A distribution over ``(N, D)`` latents, fitted on encoded data, to sample from.

    Subclasses set ``kind``, take their options as keyword arguments of ``__init__`` (plain
    JSON values, returned by :meth:`config`) and implement :meth:`_fit`, :meth:`_sample`,
    :meth:`_log_prob`, :meth:`_state` and :meth:`_restore`. The base checks every input and
    refuses use before :meth:`fit`. Samplers live on the CPU and return CPU tensors.
    """

    kind: ClassVar[str]

    def __init__(self) -> None:
        self._dim: int | None = None
        self.fitted_on: dict[str, str] = {}
        """What the latents were encoded with and from: ``model`` and ``model_fingerprint``,
        ``data`` and ``data_fingerprint``, each when known; empty after :meth:`fit` until the
        caller records it (:func:`~multivae.samplers.fit_sampler` records the model)."""

    # ----------------------------------------------------------------------------------------
    # What subclasses implement

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """The constructor options, as plain JSON-ready data."""

    def min_samples(self) -> tuple[int, str]:
        """The fewest latents :meth:`fit` accepts, and why."""
        return 1, "at least one latent"

    @abc.abstractmethod
    def _fit(self, latents: torch.Tensor) -> None:
        """Fit on checked, finite, CPU latents ``(N, D)`` (any floating dtype)."""

    @abc.abstractmethod
    def _sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """``n >= 1`` float32 draws ``(n, D)``; all randomness from ``generator``."""

    @abc.abstractmethod
    def _log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)`` of shape ``(n,)`` for checked CPU latents ``(n, D)``, in ``z``'s dtype."""

    @abc.abstractmethod
    def _state(self) -> dict[str, torch.Tensor]:
        """The fitted tensors, by name, to save."""

    @abc.abstractmethod
    def _restore(self, dim: int, tensors: dict[str, torch.Tensor]) -> None:
        """Restore the fitted state from :meth:`_state`'s tensors.

        Raises ``ValueError`` for tensors that do not fit the options and ``dim``.
        """

    # ----------------------------------------------------------------------------------------
    # The public API

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """Names of the options the constructor takes."""
        parameters = inspect.signature(cls.__init__).parameters
        return tuple(name for name in parameters if name != "self")

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`load`) has run."""
        return self._dim is not None

    @property
    def dim(self) -> int:
        """The latent dimension ``D`` the sampler was fitted on."""
        return self._require_fitted("dim")

    def _require_fitted(self, what: str) -> int:
        if self._dim is None:
            raise SamplerNotFittedError(
                f"{type(self).__name__}.{what}: this {self.kind!r} sampler is not fitted; call "
                "fit(latents) first"
            )
        return self._dim

    def fit(self, latents: torch.Tensor) -> Self:
        """Fit the sampler on latents ``(N, D)``, for example from :func:`encode_latents`.

        Returns:
            The sampler itself, fitted.

        Raises:
            ValueError: For latents that are not a finite floating ``(N, D)`` tensor with
                ``D >= 1`` and enough samples (see :meth:`min_samples`).
        """
        where = f"{type(self).__name__}.fit"
        if not isinstance(latents, torch.Tensor):
            raise TypeError(
                f"{where}: expected a torch.Tensor of shape (N, D), found {type(latents).__name__}"
            )
        if latents.ndim != 2:
            raise ValueError(
                f"{where}: expected latents of shape (N, D), found a {latents.ndim}-D tensor of "
                f"shape {tuple(latents.shape)}"
            )
        if not latents.is_floating_point():
            raise ValueError(f"{where}: expected floating-point latents, found {latents.dtype}")
        if latents.shape[1] < 1:
            raise ValueError(f"{where}: expected latents of dimension D >= 1, found D = 0")
        needed, why = self.min_samples()
        if latents.shape[0] < needed:
            raise ValueError(
                f"{where}: expected at least {needed} latents ({why}), found {latents.shape[0]}"
            )
        latents = latents.detach().cpu()
        bad_rows = (~torch.isfinite(latents)).any(dim=1).nonzero().flatten()
        if bad_rows.numel():
            raise ValueError(
                f"{where}: expected finite latents, found NaN or infinite values in "
                f"{bad_rows.numel()} rows (first: {bad_rows[:5].tolist()})"
            )
        self._fit(latents)
        self._dim = int(latents.shape[1])
        self.fitted_on = {}
        return self

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` latents from the fitted distribution: a float32 CPU tensor ``(n, D)``.

        Args:
            n: Number of draws (``>= 0``).
            generator: A CPU ``torch.Generator`` for reproducible draws; the global RNG when
                ``None``.
        """
        dim = self._require_fitted("sample")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{type(self).__name__}.sample: expected n >= 0, found {n!r}")
        if n == 0:
            return torch.empty((0, dim))
        return self._sample(n, generator)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)`` under the fitted density for latents ``(n, D)``: ``(n,)``, ``z``'s dtype.

        Computed without gradients.

        Raises:
            ValueError: For latents that are not finite floating ``(n, D)``.
        """
        dim = self._require_fitted("log_prob")
        where = f"{type(self).__name__}.log_prob"
        if not isinstance(z, torch.Tensor) or z.ndim != 2 or z.shape[1] != dim:
            found = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"{where}: expected latents of shape (n, {dim}), found {found}")
        if not z.is_floating_point():
            raise ValueError(f"{where}: expected floating-point latents, found {z.dtype}")
        if not bool(torch.isfinite(z).all()):
            raise ValueError(f"{where}: expected finite latents, found NaN or infinite values")
        with torch.no_grad():
            return self._log_prob(z.detach().cpu())

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the fitted sampler to a folder, atomically (a staging folder, then renamed).

        Returns:
            The folder.
        """
        dim = self._require_fitted("save")
        directory = Path(directory)
        document = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "config": self.config(),
            "dim": dim,
        }
        if self.fitted_on:
            document["fitted_on"] = dict(self.fitted_on)
        state = {name: t.detach().cpu().contiguous() for name, t in self._state().items()}

        def write(staging: Path) -> None:
            (staging / SAMPLER_CONFIG_FILE).write_text(
                json.dumps(document, indent=2, sort_keys=True)
            )
            save_file(state, str(staging / SAMPLER_WEIGHTS_FILE), metadata={"format": "pt"})

        _write_folder_atomically(directory, write)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Self:
        """Load a sampler folder written by :meth:`save`.

        ``LatentSampler.load`` loads any kind; a subclass's ``load`` refuses other kinds.

        Raises:
            FileNotFoundError: For a missing folder or file.
            ConfigError: For an unreadable config, another format version, an unknown kind or
                unknown options.
            ValueError: For tensors that do not match the config.
        """
        folder = Path(directory)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: expected a sampler folder, found no such folder")
        for name in (SAMPLER_CONFIG_FILE, SAMPLER_WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"{folder}: no {name}; expected a folder written by LatentSampler.save"
                )
        config_path = folder / SAMPLER_CONFIG_FILE
        where = f"{config_path}: "
        try:
            document = read_json(config_path.read_text())
            version, kind = document["format_version"], document["kind"]
            options, dim = document["config"], document["dim"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ConfigError(f"{where}unreadable sampler config ({error!r})") from None
        if version != FORMAT_VERSION:
            raise ConfigError(f"{where}expected format_version {FORMAT_VERSION}, found {version}")
        check_known_keys(
            document, ("format_version", "kind", "config", "dim", "fitted_on"), str(config_path)
        )
        sampler_cls = _sampler_class(kind, where)
        if not issubclass(sampler_cls, cls):
            raise ConfigError(f"{where}holds a {kind!r} sampler, not a {cls.__name__}")
        if not isinstance(options, dict):
            raise ConfigError(f"{where}expected a mapping of options, found {options!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"{where}expected a dimension dim >= 1, found {dim!r}")
        fitted_on = document.get("fitted_on", {})
        if not isinstance(fitted_on, dict) or not all(
            isinstance(value, str) for value in fitted_on.values()
        ):
            raise ConfigError(
                f"{where}expected 'fitted_on' to map names to strings, found {fitted_on!r}"
            )
        _check_options(sampler_cls, options, where)
        try:
            sampler = sampler_cls(**options)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{where}{error}") from None
        try:
            tensors = load_file(str(folder / SAMPLER_WEIGHTS_FILE))
        except SafetensorError as error:
            raise ValueError(
                f"{folder / SAMPLER_WEIGHTS_FILE}: unreadable tensors ({error})"
            ) from None
        try:
            sampler._restore(dim, tensors)
        except ValueError as error:
            raise ValueError(f"{folder / SAMPLER_WEIGHTS_FILE}: {error}") from None
        sampler._dim = dim
        sampler.fitted_on = dict(fitted_on)
        if not isinstance(sampler, cls):  # pragma: no cover - ruled out by issubclass above
            raise TypeError(f"expected a {cls.__name__}")
        return sampler

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        state = f"dim={self._dim}" if self._dim is not None else "not fitted"
        return f"{type(self).__name__}({options}) [{state}]"


def expect_tensors(
    tensors: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """Check that ``tensors`` holds exactly the names and shapes of ``shapes``.

    Raises:
        ValueError: Naming the missing, unexpected or misshapen tensors.
    """
    missing = sorted(set(shapes) - set(tensors))
    unexpected = sorted(set(tensors) - set(shapes))
    if missing or unexpected:
        raise ValueError(
            f"expected tensors {sorted(shapes)}, found {sorted(tensors)} (missing {missing}, "
            f"unexpected {unexpected})"
        )
    for name, shape in shapes.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(
                f"tensor {name!r}: expected shape {shape}, found {tuple(tensors[name].shape)}"
            )
    return tensors
