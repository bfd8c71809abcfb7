"""`skyloom demo --tiny`: every phase on real text, chained sessions, the STEM curriculum, a full report, resume."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from skyloom.demo.run import Demo
from skyloom.report.build import SECTIONS

PHASES = [
    "corpus",
    "pipeline",
    "tokenizer",
    "pack",
    "stage1-a",
    "stage1-b",
    "stage2",
    "stage2-leaked",
    "eval",
    "report",
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "ws"
    lines: list[str] = []
    d = Demo(out, tiny=True, log=lines.append)
    records = d.run()
    return d, records, lines


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _texts(folder):
    return {r["text"] for f in sorted(folder.glob("*.jsonl")) for r in _jsonl(f)}


def test_every_phase_runs_and_the_report_has_every_section(demo):
    d, records, _ = demo
    assert list(records) == PHASES
    page = (d.out / "report.html").read_text(encoding="utf-8")
    for title in SECTIONS:
        assert f">{title}</h2>" in page, title
    assert "Demo phases" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) >= 3
    for png in ("losses.png", "lr_mixture.png", "throughput_mfu.png"):
        assert (d.out / "report" / png).stat().st_size > 5000
    # Table 6 rows for the end of each stage, one column per held-out domain; Table 8 for both
    ppl = json.loads((d.out / "eval" / "ppl.json").read_text())
    domains = ["code", "en_docs", "stem", "zh_news", "zh_reviews"]
    assert ppl["domains"] == domains and list(ppl["models"]) == ["stage-1 (stage1-b)", "stage-2 (stage2)"]
    for row in ppl["models"].values():
        assert set(row["domains"]) == set(domains) and 1 < row["average"]["ppl"] < 2048
    for domain in domains:
        assert f">{domain}<" in page
    # every domain's unigram entropy beside the final losses, in tables.md and the report
    assert set(ppl["unigram"]) == set(domains) and all(0 < u["entropy"] < 8 for u in ppl["unigram"].values())
    assert "unigram entropy" in (d.out / "eval" / "tables.md").read_text() and "unigram entropy" in page


def test_leakage_panel_flags_the_contaminated_model_and_not_the_clean_one(demo):
    from skyloom.eval.leakage import VERDICT_CLEAN, VERDICT_LEAKED

    d, records, _ = demo
    leak = json.loads((d.out / "eval" / "leakage.json").read_text())["models"]
    assert list(leak) == ["stage-1 (stage1-b)", "stage-2 (stage2)", "contaminated (stage2-leaked)"]
    for row in leak.values():
        assert row["delta2"] == pytest.approx(row["L_test"] - row["L_train"])
    clean, dirty = leak["stage-2 (stage2)"], leak["contaminated (stage2-leaked)"]
    assert clean["verdict"] == VERDICT_CLEAN and abs(clean["delta1"]) < 0.1  # test and ref: one distribution
    assert VERDICT_LEAKED in dirty["verdict"] and dirty["delta1"] < clean["delta1"] - 0.15
    assert "contamination" not in clean and "CONTAMINATED" in dirty["contamination"]
    page = (d.out / "report.html").read_text(encoding="utf-8")
    assert "DELIBERATELY CONTAMINATED" in page and page.count(VERDICT_LEAKED) == 1
    # the leaked session trained on the test split; no other session did
    assert "skipped" not in records["stage2-leaked"]["summary"]


def test_samples_after_every_session_and_a_problem_before_and_after_stage2(demo):
    d, _, _ = demo
    samples = json.loads((d.out / "eval" / "samples.json").read_text(encoding="utf-8"))
    assert list(samples) == ["stage1-a", "stage1-b", "stage2"]  # the contaminated branch writes none
    page = (d.out / "report.html").read_text(encoding="utf-8")
    for session, got in samples.items():
        assert {c["domain"] for c in got["continuations"]} == {"zh_news", "zh_reviews", "en_docs", "code"}
        for c in got["continuations"]:
            assert c["greedy"] and c["sampled"] and c["greedy"] != c["sampled"]
        [problem] = got["problems"]
        assert problem["prompt"].startswith("Question:") and problem["prompt"].endswith("Answer:")
        assert problem["reference"].strip() and "####" in problem["reference"]
        assert f"after {session}" in page
    # fixed seeds: the same checkpoint writes the same samples again
    from skyloom.demo.samples import session_samples
    from skyloom.eval.backends import load_lm
    from skyloom.train.trainer import find_checkpoint

    lm = load_lm(find_checkpoint(d.out / "runs" / "stage2"), backend="skyloom", device="cpu", progress=False)
    assert session_samples(lm)["continuations"] == samples["stage2"]["continuations"]


def test_pipeline_outputs_never_hold_held_out_text(demo):
    d, _, _ = demo
    main, stem = _texts(d.out / "pipeline" / "main"), _texts(d.out / "pipeline" / "stem")
    assert main and stem
    assert not (main | stem) & _texts(d.out / "corpus" / "heldout")
    assert not (main | stem) & _texts(d.out / "corpus" / "leakage") - {
        r["text"] for r in _jsonl(d.out / "corpus" / "leakage" / "train.jsonl")
    }
    # the generated word problems end up in SkyPile-STEM, the news in SkyPile-Main
    assert sum("####" in t for t in stem) > 0.9 * len(stem)
    news = {r["text"] for r in _jsonl(d.out / "corpus" / "raw" / "zh_news.jsonl")}
    assert news & main and not news & stem
    assert (d.out / "pipeline" / "funnel.md").is_file()


def test_tokenizer_and_shards(demo):
    from skyloom.data.shards import TokenSource
    from skyloom.tokenizer.loading import TextTokenizer

    d, records, _ = demo
    tok = TextTokenizer.from_dir(d.out / "data" / "tokenizer")
    assert tok.vocab_size == records["tokenizer"]["summary"]["total"] == 2048
    for name in ("main", "stem"):
        src = TokenSource(d.out / "data" / "tokens" / name)
        assert len(src) == records["pack"]["summary"]["sources"][name]["tokens"] > 1000
        assert src.eos_id == tok.eos_id


def test_sessions_chain_and_stage2_follows_the_stem_curriculum(demo):
    d, records, _ = demo
    runs = d.out / "runs"

    def final_state(name):
        ckpt = sorted((runs / name / "checkpoints").glob("step_*"))[-1]
        return json.loads((ckpt / "trainer_state.json").read_text())

    a, b, s2 = final_state("stage1-a"), final_state("stage1-b"), final_state("stage2")
    assert b["init_from"].endswith("stage1-a") and s2["init_from"].endswith("stage1-b")
    windows = 1024 // 128
    # session B continues A's data position: its draws of `main` come after A's
    assert b["loader"]["sources"]["main"]["drawn"] == a["loader"]["sources"]["main"]["drawn"] + 6 * windows
    assert (
        s2["loader"]["sources"]["stem"]["drawn"] + s2["loader"]["sources"]["main"]["drawn"]
        == b["loader"]["sources"]["main"]["drawn"] + 12 * windows
    )
    train = {
        n: [r for r in _jsonl(runs / n / "metrics.jsonl") if r["kind"] == "train"]
        for n in ("stage1-a", "stage1-b", "stage2")
    }
    assert train["stage1-a"][0]["lr"] < train["stage1-a"][2]["lr"]  # warmup, then cosine
    assert train["stage1-a"][-1]["lr"] == pytest.approx(1e-3)
    assert all(r["lr"] == pytest.approx(1e-3) for r in train["stage1-b"])
    stem = [r["weight/stem"] for r in train["stage2"]]
    assert stem[0] == pytest.approx(0.1) and stem[-1] == pytest.approx(0.4)
    assert all(x <= y + 1e-12 for x, y in zip(stem, stem[1:]))
    sets = {r["set"] for r in _jsonl(runs / "stage2" / "metrics.jsonl") if r["kind"] == "val"}
    assert sets == {"code", "en_docs", "stem", "zh_news", "zh_reviews"}


def test_rerun_skips_finished_phases_and_redoes_removed_ones(demo):
    d, records, _ = demo
    (d.out / "phases" / "eval.json").unlink()
    lines: list[str] = []
    again = Demo(d.out, tiny=True, log=lines.append).run()
    skipped = [ln for ln in lines if ln.endswith("— skipped")]
    assert len(skipped) == len(PHASES) - 2  # eval runs again, and so does the report that reads its results
    assert any(ln.startswith("[9/10] eval: finished") for ln in lines)
    assert any(ln.startswith("[10/10] report: finished") for ln in lines)
    assert again["stage2"] == records["stage2"]  # training was not redone
    assert again["eval"]["summary"]["ppl"] == pytest.approx(records["eval"]["summary"]["ppl"])


def test_user_files_become_domains_and_workspaces_do_not_mix(tmp_path):
    data = tmp_path / "mine"
    data.mkdir()
    (data / "notes.jsonl").write_text(
        "".join(json.dumps({"text": f"Note {i}: " + "words and more words " * 30}) + "\n" for i in range(20))
    )
    (data / "math problems.txt").write_text(
        "\n\n".join(f"Question {i}: what is {i} + {i}? " * 20 + f"Answer: {2 * i}" for i in range(10))
    )
    out = tmp_path / "ws"
    mine = Demo(out, tiny=True, data=data, log=lambda s: None)
    mine.run(until="corpus")
    manifest = json.loads((out / "corpus" / "manifest.json").read_text())
    assert manifest["domains"] == ["math_problems", "notes"] and manifest["stem_domains"] == ["math_problems"]
    assert manifest["leakage"] is None and "leakage" in manifest["leakage_note"]
    assert "no Table-8 sets" in mine.train("stage2-leaked")["skipped"]  # nothing to leak: the branch is skipped
    for name in manifest["domains"]:
        assert manifest["counts"][name]["heldout"] >= 2
    with pytest.raises(RuntimeError, match="another --out"):
        Demo(out, tiny=True, log=lambda s: None).run(until="corpus")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .jsonl"):
        Demo(tmp_path / "ws2", tiny=True, data=tmp_path / "empty", log=lambda s: None).run(until="corpus")
    (data / "broken.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="broken.json"):
        Demo(tmp_path / "ws3", tiny=True, data=data, log=lambda s: None).run(until="corpus")


def _shared_layout(shared_data: Path, root: Path) -> Path:
    """The shared data as `demo --data` reads it. tests/data has no FewCLUE (no licence): there a copy of the other
    folders gets a stand-in `fewclue_zh/chid/unlabeled.json` holding People's Daily text in ChID's format."""
    if (shared_data / "fewclue_zh").is_dir():
        return shared_data
    from tests.zh_text import news

    for name in ("wikitext2", "gsm8k", "skywork"):
        shutil.copytree(shared_data / name, root / name)
    chid = root / "fewclue_zh" / "chid" / "unlabeled.json"
    chid.parent.mkdir(parents=True)
    chid.write_text(
        "".join(json.dumps({"content": t}, ensure_ascii=False) + "\n" for t in news(80_000)), encoding="utf-8"
    )
    return root


def test_shared_data_corpus_uses_the_reports_sets(tmp_path, shared_data):
    out = tmp_path / "ws"
    data = _shared_layout(shared_data, tmp_path / "shared")
    Demo(out, tiny=True, data=data, log=lambda s: None).run(until="corpus")
    manifest = json.loads((out / "corpus" / "manifest.json").read_text())
    assert {"finance", "general", "game", "government", "movie", "tech"} <= set(manifest["table6"])
    assert manifest["leakage"]["ref"].endswith("ref.jsonl")
    ref = _jsonl(out / "corpus" / "leakage" / "ref.jsonl")
    train = {r["text"] for r in _jsonl(out / "corpus" / "leakage" / "train.jsonl")}
    assert train <= {r["text"] for r in _jsonl(out / "corpus" / "raw" / "stem.jsonl")}  # trained on
    assert len(ref) == 150 and all("####" in r["text"] for r in _jsonl(out / "corpus" / "heldout" / "stem.jsonl"))
