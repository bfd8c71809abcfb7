"""Run a pipeline: plan the stages, execute them with datatrove's local or Slurm executor, write the report.

Resuming: every stage has its own datatrove ``logging_dir`` (``logs/<stage>``) whose ``completions/``
markers make a rerun skip finished tasks; a task that crashed halfway is simply run again (its outputs are
rewritten whole). ``plan.json`` records a hash of the configuration: rerunning a *different* configuration
into the same ``output_dir`` is refused (``--restart`` discards the old run's files first).

Killed with ``kill -9``, a run leaves no process behind: datatrove's local executor starts a
``multiprocess`` manager process (and, for ``workers > 1``, a pool of task processes) that would otherwise
outlive it forever (~185 MB each); here each of them is killed as soon as the run's process dies.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import json
import os
import select
import shutil
import signal
import sys
import threading
import time
from typing import Any

from datatrove.executor import LocalPipelineExecutor
from datatrove.executor import local as datatrove_local

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
                raise ConfigError(
                    "steps.quality.model",
                    f"{model} not found; train it with `skyloom data train-quality RECIPE.yaml` or set train_config",
                )
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
            raise ConfigError(
                "output_dir",
                f"{out} holds a run of a different configuration "
                f"({old.get('config_hash')} ≠ {h}); rerun with --restart to discard it "
                "or choose another output_dir",
            )
        if old.get("tasks") != cfg.executor.tasks:
            raise ConfigError(
                "executor.tasks",
                f"{out} was started with tasks={old.get('tasks')}; a resumed run "
                "must keep the task count (or use --restart)",
            )


def _record_plan(cfg: PipelineConfig, plan: Plan) -> None:
    from skyloom.data.pipeline.base import atomic_write_json

    atomic_write_json(
        os.path.join(cfg.output_dir, "plan.json"),
        {
            "config_hash": config_hash(cfg),
            "tasks": cfg.executor.tasks,
            "stages": [
                {"name": s.name, "tasks": s.tasks, "steps": [type(p).__name__ for p in s.pipeline]} for s in plan.stages
            ],
            "funnel_order": plan.funnel_order,
            "config": to_dict(cfg),
        },
    )


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_run(run_pid: int) -> None:
    """Initializer of a child process: have it SIGKILLed as soon as the run's process `run_pid` dies.

    A direct child asks Linux for it (`PR_SET_PDEATHSIG`). A forkserver's pool worker cannot: its parent is
    the forkserver, which itself only exits once every worker is gone (each holds its "alive" pipe), so it
    watches the run from a daemon thread instead (a pidfd, which becomes readable when the process ends)."""
    if os.getppid() == run_pid and _ask_for_death_signal():
        if os.getppid() != run_pid:  # the run died before the request took effect
            os.kill(os.getpid(), signal.SIGKILL)
        return
    threading.Thread(target=_die_when_gone, args=(run_pid,), daemon=True, name="skyloom-die-with-run").start()


def _ask_for_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _die_when_gone(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd (old kernel, not Linux), or the process is already gone
        while _exists(pid):
            time.sleep(1.0)
    else:
        select.select([fd], [], [])
    os.kill(os.getpid(), signal.SIGKILL)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _ChildrenDieWithParent:
    """What datatrove's local executor sees as its `multiprocess` module: the same module, except that the
    manager process it starts and the task processes of its pools die with this process (`die_with_run`).
    Anything else passes through unchanged."""

    def __init__(self, module: Any, context: Any = None):
        self._module, self._context = module, context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context if self._context is not None else self._module, name)

    def Manager(self) -> Any:  # noqa: N802 - the name datatrove calls
        managers = importlib.import_module(f"{self._module.__name__}.managers")
        manager = managers.SyncManager(ctx=self._module.get_context())
        manager.start(die_with_run, (os.getpid(),))
        return manager

    def get_context(self, method: str | None = None) -> _ChildrenDieWithParent:
        return _ChildrenDieWithParent(self._module, self._module.get_context(method))

    def Pool(self, processes: int | None = None, *args: Any, **kwargs: Any) -> Any:  # noqa: N802
        if not args and "initializer" not in kwargs:
            kwargs.update(initializer=die_with_run, initargs=(os.getpid(),))
        return (self._context or self._module).Pool(processes, *args, **kwargs)


class OrphanFreeLocalExecutor(LocalPipelineExecutor):
    """datatrove's LocalPipelineExecutor whose child processes die with the run (see the module docstring)."""

    def run(self):
        real = datatrove_local.multiprocess
        datatrove_local.multiprocess = _ChildrenDieWithParent(real)
        try:
            return super().run()
        finally:
            datatrove_local.multiprocess = real


def make_executors(cfg: PipelineConfig, plan: Plan) -> list[Any]:
    out = os.path.abspath(cfg.output_dir)
    ex = cfg.executor
    executors: list[Any] = []
    for stage in plan.stages:
        logging_dir = os.path.join(out, "logs", stage.name)
        if ex.type == "local":
            executors.append(
                OrphanFreeLocalExecutor(
                    pipeline=stage.pipeline,
                    tasks=stage.tasks,
                    workers=min(ex.workers, stage.tasks),
                    logging_dir=logging_dir,
                    skip_completed=stage.skip_completed,
                )
            )
        else:
            from datatrove.executor import SlurmPipelineExecutor

            executors.append(
                SlurmPipelineExecutor(
                    pipeline=stage.pipeline,
                    tasks=stage.tasks,
                    time=ex.time,
                    partition=ex.partition,
                    cpus_per_task=ex.cpus_per_task,
                    mem_per_cpu_gb=ex.mem_per_cpu_gb,
                    job_name=f"{ex.job_name}-{stage.name}",
                    venv_path=ex.venv_path,
                    sbatch_args=dict(ex.sbatch_args) or None,
                    logging_dir=logging_dir,
                    skip_completed=stage.skip_completed,
                    depends=executors[-1] if executors else None,
                    slurm_logs_folder=os.path.join(out, "logs", "slurm", stage.name),
                )
            )
    return executors


def run_pipeline(cfg: PipelineConfig, restart: bool = False, quiet: bool = False) -> dict[str, Any] | None:
    """Run (or resume) the whole pipeline; returns the report (local) or None (Slurm: jobs submitted)."""
    from skyloom.data.pipeline.builder import parse_steps

    _check_inputs(cfg)
    parse_steps(cfg.steps)  # a bad step (or plug-in class) is refused before output_dir is touched
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
