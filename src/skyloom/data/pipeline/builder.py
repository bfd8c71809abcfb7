"""YAML steps → datatrove stages.

Per-document steps (extract, langid, heuristics, quality, ccnet, code_filter, decontaminate, stem_split) run
inside one stage, one after the other, in every task. A global step (exact_dedup, minhash_dedup, semantic_filter)
needs the whole corpus, so it ends the current stage: the stage writes its documents (``work/<stage>/``, one
file per task) and the step's signatures; the step's global stages run (finding duplicates / clusters); the
next per-document stage reads the hand-over files back — task *r* reads exactly what task *r* wrote, which
keeps datatrove's per-task document indices valid — and applies the step's filter first.

Layout of ``output_dir``: ``main/``, ``stem/`` (results), ``stats.json`` + ``funnel.md`` (report),
``reports/`` (semantic clusters), ``rejects/<step>/`` (with ``keep_rejects``), ``stats/funnel|malformed/``
(per-task counts), ``work/`` (hand-over files, signatures), ``logs/<stage>/`` (datatrove logs, stats and
``completions/`` markers — a rerun skips finished tasks).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from datatrove.pipeline.base import PipelineStep

from skyloom.config import ConfigError, build
from skyloom.data.pipeline.base import Accounted, SkyFilter
from skyloom.data.pipeline.config import PipelineConfig


@dataclass
class GlobalContext:
    """Where a global step's stages keep their files, and what it closes."""

    work_dir: str  # <output_dir>/work/<stage>.<label>: signatures and intermediate results
    output_dir: str  # the run's output_dir (e.g. for reports/)
    stage: str  # the per-document stage this step ends
    label: str
    tasks: int  # tasks of the per-document stages


@dataclass
class GlobalStages:
    """What a global step adds to the plan.

    ``signature`` ends the per-document stage (it sees every document of every task, after the hand-over writer
    saved them); ``stages`` — (name suffix, pipeline, tasks) — run next, in order; ``filter`` is the first step of
    the next per-document stage, which reads the hand-over files back (and is accounted for under the step's label).
    """

    signature: PipelineStep
    stages: list[tuple[str, list[PipelineStep], int]]
    filter: PipelineStep


@dataclass
class StepType:
    """A step a recipe can name in ``type:``; ``kind`` "doc" builds one filter with ``make(config)``, "global"
    builds its stages with ``stages(config, GlobalContext)``."""

    config: type
    kind: str  # "doc" (per-document filter) or "global"
    make: Callable[[Any], PipelineStep] | None = None
    default_reason: str | None = "filtered"  # None: the step's own `default_reason`
    help: str = ""
    stages: Callable[[Any, GlobalContext], GlobalStages] | None = None


_REGISTERED: dict[str, StepType] = {}


def register_step(name: str, step_type: StepType) -> StepType:
    """Make ``type: <name>`` available to recipes (a plug-in module calls this when imported)."""
    if step_type.kind not in ("doc", "global"):
        raise ValueError(f"step {name!r}: kind must be 'doc' or 'global', got {step_type.kind!r}")
    if (step_type.make if step_type.kind == "doc" else step_type.stages) is None:
        raise ValueError(
            f"step {name!r}: a {step_type.kind} step needs {'make' if step_type.kind == 'doc' else 'stages'}"
        )
    _REGISTERED[name] = step_type
    return step_type


