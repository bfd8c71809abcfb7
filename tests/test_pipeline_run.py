"""`skyloom data run` end to end: dedup on injected duplicates, malformed input, rejects, the funnel's books,
and resuming after the run is killed."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skyloom.cli import main
from tests.test_pipeline_support import (
    REPO,
    extraction_pages,
    gsm8k,
    jsonl_texts,
    read_outputs,
    train_small_quality_model,
    wikitext_articles,
    write_jsonl,
    write_yaml,
)


def _edit_en(text: str, k: int) -> str:
    """Lightly edit an English text: change k words spread over it, add a sentence."""
    words = text.split(" ")
    for j in range(k):
        i = (j + 1) * len(words) // (k + 1)
        words[i] = words[i].upper() if j % 2 else "very"
    return " ".join(words) + " (Updated.)"


def _edit_zh(text: str, k: int) -> str:
    chars = list(text)
    for j in range(k):
        i = (j + 1) * len(chars) // (k + 1)
        chars[i] = "某"
    return "".join(chars).replace("。", "！", 1)


def test_injected_duplicates_are_caught_and_distinct_documents_survive(shared_data, tmp_path):
    wiki = [a[:4000] for a in wikitext_articles(shared_data, 16)]
    news = jsonl_texts(shared_data / "skywork" / "zh_government.jsonl", "text", 16)
    originals = [{"id": f"en{i}", "text": t} for i, t in enumerate(wiki)] + [
        {"id": f"zh{i}", "text": t} for i, t in enumerate(news)
    ]
    near = [{"id": f"near_en{i}", "text": _edit_en(wiki[i], 6)} for i in range(0, 16, 2)] + [
        {"id": f"near_zh{i}", "text": _edit_zh(news[i], 6)} for i in range(0, 16, 2)
    ]
    exact = [{"id": f"exact{i}", "text": "  " + wiki[i].upper().replace(" ", "   ") + "\n"} for i in (1, 3, 5)]
    records = originals + near + exact
    order = sorted(range(len(records)), key=lambda i: (i * 7919) % len(records))  # interleave, spread over tasks
    write_jsonl(tmp_path / "in" / "docs.jsonl", [records[i] for i in order])
    out = tmp_path / "out"
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {
            "output_dir": str(out),
            "executor": {"tasks": 2, "workers": 1},
            "inputs": [{"path": str(tmp_path / "in"), "format": "jsonl", "source": "mix", "shard": "records"}],
            "steps": [{"type": "langid"}, {"type": "exact_dedup"}, {"type": "minhash_dedup"}],
        },
    )
    assert main(["data", "run", str(cfg), "--keep-rejects"]) == 0
    kept = {d["id"] for d in read_outputs(out, "main")}
    # every family (an original and its copies) keeps exactly one member: copies caught, distinct docs kept
    families = {r["id"]: {r["id"]} for r in originals}
    for r in near:
        families[r["id"].removeprefix("near_")].add(r["id"])
    for r in exact:
        families["en" + r["id"].removeprefix("exact")].add(r["id"])
    assert all(len(members & kept) == 1 for members in families.values()), {
        k: members & kept for k, members in families.items() if len(members & kept) != 1
    }
    assert len(kept) == len(originals)
    stats = json.loads((out / "stats.json").read_text())
    rows = {r["step"]: r for r in stats["steps"]}
    assert rows["exact_dedup"]["docs_dropped"] == 3
    assert set(rows["exact_dedup"]["dropped"]) == {"exact_duplicate"}
    assert rows["minhash_dedup"]["docs_dropped"] == len(near)
    rejected = [json.loads(line) for f in (out / "rejects").rglob("*.jsonl.gz") for line in gzip.open(f, "rt")]
    assert {r["id"] for r in rejected} == {r["id"] for r in records} - kept
    assert {r["metadata"]["drop_reason"] for r in rejected} == {"exact_duplicate", "near_duplicate"}


@pytest.fixture(scope="module")
def quality_model(shared_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "quality.safetensors"
    train_small_quality_model(shared_data, path)
    return path


def _bad_inputs(shared_data, root: Path) -> dict:
    """Real documents plus every kind of malformed input; returns where the bad records are."""
    news = jsonl_texts(shared_data / "skywork" / "zh_general.jsonl", "text", 12)
    lines = [json.dumps({"text": t, "id": f"zh{i}"}, ensure_ascii=False).encode() for i, t in enumerate(news)]
    lines.insert(3, b'{"text": "unterminated')  # line 4: bad JSON
    lines.insert(6, b'{"text": "bad \xff\xfe bytes"}')  # line 7: invalid UTF-8
    lines.insert(8, b'{"text": "   "}')  # line 9: empty
    lines.insert(10, json.dumps({"text": "x" * 60_000}).encode())  # line 11: gigantic (max_chars 50k)
    lines.insert(11, b'{"title": "no text field"}')  # line 12: missing text
    lines.insert(12, b'["not", "an", "object"]')  # line 13
    (root / "zh").mkdir(parents=True)
    (root / "zh" / "news.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    html = root / "html"
    html.mkdir()
    for sha, raw, _ in extraction_pages(shared_data, 6):
        (html / f"{sha}.html.gz").write_bytes(gzip.compress(raw))
    (html / "zz_not_a_page.html").write_text('{"this": "is JSON, not HTML"}')
    (html / "zz_broken.html.gz").write_bytes(b"\x1f\x8b\x08\x00garbage that is not gzip")
    items = gsm8k(shared_data, "train", 30)
    test_q = gsm8k(shared_data, "test", 1, start=7)[0]["question"]
    wiki = wikitext_articles(shared_data, 3)
    recs = [{"question": i["question"], "answer": i["answer"]} for i in items]
    write_jsonl(root / "math" / "gsm8k.jsonl", recs)
    write_jsonl(
        root / "wiki" / "leaky.jsonl",
        [
            {"text": wiki[0][:3000] + "\n\nQuiz: " + test_q + "\n\n" + wiki[0][3000:5000], "id": "leaky"},
            {"text": wiki[1], "id": "wiki1"},
            {"text": wiki[2], "id": "wiki2"},
        ],
    )
    return {"news": root / "zh" / "news.jsonl"}


def test_full_run_funnel_malformed_rejects_outputs(shared_data, tmp_path, quality_model):
    _bad_inputs(shared_data, tmp_path / "in")
    out = tmp_path / "out"
    cfg = write_yaml(
        tmp_path / "pipeline.yaml",
        {
            "output_dir": str(out),
            "executor": {"tasks": 2, "workers": 1},
            "inputs": [
                {"name": "web_en", "path": str(tmp_path / "in" / "html"), "format": "html"},
                {
                    "name": "web_zh",
                    "path": str(tmp_path / "in" / "zh"),
                    "format": "jsonl",
                    "max_chars": 50_000,
                    "shard": "records",
                },
                {
                    "name": "gsm8k",
                    "path": str(tmp_path / "in" / "math"),
                    "format": "jsonl",
                    "text_keys": ["question", "answer"],
                    "shard": "records",
                },
                {"name": "wiki", "path": str(tmp_path / "in" / "wiki"), "format": "jsonl"},
            ],
            "steps": [
                {"type": "extract", "min_chars": 100},
                {"type": "langid"},
                {"type": "heuristics", "skip_sources": ["gsm8k"]},
                {"type": "exact_dedup"},
                {"type": "minhash_dedup"},
                {"type": "semantic_filter"},
                {
                    "type": "quality",
                    "model": str(quality_model),
                    "keep_buckets": ["head", "middle", "tail"],
                    "sources": ["web_en", "web_zh"],
                },
                {
                    "type": "decontaminate",
                    "benchmarks": [
                        {
                            "name": "gsm8k_test",
                            "path": str(shared_data / "gsm8k" / "test.jsonl"),
                            "fields": ["question"],
                        }
                    ],
                },
                {"type": "stem_split"},
            ],
        },
    )
    assert main(["data", "run", str(cfg), "--keep-rejects"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    # the books balance: per row in = out + dropped, and each row's input is the previous row's output
    assert stats["checks"]["rows_balanced"] and stats["checks"]["rows_chained"]
    for row in stats["steps"]:
        assert row["docs_in"] == row["docs_out"] + row["docs_dropped"], row["step"]
        for part in ("by_language", "by_source"):
            for cell in row[part].values():
                assert cell["docs_in"] == cell["docs_out"] + cell["docs_dropped"]
    rows = {r["step"]: r for r in stats["steps"]}
    # malformed input: counted with file and line, nothing crashed
    mal = {(Path(m["file"]).name, m["line"], m["reason"]) for m in stats["malformed"]["records"]}
    assert {
        ("news.jsonl", 4, "bad_json"),
        ("news.jsonl", 7, "invalid_utf8"),
        ("news.jsonl", 9, "empty"),
        ("news.jsonl", 11, "gigantic"),
        ("news.jsonl", 12, "missing_text"),
        ("news.jsonl", 13, "not_an_object"),
    } <= mal
    assert ("zz_not_a_page.html", 1, "malformed:not_html") in mal
    assert any(name == "zz_broken.html.gz" and reason == "unreadable_file" for name, _, reason in mal)
    assert rows["read:web_zh"]["docs_out"] == 12 and rows["read:web_zh"]["docs_dropped"] == 6
    # decontamination: the hidden GSM8K test question is gone, counted per benchmark
    assert rows["decontaminate"]["dropped"]["contaminated:gsm8k_test"]["docs"] == 1
    assert rows["decontaminate"]["counters"]["docs:gsm8k_test"] == 1
    # the quality step reports its bucket distribution over every document it scored (its sources only)
    q = rows["quality"]
    scored = sum(q["by_source"][s]["docs_in"] for s in ("web_en", "web_zh") if s in q["by_source"])
    assert sum(v for k, v in q["counters"].items() if k.count(":") == 1) == scored > 0
    main_docs, stem_docs = read_outputs(out, "main"), read_outputs(out, "stem")
    ids = {d["id"] for d in main_docs + stem_docs}
    assert "leaky" not in ids and "wiki1" in ids
    assert len(stem_docs) >= 25 and all(d["metadata"]["source"] == "gsm8k" for d in stem_docs)
    assert {d["metadata"]["source"] for d in main_docs} >= {"web_en", "web_zh", "wiki"}
    assert len(main_docs) + len(stem_docs) == stats["steps"][-1]["docs_out"]
    web = [d for d in main_docs if d["metadata"]["source"] == "web_en"]
    assert web and all(
        d["metadata"].get("title") and d["metadata"]["quality_bucket"] in ("head", "middle", "tail") for d in web
    )
    for d in main_docs + stem_docs:
        md = d["metadata"]
        assert d["text"] and md["language"] in ("en", "zh") and md["subset"] in ("main", "stem")
        assert "language_score" in md and "file_path" not in md
    # rejects carry their reason
    rejects = [json.loads(line) for f in (out / "rejects").rglob("*.jsonl.gz") for line in gzip.open(f, "rt")]
    assert rejects and all(r["metadata"]["drop_reason"] and r["metadata"]["drop_step"] for r in rejects)
    # every drop the funnel counts (per step and reason) is a reject on disk, and nothing more
    on_disk: dict[tuple[str, str], int] = {}
    for r in rejects:
        k = (r["metadata"]["drop_step"], r["metadata"]["drop_reason"])
        on_disk[k] = on_disk.get(k, 0) + 1
    counted = {
        (row["step"], reason): d["docs"]
        for row in stats["steps"]
        if not row["step"].startswith("read:")
        for reason, d in row["dropped"].items()
    }
    assert on_disk == counted
    # malformed records of the readers are listed one by one, as many as the read rows count
    read_drops = sum(row["docs_dropped"] for row in stats["steps"] if row["step"].startswith("read:"))
    listed = [m for m in stats["malformed"]["records"] if m["step"].startswith("read:")]
    assert len(listed) == read_drops
    # rows are split by the language the document has when it leaves the step: langid's row knows it
    assert "?" not in rows["langid"]["by_language"] and rows["langid"]["by_language"]["zh"]["docs_out"] >= 12
    assert any(r["id"] == "leaky" and r["metadata"]["drop_reason"] == "contaminated:gsm8k_test" for r in rejects)
    md = (out / "funnel.md").read_text()
    assert "| decontaminate |" in md and "Malformed input" in md and "SkyPile-STEM" in md


def test_resume_after_kill(shared_data, tmp_path):
    """Kill the run after its first task finished; the rerun skips that task and completes the rest."""
    out = tmp_path / "out"
    # 7,500 distinct records (GSM8K train's first 500, 15 numbered variants each): tasks long enough to kill between
    records = [
        {"question": f"{r['question']} (variant {k})", "answer": r["answer"]}
        for k in range(15)
        for r in gsm8k(shared_data, "train", 500)
    ]
    variants = write_jsonl(tmp_path / "in" / "gsm8k.jsonl", records)
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {
            "output_dir": str(out),
            "executor": {"tasks": 3, "workers": 1},
            "inputs": [
                {
                    "name": "gsm8k",
                    "path": str(variants),
                    "format": "jsonl",
                    "text_keys": ["question", "answer"],
                    "shard": "records",
                }
            ],
            "steps": [{"type": "langid"}, {"type": "exact_dedup"}, {"type": "stem_split"}],
        },
    )
    done = out / "logs" / "01_documents" / "completions"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "skyloom", "data", "run", str(cfg)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (done.is_dir() and any(done.iterdir())):
            time.sleep(0.05)
            assert proc.poll() is None, "run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    finished = sorted(p.name for p in done.iterdir())
    assert finished and len(finished) < 3, finished
    marks = {
        p.name: p.stat().st_mtime_ns
        for p in (out / "stats" / "funnel" / "01_documents").glob("*.json")
        if p.name[:5] in finished
    }
    logs = {r: (out / "logs" / "01_documents" / "logs" / f"task_{r}.log").stat().st_mtime_ns for r in finished}
    assert main(["data", "run", str(cfg)]) == 0
    assert sorted(p.name for p in done.iterdir()) == ["00000", "00001", "00002"]
    for name, mtime in marks.items():  # finished tasks were not redone
        assert (out / "stats" / "funnel" / "01_documents" / name).stat().st_mtime_ns == mtime
    for r, mtime in logs.items():
        assert (out / "logs" / "01_documents" / "logs" / f"task_{r}.log").stat().st_mtime_ns == mtime
    stats = json.loads((out / "stats.json").read_text())
    assert stats["checks"]["rows_balanced"] and stats["checks"]["rows_chained"]
    assert stats["steps"][0]["docs_out"] == len(records) == 7500  # every record read exactly once over both attempts
    total = len(read_outputs(out, "main")) + len(read_outputs(out, "stem"))
    assert total == stats["steps"][-1]["docs_out"] > 7000
    # a different configuration is refused in the same output_dir
    import yaml

    from skyloom.config import ConfigError

    data = yaml.safe_load(cfg.read_text())
    data["steps"] = data["steps"][:1]
    other = write_yaml(tmp_path / "other.yaml", data)
    with pytest.raises(ConfigError, match="different configuration"):
        from skyloom.config import read_yaml
        from skyloom.data.pipeline.config import load_pipeline_config
        from skyloom.data.pipeline.runner import run_pipeline

        run_pipeline(load_pipeline_config(read_yaml(other)))


def test_slurm_plan_chains_datatrove_executors(shared_data, tmp_path):
    """The same plan on Slurm: one datatrove SlurmPipelineExecutor per stage, each depending on the previous."""
    from datatrove.executor import SlurmPipelineExecutor

    from skyloom.config import ConfigError
    from skyloom.data.pipeline.builder import build_plan
    from skyloom.data.pipeline.config import load_pipeline_config
    from skyloom.data.pipeline.runner import make_executors

    data = {
        "output_dir": str(tmp_path / "o"),
        "executor": {"type": "slurm", "partition": "cpu", "tasks": 8},
        "inputs": [{"path": str(shared_data / "gsm8k" / "train.jsonl"), "text_keys": ["question", "answer"]}],
        "steps": [{"type": "langid"}, {"type": "minhash_dedup", "num_buckets": 4}, {"type": "stem_split"}],
    }
    cfg = load_pipeline_config(data)
    executors = make_executors(cfg, build_plan(cfg))
    assert all(isinstance(e, SlurmPipelineExecutor) for e in executors)
    assert [e.tasks for e in executors] == [8, 4, 1, 8, 1]  # documents, buckets, cluster, documents, report
    assert executors[0].depends is None and all(e.depends is p for p, e in zip(executors, executors[1:]))
    with pytest.raises(ConfigError, match="partition"):
        load_pipeline_config({**data, "executor": {"type": "slurm"}})
    with pytest.raises(ConfigError, match="did you mean 'minhash_dedup'"):
        build_plan(load_pipeline_config({**data, "steps": [{"type": "minhash_dedupe"}]}))
    with pytest.raises(ConfigError, match="steps\\[0\\].n_gram"):
        build_plan(load_pipeline_config({**data, "steps": [{"type": "minhash_dedup", "n_gram": 3}]}))


def test_report_checks_catch_unbalanced_books(tmp_path):
    """The books check is not a tautology: a cell that lost a document, or a row whose input is not the previous
    row's output, fails it."""
    from skyloom.data.pipeline.report import collect

    def cell(i, o, drops):
        return {
            "docs_in": i,
            "chars_in": 10 * i,
            "docs_out": o,
            "chars_out": 10 * o,
            "dropped": {r: {"docs": n, "chars": 10 * n} for r, n in drops.items()},
        }

    def write(label, cells):
        d = tmp_path / "stats" / "funnel" / "01"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"00000_{label}.json").write_text(json.dumps({"label": label, "cells": cells}))

    order, stage = ["read:x", "langid", "heuristics"], {k: "01" for k in ("read:x", "langid", "heuristics")}
    write("read:x", {"?\tx": cell(10, 10, {})})
    write("langid", {"en\tx": cell(6, 6, {}), "ja\tx": cell(4, 0, {"language:ja": 4})})
    write("heuristics", {"en\tx": cell(6, 5, {"gopher_too_few_words": 1})})
    checks = collect(str(tmp_path), order, stage)["checks"]
    assert checks["rows_balanced"] and checks["rows_chained"]
    # rows still add up, but one cell lost a document that another cell gained
    write("langid", {"en\tx": cell(6, 7, {}), "ja\tx": cell(4, 0, {"language:ja": 3})})
    assert not collect(str(tmp_path), order, stage)["checks"]["rows_balanced"]
    write("langid", {"en\tx": cell(6, 6, {}), "ja\tx": cell(3, 0, {"language:ja": 3})})  # balanced, but lost one
    checks = collect(str(tmp_path), order, stage)["checks"]
    assert checks["rows_balanced"] and not checks["rows_chained"]
