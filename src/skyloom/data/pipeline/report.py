"""The run report: merge every task's funnel counts into ``stats.json`` and a readable ``funnel.md``.

Each row is one step (readers first): documents and characters in and out, documents dropped by reason,
and the same per language and per source. ``checks`` verifies the books balance: in every row
(and every language / source cell) docs_in = docs_out + dropped, and each row's input is the previous row's output.
"""

from __future__ import annotations

import glob
import json
import os
import time
from collections import defaultdict
from typing import Any

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from skyloom.data.pipeline.base import atomic_write_json

_FIELDS = ("docs_in", "chars_in", "docs_out", "chars_out")


def _empty() -> dict[str, Any]:
    return {
        "docs_in": 0,
        "chars_in": 0,
        "docs_out": 0,
        "chars_out": 0,
        "docs_dropped": 0,
        "chars_dropped": 0,
        "dropped": {},
    }


def _add_cell(row: dict[str, Any], cell: dict[str, Any]) -> None:
    for k in _FIELDS:
        row[k] += cell[k]
    for reason, d in cell["dropped"].items():
        r = row["dropped"].setdefault(reason, {"docs": 0, "chars": 0})
        r["docs"] += d["docs"]
        r["chars"] += d["chars"]
        row["docs_dropped"] += d["docs"]
        row["chars_dropped"] += d["chars"]


def collect(out_dir: str, order: list[str], stage_of: dict[str, str]) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for label in order:
        row = _empty()
        row.update(step=label, stage=stage_of.get(label), by_language={}, by_source={}, counters={}, tasks=0)
        rows[label] = row
    for path in sorted(glob.glob(os.path.join(out_dir, "stats", "funnel", "*", "*.json"))):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        row = rows.get(data.get("label"))
        if row is None or os.path.basename(os.path.dirname(path)) != row["stage"]:
            continue
        row["tasks"] += 1
        for key, cell in data.get("cells", {}).items():
            lang, src = key.split("\t", 1)
            _add_cell(row, cell)
            _add_cell(row["by_language"].setdefault(lang, _empty()), cell)
            _add_cell(row["by_source"].setdefault(src, _empty()), cell)
        for name, v in (data.get("counters") or {}).items():
            row["counters"][name] = row["counters"].get(name, 0) + v
    steps = [rows[label] for label in order]
    for r in steps:
        r["chars_modified"] = r["chars_in"] - r["chars_out"] - r["chars_dropped"]
    malformed: list[dict[str, Any]] = []
    by_reason: dict[str, int] = defaultdict(int)
    for path in sorted(glob.glob(os.path.join(out_dir, "stats", "malformed", "*", "*.json"))):
        with open(path, encoding="utf-8") as f:
            for item in json.load(f):
                by_reason[item["reason"]] += 1
                malformed.append(item)
    readers = [r for r in steps if r["step"].startswith("read:")]
    others = [r for r in steps if not r["step"].startswith("read:")]

    def ok(c: dict[str, Any]) -> bool:
        return c["docs_in"] == c["docs_out"] + c["docs_dropped"]

    # every row, and every language / source cell of it, balances on its own
    balanced = all(ok(r) and all(ok(c) for dim in ("by_language", "by_source") for c in r[dim].values()) for r in steps)
    chain = []
    prev_out = sum(r["docs_out"] for r in readers)
    for r in others:
        chain.append({"step": r["step"], "expected_in": prev_out, "docs_in": r["docs_in"]})
        prev_out = r["docs_out"]
    chained = all(c["expected_in"] == c["docs_in"] for c in chain)
    outputs = _outputs(steps)
    report = {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "steps": steps,
        "outputs": outputs,
        "malformed": {"count": len(malformed), "by_reason": dict(by_reason), "records": malformed[:1000]},
        "checks": {"rows_balanced": balanced, "rows_chained": chained, "chain": chain},
    }
    sem = os.path.join(out_dir, "reports", "semantic_clusters.json")
    if os.path.isfile(sem):
        with open(sem, encoding="utf-8") as f:
            report["semantic"] = json.load(f)["summary"]
    return report


