"""`skyloom report`: every section, sessions chained on the axes, unknown record kinds plotted, bad lines tolerated."""

from __future__ import annotations

import base64
import json
import re

import pytest
import yaml

from skyloom.cli import main
from skyloom.report import plots
from skyloom.report.build import SECTIONS, build_report, markdown_tables
from skyloom.report.plots import format_tokens, series_of
from skyloom.report.runs import load_run


def _session(directory, steps, tokens_per_step, init_from=None, lr=1e-3, weights=None, extra=()):
    directory.mkdir(parents=True)
    cfg = {
        "train": {"schedule": "constant", "lr": lr, "init_from": init_from},
        "data": {"sources": {k: {"path": k} for k in (weights or {"main": 1})}},
    }
    (directory / "config.yaml").write_text(yaml.safe_dump(cfg))
    lines = [{"kind": "val", "step": 0, "tokens": 0, "set": "en", "loss": 5.0, "ppl": 148.4}]
    for s in range(1, steps + 1):
        rec = {
            "kind": "train",
            "step": s,
            "tokens": s * tokens_per_step,
            "loss": 6.0 - 0.1 * s,
            "lr": lr,
            "grad_norm": 1.0,
            "tokens_per_sec": 1000.0 + s,
            "mfu": None,
            "time": 100.0 + s,
        }
        for k, w in (weights or {}).items():
            rec[f"weight/{k}"] = w(s / steps)
        lines.append(rec)
    for name, loss in (("en", 4.5), ("zh", 5.5)):
        lines.append(
            {
                "kind": "val",
                "step": steps,
                "tokens": steps * tokens_per_step,
                "set": name,
                "loss": loss,
                "ppl": 2.718**loss,
            }
        )
    lines += list(extra)
    text = "\n".join(json.dumps(r) for r in lines) + "\n{not json\n"
    (directory / "metrics.jsonl").write_text(text)


@pytest.fixture
def workspace(tmp_path):
    root = tmp_path / "ws"
    _session(root / "runs" / "a", 6, 100)
    _session(
        root / "runs" / "b",
        4,
        100,
        init_from=str(root / "runs" / "a"),
        weights={"main": lambda f: 0.9 - 0.3 * f, "stem": lambda f: 0.1 + 0.3 * f},
        extra=[{"kind": "eval", "round": r, "task": "gsm8k", "accuracy": 0.1 * r, "time": 1.0} for r in (1, 2, 3)]
        + [{"kind": "note", "text": "no numbers here"}],
    )
    (root / "demo.json").write_text(json.dumps({"sessions": ["a", "b"]}))
    (root / "eval").mkdir()
    dom = {"loss": 2.0, "ppl": 7.389, "bpb": 1.0, "tokens": 10, "documents": 2, "bytes": 20, "nll": 20.0}
    (root / "eval" / "ppl.json").write_text(
        json.dumps(
            {
                "domains": ["news"],
                "models": {"stage-1": {"domains": {"news": dom}, "average": {"loss": 2.0, "ppl": 7.389, "bpb": 1.0}}},
            }
        )
    )
    ci = {"delta1": [-0.2, 0.1], "delta2": [0.3, 0.5]}
    (root / "eval" / "leakage.json").write_text(
        json.dumps(
            {
                "models": {
                    "stage-2": {
                        "L_train": 1.0,
                        "L_test": 1.4,
                        "L_ref": 1.45,
                        "delta1": -0.05,
                        "delta2": 0.4,
                        "ci": ci,
                        "verdict": "train split likely seen",
                    }
                },
                "note": "synthetic",
            }
        )
    )
    return root


def test_chained_sessions_are_drawn_after_one_another(workspace):
    data = load_run(workspace)
    assert [s.name for s in data.sessions] == ["a", "b"]
    assert data.sessions[1].token_offset == 600 and data.sessions[1].step_offset == 6
    assert data.sessions[0].bad_lines == 1
    assert data.other_kinds == ["eval", "note"]
    series = series_of(data, "eval")
    assert series == {"gsm8k/accuracy": [(1.0, 0.1, 1), (2.0, 0.2, 1), (3.0, pytest.approx(0.3), 1)]}


def test_report_has_every_section_and_embedded_figures(workspace):
    path = build_report(workspace)
    page = path.read_text(encoding="utf-8")
    for title in SECTIONS:
        assert f">{title}</h2>" in page, title
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 4  # losses, LR/mixture, throughput/MFU, the "eval" series
    for b64 in images:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    for png in ("losses.png", "lr_mixture.png", "throughput_mfu.png", "series_eval.png"):
        assert (workspace / "report" / png).stat().st_size > 5000
    assert "7.39" in page and "train split likely seen" in page  # Table 6 and Table 8 cells
    assert "no numeric fields to plot" in page  # the unknown kind without numbers is listed, not fatal
    assert "1 unreadable metrics line(s)" in page or "2 unreadable" in page
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched


def test_single_run_and_cli(tmp_path, capsys):
    _session(tmp_path / "run", 3, 50)
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "No Table-6 results" in page and "No other record kinds" in page
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_markdown_tables_become_html():
    html = markdown_tables("## T\n\n| a | b |\n|---|---:|\n| x | 1 |\n")
    assert "<h4>T</h4>" in html and "<th>a</th>" in html and "<td>x</td><td>1</td>" in html


def test_token_counts_read_as_k_m_b_t():
    labels = [format_tokens(x) for x in (0, 512, 1500, 200_000, 999_999, 1.25e6, 3.2e9, 3.13e12, -2e3)]
    assert labels == ["0", "512", "1.5k", "200k", "1M", "1.25M", "3.2B", "3.13T", "-2k"]


def test_token_axes_use_short_labels_that_do_not_collide(tmp_path, monkeypatch):
    """The loss panels (x: tokens) and the throughput panel (y: tokens/s) of a run of ~1.5M tokens, drawn as the
    report draws them: every tick label is a k/M count (no '1e6' in the corner) and no two labels overlap."""
    _session(tmp_path / "ws" / "runs" / "a", 6, 150_000)
    _session(tmp_path / "ws" / "runs" / "b", 4, 150_000, init_from=str(tmp_path / "ws" / "runs" / "a"))
    (tmp_path / "ws" / "demo.json").write_text(json.dumps({"sessions": ["a", "b"]}))
    figures = []
    real_save = plots._save

    def drawn_then_saved(fig, path):
        fig.canvas.draw()
        figures.append(fig)
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", drawn_then_saved)
    data = load_run(tmp_path / "ws")
    plots.plot_losses(data, tmp_path / "losses.png")
    plots.plot_throughput(data, tmp_path / "throughput.png")
    loss_axes = [ax for ax in figures[0].axes if ax.get_xlabel() == "tokens"]
    axes = [(ax.xaxis, ax) for ax in loss_axes] + [(figures[1].axes[0].yaxis, figures[1].axes[0])]
    assert len(loss_axes) == 3
    for axis, ax in axes:
        low, high = sorted(ax.get_xlim() if axis is ax.xaxis else ax.get_ylim())
        ticks = [t for t in axis.get_major_ticks() if low <= t.get_loc() <= high and t.label1.get_text()]
        texts = [t.label1.get_text() for t in ticks]
        assert all(re.fullmatch(r"0|\d+(\.\d+)?[kMBT]", text) for text in texts), texts
        assert axis.get_offset_text().get_text() == ""
        boxes = [t.label1.get_window_extent() for t in ticks]
        spans = sorted((b.x0, b.x1) if axis is ax.xaxis else (b.y0, b.y1) for b in boxes)
        assert all(a[1] < b[0] for a, b in zip(spans, spans[1:])), texts
