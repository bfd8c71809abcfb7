"""Callback names → classes, for the `callbacks:` section of a run config (torch-free until a class is loaded).

A name is either registered here (`register_callback`, or the built-ins below, stored as "module:Class" so that
listing and checking names imports nothing heavy) or a user's own `package.module:Class` — importable from the
working directory — or `path/to/file.py:Class`. Bad names and arguments are `ConfigError`s naming
`callbacks.<name>`.
"""

from __future__ import annotations

import inspect
from typing import Any

from skyloom.config import ConfigError

_REGISTRY: dict[str, str | type] = {
    "inject_non_finite": "skyloom.train.callbacks:InjectNonFinite",
    "speed_monitor": "skyloom.train.standard_callbacks:SpeedMonitor",
    "non_finite_guard": "skyloom.train.standard_callbacks:NonFiniteGuard",
    "evaluator": "skyloom.eval.evaluator:Evaluator",  # registered eval tasks every N steps / at validation
}


def register_callback(name: str, cls: str | type) -> None:
    """Make `name` usable under `callbacks:`; `cls` is a class or a lazy "module:Class" string."""
    _REGISTRY[name] = cls


def registered_callbacks() -> list[str]:
    return sorted(_REGISTRY)


def resolve_callback(name: str, key: str | None = None) -> type:
    """The class `name` stands for; `ConfigError(key)` when it is unknown or cannot be imported."""
    key = key or f"callbacks.{name}"
    target = _REGISTRY.get(name, name)
    if isinstance(target, type):
        return target
    if ":" not in target:
        raise ConfigError(
            key,
            f"unknown callback {name!r}: registered are {', '.join(registered_callbacks())}; "
            "a class of your own is 'package.module:Class' or 'path/to/file.py:Class'",
        )
    from skyloom.plugins import load_class
    from skyloom.train.callbacks import Callback

    return load_class(target, key, Callback)


def check_callback_args(name: str, args: dict[str, Any] | None, key: str | None = None) -> type:
    """Resolve `name` and check that `args` fit its constructor (before any work starts)."""
    key = key or f"callbacks.{name}"
    cls = resolve_callback(name, key)
    try:
        inspect.signature(cls).bind(**(args or {}))
    except TypeError as err:
        raise ConfigError(key, f"arguments {dict(args or {})} do not fit {cls.__name__}: {err}") from None
    return cls


def build_callbacks(spec: dict[str, dict[str, Any] | None]) -> list:
    """Instances of the configured callbacks, in config order; each remembers its name as its state key."""
    out = []
    for name, args in spec.items():
        cls = check_callback_args(name, args)
        try:
            cb = cls(**(args or {}))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"callbacks.{name}", f"{type(err).__name__}: {err}") from None
        cb.state_key = name
        out.append(cb)
    return out
