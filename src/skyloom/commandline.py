"""Building blocks of the `skyloom` command line, below every command module.

Command modules import these (not `skyloom.cli`, which imports the command modules): the helpers that add a
group or a command, and the generator that turns a command's config dataclass into its flags, so that a flag's
name, type, default and help text are written once, on the field (`option(...)`). Nothing here imports torch or
any skyloom module but `skyloom.config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any, Union, get_args, get_origin, get_type_hints

from skyloom.config import ConfigError, build, to_dict

CLI_KEY = "cli"


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep hand-written line breaks in descriptions and show defaults."""


def add_group(sub, name: str, help: str, description: str | None = None):
    """A command that has sub-commands (`skyloom model info`, …); returns its subparsers.

    Several modules may add to one group (e.g. `data pack` and `data run`): the first call creates it.
    """
    if name in sub.choices:
        return sub.choices[name].group_subparsers
    group = sub.add_parser(name, help=help, description=description or help, formatter_class=HelpFormatter)
    group.set_defaults(group_parser=group)
    group.group_subparsers = group.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
    return group.group_subparsers


def add_command(sub, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    """A leaf command; set `handler` with `parser.set_defaults(handler=fn)`."""
    parser = sub.add_parser(name, help=help, description=description or help, formatter_class=HelpFormatter)
    parser.set_defaults(command_parser=parser)  # so an unknown option is reported with this command's usage
    return parser


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    flags: tuple[str, ...] | None = None,
    positional: bool = False,
    nargs: str | None = None,
    metavar: str | None = None,
    choices: tuple[Any, ...] | None = None,
    append: bool = False,
    extend: bool = False,
    group: str | None = None,
    required: bool = False,
) -> Any:
    """A config field that is also a command-line argument; `help` is the field's documentation.

    The flag is `--field-name` unless `flags` says otherwise (e.g. `("--out", "-o")`); `positional=True` makes
    it a positional argument; `append=True` a repeatable flag collecting a list (`extend=True`: each use takes
    `nargs` words); a bool field is a switch.
    """
    cli = {
        "help": help,
        "flags": flags,
        "positional": positional,
        "nargs": nargs,
        "metavar": metavar,
        "choices": choices,
        "append": append,
        "extend": extend,
        "group": group,
        "required": required,
    }
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={CLI_KEY: cli})
    return dataclasses.field(default=default, metadata={CLI_KEY: cli})


def field_help(cls: type, name: str) -> str:
    """The help text written on a config field (what its flag shows in --help)."""
    return next(f.metadata[CLI_KEY]["help"] for f in dataclasses.fields(cls) if f.name == name)


