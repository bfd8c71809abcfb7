"""`skyloom data run PIPELINE.yaml` and `skyloom data train-quality RECIPE.yaml`."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from skyloom.commandline import add_command, add_config_arguments, add_group, option
from skyloom.config import load_config


@dataclass
class DataRunCommand:
    """`skyloom data run`'s arguments; the pipeline itself is PIPELINE.yaml (--print-config shows it resolved)."""

    pipeline: str = option(positional=True, metavar="PIPELINE.yaml", help="pipeline description")
    overrides: list[str] = option(
        [], positional=True, nargs="*", metavar="KEY=VALUE", help="overrides, e.g. executor.tasks=4"
    )
    keep_rejects: bool = option(False, help="write every dropped document with its reason to OUTPUT/rejects/<step>/")
    restart: bool = option(False, help="discard a previous run in output_dir and start over")
    output_dir: str | None = option(None, help="override output_dir")
    tasks: int | None = option(None, help="override executor.tasks")
    workers: int | None = option(None, help="override executor.workers (local: parallel processes)")
    json: bool = option(False, help="print stats.json instead of the funnel table")


@dataclass
class TrainQualityCommand:
    """`skyloom data train-quality`'s arguments; the recipe is RECIPE.yaml (--print-config shows it resolved)."""

    recipe: str = option(
        positional=True, metavar="RECIPE.yaml", help="training recipe (output, positives, negatives, …)"
    )
    overrides: list[str] = option([], positional=True, nargs="*", metavar="KEY=VALUE", help="overrides, e.g. epochs=4")
    output: str | None = option(None, help="override the model path")


def load_run(args: argparse.Namespace):
    """PIPELINE.yaml + overrides + the flags that override keys → the resolved PipelineConfig."""
    from skyloom.data.pipeline.config import PipelineConfig, load_pipeline_config

    def flags(data: dict) -> dict:
        if args.keep_rejects:
            data["keep_rejects"] = True
        if args.output_dir:
            data["output_dir"] = args.output_dir
        ex = dict(data.get("executor") or {})
        if args.tasks:
            ex["tasks"] = args.tasks
        if args.workers:
            ex["workers"] = args.workers
        if ex:
            data["executor"] = ex
        return data

    return load_config(PipelineConfig, args.pipeline, args.overrides, prepare=flags, builder=load_pipeline_config)


def load_quality(args: argparse.Namespace):
    """RECIPE.yaml + overrides (+ --output) → the resolved QualityTrainConfig."""
    from skyloom.data.pipeline.config import expand_env
    from skyloom.data.pipeline.quality import QualityTrainConfig

    def prepare(data: dict) -> dict:
        data = expand_env(data)
        if args.output:
            data["output"] = args.output
        return data

    return load_config(QualityTrainConfig, args.recipe, args.overrides, prepare=prepare)


def cmd_run(args: argparse.Namespace) -> int:
    from skyloom.data.pipeline.report import format_markdown
    from skyloom.data.pipeline.runner import run_pipeline

    cfg = load_run(args)
    report = run_pipeline(cfg, restart=args.restart)
    if report is None:
        print(f"submitted Slurm jobs; the report will be written to {cfg.output_dir}/stats.json and funnel.md")
        return 0
    print(json.dumps(report, indent=1) if args.json else format_markdown(report))
    print(f"wrote {cfg.output_dir}/main/, stem/, stats.json, funnel.md in {report['seconds']:.1f} s")
    checks = report["checks"]
    return 0 if checks["rows_balanced"] and checks["rows_chained"] else 1


def cmd_train_quality(args: argparse.Namespace) -> int:
    from skyloom.data.pipeline.quality import train_quality

    cfg = load_quality(args)
    model = train_quality(cfg)
    r = model.report
    print(
        f"wrote {cfg.output}: {r['train_chunks']:,} training chunks, held-out accuracy "
        f"{r['heldout_accuracy']:.3f}, AUC {r['heldout_auc']:.3f}"
    )
    for lang, v in r["per_language"].items():
        cut = model.cutoffs.get(lang)
        cuts = f"head ≥ {cut[0]:.4f}, middle ≥ {cut[1]:.4f}" if cut else "no cut-offs (too little web text)"
        print(f"  {lang}: {v['heldout_chunks']:,} held-out chunks, AUC {v['auc']:.3f}; {cuts}")
    return 0


def register(sub) -> None:
    data = add_group(sub, "data", "data pipeline: raw pages and text → SkyPile documents → token shards")
    run = add_command(
        data,
        "run",
        "run a YAML-described SkyPile pipeline (datatrove steps, local or Slurm)",
        description=(
            "Run the pipeline described in PIPELINE.yaml: inputs (jsonl/json/text/html/warc/files), ordered steps\n"
            "(extract, langid, heuristics, quality, ccnet, code_filter, exact_dedup, minhash_dedup, semantic_filter,\n"
            "decontaminate, stem_split — each with its parameters), output_dir and executor (tasks/workers, or\n"
            "Slurm). Writes OUTPUT/main/ and OUTPUT/stem/ (JSONL with text, id, metadata), stats.json and a\n"
            "funnel table (funnel.md). Rerunning the same command resumes: finished tasks are skipped.\n\n"
            "example: skyloom data run recipes/data/example.yaml --workers 2"
        ),
    )
    add_config_arguments(run, DataRunCommand, resolve=load_run)
    run.set_defaults(handler=cmd_run)

    tq = add_command(
        data,
        "train-quality",
        "train the CCNet-style quality classifier (hashed n-grams + logistic regression)",
        description=(
            "Train the 'looks like a Wikipedia reference' classifier from RECIPE.yaml: positives (encyclopedic\n"
            "text) and negatives (general web text), given as pipeline inputs. Held-out accuracy/AUC are\n"
            "printed; head/middle/tail cut-offs are set per language from held-out web-text score percentiles.\n"
            "The model is one safetensors file (weights + JSON metadata).\n\n"
            "example: skyloom data train-quality recipes/data/quality.yaml"
        ),
    )
    add_config_arguments(tq, TrainQualityCommand, resolve=load_quality)
    tq.set_defaults(handler=cmd_train_quality)
