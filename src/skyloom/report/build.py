"""`skyloom report RUN_DIR` → RUN_DIR/report.html (self-contained: PNGs embedded as base64) + RUN_DIR/report/*.png.

Sections: Sessions (steps, tokens, losses, time), Training and validation losses (Figure 3's layout), Learning
rate and data mixture, Throughput and MFU, Table 6 (perplexity per domain), Table 8 (leakage), Data pipeline
(the funnel), Samples (what the demo's models write), Other metrics (any record kind the report does not know, plotted per round/step), Phases (the
demo's time per phase). A section without data says so instead of disappearing.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from pathlib import Path
from typing import Any

from skyloom.report import plots
from skyloom.report.runs import RunData, load_run

SECTIONS = [
    "Sessions",
    "Training and validation losses",
    "Learning rate and data mixture",
    "Throughput and MFU",
    "Table 6: perplexity per domain",
    "Table 8: benchmark leakage",
    "Data pipeline",
    "Samples",
    "Other metrics",
]

CSS = """body{font-family:system-ui,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
.note{color:#666;font-size:.9em}pre{white-space:pre-wrap;background:#f8f8f8;padding:.4em}code{background:#f5f5f5;padding:0 3px}"""


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _table(head: list[str], rows: list[list[Any]]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    return "\n".join(out) + "</table>"


def markdown_tables(md: str) -> str:
    """Markdown → HTML for what the project's markdown reports use: `#` headings, `|` tables, paragraphs."""
    out, table = [], []

    def flush() -> None:
        if table:
            cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table]
            body = [r for r in cells[1:] if not all(re.fullmatch(r":?-+:?", c) for c in r)]
            out.append(_table(cells[0], body))
            table.clear()

    for line in md.splitlines():
        if line.strip().startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("#"):
            out.append(f"<h4>{html.escape(line.lstrip('#').strip())}</h4>")
        elif line.strip():
            out.append(f"<p class='note'>{html.escape(line.strip())}</p>")
    flush()
    return "\n".join(out)


def _fmt(x: Any, spec: str = ".3f") -> str:
    return format(x, spec) if isinstance(x, (int, float)) and x == x else "–"


def sessions_section(data: RunData) -> str:
    rows = []
    for i, s in enumerate(data.sessions):
        tr = [r for r in s.train if isinstance(r.get("loss"), (int, float))]
        vals: dict[str, float] = {}
        for r in s.of("val"):
            if isinstance(r.get("loss"), (int, float)):
                vals[r["set"]] = r["loss"]
        times = [r["time"] for r in s.records if isinstance(r.get("time"), (int, float))]
        tps = [r["tokens_per_sec"] for r in tr if isinstance(r.get("tokens_per_sec"), (int, float))]
        t = s.config.get("train") or {}
        lr = f"{t.get('schedule', '?')} {t.get('lr', '?')}" + (
            f"→{t.get('min_lr')}" if t.get("schedule") == "cosine" else ""
        )
        rows.append(
            [
                f"{s.name} ({plots.COLOURS[i % len(plots.COLOURS)].removeprefix('tab:')})",
                s.last_step,
                f"{s.last_tokens:,}",
                lr,
                t.get("init_from") or "scratch",
                _fmt(tr[0]["loss"]) if tr else "–",
                _fmt(tr[-1]["loss"]) if tr else "–",
                ", ".join(f"{k} {v:.3f}" for k, v in vals.items()) or "–",
                _fmt(sorted(tps)[len(tps) // 2], ",.0f") if tps else "–",
                _fmt(max(times) - min(times), ".0f") if len(times) > 1 else "–",
            ]
        )
    bad = sum(s.bad_lines for s in data.sessions)
    note = f"<p class='note'>{bad} unreadable metrics line(s) skipped.</p>" if bad else ""
    return (
        _table(
            [
                "session (colour)",
                "steps",
                "tokens",
                "lr",
                "starts from",
                "first loss",
                "last loss",
                "final validation losses",
                "median tokens/s",
                "seconds",
            ],
            rows,
        )
        + note
    )


def table6_section(data: RunData) -> str:
    if not data.ppl:
        return (
            "<p class='note'>No Table-6 results (run <code>skyloom eval ppl … --output RUN_DIR/eval/ppl.json</code>)."
            "</p>"
        )
    from skyloom.eval.perplexity import format_details, format_table

    models = data.ppl.get("models") or {"model": data.ppl}
    domains = data.ppl.get("domains") or list(next(iter(models.values()))["domains"])
    parts = [
        markdown_tables(format_table(models, domains)),
        "<p class='note'>Perplexity = exp(token-weighted mean loss) per held-out domain; Average = exp(mean "
        f"of the domain losses), as in Table 6. Windows: {html.escape(json.dumps(_convention(models)))}.</p>",
    ]
    unigram = data.ppl.get("unigram")
    if unigram:
        from skyloom.eval.unigram import format_unigram

        parts.append(
            "<h4>Held-out loss against the unigram entropy</h4>"
            + markdown_tables(format_unigram(models, unigram))
            + "<p class='note'>Unigram entropy = −Σ p ln p of the domain's token frequencies (nats/token, its training "
            "and held-out text): what the best model without context scores on average. Loss = ln(perplexity) "
            "above; a loss well below the entropy is learning that uses context.</p>"
        )
    for name, result in models.items():
        parts.append(f"<h4>{html.escape(name)}</h4>" + markdown_tables(format_details(result)))
    return "\n".join(parts)


def _convention(models: dict[str, Any]) -> Any:
    return next((m.get("convention") for m in models.values() if m.get("convention")), "not recorded")


def table8_section(data: RunData) -> str:
    if not data.leakage:
        return (
            "<p class='note'>No Table-8 results (run <code>skyloom eval leakage … --output "
            "RUN_DIR/eval/leakage.json</code>).</p>"
        )
    from skyloom.eval.leakage import format_table8

    models = data.leakage.get("models") or {"model": data.leakage}
    note = data.leakage.get("note")
    contaminated = [f"{m}: {r['contamination']}" for m, r in models.items() if r.get("contamination")]
    return (
        markdown_tables(format_table8(models))
        + (
            "<p class='note'>Δ1 = L_test − L_ref (clearly negative: the test split leaked), Δ2 = L_test − L_train "
            "(clearly positive: the train split was trained on); 95% bootstrap intervals.</p>"
        )
        + (f"<p class='note'>Sets: {html.escape(note)}</p>" if note else "")
        + "".join(f"<p><b>{html.escape(c)}</b></p>" for c in contaminated)
    )


def samples_section(data: RunData) -> str:
    if not data.samples:
        return "<p class='note'>No samples (the demo writes eval/samples.json).</p>"
    parts = []
    for session, got in data.samples.items():
        rows = [[c["domain"], c["prompt"], c["greedy"], c["sampled"]] for c in got.get("continuations", [])]
        parts.append(f"<h4>after {html.escape(session)}</h4>" + _table(["domain", "prompt", "greedy", "sampled"], rows))
        for p in got.get("problems", []):
            mark = "correct" if p.get("correct") else "wrong"
            parts.append(
                f"<p>Word problem (never trained on), greedy answer — <b>{mark}</b>:</p><pre>{html.escape(p['prompt'])}"
                f"<b>{html.escape(p['answer'])}</b></pre><p class='note'>reference:{html.escape(p['reference'])}</p>"
            )
    parts.append(
        "<p class='note'>Continuations of fixed prompts by the model's own decoding (KV cache): greedy, and sampled "
        "with temperature 0.8, top-k 40, fixed seed — the same text on every run of the same checkpoints.</p>"
    )
    return "\n".join(parts)


def phases_section(data: RunData) -> str:
    if not data.phases:
        return ""
    rows = [[name, _fmt(p.get("seconds"), ".1f"), _fmt(p.get("cpu_seconds"), ".1f")] for name, p in data.phases.items()]
    rows.append(["total", _fmt(sum(p.get("seconds", 0) for p in data.phases.values()), ".1f"), ""])
    return "<h2 id='phases'>Demo phases</h2>" + _table(["phase", "wall seconds", "CPU seconds"], rows)


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write report.html (and the PNGs in report/) for `run_dir`; returns the HTML path."""
    data = load_run(run_dir)
    root = Path(run_dir)
    html_path = Path(out) if out else root / "report.html"
    png_dir = html_path.parent / "report"
    png_dir.mkdir(parents=True, exist_ok=True)
    losses = plots.plot_losses(data, png_dir / "losses.png")
    schedule = plots.plot_schedule(data, png_dir / "lr_mixture.png")
    speed = plots.plot_throughput(data, png_dir / "throughput_mfu.png")
    other = []
    for kind in data.other_kinds:
        png = plots.plot_series(data, kind, png_dir / f"series_{re.sub(r'[^A-Za-z0-9_-]', '_', kind)}.png")
        n = sum(len(s.of(kind)) for s in data.sessions)
        other.append(
            f"<h4>kind “{html.escape(kind)}” ({n} records)</h4>"
            + (_img(png) if png else "<p class='note'>no numeric fields to plot</p>")
        )
    body = [
        f"<h1>skyloom run report</h1><p class='note'>{html.escape(str(root.resolve()))} — "
        f"{len(data.sessions)} session(s), generated {time.strftime('%Y-%m-%d %H:%M:%S')}</p>",
        f"<h2 id='sessions'>{SECTIONS[0]}</h2>",
        sessions_section(data),
        f"<h2 id='losses'>{SECTIONS[1]}</h2>",
        _img(losses),
        "<p class='note'>Training loss and per-domain validation losses against tokens, each session in its own "
        "colour (Figure 3's layout: red = the first session, blue = the continuation).</p>",
        f"<h2 id='schedule'>{SECTIONS[2]}</h2>",
        _img(schedule),
        f"<h2 id='throughput'>{SECTIONS[3]}</h2>",
        _img(speed),
        f"<h2 id='table6'>{SECTIONS[4]}</h2>",
        table6_section(data),
        f"<h2 id='table8'>{SECTIONS[5]}</h2>",
        table8_section(data),
        f"<h2 id='pipeline'>{SECTIONS[6]}</h2>",
        markdown_tables(data.funnel_md)
        if data.funnel_md
        else "<p class='note'>No pipeline funnel in this run directory (pipeline/funnel.md).</p>",
        f"<h2 id='samples'>{SECTIONS[7]}</h2>",
        samples_section(data),
        f"<h2 id='other'>{SECTIONS[8]}</h2>",
        "\n".join(other) or "<p class='note'>No other record kinds in metrics.jsonl.</p>",
        phases_section(data),
    ]
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>skyloom report: {html.escape(root.name)}"
        f"</title><style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    tmp = html_path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(html_path)
    return html_path
