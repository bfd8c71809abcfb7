"""Typed configs: dataclasses loaded from YAML with dotted command-line overrides.

Every section of a run (model, data, train, eval …) is a dataclass. `build()` turns a plain mapping
(from YAML) into that dataclass and refuses, before any work starts, anything it cannot trust:
an unknown key (with the closest valid key suggested), a value of the wrong type, or a value that
the section's own `validate()` finds impossible. Errors always name the full dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key is unknown, mistyped or impossible; the message names the dotted key."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}" if key else message)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


class NonFiniteError(ConfigError):
    """A number field holds NaN or ±inf."""


def _finite(value: float, key: str) -> float:
    """NaN or ±inf in a config is always a mistake (`.nan`, `1e400`): it would pass every `x < 0` check."""
    if not math.isfinite(value):
        raise NonFiniteError(key, f"must be a finite number, got {value!r}")
    return value


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one YAML value against a type hint; raise ConfigError naming `key`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if isinstance(value, float):
        _finite(value, key)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except NonFiniteError:
                raise
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1 and dataclasses.is_dataclass([o for o in options if o is not type(None)][0]):
            raise errors[0]  # an optional section (`X | None`): its own error names the exact key
        raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(key, f"must be one of {list(allowed)}, got {value!r}{hint}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping for section {tp.__name__}, got {value!r}")
        return build(tp, value, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(key, f"expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        converted = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(converted) if origin is tuple else converted
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_convert(k, kt, key): _convert(v, vt, _join(key, str(k))) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(key, f"expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return _finite(float(value), key)
        if isinstance(value, str):  # YAML reads "6e-4" as a string
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                return _finite(number, key)
        raise ConfigError(key, f"expected a number, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    return value


def build(cls: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, refusing unknown keys, wrong types and bad values."""
    data = dict(data or {})
    expand = getattr(cls, "expand_config", None)
    if expand is not None:
        data = expand(data, prefix)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean '{_join(prefix, close[0])}'?" if close else ""
            valid = ", ".join(sorted(fields))
            raise ConfigError(_join(prefix, str(key)), f"unknown key{hint} (valid keys: {valid})")
        kwargs[key] = _convert(value, hints[key], _join(prefix, key))
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(_join(prefix, missing[0]), "is required")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as err:
            if prefix and not err.key.startswith(prefix + "."):
                raise ConfigError(_join(prefix, err.key), str(err).split(": ", 1)[-1]) from None
            raise
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config (for YAML/JSON): dataclasses become dicts, tuples lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error, not "last one wins"."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, typing.Hashable):
                continue  # PyYAML itself reports an unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {seen[key]})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str, source: str = "<text>") -> Any:
    """Parse YAML with the safe loader, refusing duplicate keys; errors name `source` and the line."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 — a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f":{mark.line + 1}" if mark is not None else ""
        context = f" ({err.context} on line {err.context_mark.line + 1})" if err.context and err.context_mark else ""
        raise ConfigError("", f"{source}{where}: invalid YAML: {err.problem}{context}") from None
    except yaml.YAMLError as err:
        raise ConfigError("", f"{source}: invalid YAML: {err}") from None


def read_text_utf8(path: Path) -> str:
    """A config file's text; bytes that are not UTF-8 are an error naming the file, line and byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(
            "",
            f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
            "save the file as UTF-8",
        ) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`model.n_layers=4` → (['model', 'n_layers'], 4); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(text, "an override must look like key.subkey=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(key, "an override key must be dotted names like train.lr")
    try:
        value = yaml.load(raw, Loader=_UniqueKeyLoader) if raw.strip() else ""  # noqa: S506 — safe loader
    except yaml.YAMLError as err:
        raise ConfigError(key, f"cannot parse value {raw!r}: {getattr(err, 'problem', None) or err}") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Apply dotted `key=value` overrides to a nested dict (a copy); unknown keys fail later in build()."""
    out = json.loads(json.dumps(data, default=str)) if data else {}
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(".".join(path[: i + 1]), f"is a value ({child!r}), not a section")
            node = child
        node[path[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; errors (bad YAML, a key given twice, bytes that are not UTF-8) name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("", f"config file not found: {path}")
    data = load_yaml_text(read_text_utf8(path), str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("", f"{path}: the top level must be a mapping of sections")
    return data


def load(cls: type[T], path: str | Path | None = None, overrides: typing.Iterable[str] = ()) -> T:
    """Load a config of type `cls` from YAML (optional) plus dotted overrides."""
    data = read_yaml(path) if path is not None else {}
    return build(cls, apply_overrides(data, overrides))


def config_file(file_or_run_dir: str | Path, saved_name: str = "config.yaml") -> Path:
    """The YAML a command reads: the file itself, or the config a run directory saved (RUN_DIR/`saved_name`)."""
    path = Path(file_or_run_dir)
    if path.is_dir():
        if not (path / saved_name).is_file():
            raise ConfigError("", f"{path}: a directory without {saved_name} is not a run directory")
        path = path / saved_name
    return path


def load_config(
    cls: type[T],
    file_or_run_dir: str | Path | None,
    overrides: typing.Iterable[str] = (),
    *,
    saved_name: str = "config.yaml",
    prepare: typing.Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    builder: typing.Callable[[dict[str, Any]], T] | None = None,
) -> T:
    """The one path from YAML to a command's typed config: read the file (or RUN_DIR/`saved_name`), apply the
    dotted overrides, let `prepare` adjust the mapping (e.g. expand $VARS), then `build` (or `builder`) it, so
    every command refuses unknown keys, wrong types and impossible values the same way."""
    data = read_yaml(config_file(file_or_run_dir, saved_name)) if file_or_run_dir is not None else {}
    data = apply_overrides(data, list(overrides))
    if prepare is not None:
        data = prepare(data)
    return builder(data) if builder is not None else build(cls, data)


def save(obj: Any, path: str | Path) -> None:
    """Write the effective config as YAML (saved with every run, so it can be re-run as is)."""
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True), encoding="utf-8")
