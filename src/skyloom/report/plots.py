"""The report's figures (matplotlib, Agg): each function takes the run's data and writes one PNG.

Sessions get fixed colours in order (red, blue, green, … — the report's Figure 3 draws its 0–2T session red
and its 2–3T session blue), and chained sessions are drawn after one another on the x axis.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from skyloom.report.runs import RunData, Session

COLOURS = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def format_tokens(x: float) -> str:
    """A token count as a tick label: 1500 → '1.5k', 2e6 → '2M', 3.2e9 → '3.2B', 3.13e12 → '3.13T'.

    Matplotlib's own labels read 200000, 400000, … (which collide on a narrow panel) or 0.2, 0.4 with a separate
    '1e6' in the corner; these stay at most five characters."""
    x = float(f"{x:.3g}")  # round first, so that 999,999 is '1M', not '1e+03k'
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return "0" if x == 0 else f"{x:.3g}"


def token_axis(axis) -> None:
    """k/M/B/T labels and at most six ticks on a matplotlib axis of token counts (`ax.xaxis`, `ax.yaxis`)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    axis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
    axis.set_major_formatter(FuncFormatter(lambda x, _pos: format_tokens(x)))


def _legend(ax, sessions: list[Session]) -> None:
    if len(sessions) > 1:
        ax.legend(fontsize=8)


def val_sets(data: RunData) -> list[str]:
    names: list[str] = []
    for s in data.sessions:
        for r in s.of("val"):
            if r.get("set") not in names and isinstance(r.get("set"), str):
                names.append(r["set"])
    return names


def plot_losses(data: RunData, path: Path) -> Path:
    """Figure 3's layout: training loss, then one panel per validation set, against tokens."""
    plt = _plt()
    sets = val_sets(data)
    n = 1 + len(sets)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for i, s in enumerate(data.sessions):
        c = COLOURS[i % len(COLOURS)]
        tr = [r for r in s.train if _num(r.get("loss")) and _num(r.get("tokens"))]
        flat[0].plot([s.token_offset + r["tokens"] for r in tr], [r["loss"] for r in tr], color=c, lw=1, label=s.name)
        for j, name in enumerate(sets, 1):
            vs = [r for r in s.of("val") if r.get("set") == name and _num(r.get("loss")) and _num(r.get("tokens"))]
            flat[j].plot(
                [s.token_offset + r["tokens"] for r in vs],
                [r["loss"] for r in vs],
                color=c,
                marker="o",
                ms=3,
                lw=1.2,
                label=s.name,
            )
    flat[0].set_title("training loss")
    for j, name in enumerate(sets, 1):
        flat[j].set_title(f"validation loss: {name}")
    for ax in flat[:n]:
        ax.set_xlabel("tokens")
        token_axis(ax.xaxis)
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        _legend(ax, data.sessions)
    for ax in flat[n:]:
        ax.axis("off")
    return _save(fig, path)


def plot_schedule(data: RunData, path: Path) -> Path:
    """Learning rate and the mixture weights (STEM share) against steps."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    sources: list[str] = []
    for i, s in enumerate(data.sessions):
        c = COLOURS[i % len(COLOURS)]
        tr = [r for r in s.train if _num(r.get("lr"))]
        a.plot([s.step_offset + r["step"] for r in tr], [r["lr"] for r in tr], color=c, label=s.name)
        keys = sorted({k for r in s.train for k in r if k.startswith("weight/")})
        only = list((s.config.get("data") or {}).get("sources") or {})
        if not keys and len(only) == 1 and tr:  # a single source is not logged: its weight is 1 throughout
            keys = [f"weight/{only[0]}"]
            for r in s.train:
                r.setdefault(keys[0], 1.0)
        for key in keys:
            src = key.split("/", 1)[1]
            if src not in sources:
                sources.append(src)
            pts = [r for r in s.train if _num(r.get(key))]
            style = "-" if src == "stem" else ("--" if src == "main" else ":")
            b.plot(
                [s.step_offset + r["step"] for r in pts],
                [r[key] for r in pts],
                color=c,
                ls=style,
                label=f"{s.name}: {src}",
            )
    a.set_title("learning rate")
    a.set_yscale("log")
    b.set_title("mixture weights (STEM share = weight/stem)")
    b.set_ylim(0, 1.05)
    for ax in (a, b):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(fig, path)


def plot_throughput(data: RunData, path: Path) -> Path:
    """Tokens per second and MFU against steps (MFU is null on CPU unless a peak was given)."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.4))
    any_mfu = False
    for i, s in enumerate(data.sessions):
        c = COLOURS[i % len(COLOURS)]
        tr = [r for r in s.train if _num(r.get("tokens_per_sec"))]
        a.plot([s.step_offset + r["step"] for r in tr], [r["tokens_per_sec"] for r in tr], color=c, lw=1, label=s.name)
        mf = [r for r in s.train if _num(r.get("mfu"))]
        if mf:
            any_mfu = True
            b.plot([s.step_offset + r["step"] for r in mf], [100 * r["mfu"] for r in mf], color=c, lw=1, label=s.name)
    a.set_title("throughput (tokens/s, all ranks)")
    token_axis(a.yaxis)
    b.set_title("model FLOPs utilisation (%)")
    if not any_mfu:
        b.text(
            0.5,
            0.5,
            "no MFU recorded\n(CPU run without train.peak_tflops:\nno invented CPU peak)",
            ha="center",
            va="center",
            transform=b.transAxes,
            fontsize=10,
            color="0.35",
        )
    for ax in (a, b):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0] and len(data.sessions) > 1:
            ax.legend(fontsize=8)
    return _save(fig, path)


def series_of(data: RunData, kind: str) -> dict[str, list[tuple[float, float, int]]]:
    """Numeric series of an unknown record kind: label → [(x, y, session index)].

    x is `round` when present, else `step` (offset by the session's position), else the line number; labels are
    the numeric field names, prefixed by the record's `task` / `name` / `set` / `metric` when it has one."""
    out: dict[str, list[tuple[float, float, int]]] = {}
    for i, s in enumerate(data.sessions):
        for n, r in enumerate(s.of(kind)):
            if _num(r.get("round")):
                x = float(r["round"])
            elif _num(r.get("step")):
                x = float(s.step_offset + r["step"])
            else:
                x = float(n)
            tag = next((str(r[k]) for k in ("task", "name", "set", "metric") if isinstance(r.get(k), str)), "")
            for key, value in r.items():
                if key in ("round", "step", "time", "tokens") or not _num(value):
                    continue
                label = f"{tag}/{key}" if tag else key
                out.setdefault(label, []).append((x, float(value), i))
    return out


def plot_series(data: RunData, kind: str, path: Path) -> Path | None:
    """One panel per numeric field of records of `kind` (at most 6 panels); None when nothing is numeric."""
    series = series_of(data, kind)
    if not series:
        return None
    plt = _plt()
    labels = list(series)[:6]
    cols = min(3, len(labels))
    rows = math.ceil(len(labels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.2 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, label in zip(flat, labels):
        for i, s in enumerate(data.sessions):
            pts = sorted((x, y) for x, y, si in series[label] if si == i)
            if pts:
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    marker="o",
                    ms=3,
                    color=COLOURS[i % len(COLOURS)],
                    label=s.name,
                )
        ax.set_title(f"{kind}: {label}", fontsize=9)
        uses_round = any("round" in r for s in data.sessions for r in s.of(kind))
        ax.set_xlabel("round" if uses_round else "step")
        ax.grid(alpha=0.3)
    for ax in flat[len(labels) :]:
        ax.axis("off")
    return _save(fig, path)
