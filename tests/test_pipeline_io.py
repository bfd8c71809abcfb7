"""Pipeline inputs and outputs: `limit:` reads exactly that many documents per task (and the funnel says so);
`output_format: parquet` writes the jsonl output's records through datatrove's ParquetWriter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skyloom.cli import main
from skyloom.data.pipeline.writers import output_files
from tests.test_pipeline_support import read_outputs, write_jsonl, write_yaml


@pytest.mark.parametrize("bad_lines", [False, True])
def test_limit_reads_exactly_that_many_documents_and_the_funnel_balances(tmp_path, bad_lines):
    records = [{"id": f"d{i}", "text": f"Document {i} about rivers."} for i in range(120)]
    lines = [json.dumps(r) for r in records]
    if bad_lines:  # malformed lines before and after the limit: the ones before count, the ones after are unread
        lines.insert(10, "{not json")
        lines.insert(95, "{not json either")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text("\n".join(lines) + "\n")
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"id": "b0", "text": "Another file, never reached."}])
    out = tmp_path / "out"
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {
            "output_dir": str(out),
            "inputs": [{"path": str(tmp_path / "in"), "glob": "*.jsonl", "limit": 80, "source": "s"}],
            "steps": [
                {"type": "python", "class": "datatrove.pipeline.filters:RegexFilter", "args": {"regex_exp": "^$"}}
            ],
        },
    )
    assert main(["data", "run", str(cfg)]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["checks"]["rows_balanced"] and stats["checks"]["rows_chained"]
    read = {r["step"]: r for r in stats["steps"]}["read:s"]
    assert read["docs_out"] == 80 and read["docs_in"] == 80 + bad_lines
    assert {r["step"]: r for r in stats["steps"]}["RegexFilter"]["docs_in"] == 80
    assert [d["id"] for d in read_outputs(out, "main")] == [f"d{i}" for i in range(80)]


def _run_with_output_format(tmp_path, fmt: str, compression: str) -> Path:
    records = []
    for i in range(30):  # metadata differing between documents: a schema taken from the first row would not fit
        rec = {"id": f"d{i}", "text": f"Document {i} about rivers and hills."}
        if i % 3 == 0:
            rec["url"] = f"https://example.org/{i}"
        if i % 4 == 1:
            rec["metadata"] = {"score": i / 7, "flag": i % 2 == 0}
        records.append(rec)
    write_jsonl(tmp_path / "in" / "a.jsonl", records)
    out = tmp_path / f"out_{fmt}"
    cfg = write_yaml(
        tmp_path / f"{fmt}.yaml",
        {
            "output_dir": str(out),
            "executor": {"tasks": 2},
            "output_format": fmt,
            "compression": compression,
            "inputs": [{"path": str(tmp_path / "in" / "a.jsonl"), "shard": "records", "source": "s"}],
            "steps": [
                {"type": "python", "class": "datatrove.pipeline.filters:RegexFilter", "args": {"regex_exp": "7"}}
            ],
        },
    )
    assert main(["data", "run", str(cfg)]) == 0
    return out


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_parquet_output_holds_the_jsonl_outputs_documents(tmp_path, compression):
    import pyarrow.parquet as pq
    from datatrove.pipeline.readers import ParquetReader

    jsonl = read_outputs(_run_with_output_format(tmp_path, "jsonl", "gzip"), "main")
    out = _run_with_output_format(tmp_path, "parquet", compression)
    files = sorted((out / "main").glob("*.parquet"))
    assert [f.name for f in files] == ["00000.parquet", "00001.parquet"]
    assert output_files(str(out), "main") == [str(f) for f in files]
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    assert {r.keys() == {"text", "id", "metadata"} for r in rows} == {True}
    assert [{**r, "metadata": json.loads(r["metadata"])} for r in rows] == jsonl
    assert (
        len(jsonl) == 27 and any("url" in d["metadata"] for d in jsonl) and any("flag" in d["metadata"] for d in jsonl)
    )
    # datatrove's own reader gets the metadata back as a dict
    docs = list(ParquetReader(str(out / "main")).run())
    assert [(d.id, d.text, d.metadata["source"]) for d in docs] == [(r["id"], r["text"], "s") for r in jsonl]


def test_html_inputs_that_are_valid_utf8_are_read_as_utf8(tmp_path, monkeypatch):
    """The reader decodes page bytes as the extractor does: valid UTF-8 is UTF-8, whatever the detector guesses."""
    import resiliparse.parse.encoding as enc

    monkeypatch.setattr(enc, "detect_encoding", lambda raw, *a, **k: "cp1252")
    (tmp_path / "in").mkdir()
    page = "<html><body><p>Dubai \u2014 the carrier\u2019s order was signed.</p></body></html>"
    (tmp_path / "in" / "a.html").write_bytes(page.encode("utf-8"))
    out = tmp_path / "out"
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {
            "output_dir": str(out),
            "inputs": [{"path": str(tmp_path / "in"), "format": "html", "source": "web"}],
            "steps": [
                {"type": "python", "class": "datatrove.pipeline.filters:RegexFilter", "args": {"regex_exp": "^$"}}
            ],
        },
    )
    assert main(["data", "run", str(cfg)]) == 0
    (doc,) = read_outputs(out, "main")
    assert "Dubai \u2014 the carrier\u2019s order" in doc["text"] and "\u00e2\u20ac" not in doc["text"]
