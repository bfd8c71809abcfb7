"""`skyloom plan`: what a recipe will cost and read, before any data or GPU exists.

Per session: model size and FLOPs/token, tokens, steps, batch arithmetic, the parallel layout, the schedule,
and the data mixture — per source the tokens available (the shards' `index.json` when present, else the
recipe's `declared_tokens`), the weight schedule, the tokens drawn, its share of the session, and the epochs
read so far (sessions that continue the loader, `data.init_loader_from_checkpoint`, add up). Then GPU-hours and
days = tokens × (6N + 12·L·H·S) / (peak FLOP/s × MFU), per session, per stage and in total.

The mixture arithmetic is the trainer's own `MixtureLoader.plan()` (the same largest-remainder counts) for runs
up to `EXACT_STEPS` steps; longer runs (millions of windows per step, 10⁵ steps) use the loader's weight
schedule summed in one vectorised pass — the loader's realised counts never differ from that ideal by a whole
window per source, so the figures agree to < 1 window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skyloom.recipes.recipe import HardwareConfig, Recipe

EXACT_STEPS = 20_000


@dataclass
class DeclaredSource:
    """Stands in for a `TokenSource` whose shards do not exist yet: only its size is known."""

    directory: Path
    tokens: int

    def __len__(self) -> int:
        return self.tokens


def _sources(recipe: Recipe, cfg) -> tuple[list, dict[str, str]]:
    from skyloom.data.mixture import MixtureSourceSpec, WeightSchedule
    from skyloom.data.shards import TokenSource

    specs, origin = [], {}
    for name, src in cfg.data.sources.items():
        if (Path(src.path) / "index.json").is_file():
            source: Any = TokenSource(src.path)
            origin[name] = "shards"
        elif name in recipe.config.declared_tokens:
            source = DeclaredSource(Path(src.path), int(recipe.config.declared_tokens[name]))
            origin[name] = "declared"
        else:
            raise ValueError(
                f"source '{name}': no shards at {src.path} (index.json) and no declared_tokens.{name} "
                f"in {recipe.directory / 'recipe.yaml'}"
            )
        cap = src.max_epochs if src.max_epochs is not None else cfg.data.max_epochs
        specs.append(MixtureSourceSpec(name, source, WeightSchedule(src.weight), cap))
    return specs, origin


def _vectorised_draws(loader, start: np.ndarray) -> np.ndarray:
    """Windows drawn per source after the whole run: start + the schedule's integral, rounded to sum exactly."""
    steps = loader.total_steps
    frac = np.arange(steps) / (steps - 1) if steps > 1 else np.zeros(1)
    w = np.stack([np.interp(frac, s.spec.weight.xs, s.spec.weight.ws) for s in loader.sources], axis=1)
    top = w.max(axis=1, keepdims=True)
    if not np.all(top > 0):
        loader.weights_at(int(np.argmin(top[:, 0])))  # raises the loader's PlanError for that step
    w = w / top  # as MixtureLoader.weights_at: scaled to ≤ 1 first, so weights near 1e308 cannot overflow the sum
    w = w / w.sum(axis=1, keepdims=True)
    ideal = loader.global_windows * w.sum(axis=0)
    counts = np.floor(ideal).astype(np.int64)
    short = loader.global_windows * steps - int(counts.sum())
    for i in np.argsort(-(ideal - counts), kind="stable")[:short]:
        counts[i] += 1
    return start + counts


def session_parallel(train, hardware: HardwareConfig):
    """The session's `train.parallel` resolved for the recipe's GPUs; a `hardware.pipeline_parallel` above 1 (what
    `--pp` sets) replaces its `pp`. Refused, naming train.parallel, when the degrees do not fill the GPUs."""
    from dataclasses import replace

    pcfg = train.parallel
    if hardware.pipeline_parallel > 1 and hardware.pipeline_parallel != pcfg.pp:
        pcfg = replace(pcfg, pp=hardware.pipeline_parallel, pp_split=None)
    return pcfg.resolved(hardware.gpus)


