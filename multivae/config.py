"""Config dataclasses with a strict JSON/YAML round trip.

Every config in the project (model, architecture, training, run) is a dataclass deriving from
:class:`Config`. Reading one from a dict, JSON or YAML refuses unknown keys with a suggestion of the
closest known key, converts nested dataclasses, tuples and dicts by their type hints, and checks
the types of scalar values, so a misspelled option is an error instead of a silent default.

Every file the project reads (run configs, sweep files, a model folder's ``config.json``, dataset
metadata, fitted samplers, classifiers) goes through :func:`read_yaml` or :func:`read_json`,
which refuse a key given twice in one mapping, where the YAML and JSON parsers keep the last.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import types
import typing
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that does not match its dataclass: what was expected, what was found, where.

    Attributes:
        key: The dotted key of the entry at fault (``training.epochs``), when one is known:
            :func:`locate` turns it into the line of a YAML file.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class DuplicateKeyError(json.JSONDecodeError):
    """A JSON object that gives one key twice (JSON's own parser keeps the last silently)."""

    def __init__(self, key: str, document: str) -> None:
        super().__init__(f"key {key!r} is given twice in one object", document, 0)

    def __str__(self) -> str:
        return self.msg


class _RepeatedKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _RepeatedKey(key)
        seen[key] = value
    return seen


def read_json(text: str | bytes) -> Any:
    """``json.loads`` that refuses a key given twice in one object.

    Raises:
        json.JSONDecodeError: For text that is not JSON, or (:class:`DuplicateKeyError`) that
            repeats a key.
    """
    if isinstance(text, bytes):
        text = text.decode()
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except _RepeatedKey as repeated:
        raise DuplicateKeyError(repeated.key, text) from None


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping."""


def _construct_unique_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    first: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # ``<<: *base``: later keys override merged ones, as YAML intends
        key = loader.construct_object(key_node, deep=True)
        if key in first:
            raise yaml.YAMLError(
                f"line {key_node.start_mark.line + 1}: key {key!r} is given a second time (first "
                f"on line {first[key].line + 1})"
            )
        first[key] = key_node.start_mark
    mapping: dict[Any, Any] = loader.construct_mapping(node, deep=True)
    return mapping


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_unique_mapping,
)


def read_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses a key given twice in one mapping.

    YAML's safe loader keeps the last of two equal keys without a word; here the error names the
    key and both lines.

    Raises:
        yaml.YAMLError: For text that is not YAML, or that repeats a key.
    """
    return yaml.load(text, Loader=_StrictLoader)


def yaml_key_lines(text: str) -> dict[str, int]:
    """The line (1-based) of every key of a YAML document, by dotted key (``training.epochs``).

    Items of lists are ``key[0]``, ``key[1]``; a text that is not YAML gives no lines.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                lines.setdefault(key, key_node.start_mark.line + 1)
                walk(value_node, key)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                key = f"{prefix}[{index}]"
                lines.setdefault(key, item.start_mark.line + 1)
                walk(item, key)

    if root is not None:
        walk(root, "")
    return lines


def locate(
    error: ConfigError, source: str | os.PathLike[str], text: str, overridden: Sequence[str] = ()
) -> ConfigError:
    """``error`` prefixed by the file and, when YAML has one, the line of the key at fault.

    A key that a ``--set`` override gave (one of ``overridden``, dotted keys) has no line: the
    prefix is the file alone, and the message names the key.
    """
    key = error.key
    if key is None:  # a check of a config as a whole (__post_init__) names its key first
        named = re.match(r"^([\w\[\]]+(?:\.[\w\[\]]+)*): ", str(error))
        key = named.group(1) if named else None
    line = None
    if key is not None and not any(
        key == given or key.startswith(f"{given}.") or given.startswith(f"{key}.")
        for given in overridden
    ):
        lines = yaml_key_lines(text)
        while key and line is None:
            line = lines.get(key)
            key = key.rpartition(".")[0] if "." in key else ""
    where = f"{source}, line {line}" if line is not None else str(source)
    return ConfigError(f"{where}: {error}", key=error.key)


def check_known_keys(document: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    """Refuse a key of a file's ``document`` that its reader does not know (with a suggestion).

    For the files read without a :class:`Config` (a model folder's ``config.json``, dataset
    metadata, samplers, classifiers): a misspelled key is an error, not a silent default.

    Raises:
        ConfigError: Naming ``where``, the key and the known keys.
    """
    for key in document:
        if key not in known:
            raise ConfigError(
                f"{where}: unknown key {key!r}; expected some of {sorted(known)}."
                f"{_suggest(str(key), list(known))}",
                key=str(key),
            )


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Convert a JSON-like ``value`` to the type ``hint``, refusing what does not fit."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {hint}"
        )
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {hint.__name__}, found {value!r}")
        return _from_dict(hint, value, where)
    if origin in (tuple,):
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, found {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, found {len(value)}")
        return tuple(
            _convert(v, a, f"{where}[{i}]")
            for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin in (list,):
        (arg,) = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, found {value!r}")
        return [_convert(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict,):
        key_type, value_type = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, found {value!r}")
        return {
            _convert(k, key_type, where): _convert(v, value_type, f"{where}.{k}")
            for k, v in value.items()
        }
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{where}: expected one of {list(allowed)}, found {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            hint = ""
            if isinstance(value, str):
                try:
                    float(value)
                    hint = " (YAML reads 1e-3 as text: write 1.0e-3)"
                except ValueError:
                    pass
            raise ConfigError(f"{where}: expected a number, found {value!r}{hint}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, found {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, found {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, found {value!r}")
        if not value.strip():
            raise ConfigError(f"{where}: expected a value, found an empty text {value!r}")
        return value
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, found {value!r}")
        return None
    raise ConfigError(f"{where}: unsupported type {hint}")


def _from_dict(cls: type[T], raw: dict[str, Any], where: str) -> T:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    label = where or cls.__name__
    for key in raw:
        if key not in fields:
            raise ConfigError(
                f"{label}: unknown key {key!r} for {cls.__name__}; expected one of "
                f"{sorted(fields)}.{_suggest(key, list(fields))}",
                key=f"{where}.{key}" if where else str(key),
            )
    values = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else key
        try:
            values[key] = _convert(value, hints[key], path)
        except ConfigError as error:
            if error.key is None:
                error.key = path
            raise
    missing = [
        name
        for name, f in fields.items()
        if name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{label}: missing required keys {missing}", key=where or None)
    try:
        return cls(**values)
    except ConfigError as error:  # a check of __post_init__, on the dataclass as a whole
        if error.key is None and where:
            error.key = where
        raise


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


@dataclasses.dataclass
class Config:
    """Base of every config dataclass: strict conversion from and to plain data.

    Every option is checked against its type when the config is built, from a file or in
    Python (``MoPoEConfig(mixture_sampling="bogus")`` is refused like the same entry in a
    file): subclasses that check more in ``__post_init__`` call ``super().__post_init__()``
    first.
    """

    key_prefix: typing.ClassVar[str] = ""
    """How files spell this config's place (``training.``), prefixed to the keys of messages."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for entry in dataclasses.fields(self):
            if entry.init:
                where = f"{self.key_prefix}{entry.name}"
                _convert(getattr(self, entry.name), hints[entry.name], where)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (tuples become lists)."""
        plain: dict[str, Any] = _to_plain(self)
        return plain

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "") -> Self:
        """Build from plain data; unknown keys and ill-typed values raise :class:`ConfigError`."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{where or cls.__name__}: expected a mapping, found {raw!r}")
        return _from_dict(cls, raw, where)

    def to_json(self) -> str:
        """JSON text, keys in field order (mappings keep their order: modality order matters)."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Self:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(read_json(text))

    def to_yaml(self) -> str:
        """YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> Self:
        """Inverse of :meth:`to_yaml` (safe loader: no Python objects)."""
        return cls.from_dict(read_yaml(text))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write JSON or YAML by the file's suffix, atomically, credentials redacted.

        A URI's password or token (``http://user:password@host``) is written as ``***``
        (:func:`multivae.redact.redact`): pass credentials by environment variables instead.
        """
        from multivae.redact import redact_values

        path = Path(path)
        plain = redact_values(self.to_dict())
        if path.suffix in (".yaml", ".yml"):
            text = yaml.safe_dump(plain, sort_keys=False)
        else:
            text = json.dumps(plain, indent=2)
        temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
        temporary.write_text(text)
        os.replace(temporary, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Read JSON or YAML by the file's suffix."""
        path = Path(path)
        text = path.read_text()
        try:
            return cls.from_yaml(text) if path.suffix in (".yaml", ".yml") else cls.from_json(text)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None


def flatten_mapping(mapping: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Nested mappings as dotted keys (``training.optimizer.kwargs.lr``); values as they are."""
    flat: dict[str, Any] = {}
    for name, value in mapping.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_mapping(value, f"{key}."))
        else:
            flat[key] = value
    return flat