def step_types() -> dict[str, StepType]:
    from skyloom.data.pipeline.ccnet import CCNetConfig, make_ccnet_step
    from skyloom.data.pipeline.code import CodeConfig, CodeFilter
    from skyloom.data.pipeline.decontam import DecontamConfig, Decontaminate
    from skyloom.data.pipeline.dedup import ExactDedupStepConfig, MinhashStepConfig, exact_dedup_stages, minhash_stages
    from skyloom.data.pipeline.extract import ExtractConfig, HtmlExtractor
    from skyloom.data.pipeline.heuristics import HeuristicFilter, HeuristicsConfig
    from skyloom.data.pipeline.langid import LangIdConfig, LanguageFilter
    from skyloom.data.pipeline.plugin import PythonStepConfig, make_python_step
    from skyloom.data.pipeline.quality import QualityClassifier, QualityConfig
    from skyloom.data.pipeline.semantic import SemanticConfig, semantic_stages
    from skyloom.data.pipeline.stem import StemConfig, StemSplit

    builtin = {
        "extract": StepType(ExtractConfig, "doc", HtmlExtractor, "no_main_text", "HTML → main text, title, URL, date"),
        "langid": StepType(LangIdConfig, "doc", LanguageFilter, "language", "language + score; keep en/zh"),
        "heuristics": StepType(HeuristicsConfig, "doc", HeuristicFilter, "heuristics", "Gopher/C4 rules per language"),
        "quality": StepType(QualityConfig, "doc", QualityClassifier, "quality", "CCNet-style score + bucket"),
        "ccnet": StepType(CCNetConfig, "doc", make_ccnet_step, "ccnet", "reference n-gram LM perplexity + bucket"),
        "code_filter": StepType(CodeConfig, "doc", CodeFilter, "code", "RedPajama-style code rules"),
        "decontaminate": StepType(DecontamConfig, "doc", Decontaminate, "contaminated", "benchmark n-gram overlap"),
        "stem_split": StepType(StemConfig, "doc", StemSplit, "stem", "route to SkyPile-STEM / -Main"),
        "python": StepType(
            PythonStepConfig,
            "doc",
            make_python_step,
            None,
            "your own datatrove PipelineStep / BaseFilter: class: 'pkg.mod:Class', args: {...}",
        ),
        "exact_dedup": StepType(
            ExactDedupStepConfig, "global", None, "exact_duplicate", "normalised-hash dedup", stages=exact_dedup_stages
        ),
        "minhash_dedup": StepType(
            MinhashStepConfig, "global", None, "near_duplicate", "MinHash-LSH near-dedup", stages=minhash_stages
        ),
        "semantic_filter": StepType(
            SemanticConfig,
            "global",
            None,
            "semantic_recurrent",
            "drop blocks recurring far beyond the corpus norm",
            stages=semantic_stages,
        ),
    }
    return {**builtin, **_REGISTERED}


@dataclass
class StepSpec:
    type: str
    label: str
    config: Any
    sources: tuple[str, ...] = ()
    skip_sources: tuple[str, ...] = ()


def parse_steps(raw_steps: list[dict[str, Any]]) -> list[StepSpec]:
    types = step_types()
    specs, seen = [], {}
    for i, raw in enumerate(raw_steps):
        raw = dict(raw)
        kind = raw.pop("type")
        if kind not in types:
            import difflib

            close = difflib.get_close_matches(str(kind), list(types), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"steps[{i}].type", f"unknown step {kind!r}{hint}; steps: {', '.join(types)}")
        label = raw.pop("name", None)
        if label is None:
            naming = getattr(types[kind].config, "default_label", None)  # e.g. a plug-in: its class name
            base = (naming(raw) if naming else None) or kind
            seen[base] = seen.get(base, 0) + 1
            label = base if seen[base] == 1 else f"{base}_{seen[base]}"
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(label)):
            raise ConfigError(f"steps[{i}].name", f"{label!r}: use letters, digits, '_', '-', '.'")
        sources = tuple(raw.pop("sources", ()) or ())
        skip = tuple(raw.pop("skip_sources", ()) or ())
        cfg = build(types[kind].config, raw, prefix=f"steps[{i}]")
        specs.append(StepSpec(kind, str(label), cfg, sources, skip))
    labels = [s.label for s in specs]
    dupes = {x for x in labels if labels.count(x) > 1}
    if dupes:
        raise ConfigError("steps", f"step names must be unique: {sorted(dupes)}")
    return specs


@dataclass
class Stage:
    name: str
    pipeline: list[PipelineStep]
    tasks: int
    skip_completed: bool = True


@dataclass
class Plan:
    stages: list[Stage]
    funnel_order: list[str]  # row labels of the funnel, in pipeline order
    stage_of_label: dict[str, str] = field(default_factory=dict)