def _outputs(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Documents in SkyPile-Main / -STEM, from the STEM step's counters (or everything is main)."""
    last = steps[-1] if steps else None
    if last is None:
        return {}
    stem_row = next((r for r in steps if any(k.startswith("subset:") for k in r["counters"])), None)
    if stem_row is None:
        return {"main": {"docs": last["docs_out"], "chars": last["chars_out"]}}
    out: dict[str, Any] = {}
    for k, v in stem_row["counters"].items():
        parts = k.split(":")
        if len(parts) == 2:
            out.setdefault(parts[1], {"docs": 0, "by_language": {}})["docs"] += v
        elif len(parts) == 3:
            out.setdefault(parts[1], {"docs": 0, "by_language": {}})["by_language"][parts[2]] = v
    if stem_row is not last:
        out["note"] = (
            f"counted at step {stem_row['step']}; later steps dropped {stem_row['docs_out'] - last['docs_out']}"
        )
    return out


def _fmt(n: int) -> str:
    return f"{n:,}"


def _reasons(row: dict[str, Any], top: int = 4) -> str:
    items = sorted(row["dropped"].items(), key=lambda kv: -kv[1]["docs"])
    text = ", ".join(f"{k} {v['docs']:,}" for k, v in items[:top])
    if len(items) > top:
        text += f", … (+{len(items) - top})"
    return text


def format_markdown(report: dict[str, Any]) -> str:
    steps = report["steps"]
    lines = [
        "# SkyPile pipeline funnel",
        "",
        f"generated {report['generated']}",
        "",
        "| step | docs in | docs out | dropped | chars in | chars out | kept chars | drop reasons |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in steps:
        kept = r["chars_out"] / r["chars_in"] if r["chars_in"] else 1.0
        lines.append(
            f"| {r['step']} | {_fmt(r['docs_in'])} | {_fmt(r['docs_out'])} | {_fmt(r['docs_dropped'])} | "
            f"{_fmt(r['chars_in'])} | {_fmt(r['chars_out'])} | {100 * kept:.1f}% | {_reasons(r)} |"
        )
    for dim, title in (("by_language", "language"), ("by_source", "source")):
        keys = sorted({k for r in steps for k in r[dim]})
        lines += [
            "",
            f"## Documents kept per {title} (out / in at each step)",
            "",
            "| step | " + " | ".join(keys) + " |",
            "|---|" + "---:|" * len(keys),
        ]
        for r in steps:
            cells = []
            for k in keys:
                c = r[dim].get(k)
                cells.append(f"{_fmt(c['docs_out'])} / {_fmt(c['docs_in'])}" if c else "")
            lines.append(f"| {r['step']} | " + " | ".join(cells) + " |")
    outs = report.get("outputs") or {}
    if outs:
        lines += ["", "## Outputs", ""]
        for name, o in outs.items():
            if isinstance(o, dict):
                extra = (
                    f" ({', '.join(f'{k} {v:,}' for k, v in sorted(o.get('by_language', {}).items()))})"
                    if o.get("by_language")
                    else ""
                )
                lines.append(
                    f"- SkyPile-{name.upper() if name == 'stem' else name.capitalize()}: "
                    f"{_fmt(o['docs'])} documents{extra}"
                )
            else:
                lines.append(f"- {o}")
    counters = [
        (r["step"], k, v) for r in steps for k, v in sorted(r["counters"].items()) if not k.startswith("subset:")
    ]
    if counters:
        lines += ["", "## Step counters", ""] + [f"- {s}: {k} = {v:,}" for s, k, v in counters]
    mal = report["malformed"]
    lines += ["", f"## Malformed input: {mal['count']:,} records", ""]
    for reason, n in sorted(mal["by_reason"].items(), key=lambda kv: -kv[1]):
        lines.append(f"- {reason}: {n:,}")
    for item in mal["records"][:20]:
        lines.append(f"  - {item.get('file')}:{item.get('line')} — {item['reason']} {item.get('detail', '')}")
    if "semantic" in report:
        s = report["semantic"]
        lines += [
            "",
            "## Distribution filter",
            "",
            f"{s['flagged_groups']} over-recurring groups (≥ {s['threshold_docs']:g} documents), "
            f"{s['removed_blocks']:,} blocks removed — see reports/semantic_clusters.md",
        ]
    c = report["checks"]
    lines += [
        "",
        f"Checks: every row docs in = out + dropped: {c['rows_balanced']}; "
        f"every row's input = previous row's output: {c['rows_chained']}",
    ]
    return "\n".join(lines) + "\n"


def write_report(out_dir: str, order: list[str], stage_of: dict[str, str]) -> dict[str, Any]:
    report = collect(out_dir, order, stage_of)
    atomic_write_json(os.path.join(out_dir, "stats.json"), report)
    with open(os.path.join(out_dir, "funnel.md"), "w", encoding="utf-8") as f:
        f.write(format_markdown(report))
    return report


class ReportStep(PipelineStep):
    """Final one-task stage (so Slurm runs end with the report too)."""

    type = "📊 - REPORT"
    name = "📊 Funnel report"

    def __init__(self, out_dir: str, order: list[str] | None = None, stage_of: dict[str, str] | None = None):
        super().__init__()
        self.out_dir = out_dir
        self.order = order or []
        self.stage_of = stage_of or {}

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        write_report(self.out_dir, self.order, self.stage_of)