def _scalar_type(tp: Any) -> Any:
    """`int | None` → int, `list[str]` → str: what argparse converts each word with."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        return _scalar_type(options[0]) if len(options) == 1 else str
    if origin in (list, tuple):
        args = get_args(tp)
        return _scalar_type(args[0]) if args else str
    return tp if tp in (int, float, str) else str


def add_config_arguments(
    parser: argparse.ArgumentParser, cls: type, resolve: Callable[[argparse.Namespace], Any] | None = None
) -> argparse.ArgumentParser:
    """Add one argument per `option(...)` field of dataclass `cls`, and `--print-config`.

    `resolve(args)` gives the command's resolved config (default: `cls` built from the parsed flags); with
    `--print-config` it is printed as YAML instead of running the command.
    """
    hints = get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        cli = f.metadata.get(CLI_KEY)
        if cli is None:
            continue
        target = parser
        if cli["group"]:
            if cli["group"] not in groups:
                groups[cli["group"]] = parser.add_argument_group(cli["group"])
            target = groups[cli["group"]]
        tp = hints[f.name]
        kwargs: dict[str, Any] = {"help": cli["help"]}
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )
        if cli["metavar"]:
            kwargs["metavar"] = cli["metavar"]
        if cli["positional"]:
            if cli["nargs"]:
                kwargs["nargs"] = cli["nargs"]
                if cli["nargs"] == "?":  # (a `*` list is left to argparse: a fresh list every parse)
                    kwargs["default"] = default
            if tp is not str and _scalar_type(tp) is not str:
                kwargs["type"] = _scalar_type(tp)
            target.add_argument(f.name, **kwargs)
            continue
        flags = cli["flags"] or (f"--{f.name.replace('_', '-')}",)
        kwargs["dest"] = f.name
        if tp is bool:
            kwargs["action"] = "store_true"
        else:
            kwargs["default"] = default
            if cli["append"]:
                kwargs["action"] = "append"
            elif cli["extend"]:
                kwargs["action"] = "extend"
            if cli["nargs"]:
                kwargs["nargs"] = cli["nargs"]
            scalar = _scalar_type(tp)
            if scalar is not str:
                kwargs["type"] = scalar
            if cli["choices"]:
                kwargs["choices"] = cli["choices"]
            if cli["required"]:
                kwargs["required"] = True
        target.add_argument(*flags, **kwargs)
    return add_print_config(parser, resolve or (lambda args: config_from_args(cls, args)))


def add_print_config(
    parser: argparse.ArgumentParser, resolve: Callable[[argparse.Namespace], Any]
) -> argparse.ArgumentParser:
    """`--print-config`: print `resolve(args)` (the command's resolved config) as YAML and exit 0."""
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit (nothing is run)"
    )
    parser.set_defaults(config_resolver=resolve)
    return parser


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """The command's config dataclass from parsed arguments, type-checked and validated like a YAML config."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    return build(cls, {name: getattr(args, name) for name in names if hasattr(args, name)})


def print_config(args: argparse.Namespace) -> int:
    """`--print-config`: the resolved config as YAML on stdout; exit 0."""
    import yaml

    resolved = args.config_resolver(args)
    plain = to_dict(resolved)
    sys.stdout.write(yaml.safe_dump(plain, sort_keys=False, allow_unicode=True))
    return 0


# The extra of pyproject.toml's [project.optional-dependencies] that installs each optional import (matplotlib is
# in eval, report and demo alike: `report` names it). Keys are import names, matched on their leading parts.
EXTRA_OF = {
    "transformers": "hf",
    "sentencepiece": "hf",
    "google.protobuf": "hf",
    "datatrove": "data",
    "orjson": "data",
    "trafilatura": "data",
    "lxml_html_clean": "data",
    "lxml": "data",
    "resiliparse": "data",
    "py3langid": "data",
    "xxhash": "data",
    "scipy": "data",
    "pyarrow": "data",
    "matplotlib": "report",
    "lm_eval": "bench",
    "wandb": "wandb",
    "gguf": "gguf",
    "tensorboard": "tensorboard",
    "snownlp": "demo",
}
# Required packages: reinstalling skyloom brings them back (torch is installed first, on its own: see README).
REQUIRED = ("numpy", "yaml", "safetensors", "tqdm", "tokenizers", "jieba")


def missing_package_message(err: ImportError) -> str | None:
    """What a command that stopped on `err` should tell the user to install; None for an import error of a
    package skyloom does not know (a bug to show in full, not a missing extra)."""
    if "pip install" in str(err):  # raised by skyloom with the advice already written
        return str(err)
    name = err.name or ""
    parts = name.split(".")
    module = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in EXTRA_OF), None)
    top = parts[0]
    if module is not None:
        install = f"pip install 'skyloom[{EXTRA_OF[module]}]'"
    elif top == "torch":
        install = "install torch first (README: Quick start), e.g. pip install torch"
    elif top in REQUIRED:
        install = "pip install skyloom (it is a required dependency)"
    else:
        return None
    package = module or top
    if isinstance(err, ModuleNotFoundError) and (name == package or not _installed(package)):
        return f"this command needs the package '{package}', which is not installed: {install}"
    upgrade = install.replace("pip install", "pip install -U")
    return f"{err} (the installed {package} does not fit this skyloom: {upgrade})"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # its parent package is missing too
        return False


def split_flag_overrides(words: list[str]) -> tuple[list[str], list[str]]:
    """`--train.lr=3e-4` (an unknown option with `=`) is the override `train.lr=3e-4`: (overrides, other words)."""
    overrides, rest = [], []
    for word in words:
        if word.startswith("--") and "=" in word and len(word) > 3:
            overrides.append(word[2:])
        elif "=" in word and not word.startswith("-"):
            overrides.append(word)
        else:
            rest.append(word)
    return overrides, rest


__all__ = [
    "ConfigError",
    "HelpFormatter",
    "add_command",
    "add_config_arguments",
    "add_group",
    "add_print_config",
    "config_from_args",
    "field_help",
    "missing_package_message",
    "option",
    "print_config",
    "split_flag_overrides",
]
