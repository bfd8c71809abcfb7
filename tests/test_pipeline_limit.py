"""`limit:` on a pipeline input: exactly that many documents per task are read, and the funnel says so."""

from __future__ import annotations

import json

import pytest

from skyloom.cli import main
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
