"""Bad data inputs never crash or eat the machine (issue 14): a broken `.gz` is a malformed input named by file
(and line), counted and skipped under --skip-malformed, with no `*.tmp` left behind; `{"text": null}` is malformed;
`--base-size` below the alphabet names its minimum; an over-long document is split or skipped and counted while
reading stays streaming; a `kill -9` of `skyloom data run` leaves no child process behind."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from skyloom.cli import main
from skyloom.tokenizer.corpus import InputError, SizeGuard, iter_documents

REPO = Path(__file__).resolve().parents[1]
GOOD = [{"text": f"hello world number {i}, the quick brown fox"} for i in range(400)]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    """A tiny byte-level BPE with </s> as eos (no real data needed)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out = tmp_path_factory.mktemp("tok")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([r["text"] for r in GOOD], trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "unk_token": "<unk>"}))
    return out


def _jsonl(records: list) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def _bad_gzip(path: Path, kind: str) -> Path:
    """A `.jsonl.gz` that is cut short, not gzip at all, or has corrupt deflate data."""
    data = gzip.compress(_jsonl(GOOD))
    if kind == "truncated":
        path.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "not_gzip":
        path.write_bytes(_jsonl(GOOD))
    else:
        corrupt = bytearray(data)
        for i in range(len(corrupt) // 2, len(corrupt) // 2 + 8):
            corrupt[i] ^= 0xFF
        path.write_bytes(bytes(corrupt))
    return path


def _pack(tok_dir: Path, out: Path, *args: str) -> list[str]:
    return ["data", "pack", "-t", str(tok_dir), "-o", str(out), "--workers", "1", "-q", *args]


# --- {"text": null} ----------------------------------------------------------------------------------------


def test_null_or_non_string_text_is_malformed_not_an_empty_document(tok_dir, tmp_path, capsys):
    path = tmp_path / "docs.jsonl"
    records = [{"text": "fine"}, {"text": None}, {"text": 5}, {"text": ""}, {"title": None, "text": "b"}]
    path.write_bytes(_jsonl(records))
    with pytest.raises(InputError, match=r"docs.jsonl:2: field 'text' is null"):
        list(iter_documents(path))
    errors: list[InputError] = []
    docs = list(iter_documents(path, on_error=errors.append))
    assert [(d.text, d.line) for d in docs] == [("fine", 1), ("", 4), ("b", 5)]
    assert [(e.line, e.detail) for e in errors] == [
        (2, "field 'text' is null, expected a string"),
        (3, "field 'text' is int, expected a string"),
    ]
    # several fields: a null one is absent; only a record with no text in any of them is malformed
    both = list(iter_documents(path, fields=("title", "text"), on_error=lambda e: None))
    assert [d.text for d in both] == ["fine", "", "b"]

    assert main(_pack(tok_dir, tmp_path / "t", str(path))) == 2
    assert f"{path}:2: field 'text' is null" in capsys.readouterr().err
    assert main(_pack(tok_dir, tmp_path / "t", str(path), "--skip-malformed")) == 0
    printed = capsys.readouterr()
    assert "skipped: 1 empty documents, 2 malformed records" in printed.out
    assert f"{path}:2: field 'text' is null" in printed.err


# --- broken gzip ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["truncated", "not_gzip", "corrupt"])
def test_a_broken_gzip_is_a_malformed_input_named_by_file(kind, tok_dir, tmp_path, capsys):
    bad = _bad_gzip(tmp_path / f"{kind}.jsonl.gz", kind)
    with pytest.raises(InputError, match=rf"{kind}.jsonl.gz:\d+: .*gzip"):
        list(iter_documents(bad))
    errors: list[InputError] = []
    read = list(iter_documents(bad, on_error=errors.append))
    assert len(errors) == 1 and errors[0].path == str(bad)
    assert [d.text for d in read] == [r["text"] for r in GOOD[: len(read)]]  # what came before the damage is kept

    out = tmp_path / "tokens"
    assert main(_pack(tok_dir, out, str(bad))) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"skyloom: error: {bad}:") and "gzip" in err and "Traceback" not in err
    assert not list(out.rglob("*.tmp"))
    assert main(_pack(tok_dir, out, str(bad), "--skip-malformed")) == 0
    printed = capsys.readouterr()
    assert "1 malformed records" in printed.out and f"skipped malformed record: {bad}:" in printed.err
    assert not list(out.rglob("*.tmp"))

    assert main(["tokenizer", "stats", str(tok_dir), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"skyloom: error: {bad}:") and "gzip" in err
    assert (
        main(
            [
                "tokenizer",
                "train",
                str(bad),
                "--out",
                str(tmp_path / "o"),
                "-q",
                "--total",
                "300",
                "--base-size",
                "260",
                "--chinese-chars",
                "23",
                "--workers",
                "1",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith(f"skyloom: error: {bad}:") and "gzip" in err


def test_a_broken_gzip_text_file_and_csv_are_named_too(tmp_path):
    for name in ("doc.txt.gz", "rows.csv.gz"):
        path = tmp_path / name
        path.write_bytes(b"text\nnot gzip\n")
        with pytest.raises(InputError, match=rf"{name}:1: not a gzip file"):
            list(iter_documents(path))


def test_no_temporary_shard_is_left_when_a_task_fails(tok_dir, tmp_path, capsys):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(_jsonl(GOOD[:50]) + b"{broken\n")
    out = tmp_path / "tokens"
    assert main(_pack(tok_dir, out, str(path))) == 2
    assert f"{path}:51: not valid JSON" in capsys.readouterr().err
    assert not list(out.rglob("*.tmp"))


# --- --base-size -----------------------------------------------------------------------------------------------


def test_base_size_below_the_alphabet_names_the_option_and_the_minimum(tmp_path, capsys):
    path = tmp_path / "latin.txt"
    path.write_text("".join(chr(c) for c in range(ord("!"), ord("~"))) * 20, encoding="utf-8")  # 93 characters
    args = [
        "tokenizer",
        "train",
        str(path),
        "--out",
        str(tmp_path / "o"),
        "-q",
        "--chinese-chars",
        "23",
        "--reserved",
        "17",
        "--workers",
        "1",
        "--fill",
        "jieba",
    ]
    assert main([*args, "--base-size", "300", "--total", "340"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skyloom: error:") and "--base-size" in err and "at least 349" in err
    assert "Traceback" not in err and "AssertionError" not in err


# --- the per-document size guard ------------------------------------------------------------------------------


def test_over_long_records_are_skipped_and_counted_and_text_files_split(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(_jsonl([{"text": "a" * 100}, {"text": "b" * 101}, {"text": "c"}, {"text": "d" * 70_000}]))
    guard = SizeGuard(max_chars=100)
    assert [d.text for d in iter_documents(path, guard=guard)] == ["a" * 100, "c"]
    assert [s.split(": ", 1)[0] for s in guard.skipped] == [f"{path}:2", f"{path}:4"]
    assert "101 characters" in guard.skipped[0]
    assert "a line of 70,013 bytes" in guard.skipped[1]  # over 12 bytes a character + 64 KiB: not even parsed

    text = "".join(f"line {i} of a long book\n" for i in range(200))
    book = tmp_path / "book.txt"
    book.write_text(text, encoding="utf-8")
    guard = SizeGuard(max_chars=100)
    pieces = list(iter_documents(book, guard=guard))
    assert "".join(p.text for p in pieces) == text and all(len(p.text) <= 100 for p in pieces)
    assert pieces[1].line == 1 + pieces[0].text.count("\n") and len(guard.split) == 1
    assert not guard.skipped
    small = tmp_path / "small.txt"
    small.write_text("一二三" * 10, encoding="utf-8")
    assert [d.text for d in iter_documents(small, guard=SizeGuard(max_chars=100))] == ["一二三" * 10]


def test_a_gigantic_line_is_never_held_in_memory(tmp_path):
    path = tmp_path / "big.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"text": "')
        f.write(b"x" * (8 << 20))
        f.write(b'"}\n{"text": "after"}\n')
    guard = SizeGuard(max_chars=10_000)
    tracemalloc.start()
    try:
        docs = [d.text for d in iter_documents(path, guard=guard)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert docs == ["after"] and len(guard.skipped) == 1
    assert peak < 2 << 20, f"peak {peak:,} bytes while reading an 8 MB line"


def test_the_guard_is_an_option_of_pack_and_stats_and_is_reported(tok_dir, tmp_path, capsys):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(_jsonl([{"text": "short one"}, {"text": "much longer text " * 10}]))
    assert main(_pack(tok_dir, tmp_path / "t", str(path), "--max-doc-chars", "50")) == 0
    out = capsys.readouterr().out
    assert "1 over-long documents (> 50 characters)" in out
    assert json.loads((tmp_path / "t" / "docs" / "index.json").read_text())["documents"] == 1
    assert main(["tokenizer", "stats", str(tok_dir), str(path), "--max-doc-chars", "50", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"][0]["A"]["documents"] == 1 and report["files"][0]["over_long_skipped"] == 1
    assert main(_pack(tok_dir, tmp_path / "t", str(path), "--max-doc-chars", "0")) == 2
    assert "--max-doc-chars" in capsys.readouterr().err


def test_resuming_a_pack_planned_before_the_guard_finishes_it_without_the_guard_and_says_so(tok_dir, tmp_path, capsys):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_bytes(_jsonl(GOOD[:20]))
    second.write_bytes(_jsonl([{"text": "short one"}, {"text": "much longer text " * 10}]))
    out = tmp_path / "t"
    sources = [f"s={first}", f"s={second}", "--shard-bytes", str(first.stat().st_size)]  # a shard per file
    assert main(_pack(tok_dir, out, *sources)) == 0
    plan_file = out / "s" / "pack_plan.json"
    plan = json.loads(plan_file.read_text())
    del plan["max_doc_chars"]  # written by a skyloom from before --max-doc-chars: nothing was skipped
    plan_file.write_text(json.dumps(plan))
    last = sorted((out / "s").glob("shard_*.json"))[-1]  # the run was stopped before its last shard
    for suffix in (".json", ".bin", ".docs.bin"):
        last.with_suffix(suffix).unlink(missing_ok=True)
    capsys.readouterr()
    assert main(_pack(tok_dir, out, *sources, "--max-doc-chars", "50")) == 0
    printed = capsys.readouterr()
    assert "predates --max-doc-chars" in printed.err and "--overwrite" in printed.err
    assert "1 already finished" in printed.out and "over-long" not in printed.out
    assert json.loads((out / "s" / "index.json").read_text())["documents"] == 22  # the long one kept, like the rest
    assert json.loads(plan_file.read_text())["max_doc_chars"] is None  # the next resume follows the same rule
    assert main(_pack(tok_dir, out, *sources, "--max-doc-chars", "50")) == 0
    assert "2 already finished" in capsys.readouterr().out
    assert main(_pack(tok_dir, out, *sources, "--max-doc-chars", "50", "--overwrite")) == 0  # re-packed, guarded
    assert json.loads((out / "s" / "index.json").read_text())["documents"] == 21
    assert json.loads(plan_file.read_text())["max_doc_chars"] == 50


# --- kill -9 of `skyloom data run` ---------------------------------------------------------------------------


def _children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.add(int(entry.name))
    return out


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for child in _children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie is dead, only not yet reaped by its new parent


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not Path("/proc/self/stat").exists(),
    reason="needs Linux /proc and prctl(PR_SET_PDEATHSIG)",
)
def test_kill_9_of_data_run_leaves_no_child_process(tmp_path):
    words = "the of and to in is was for on that with as by at from his an were are which this be has".split()
    with open(tmp_path / "in.jsonl", "w", encoding="utf-8") as f:
        for i in range(20_000):
            f.write(
                json.dumps({"id": str(i), "text": " ".join(words[(i * 7 + j) % len(words)] for j in range(200))}) + "\n"
            )
    (tmp_path / "p.yaml").write_text(
        json.dumps(
            {
                "output_dir": str(tmp_path / "out"),
                "executor": {"tasks": 2, "workers": 2},
                "inputs": [{"path": str(tmp_path / "in.jsonl"), "format": "jsonl", "source": "s", "shard": "records"}],
                "steps": [{"type": "exact_dedup"}],
            }
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "skyloom", "data", "run", str(tmp_path / "p.yaml")],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    task_logs = [tmp_path / "out" / "logs" / "01_documents" / "logs" / f"task_{r:05d}.log" for r in range(2)]
    seen: set[int] = set()
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # until both tasks run in their workers (children of the forkserver)
            assert proc.poll() is None, "the run ended before it could be killed"
            seen |= _descendants(proc.pid)
            if all(log.exists() for log in task_logs):
                break
            time.sleep(0.05)
        seen |= _descendants(proc.pid)
        assert len(seen) >= 4 and any(_children(c) for c in seen), seen  # manager, forkserver, 2 workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 3
        while time.time() < deadline and any(_alive(p) for p in seen):
            time.sleep(0.1)
        survivors = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in seen if _alive(p)}
        assert not survivors, survivors
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the test's own clean-up, whatever happened
        except ProcessLookupError:
            pass


# --- the pipeline's reader (`skyloom data run`) -------------------------------------------------------------


def test_pipeline_reader_counts_a_broken_gzip_and_null_text_as_malformed_with_their_lines(tmp_path):
    from skyloom.data.pipeline.readers import InputConfig, SourceReader

    folder = tmp_path / "in"
    folder.mkdir()
    _bad_gzip(folder / "cut.jsonl.gz", "truncated")
    (folder / "null.jsonl").write_bytes(_jsonl([{"text": "a fine document"}, {"text": None}]))
    reader = SourceReader(InputConfig(path=str(folder), format="jsonl"), str(tmp_path / "f"), str(tmp_path / "m"))
    docs = list(reader.run())
    bad = json.loads(next((tmp_path / "m").iterdir()).read_text())
    by_file = {Path(b["file"]).name: b for b in bad}
    assert set(by_file) == {"cut.jsonl.gz", "null.jsonl"}
    cut = by_file["cut.jsonl.gz"]
    read = sum(1 for d in docs if d.metadata["file"].endswith("cut.jsonl.gz"))
    assert cut["reason"] == "unreadable_file" and cut["line"] == read + 1 and 0 < read < len(GOOD)
    assert (by_file["null.jsonl"]["reason"], by_file["null.jsonl"]["line"]) == ("missing_text", 2)


def test_no_temporary_file_is_left_when_a_parallel_pack_stops(tok_dir, tmp_path, capsys):
    """A failed task stops the pool; the tasks it cuts short must not leave their half-written files either."""
    bad = _bad_gzip(tmp_path / "a_bad.jsonl.gz", "truncated")
    good = tmp_path / "good.jsonl"
    good.write_bytes(_jsonl(GOOD * 20))
    out = tmp_path / "tokens"
    args = [
        "data",
        "pack",
        "-t",
        str(tok_dir),
        "-o",
        str(out),
        "--workers",
        "2",
        "-q",
        "--shard-bytes",
        "4000",
        f"s={bad}",
        f"s={good}",
    ]
    assert main(args) == 2
    assert f"{bad}:" in capsys.readouterr().err
    assert not list(out.rglob("*.tmp"))


# --- training validation sets (`validation.sets.*` text files) ------------------------------------------------


@pytest.mark.parametrize(
    "record, detail",
    [({"text": None}, "field 'text' is null"), ({"text": 5}, "field 'text' is int, expected a string")],
)
def test_validation_text_null_or_not_a_string_is_malformed(record, detail, tok_dir, tmp_path):
    from skyloom.tokenizer.loading import TextTokenizer
    from skyloom.train.validation import load_stream

    path = tmp_path / "val.jsonl"
    path.write_bytes(_jsonl([{"text": "fine"}, record, {"text": "also fine"}]))
    with pytest.raises(InputError, match=rf"val.jsonl:2: {detail}"):
        load_stream(str(path), TextTokenizer.from_dir(tok_dir))


def test_validation_sets_read_gzip_and_name_a_damaged_one(tok_dir, tmp_path):
    from skyloom.tokenizer.loading import TextTokenizer
    from skyloom.train.validation import load_stream

    tok = TextTokenizer.from_dir(tok_dir)
    plain, packed = tmp_path / "val.jsonl", tmp_path / "val2.jsonl.gz"
    plain.write_bytes(_jsonl(GOOD[:30]))
    packed.write_bytes(gzip.compress(_jsonl(GOOD[:30])))
    text, text_gz = tmp_path / "doc.txt", tmp_path / "doc2.txt.gz"
    text.write_text(GOOD[0]["text"], encoding="utf-8")
    text_gz.write_bytes(gzip.compress(GOOD[0]["text"].encode()))
    assert load_stream(str(packed), tok).tolist() == load_stream(str(plain), tok).tolist()
    assert load_stream(str(text_gz), tok).tolist() == load_stream(str(text), tok).tolist()
    for kind in ("truncated", "not_gzip", "corrupt"):
        bad = _bad_gzip(tmp_path / f"{kind}.jsonl.gz", kind)
        with pytest.raises(InputError, match=rf"{kind}.jsonl.gz:\d+: .*gzip"):
            load_stream(str(bad), tok)
    whole = gzip.compress(_jsonl(GOOD))
    (tmp_path / "cut.txt.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=r"cut.txt.gz:\d+: truncated gzip"):
        load_stream(str(tmp_path / "cut.txt.gz"), tok)