def session_memory(
    cfg, pcfg, windows: int, hardware: HardwareConfig, gpu_mem_gb: float, memory_profile: str | None
) -> dict[str, Any]:
    """skyloom.model.memory's per-GPU plan for the session's layout (JSON-ready), with its text.

    The profile defaults to what skyloom's own trainer holds (`torch-amp`: fp32 weights under bf16 autocast;
    `fp32` without bf16); `megatron-bf16` is the report's Megatron-LM set-up (Table 10)."""
    from skyloom.model.memory import format_memory, gpu_capacity_bytes, layout_from_parallel, plan_memory

    profile = memory_profile or ("fp32" if cfg.train.precision == "fp32" else "torch-amp")
    layout = layout_from_parallel(
        pcfg,
        hardware.gpus,
        micro_batch_size=cfg.train.micro_batch_size,
        seq_len=cfg.seq_len,
        global_batch=windows,
        precision=profile,
        activation_checkpointing=cfg.train.activation_checkpointing,
    )
    plan = plan_memory(cfg.model, layout, gpu_capacity_bytes(gpu_mem_gb))
    return dict(plan.as_dict(), text=format_memory(plan))


def plan_session(
    recipe: Recipe,
    name: str,
    root: Path,
    hardware: HardwareConfig,
    carried: dict[str, tuple[int, int]],
    gpu_mem_gb: float = 80.0,
    memory_profile: str | None = None,
) -> dict[str, Any]:
    """One session's plan; `carried` maps source name → (tokens available, windows drawn so far); `gpu_mem_gb`
    and `memory_profile` feed the per-GPU memory plan (skyloom.model.memory)."""
    from skyloom.data.mixture import MixtureLoader
    from skyloom.model.accounting import count_params, flops_per_token
    from skyloom.train.trainer import total_steps_for

    cfg = recipe.session_config(name, root)
    t = cfg.train
    seq = cfg.seq_len
    steps = total_steps_for(cfg)
    windows = t.global_batch_tokens // seq
    specs, origin = _sources(recipe, cfg)
    loader = MixtureLoader(
        specs, seq_len=seq, global_windows=windows, micro_batch_size=windows, total_steps=steps, seed=cfg.data.seed
    )
    start = np.zeros(len(loader.sources), dtype=np.int64)
    if cfg.data.init_loader_from_checkpoint:
        for i, s in enumerate(loader.sources):
            if s.name in carried and carried[s.name][0] == len(s.spec.source):
                start[i] = carried[s.name][1]
    if steps <= EXACT_STEPS:
        loader.drawn = start.copy()
        loader.ideal = start.astype(np.float64)
        drawn = np.array([r["windows_drawn"] for r in loader.plan()], dtype=np.int64)
    else:
        drawn = _vectorised_draws(loader, start)
    session_windows = drawn - start
    total_tokens = steps * t.global_batch_tokens
    sources = []
    for i, s in enumerate(loader.sources):
        w0, w1 = loader.weights_at(0)[i], loader.weights_at(steps - 1)[i]
        sources.append(
            {
                "source": s.name,
                "origin": origin[s.name],
                "path": str(s.spec.source.directory),
                "tokens_available": len(s.spec.source),
                "weight": s.spec.weight.describe(),
                "share_start": float(w0),
                "share_end": float(w1),
                "tokens_drawn": int(session_windows[i]) * seq,
                "share": float(session_windows[i]) / (steps * windows),
                "epochs_session": float(session_windows[i]) / s.n_windows,
                "epochs_total": float(drawn[i]) / s.n_windows,
                "max_epochs": s.spec.max_epochs,
            }
        )
        carried[s.name] = (len(s.spec.source), int(drawn[i]))
    counts = count_params(cfg.model)
    fpt = flops_per_token(cfg.model, seq)
    pcfg = session_parallel(t, hardware)
    dp = pcfg.dp
    accumulation = windows / (dp * t.micro_batch_size)
    memory = session_memory(cfg, pcfg, windows, hardware, gpu_mem_gb, memory_profile)
    gpu_seconds = total_tokens * fpt / (hardware.peak_flops * hardware.mfu)
    return {
        "session": name,
        "stage": recipe.ref(name).stage,
        "model": {
            "preset": cfg.model.preset,
            "arch": cfg.model.arch,
            "params": counts.total,
            "active_params": counts.active,
            "layers": cfg.model.n_layers,
            "dim": cfg.model.dim,
            "flops_per_token": fpt,
        },
        "seq_len": seq,
        "global_batch_tokens": t.global_batch_tokens,
        "global_batch_windows": windows,
        "micro_batch_size": t.micro_batch_size,
        "steps": steps,
        "tokens": total_tokens,
        "schedule": {"kind": t.schedule, "lr": t.lr, "min_lr": t.min_lr, "warmup_steps": t.warmup_steps},
        "init_from": t.init_from,
        "continues_loader": cfg.data.init_loader_from_checkpoint,
        "layout": {
            "gpus": hardware.gpus,
            "data_parallel": dp,
            "pipeline_parallel": pcfg.pp,
            "tensor_parallel": pcfg.tp,
            "expert_parallel": pcfg.ep,
            "accumulation": accumulation,
            "parallel": vars(pcfg).copy(),
            "describe": pcfg.describe(),
            "zero1": pcfg.zero1,
        },
        "memory": memory,
        "sources": sources,
        "over_cap": [r["source"] for r in sources if r["epochs_total"] > r["max_epochs"] + 1e-9],
        "gpu_hours": gpu_seconds / 3600,
        "days": gpu_seconds / hardware.gpus / 86400,
        "tokens_per_gpu_second": hardware.peak_flops * hardware.mfu / fpt,
    }


