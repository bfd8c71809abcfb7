"""`skyloom report RUN_DIR [--out FILE]`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from skyloom.commandline import add_command, add_config_arguments, option


@dataclass
class ReportCommandConfig:
    """`skyloom report`'s arguments."""

    run_dir: str = option(help="a run directory or a demo workspace", positional=True, metavar="RUN_DIR")
    out: str | None = option(None, help="HTML file to write (default RUN_DIR/report.html)", metavar="FILE")


def cmd_report(args: argparse.Namespace) -> int:
    from skyloom.report.build import build_report

    try:
        path = build_report(args.run_dir, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"skyloom: error: {err}", file=sys.stderr)
        return 2
    print(f"report: {path}  (figures in {path.parent / 'report'})")
    return 0


def register(sub) -> None:
    p = add_command(
        sub,
        "report",
        "write a self-contained HTML report (figures + tables) for a run directory",
        description=(
            "Read RUN_DIR — one training run (metrics.jsonl) or a workspace of chained sessions (skyloom demo) —\n"
            "and write RUN_DIR/report.html with the PNGs embedded, plus RUN_DIR/report/*.png: training loss and\n"
            "per-domain validation losses over tokens (Figure 3's layout, one colour per session), learning rate and\n"
            "mixture weights (STEM share) over steps, throughput and MFU, Table 6 (eval/ppl.json), Table 8\n"
            "(eval/leakage.json), the pipeline funnel, and any other record kinds in metrics.jsonl as series.\n\n"
            "examples:\n"
            "  skyloom report runs/demo\n"
            "  skyloom report runs/tiny --out /tmp/tiny.html"
        ),
    )
    add_config_arguments(p, ReportCommandConfig)
    p.set_defaults(handler=cmd_report)
