"""The report's small-scale experiments (experiments/*/run.py) keep working: every script explains itself, and the
cheapest one runs end to end at a toy size on a small real-text data directory (train → `eval leakage` → tables)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "in_domain": "Table 7",
    "leakage": "Table 8",
    "correlation": "Figure 1",
    "arch_gpt_vs_llama": "Figure 2",
}


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"experiment_{name}", REPO / "experiments" / name / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_help_names_the_claim(name):
    out = subprocess.run([sys.executable, str(REPO / "experiments" / name / "run.py"), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert SCRIPTS[name] in out.stdout and "--out" in out.stdout and "--set" in out.stdout


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_readme_states_claim_command_and_measured_numbers(name):
    folder = REPO / "experiments" / name
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert SCRIPTS[name] in readme and f"experiments/{name}/run.py" in readme
    assert "RESULTS_TABLE" not in readme and "CONCLUSION" not in readme  # the template was filled
    results = json.loads((folder / "results" / "results.json").read_text(encoding="utf-8"))
    assert results["settings"] and results["wall_s"] > 0  # written by a real run of the script


def test_bad_option_is_refused_with_a_message():
    out = subprocess.run([sys.executable, str(REPO / "experiments" / "leakage" / "run.py"), "--arms", "dirty"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "invalid choice: 'dirty'" in out.stderr


@pytest.fixture(scope="module")
def small_data(shared_data, tmp_path_factory) -> Path:
    """tokenizer/ (1,024 entries) + en/zh/stem shards from slices of real text: WikiText-2, CMRC 2018 passages
    (Chinese; FewCLUE, which the tiny recipe packs, has no licence and is not among the test fixtures), GSM8K."""
    from skyloom.tokenizer.loading import TextTokenizer
    from skyloom.train.prepare import pack_files, train_bpe

    root = tmp_path_factory.mktemp("experiment-data")
    raw = root / "raw"
    raw.mkdir()
    (raw / "en.txt").write_text((shared_data / "wikitext2" / "valid.txt").read_text(encoding="utf-8")[:60_000],
                                encoding="utf-8")
    cmrc = json.loads((shared_data / "cmrc2018" / "cmrc2018_dev.json").read_text(encoding="utf-8"))
    zh = [record["context_text"] for record in cmrc][:150]  # a list of SQuAD-like records, one passage each
    (raw / "zh.jsonl").write_text("\n".join(json.dumps({"text": x}, ensure_ascii=False) for x in zh) + "\n",
                                  encoding="utf-8")
    stem = (shared_data / "skywork" / "pt_train.jsonl").read_text(encoding="utf-8").splitlines()[:150]
    (raw / "stem.jsonl").write_text("\n".join(stem) + "\n", encoding="utf-8")
    (raw / "val_en.txt").write_text((shared_data / "wikitext2" / "test.txt").read_text(encoding="utf-8")[:20_000],
                                    encoding="utf-8")
    zh_val = (shared_data / "skywork" / "zh_general.jsonl").read_text(encoding="utf-8").splitlines()[:20]
    (raw / "val_zh.jsonl").write_text("\n".join(zh_val) + "\n", encoding="utf-8")
    files = [raw / "en.txt", raw / "zh.jsonl", raw / "stem.jsonl"]
    train_bpe(files, root / "tokenizer", vocab_size=1024)
    tok = TextTokenizer.from_dir(root / "tokenizer")
    for name, f in zip(("en", "zh", "stem"), files):
        pack_files([f], root / name, tok, name)
    return root


def test_leakage_experiment_runs_end_to_end(small_data, tmp_path, monkeypatch):
    """Two toy models (contaminated / clean) trained, scored by `eval leakage`, tables written; re-running resumes."""
    monkeypatch.chdir(REPO)
    leakage = _load("leakage")
    argv = ["--steps", "3", "--seen", "8", "--limit", "8", "--batch-tokens", "512", "--threads", "1",
            "--data-dir", str(small_data), "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results"),
            "--set", "model.vocab_size=1024", "model.n_layers=1", "model.dim=32", "model.ffn_dim=64",
            "model.n_heads=2", "model.max_seq_len=64", "data.seq_len=64",
            "validation.sets.wikitext_test.max_tokens=256", "validation.sets.zh_general.max_tokens=256",
            f"validation.sets.wikitext_test.path={small_data / 'raw' / 'val_en.txt'}",
            f"validation.sets.zh_general.path={small_data / 'raw' / 'val_zh.jsonl'}"]
    assert leakage.main(argv) == 0
    result = json.loads((tmp_path / "results" / "results.json").read_text(encoding="utf-8"))
    assert set(result["rows"]) == {"contaminated", "clean"}
    for arm, row in result["rows"].items():
        assert row["samples"] == {"train": 8, "test": 8, "ref": 8}
        assert row["delta2"] == pytest.approx(row["L_test"] - row["L_train"])
        assert row["delta1"] == pytest.approx(row["L_test"] - row["L_ref"])
        assert "--train" in result["commands"][arm]
        assert (tmp_path / "runs" / arm / "checkpoints" / "step_00000003").is_dir()
    seen = (tmp_path / "runs" / "gsm8k_contaminated.jsonl").read_text(encoding="utf-8").splitlines()
    other = (tmp_path / "runs" / "gsm8k_clean.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(seen) == len(other) == 8 and not set(seen) & set(other)  # disjoint GSM8K train records
    md = (tmp_path / "results" / "results.md").read_text(encoding="utf-8")
    assert "| contaminated |" in md and "| clean |" in md
    # idempotent: a second call finds both runs finished and only re-scores them
    manifest = tmp_path / "runs" / "clean" / "checkpoints" / "step_00000003" / "manifest.json"
    mtime = manifest.stat().st_mtime_ns
    assert leakage.main(argv) == 0
    assert manifest.stat().st_mtime_ns == mtime  # not trained again
    lines = (tmp_path / "runs" / "clean" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert sum(json.loads(x)["kind"] == "train" for x in lines) == 3