def add_upcycle_advice(sessions: list[dict[str, Any]], dense_gpu_hours: float | None = None) -> None:
    """Skywork-MoE §3.3 on the recipe's first MoE session: upcycle the dense checkpoint or train from scratch?

    C_dense is `dense_gpu_hours` when given (a dense model trained elsewhere), else the GPU-hours of the dense
    sessions before it in this recipe; C_MoE is the GPU-hours of the MoE sessions from there on."""
    from skyloom.model.upcycle import upcycle_advice

    is_moe = [s["model"]["active_params"] < s["model"]["params"] for s in sessions]
    if True not in is_moe:
        return
    first = is_moe.index(True)
    dense = (
        dense_gpu_hours
        if dense_gpu_hours is not None
        else sum(s["gpu_hours"] for s, moe in zip(sessions[:first], is_moe) if not moe)
    )
    budget = sum(s["gpu_hours"] for s, moe in zip(sessions[first:], is_moe[first:]) if moe)
    if dense == 0 and sessions[first]["init_from"]:
        # upcycled from a checkpoint trained elsewhere: its cost is unknown, and "C_dense = 0" would advise scratch
        sessions[first]["upcycle_advice"] = {
            "choice": "unknown",
            "ratio": None,
            "dense_gpu_hours": None,
            "moe_gpu_hours": budget,
            "reasoning": f"starts from {sessions[first]['init_from']}, trained outside this recipe; pass "
            "--dense-gpu-hours (its training cost) for Skywork-MoE §3.3's advice.",
        }
        return
    advice = upcycle_advice(dense, budget)
    sessions[first]["upcycle_advice"] = {
        "choice": advice.choice,
        "ratio": advice.ratio,
        "dense_gpu_hours": dense,
        "moe_gpu_hours": budget,
        "reasoning": advice.reasoning,
    }


def plan_recipe(
    recipe: Recipe,
    root: str | Path = ".",
    hardware: HardwareConfig | None = None,
    dense_gpu_hours: float | None = None,
    gpu_mem_gb: float = 80.0,
    memory_profile: str | None = None,
) -> dict[str, Any]:
    """The whole recipe's plan (JSON-ready): sessions in order, stage sums, totals, and for a recipe with MoE
    sessions the §3.3 upcycling advice (`dense_gpu_hours`: the dense checkpoint's cost if trained elsewhere)."""
    hw = hardware or recipe.config.hardware
    hw.validate()
    carried: dict[str, tuple[int, int]] = {}
    sessions = [
        plan_session(recipe, ref.name, Path(root), hw, carried, gpu_mem_gb, memory_profile) for ref in recipe.sessions
    ]
    add_upcycle_advice(sessions, dense_gpu_hours)
    stages: dict[str, dict[str, Any]] = {}
    for s in sessions:
        key = s["stage"] or s["session"]
        st = stages.setdefault(
            key, {"sessions": [], "tokens": 0, "steps": 0, "gpu_hours": 0.0, "days": 0.0, "source_tokens": {}}
        )
        st["sessions"].append(s["session"])
        for k in ("tokens", "steps", "gpu_hours", "days"):
            st[k] += s[k]
        for r in s["sources"]:
            st["source_tokens"][r["source"]] = st["source_tokens"].get(r["source"], 0) + r["tokens_drawn"]
    for st in stages.values():
        st["source_share"] = {k: v / st["tokens"] for k, v in st["source_tokens"].items()}
    total = {k: sum(s[k] for s in sessions) for k in ("tokens", "steps", "gpu_hours", "days")}
    return {
        "recipe": recipe.config.name,
        "description": recipe.config.description,
        "hardware": {
            "gpu": hw.gpu,
            "gpus": hw.gpus,
            "peak_tflops": hw.peak_flops / 1e12,
            "mfu": hw.mfu,
            "pipeline_parallel": hw.pipeline_parallel,
        },
        "sessions": sessions,
        "stages": stages,
        "total": total,
    }


def _hours(h: float) -> str:
    return f"{h:,.0f} GPU-hours" if h >= 10 else f"{h * 3600:,.1f} GPU-seconds"


