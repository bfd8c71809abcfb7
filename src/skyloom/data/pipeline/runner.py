"""Run a pipeline: plan the stages, execute them with datatrove's local or Slurm executor, write the report.

Resuming: every stage has its own datatrove ``logging_dir`` (``logs/<stage>``) whose ``completions/``
markers make a rerun skip finished tasks; a task that crashed halfway is simply run again (its outputs are
rewritten whole). ``plan.json`` records a hash of the configuration: rerunning a *different* configuration
into the same ``output_dir`` is refused (``--restart`` discards the old run's files first).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Any

from skyloom.config import ConfigError, to_dict
from skyloom.data.pipeline.builder import Plan, build_plan
from skyloom.data.pipeline.config import PipelineConfig

MANAGED = ("main", "stem", "work", "logs", "stats", "rejects", "reports", "stats.json", "funnel.md", "plan.json")


def config_hash(cfg: PipelineConfig) -> str:
    data = to_dict(cfg)
    data.pop("executor", None)  # tasks/workers may change between attempts only if… see check below
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_inputs(cfg: PipelineConfig) -> None:
    import fnmatch

    for i, inp in enumerate(cfg.inputs):
        if os.path.isfile(inp.path):
            continue
        if not os.path.isdir(inp.path):
            raise ConfigError(f"inputs[{i}].path", f"no such file or directory: {inp.path}")
        found = False
        for root, _, files in os.walk(inp.path):
            rel = os.path.relpath(root, inp.path)
            for f in files:
                name = f if rel == "." else os.path.join(rel, f)
                if inp.glob is None or fnmatch.fnmatch(name, inp.glob) or fnmatch.fnmatch(f, inp.glob):
                    found = True
                    break
            if found:
                break
        if not found:
            raise ConfigError(f"inputs[{i}].glob", f"no file under {inp.path} matches {inp.glob!r}")


def _ensure_quality_models(cfg: PipelineConfig) -> None:
    """A quality step whose model is missing but names a training recipe gets its model trained first."""
    from skyloom.config import build, read_yaml
    from skyloom.data.pipeline.quality import QualityTrainConfig, train_quality

    for step in cfg.steps:
        if step.get("type") != "quality":
            continue
        model, recipe = step.get("model"), step.get("train_config")
        if model and not os.path.isfile(model):
            if not recipe:
                raise ConfigError("steps.quality.model",
                                  f"{model} not found; train it with `skyloom data train-quality RECIPE.yaml` "
                                  "or set train_config")
            print(f"[skyloom] quality model {model} missing: training it from {recipe}", flush=True)
            tcfg = build(QualityTrainConfig, {**read_yaml(recipe), "output": model}, prefix="train_config")
            train_quality(tcfg)


def _prepare_output(cfg: PipelineConfig, restart: bool) -> None:
    out = cfg.output_dir
    plan_file = os.path.join(out, "plan.json")
    if restart:
        for name in MANAGED:
            p = os.path.join(out, name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
    os.makedirs(out, exist_ok=True)
    h = config_hash(cfg)
    if os.path.isfile(plan_file):
        with open(plan_file, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("config_hash") != h:
            raise ConfigError("output_dir", f"{out} holds a run of a different configuration "
                                            f"({old.get('config_hash')} ≠ {h}); rerun with --restart to discard it "
                                            "or choose another output_dir")
        if old.get("tasks") != cfg.executor.tasks:
            raise ConfigError("executor.tasks", f"{out} was started with tasks={old.get('tasks')}; a resumed run "
                                                "must keep the task count (or use --restart)")


def _record_plan(cfg: PipelineConfig, plan: Plan) -> None:
    from skyloom.data.pipeline.base import atomic_write_json

    atomic_write_json(os.path.join(cfg.output_dir, "plan.json"), {
        "config_hash": config_hash(cfg), "tasks": cfg.executor.tasks,
        "stages": [{"name": s.name, "tasks": s.tasks, "steps": [type(p).__name__ for p in s.pipeline]}
                   for s in plan.stages],
        "funnel_order": plan.funnel_order, "config": to_dict(cfg)})


def make_executors(cfg: PipelineConfig, plan: Plan) -> list[Any]:
    out = os.path.abspath(cfg.output_dir)
    ex = cfg.executor
    executors: list[Any] = []
    for stage in plan.stages:
        logging_dir = os.path.join(out, "logs", stage.name)
        if ex.type == "local":
            from datatrove.executor import LocalPipelineExecutor

            executors.append(LocalPipelineExecutor(
                pipeline=stage.pipeline, tasks=stage.tasks, workers=min(ex.workers, stage.tasks),
                logging_dir=logging_dir, skip_completed=stage.skip_completed))
        else:
            from datatrove.executor import SlurmPipelineExecutor

            executors.append(SlurmPipelineExecutor(
                pipeline=stage.pipeline, tasks=stage.tasks, time=ex.time, partition=ex.partition,
                cpus_per_task=ex.cpus_per_task, mem_per_cpu_gb=ex.mem_per_cpu_gb, job_name=f"{ex.job_name}-{stage.name}",
                venv_path=ex.venv_path, sbatch_args=dict(ex.sbatch_args) or None, logging_dir=logging_dir,
                skip_completed=stage.skip_completed, depends=executors[-1] if executors else None,
                slurm_logs_folder=os.path.join(out, "logs", "slurm", stage.name)))
    return executors


def run_pipeline(cfg: PipelineConfig, restart: bool = False, quiet: bool = False) -> dict[str, Any] | None:
    """Run (or resume) the whole pipeline; returns the report (local) or None (Slurm: jobs submitted)."""
    _check_inputs(cfg)
    _prepare_output(cfg, restart)
    _ensure_quality_models(cfg)
    plan = build_plan(cfg)
    _record_plan(cfg, plan)
    executors = make_executors(cfg, plan)
    t0 = time.time()
    if cfg.executor.type == "slurm":
        executors[-1].run()  # datatrove submits the dependency chain
        return None
    for stage, executor in zip(plan.stages, executors):
        if not quiet:
            print(f"[skyloom] stage {stage.name}: {stage.tasks} task(s)", flush=True)
        executor.run()
    with open(os.path.join(cfg.output_dir, "stats.json"), encoding="utf-8") as f:
        report = json.load(f)
    report["seconds"] = round(time.time() - t0, 2)
    return report