class _NonEmpty(SkyFilter):
    """Drops documents a step emptied (datatrove's readers skip empty records, which would shift indices)."""

    name = "∅ Non-empty"
    default_reason = "empty_after_processing"

    def filter(self, doc) -> bool | tuple[bool, str]:
        return bool(doc.text.strip()) or (False, "empty_after_processing")


def build_plan(cfg: PipelineConfig) -> Plan:
    from datatrove.pipeline.readers import JsonlReader

    from skyloom.data.pipeline.readers import SourceReader
    from skyloom.data.pipeline.report import ReportStep
    from skyloom.data.pipeline.writers import HandoverWriter, ParquetSubsetWriter, SubsetWriter

    out = os.path.abspath(cfg.output_dir)
    tasks = cfg.executor.tasks
    types = step_types()
    specs = parse_steps(cfg.steps)
    stages: list[Stage] = []
    order: list[str] = []
    stage_of: dict[str, str] = {}
    n = 1
    stage_name = f"{n:02d}_documents"

    def funnel_dir(stage: str) -> str:
        return os.path.join(out, "stats", "funnel", stage)

    def malformed_dir(stage: str) -> str:
        return os.path.join(out, "stats", "malformed", stage)

    def wrap(step: PipelineStep, label: str, reason: str, stage: str) -> Accounted:
        order.append(label)
        stage_of[label] = stage
        return Accounted(
            step,
            label,
            funnel_dir(stage),
            reason,
            rejects_dir=os.path.join(out, "rejects") if cfg.keep_rejects else None,
            malformed_dir=malformed_dir(stage),
        )

    current: list[PipelineStep] = []
    for inp in cfg.inputs:
        current.append(SourceReader(inp, funnel_dir(stage_name), malformed_dir(stage_name)))
        order.append(f"read:{inp.label}")
        stage_of[f"read:{inp.label}"] = stage_name

    def close_stage(global_label: str) -> str:
        """End the per-document stage: guard, hand-over writer. Returns the hand-over folder."""
        nonlocal current
        guard = _NonEmpty()
        current.append(wrap(guard, f"{global_label}.input", "empty_after_processing", stage_name))
        handover = os.path.join(out, "work", stage_name)
        current.append(HandoverWriter(handover))
        return handover

    def reader_of(folder: str) -> JsonlReader:
        return JsonlReader(folder, glob_pattern="*.jsonl.gz", compression="gzip")

    for spec in specs:
        st = types[spec.type]
        if st.kind == "doc":
            step = st.make(spec.config)
            if spec.sources or spec.skip_sources:
                if not isinstance(step, SkyFilter):
                    raise ConfigError(f"steps.{spec.label}.sources", "only filters take sources / skip_sources")
                step.scope_sources, step.scope_skip_sources = spec.sources, spec.skip_sources
            reason = st.default_reason or getattr(step, "default_reason", None) or spec.label
            current.append(wrap(step, spec.label, reason, stage_name))
            continue
        if spec.sources or spec.skip_sources:
            raise ConfigError(f"steps.{spec.label}", "global steps (dedup, semantic) apply to all sources")
        handover = close_stage(spec.label)
        ctx = GlobalContext(os.path.join(out, "work", f"{stage_name}.{spec.label}"), out, stage_name, spec.label, tasks)
        made = st.stages(spec.config, ctx)
        current.append(made.signature)
        stages.append(Stage(stage_name, current, tasks))
        stages += [
            Stage(f"{stage_name}.{spec.label}.{suffix}", pipeline, n_tasks) for suffix, pipeline, n_tasks in made.stages
        ]
        next_filter = made.filter
        n += 1
        stage_name = f"{n:02d}_documents"
        current = [reader_of(handover), wrap(next_filter, spec.label, st.default_reason, stage_name)]

    compression = "gzip" if cfg.compression == "gzip" else None
    writer = ParquetSubsetWriter if cfg.output_format == "parquet" else SubsetWriter
    current.append(writer(out, compression=compression))
    stages.append(Stage(stage_name, current, tasks))
    stages.append(Stage("99_report", [ReportStep(out, order, stage_of)], 1, skip_completed=False))
    return Plan(stages, order, stage_of)