def _tok(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as text: one block per session, then stages and totals."""
    hw = plan["hardware"]
    lines = [
        f"recipe {plan['recipe']}: {plan['description']}".rstrip(": "),
        f"hardware: {hw['gpus']} × {hw['gpu']} ({hw['peak_tflops']:g} TFLOP/s bf16 peak) at MFU {hw['mfu']:.1%}",
        "",
    ]
    for s in plan["sessions"]:
        m, lay, sch = s["model"], s["layout"], s["schedule"]
        lr = f"{sch['kind']} {sch['lr']:g}" + (f" → {sch['min_lr']:g}" if sch["kind"] == "cosine" else "")
        lines += [
            f"== session {s['session']}" + (f" ({s['stage']})" if s["stage"] else ""),
            f"model     {m['preset'] or 'custom'} ({m['arch']}): {m['params']:,} parameters, {m['layers']} layers × "
            f"{m['dim']}, {m['flops_per_token'] / 1e9:,.2f} GFLOP/token",
            f"tokens    {_tok(s['tokens'])} ({s['tokens']:,}) = {s['steps']:,} steps × {s['global_batch_tokens']:,} "
            f"tokens ({s['global_batch_windows']:,} × seq {s['seq_len']:,})",
            f"layout    {lay['gpus']} GPU(s) = {lay['describe']}; micro-batch {s['micro_batch_size']} → "
            f"{lay['accumulation']:g} accumulation step(s) per rank",
            f"lr        {lr}, warmup {sch['warmup_steps']}"
            + (f"; starts from {s['init_from']}" if s["init_from"] else "")
            + ("; continues the previous session's data positions" if s["continues_loader"] else ""),
            "mixture:",
        ]
        head = ("source", "available", "weight (schedule)", "share", "start→end", "drawn", "epochs", "total ep.", "cap")
        body = [
            (
                r["source"],
                _tok(r["tokens_available"]) + ("*" if r["origin"] == "declared" else ""),
                r["weight"],
                f"{r['share']:.1%}",
                f"{r['share_start']:.1%}→{r['share_end']:.1%}",
                _tok(r["tokens_drawn"]),
                f"{r['epochs_session']:.3f}",
                f"{r['epochs_total']:.3f}",
                f"{r['max_epochs']:g}",
            )
            for r in s["sources"]
        ]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
        for row in (head, *body):
            lines.append(
                "  "
                + "  ".join(
                    str(x).ljust(w) if i in (0, 2) else str(x).rjust(w) for i, (x, w) in enumerate(zip(row, widths))
                )
            )
        lines.append(
            f"compute   {_hours(s['gpu_hours'])} = {s['days']:,.2f} days on {lay['gpus']} GPU(s) "
            f"({s['tokens_per_gpu_second']:,.0f} tokens/s/GPU)"
        )
        lines.append(s["memory"]["text"])
        if s["memory"]["fits"] is False:
            lines.append(
                f"WARNING   the layout needs {s['memory']['peak_gb']:.1f} GB per GPU: out of memory on "
                f"{s['memory']['gpu_gb']:.1f} GB"
            )
        if s["over_cap"]:
            lines.append(f"WARNING   over the epoch cap: {', '.join(s['over_cap'])}")
        if "upcycle_advice" in s:
            a = s["upcycle_advice"]
            lines.append(
                f"upcycle?  {a['choice']} (C_MoE {_hours(a['moe_gpu_hours'])} vs C_dense "
                f"{_hours(a['dense_gpu_hours']) if a['dense_gpu_hours'] is not None else '?'}): {a['reasoning']}"
            )
        lines.append("")
    if any(r["origin"] == "declared" for s in plan["sessions"] for r in s["sources"]):
        lines += ["* declared in recipe.yaml (declared_tokens): no shards were found under the workspace root", ""]
    lines.append("== stages")
    for name, st in plan["stages"].items():
        shares = ", ".join(f"{k} {v:.1%}" for k, v in st["source_share"].items())
        lines.append(
            f"{name}: {' + '.join(st['sessions'])}: {_tok(st['tokens'])} tokens, {st['steps']:,} steps, "
            f"{_hours(st['gpu_hours'])}, {st['days']:,.2f} days; mixture {shares}"
        )
    t = plan["total"]
    lines.append(
        f"total: {_tok(t['tokens'])} tokens, {t['steps']:,} steps, {_hours(t['gpu_hours'])}, "
        f"{t['days']:,.2f} days on {hw['gpus']} × {hw['gpu']}"
    )
    return "\n".join(lines)
