"""The `skyloom` command: one entry point, a sub-command per stage of the recipe.

Each stage's module exposes `register(subparsers)`; its flags come from the command's config dataclass
(`skyloom.commandline`), and heavy imports (torch, numpy, tokenizers) happen inside the handlers, so that
`skyloom --help` imports no torch and stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from skyloom import __version__
from skyloom.commandline import (
    HelpFormatter,
    add_command,
    add_group,
    missing_package_message,
    print_config,
    split_flag_overrides,
)

__all__ = ["HelpFormatter", "add_command", "add_group", "build_parser", "main", "parse_args"]

# Modules that add sub-commands (each defines `register(subparsers)`), in --help order.
COMMAND_MODULES = [
    "skyloom.model.commands",
    "skyloom.model.moe_commands",
    "skyloom.train.commands",
    "skyloom.eval.commands",
    "skyloom.data.pipeline_commands",
    "skyloom.tokenizer.commands",
    "skyloom.data.pack_commands",
    "skyloom.sft.commands",
    "skyloom.recipes.commands",
    "skyloom.demo.commands",
    "skyloom.report.commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skyloom",
        formatter_class=HelpFormatter,
        description=(
            "skyloom builds bilingual (English-Chinese) foundation language models with the methods of the\n"
            "Skywork reports: data pipeline, tokenizer, dense and MoE models, two-stage pretraining,\n"
            "validation monitoring and the reports' evaluations.\n\n"
            "Run `skyloom COMMAND --help` for each command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"skyloom {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Like `parser.parse_args`, except that `KEY=VALUE` overrides may also follow the options
    (`skyloom train cfg.yaml --out runs/x train.lr=1e-3`) and may be written `--KEY=VALUE`
    (`--train.lr=1e-3`): argparse gives a `nargs="*"` positional only the words before the first option, so any
    later ones are appended, in order, to the command's `overrides`."""
    args, extras = parser.parse_known_args(argv)
    if extras and isinstance(getattr(args, "overrides", None), list):
        late, extras = split_flag_overrides(extras)
        args.overrides.extend(late)
    if extras:
        leaf = getattr(args, "handler", None) is not None
        target = getattr(args, "command_parser" if leaf else "group_parser", None)
        (target or parser).error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        # `skyloom` or `skyloom GROUP` alone: show the relevant help.
        (getattr(args, "group_parser", None) or parser).print_help()
        return 0 if args.command is None else 2
    from skyloom.config import ConfigError

    try:
        if getattr(args, "print_config", False):
            return print_config(args)
        return int(handler(args) or 0)
    except ConfigError as err:
        print(f"skyloom: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:  # a path named on the command line, or one a config names
        where = f"{err.filename}: {err.strerror or 'no such file or directory'}" if err.filename else str(err)
        print(f"skyloom: error: {where}", file=sys.stderr)
        return 2
    except ImportError as err:  # an optional package (an extra) that is not installed: say which extra
        message = missing_package_message(err)
        if message is None:
            raise
        print(f"skyloom: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("skyloom: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
