"""User code named in a config: ``"package.module:Name"`` (importable, or a module in the working directory) or
``"path/to/file.py:Name"`` → the object.

One loader for every place a YAML file may name the user's own class (pipeline steps, training callbacks,
eval tasks), so each reports a bad name the same way: a ``ConfigError`` naming the config key, never a traceback.
A file path is imported under a stable module name, so loading it twice gives the same class.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from skyloom.config import ConfigError


def _module_from_file(path: Path, key: str) -> Any:
    if not path.is_file():
        raise ConfigError(key, f"no such file: {path}")
    name = f"skyloom_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(key, f"{path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise ConfigError(key, f"importing {path} failed: {type(err).__name__}: {err}") from None
    return module


def load_object(target: str, key: str) -> Any:
    """The object `target` names; `key` is the config key reported when it cannot be found or imported."""
    if not isinstance(target, str) or ":" not in target:
        raise ConfigError(key, f"{target!r}: expected 'package.module:Name' or 'path/to/file.py:Name'")
    where, _, attr = target.rpartition(":")
    if not where or not attr:
        raise ConfigError(key, f"{target!r}: expected 'package.module:Name' or 'path/to/file.py:Name'")
    if where.endswith(".py"):
        module = _module_from_file(Path(where).expanduser().resolve(), key)
    else:
        cwd = str(Path.cwd())
        added = cwd not in sys.path
        if added:  # a user's module next to the recipe, e.g. `my_filters:DropShouting` → ./my_filters.py
            sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as err:
            raise ConfigError(key, f"cannot import module {where!r} ({err}); is it on PYTHONPATH?") from None
        except Exception as err:
            raise ConfigError(key, f"importing {where!r} failed: {type(err).__name__}: {err}") from None
        finally:
            if added:
                sys.path.remove(cwd)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(key, f"{where} has no {attr!r}")
        obj = getattr(obj, part)
    return obj


def load_class(target: str, key: str, base: type) -> type:
    """Like `load_object`, and the object must be a subclass of `base`."""
    obj = load_object(target, key)
    if not isinstance(obj, type) or not issubclass(obj, base):
        raise ConfigError(key, f"{target!r} is not a subclass of {base.__module__}.{base.__qualname__}")
    return obj
