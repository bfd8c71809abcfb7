"""The report's small-scale experiments (experiments/*/run.py) keep working: every script explains itself, every
number its README shows as measured is in its committed results, and the cheapest one runs end to end at a toy size
on a small real-text data directory (train → `eval leakage` → tables)."""

from __future__ import annotations

import bisect
import importlib.util
import json
import re
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
    out = subprocess.run(
        [sys.executable, str(REPO / "experiments" / name / "run.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert SCRIPTS[name] in out.stdout and "--out" in out.stdout and "--set" in out.stdout


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_readme_states_claim_and_command(name):
    folder = REPO / "experiments" / name
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert SCRIPTS[name] in readme and f"experiments/{name}/run.py" in readme
    assert "RESULTS_TABLE" not in readme and "CONCLUSION" not in readme  # the template was filled
    assert json.loads((folder / "results" / "results.json").read_text(encoding="utf-8"))["settings"]


# Every README number that is a measurement must be in the experiment's committed results JSON -------------------
#
# A number in a README passes when some number in its results files (any depth; numeric dict keys too; lists longer
# than LONG_LIST, i.e. per-step curves, left out so that a changed digit cannot hide among hundreds of values) shows
# as it at the README's precision: rounded, with thousands separators, as a percentage of a fraction, either sign.
# Not checked, because they are not measurements: fenced code and `inline code` (commands, settings), blockquotes
# (the paper's words), link targets, dates, references (§5.1, Table 7, Figure 3, Eq. 4, Appendix A), numbers glued to
# letters (13B, L2, Max1, Δ2, 2.9M) or in a hyphenated compound (4-way, 2-core). Anything else that is a setting,
# size or citation is marked in the README, greppably:
#     <!-- not measured: 307,200 3e-4 -->            at the end of a line: these tokens of that line (must be there)
#     <!-- not measured: begin (why) --> … <!-- not measured: end -->   a block (the paper's table)

LONG_LIST = 24
README_RESULTS = {
    "in_domain/README.md": ["in_domain/results/results.json"],
    "leakage/README.md": ["leakage/results/results.json"],
    "correlation/README.md": ["correlation/results/results.json"],
    "arch_gpt_vs_llama/README.md": ["arch_gpt_vs_llama/results/results.json"],
    "skymath/README.md": [
        "skymath/results/results.json",
        "skymath/results/results_sample200.json",
        "skymath/results/results_previous_design.json",
    ],
    "moe/README.md": [
        "moe/results/fig3.json",
        "moe/results/upcycle.json",
        "moe/results/fig3_boundary.json",
        "moe/results/fig3_eq4.json",
        "moe/results/upcycle_budget2.json",
        "moe/results/upcycle_budget2_seed1.json",
    ],
    "ccnet/README.md": ["ccnet/results/results.json"],
    "lr_continuation/README.md": ["lr_continuation/results/results.json", "lr_continuation/results/seed1/results.json"],
}
README_RESULTS["README.md"] = sorted({f for files in README_RESULTS.values() for f in files})  # the index
DOC_PASSAGES = {  # docs that quote experiment outcomes: (doc, the passage's first words) → the experiment's results
    ("docs/moe.md", "**Figure 3 and upcycling at CPU scale**"): README_RESULTS["moe/README.md"],
    ("docs/moe.md", "At CPU scale the rule's call"): README_RESULTS["moe/README.md"],
    ("docs/moe.md", "**Under the report's Eq. 4**"): README_RESULTS["moe/README.md"],
    ("docs/sft.md", "**Experiment** (experiments/skymath/README.md)"): README_RESULTS["skymath/README.md"],
}

_SUP = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺", "0123456789-+")
NUMBER = re.compile(
    r"(?<![\w.,/\-−+])(?P<sign>[-+−])?(?P<body>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
    r"(?:(?P<exp>e[-+]?\d+)|\s*[·×]\s*10(?P<sup>[⁻⁺]?[⁰¹²³⁴⁵⁶⁷⁸⁹]+))?%?"
    r"(?![\w]|\.\d|-[^\W\d])"
)
NOT_NUMBERS = [
    re.compile(p)
    for p in (
        r"```.*?```",
        r"`[^`\n]*`",
        r"<!--.*?-->",
        r"\]\([^)]*\)",
        r"\d{4}-\d{2}-\d{2}",
        r"(?:§|\b(?:Table|Tables|Figure|Figures|Fig\.|Eq\.|Eqs\.|Appendix|Section)\s*)\d+(?:\.\d+)*(?:\s*[–-]\s*\d+)?",
    )
]
MARK = re.compile(r"<!-- not measured: (.*?)-->")


def measured_numbers(text: str) -> list[tuple[int, str]]:
    """(line number, number as written) of every number in `text` that claims to be a measurement (see above)."""
    found, skipping = [], False
    text = re.sub(r"```.*?```", lambda m: "\n" * m.group().count("\n"), text, flags=re.S)
    for no, line in enumerate(text.splitlines(), 1):
        line = re.sub(r"`[^`\n]*`", " ", line)  # code spans may show the mark's syntax
        marks = MARK.findall(line)
        if any(m.strip().startswith("begin") for m in marks):
            skipping = True
        if any(m.strip().startswith("end") for m in marks):
            skipping = False
            continue
        if skipping or line.lstrip().startswith(">"):
            continue
        for pattern in NOT_NUMBERS:
            line = pattern.sub(" ", line)
        numbers = [m.group() for m in NUMBER.finditer(line)]
        for mark in marks:
            if mark.strip().startswith(("begin", "end")):
                continue
            for token in mark.split():
                assert token in numbers, f"line {no}: '<!-- not measured: {token} -->' but {token} is not on it"
                numbers.remove(token)
        found += [(no, n) for n in numbers]
    return found


def _value(written: str) -> tuple[float, float]:
    """(|value|, half a unit of its last shown digit) of a number as written."""
    m = NUMBER.fullmatch(written)
    body = m.group("body").replace(",", "")
    decimals = len(body.split(".")[1]) if "." in body else 0
    scale = (
        10.0 ** int(m.group("exp")[1:])
        if m.group("exp")
        else 10.0 ** int(m.group("sup").translate(_SUP))
        if m.group("sup")
        else 1.0
    )
    return float(body) * scale, 0.5 * 10.0**-decimals * scale


def result_numbers(obj, out: list[float] | None = None) -> list[float]:
    out = [] if out is None else out
    if isinstance(obj, dict):
        for key, value in obj.items():
            try:
                out.append(abs(float(key)))
            except ValueError:
                pass
            result_numbers(value, out)
    elif isinstance(obj, list) and len(obj) <= LONG_LIST:
        for value in obj:
            result_numbers(value, out)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out.append(abs(float(obj)))
    return out


def unsourced(text: str, results: list) -> list[str]:
    """The README's measured numbers that no results file holds, as 'line N: number'."""
    pool = sorted({x for r in results for v in result_numbers(r) for x in (v, 100 * v)})
    missing = []
    for no, written in measured_numbers(text):
        value, half = _value(written)
        i = bisect.bisect_left(pool, value - half - 1e-12 * max(1.0, value))
        if i == len(pool) or pool[i] > value + half + 1e-12 * max(1.0, value):
            missing.append(f"line {no}: {written}")
    return missing


@pytest.mark.parametrize("readme", sorted(README_RESULTS))
def test_every_readme_number_is_in_the_committed_results(readme):
    """A README shows no measurement that its experiment's committed results JSON does not hold."""
    root = REPO / "experiments"
    results = [json.loads((root / f).read_text(encoding="utf-8")) for f in README_RESULTS[readme]]
    missing = unsourced((root / readme).read_text(encoding="utf-8"), results)
    assert not missing, f"experiments/{readme}: numbers not in {README_RESULTS[readme]}: " + ", ".join(missing)


def passage(text: str, start: str) -> str:
    """From the line holding `start` to the end of its paragraph."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if start in line)
    end = next((i for i in range(first, len(lines)) if not lines[i].strip()), len(lines))
    return "\n".join(lines[first:end])


@pytest.mark.parametrize("doc,start", sorted(DOC_PASSAGES))
def test_docs_quote_experiment_numbers_from_the_committed_results(doc, start):
    files = DOC_PASSAGES[(doc, start)]
    results = [json.loads((REPO / "experiments" / f).read_text(encoding="utf-8")) for f in files]
    missing = unsourced(passage((REPO / doc).read_text(encoding="utf-8"), start), results)
    assert not missing, f"{doc}, passage '{start}': numbers not in {files}: " + ", ".join(missing)


def test_number_check_catches_a_changed_digit_and_a_stale_mark():
    results = [{"rows": {"a": {"L_test": 4.70112, "delta2": -0.0787, "acc": 0.319}}, "tokens": 29312}]
    good = (
        "L_test 4.701, Δ2 = −0.08 [x], accuracy 31.9%, 29,312 tokens, a 4-way task on 2 cores <!-- not measured: 2 -->"
    )
    assert unsourced(good, results) == []
    assert unsourced(good.replace("4.701", "4.711"), results) == ["line 1: 4.711"]
    assert unsourced(good.replace("31.9%", "32.9%"), results) == ["line 1: 32.9%"]
    assert unsourced("```\n--steps 150\n```\n> the paper's 0.61\nTable 8, §5.2, Qwen-14B, Δ2", results) == []
    with pytest.raises(AssertionError, match="not on it"):
        unsourced("4.701 <!-- not measured: 7 -->", results)


def test_bad_option_is_refused_with_a_message():
    out = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "leakage" / "run.py"), "--arms", "dirty"],
        capture_output=True,
        text=True,
        timeout=60,
    )
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
    (raw / "en.txt").write_text(
        (shared_data / "wikitext2" / "valid.txt").read_text(encoding="utf-8")[:60_000], encoding="utf-8"
    )
    cmrc = json.loads((shared_data / "cmrc2018" / "cmrc2018_dev.json").read_text(encoding="utf-8"))
    zh = [record["context_text"] for record in cmrc][:150]  # a list of SQuAD-like records, one passage each
    (raw / "zh.jsonl").write_text(
        "\n".join(json.dumps({"text": x}, ensure_ascii=False) for x in zh) + "\n", encoding="utf-8"
    )
    stem = (shared_data / "skywork" / "pt_train.jsonl").read_text(encoding="utf-8").splitlines()[:150]
    (raw / "stem.jsonl").write_text("\n".join(stem) + "\n", encoding="utf-8")
    (raw / "val_en.txt").write_text(
        (shared_data / "wikitext2" / "test.txt").read_text(encoding="utf-8")[:20_000], encoding="utf-8"
    )
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
    argv = [
        "--steps",
        "3",
        "--seen",
        "8",
        "--limit",
        "8",
        "--batch-tokens",
        "512",
        "--threads",
        "1",
        "--data-dir",
        str(small_data),
        "--out",
        str(tmp_path / "runs"),
        "--results",
        str(tmp_path / "results"),
        "--set",
        "model.vocab_size=1024",
        "model.n_layers=1",
        "model.dim=32",
        "model.ffn_dim=64",
        "model.n_heads=2",
        "model.max_seq_len=64",
        "data.seq_len=64",
        "validation.sets.wikitext_test.max_tokens=256",
        "validation.sets.zh_general.max_tokens=256",
        f"validation.sets.wikitext_test.path={small_data / 'raw' / 'val_en.txt'}",
        f"validation.sets.zh_general.path={small_data / 'raw' / 'val_zh.jsonl'}",
    ]
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
    first_cost = result["training"]
    for cost in first_cost.values():  # what training really took, with the machine's load
        (session,) = cost["sessions"]
        assert session["steps"] == [0, 3] and session["completed"] and cost["train_wall_s"] == session["wall_s"] > 0
        assert len(session["load_avg_start"]) == 3 and cost["load_avg_1min"] == [session["load_avg_start"][0]]
    # idempotent: a second call finds both runs finished and only re-scores them
    manifest = tmp_path / "runs" / "clean" / "checkpoints" / "step_00000003" / "manifest.json"
    mtime = manifest.stat().st_mtime_ns
    assert leakage.main(argv) == 0
    assert manifest.stat().st_mtime_ns == mtime  # not trained again
    again = json.loads((tmp_path / "results" / "results.json").read_text(encoding="utf-8"))
    assert again["training"] == first_cost and again["invocation_wall_s"] > 0  # the original cost, not the re-run's
    lines = (tmp_path / "runs" / "clean" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert sum(json.loads(x)["kind"] == "train" for x in lines) == 3
