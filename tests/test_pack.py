"""`skyloom data pack`: documents → token shards. Round trip and exact counts on real text, parallel = serial,
resume after an interruption, malformed input named by file:line, only shards reading changed files redone,
changed settings refused."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from skyloom.cli import main
from skyloom.data import pack as pack_module
from skyloom.data.pack import PackError, pack
from skyloom.data.shards import TokenSource
from skyloom.tokenizer import TextTokenizer
from tests.conftest import SHARED_DATA

MISTRAL = SHARED_DATA / "tokenizers" / "mistral-7b-v0.1.model"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    """Mistral-7B's SentencePiece vocabulary as a tokenizer directory (32,000 ids, eos </s>)."""
    out = tmp_path_factory.mktemp("tok") / "mistral"
    assert main(["tokenizer", "convert", str(MISTRAL), str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def tok(tok_dir) -> TextTokenizer:
    return TextTokenizer.from_dir(tok_dir)


def _records(path: Path, limit: int) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line))
            if len(out) == limit:
                break
    return out


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def _docs(source: TokenSource, tok: TextTokenizer) -> list[str]:
    out = []
    for ids in source.documents():
        assert ids[-1] == source.eos_id and source.eos_id not in ids[:-1]
        out.append(tok.decode(ids[:-1].tolist()))
    return out


def _shas(directory: Path) -> list[str]:
    return [s["sha256"] for s in json.loads((directory / "index.json").read_text())["shards"]]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """Real Chinese and English documents (plus an empty one and a blank line) in three formats."""
    root = tmp_path_factory.mktemp("corpus")
    zh = [r["text"] for r in _records(SHARED_DATA / "skywork" / "zh_tech.jsonl", 12)]
    zh_records = [{"text": t} for t in zh[:10]] + [{"text": ""}] + [{"text": t} for t in zh[10:]]
    zh_path = _write_jsonl(root / "zh.jsonl", zh_records)
    with open(zh_path, "a", encoding="utf-8") as f:
        f.write("\n")  # a trailing blank line is no document
    gsm = _records(SHARED_DATA / "gsm8k" / "test.jsonl", 200)
    en_path = _write_jsonl(root / "gsm.jsonl", gsm)
    wiki = (SHARED_DATA / "wikitext2" / "valid.txt").read_text(encoding="utf-8")[:150_000]
    wiki_path = root / "wiki.txt.gz"
    with gzip.open(wiki_path, "wt", encoding="utf-8") as f:
        f.write(wiki)
    return {
        "zh": zh,
        "zh_path": zh_path,
        "gsm": [r["question"] + "\n" + r["answer"] for r in gsm],
        "gsm_path": en_path,
        "wiki": wiki,
        "wiki_path": wiki_path,
    }


def test_pack_round_trip_and_exact_counts(tok_dir, tok, corpus, tmp_path, capsys):
    out = tmp_path / "tokens"
    code = main(
        [
            "data",
            "pack",
            "-t",
            str(tok_dir),
            "-o",
            str(out),
            f"zh={corpus['zh_path']}",
            f"en={corpus['gsm_path']}",
            f"en={corpus['wiki_path']}",
            "--field",
            "question",
            "--field",
            "answer",
            "--field",
            "text",
            "--workers",
            "1",
            "--shard-bytes",
            "25000",
            "-q",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    expected = {"zh": corpus["zh"], "en": corpus["gsm"] + [corpus["wiki"]]}
    for name, docs in expected.items():
        source = TokenSource(out / name, verify=True)
        assert _docs(source, tok) == docs  # decode(pack(doc)) == doc, in input order
        n_tokens = sum(len(ids) + 1 for ids in tok.encode_batch(docs))
        assert (len(source), source.n_documents) == (n_tokens, len(docs))  # exact counts
        assert (source.index["tokens"], source.index["documents"]) == (n_tokens, len(docs))
        assert source.index["dtype"] == "uint16" and source.index["vocab_size"] == 32000
        assert source.index["tokenizer"] == tok.tokenizer_id
        assert f"{n_tokens:,}" in printed
    shards = TokenSource(out / "zh").index["shards"]  # ~110 kB of JSON lines cut at line starts, ~25 kB each
    assert len(shards) >= 3 and all(s["documents"] > 0 for s in shards)
    assert "1 empty documents" in printed and "0 malformed" in printed
    assert "tokens/s" in printed and "M chars/s" in printed


def test_parallel_workers_write_the_same_shards(tok_dir, corpus, tmp_path):
    serial = pack(
        [f"zh={corpus['zh_path']}"], tok_dir, tmp_path / "serial", workers=1, shard_bytes=15_000, progress=False
    )
    parallel = pack(
        [f"zh={corpus['zh_path']}"], tok_dir, tmp_path / "parallel", workers=2, shard_bytes=15_000, progress=False
    )
    assert serial.tasks_run == parallel.tasks_run >= 5
    assert all(s["documents"] > 0 for s in TokenSource(tmp_path / "parallel" / "zh").index["shards"])
    assert _shas(tmp_path / "serial" / "zh") == _shas(tmp_path / "parallel" / "zh")
    assert serial.sources["zh"]["tokens"] == parallel.sources["zh"]["tokens"] == parallel.tokens


def test_resume_after_an_interruption_finishes_only_the_rest(tok_dir, corpus, tmp_path, monkeypatch):
    clean = pack([f"zh={corpus['zh_path']}"], tok_dir, tmp_path / "clean", shard_bytes=15_000, progress=False)
    real = pack_module.iter_documents
    calls = {"n": 0}

    def interrupted(*args, **kwargs):  # the 4th task is killed half-way through its documents
        calls["n"] += 1
        for i, doc in enumerate(real(*args, **kwargs)):
            if calls["n"] == 4 and i == 1:
                raise KeyboardInterrupt
            yield doc

    monkeypatch.setattr(pack_module, "iter_documents", interrupted)
    out = tmp_path / "tokens"
    with pytest.raises(KeyboardInterrupt):
        pack([f"zh={corpus['zh_path']}"], tok_dir, out, shard_bytes=15_000, progress=False)
    monkeypatch.setattr(pack_module, "iter_documents", real)
    d = out / "zh"
    assert sorted(p.name for p in d.glob("shard_*.json")) == [f"shard_0000{i}.json" for i in range(3)]
    assert (d / "shard_00003.bin.tmp").exists() and not (d / "index.json").exists()  # a half-written shard
    (d / "shard_00001.json").unlink()  # as if killed between writing shard 1's tokens and its metadata
    resumed = pack([f"zh={corpus['zh_path']}"], tok_dir, out, shard_bytes=15_000, progress=False)
    assert (resumed.tasks_skipped, resumed.tasks_run) == (2, clean.tasks_run - 2)
    assert _shas(d) == _shas(tmp_path / "clean" / "zh") and not list(d.glob("*.tmp"))
    assert resumed.sources["zh"]["tokens"] == clean.sources["zh"]["tokens"]
    again = pack([f"zh={corpus['zh_path']}"], tok_dir, out, shard_bytes=15_000, progress=False)
    assert (again.tasks_run, again.tasks_skipped, again.tokens) == (0, clean.tasks_run, 0)


def _tasks_reading(src: Path, path: Path, shard_bytes: int) -> tuple[int, int]:
    """(tasks in the plan of source dir `src`, tasks that read `path`)."""
    plan = pack_module.plan_source(pack_module.parse_sources([f"math={src}"])[0], shard_bytes)
    return len(plan), sum(1 for t in plan if any(p.path == str(path) for p in t.pieces))


def test_malformed_input_is_named_and_only_changed_files_are_packed_again(tok_dir, tok, corpus, tmp_path, capsys):
    gsm = _records(corpus["gsm_path"], 200)
    src = tmp_path / "src"
    _write_jsonl(src / "a.jsonl", gsm[:60])
    b = _write_jsonl(src / "b.jsonl", gsm[60:130])
    c = _write_jsonl(src / "c.jsonl", gsm[130:])
    good_b = b.read_text(encoding="utf-8")
    lines = good_b.splitlines(keepends=True)
    lines[57] = '{"question": "cut off\n'  # line 58, in b's second byte range
    b.write_text("".join(lines), encoding="utf-8")
    args = [
        "data",
        "pack",
        "-t",
        str(tok_dir),
        "-o",
        str(tmp_path / "tokens"),
        f"math={src}",
        "--field",
        "question",
        "--field",
        "answer",
        "--workers",
        "1",
        "--shard-bytes",
        "10000",
        "-q",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{b}:58: not valid JSON" in err and "shards finished so far are kept" in err
    d = tmp_path / "tokens" / "math"
    finished = len(list(d.glob("shard_*.json")))
    n_tasks, reading_b = _tasks_reading(src, b, 10_000)
    assert finished >= 2 and n_tasks >= 6  # the shards before the bad record survive the failure

    b.write_text(good_b, encoding="utf-8")  # fix b: finished shards that do not read b are kept
    fixed = pack(
        [f"math={src}"], tok_dir, tmp_path / "tokens", fields=["question", "answer"], shard_bytes=10_000, progress=False
    )
    finished_reading_b = finished - fixed.tasks_skipped
    assert fixed.tasks_redone == finished_reading_b and 0 < finished_reading_b < reading_b
    assert fixed.tasks_skipped + fixed.tasks_run == n_tasks and fixed.tasks_skipped >= 1
    texts = [r["question"] + "\n" + r["answer"] for r in gsm]
    assert _docs(TokenSource(d), tok) == texts

    c_count = len(gsm) - 130
    c.write_text(c.read_text(encoding="utf-8") + "not json at all\n" + json.dumps(gsm[0]) + "\n", encoding="utf-8")
    n_tasks, reading_c = _tasks_reading(src, c, 10_000)
    skipped = pack(
        [f"math={src}"],
        tok_dir,
        tmp_path / "tokens",
        fields=["question", "answer"],
        shard_bytes=10_000,
        skip_malformed=True,
        progress=False,
    )
    assert (skipped.tasks_run, skipped.tasks_skipped) == (reading_c, n_tasks - reading_c)  # only shards reading c
    assert skipped.tasks_redone >= 1
    assert len(skipped.malformed) == 1 and skipped.malformed[0].startswith(f"{c}:{c_count + 1}: not valid JSON")
    source = TokenSource(d, verify=True)
    assert _docs(source, tok) == texts + [texts[0]]  # the malformed record skipped, the good one after it kept
    assert source.index["documents"] == len(texts) + 1
    with pytest.raises(PackError, match=rf"c.jsonl:{c_count + 1}: not valid JSON"):  # without --skip-malformed
        pack(
            [f"math={src}"],
            tok_dir,
            tmp_path / "again",
            fields=["question", "answer"],
            shard_bytes=10_000,
            progress=False,
        )


def test_changed_settings_are_refused_unless_overwrite(tok_dir, corpus, tmp_path):
    first = pack([f"zh={corpus['zh_path']}"], tok_dir, tmp_path / "t", shard_bytes=100_000, progress=False)
    with pytest.raises(ValueError, match="different shard_bytes"):
        pack([f"zh={corpus['zh_path']}"], tok_dir, tmp_path / "t", shard_bytes=30_000, progress=False)
    with pytest.raises(ValueError, match="different fields"):
        pack([f"zh={corpus['zh_path']}"], tok_dir, tmp_path / "t", fields=["body"], shard_bytes=100_000, progress=False)
    redone = pack(
        [f"zh={corpus['zh_path']}"], tok_dir, tmp_path / "t", shard_bytes=30_000, overwrite=True, progress=False
    )
    assert redone.tasks_skipped == 0 and redone.sources["zh"]["tokens"] == first.sources["zh"]["tokens"]
    assert len(redone.sources["zh"]) and redone.sources["zh"]["shards"] > first.sources["zh"]["shards"]
    assert len(list((tmp_path / "t" / "zh").glob("shard_*.json"))) == redone.sources["zh"]["shards"]


def test_parquet_row_groups_become_shards(tok_dir, tok, corpus, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    docs = corpus["gsm"][:150]
    path = tmp_path / "gsm.parquet"
    pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), path, row_group_size=25)
    summary = pack([f"gsm={path}"], tok_dir, tmp_path / "tokens", shard_bytes=1, progress=False)
    assert summary.tasks_run == 6  # one task per row group at this shard size
    source = TokenSource(tmp_path / "tokens" / "gsm")
    assert _docs(source, tok) == docs and source.n_documents == 150


def test_a_tokenizer_without_eos_is_refused(tok_dir, corpus, tmp_path):
    no_eos = tmp_path / "no_eos"
    shutil.copytree(tok_dir, no_eos)
    cfg = json.loads((no_eos / "tokenizer_config.json").read_text())
    cfg.pop("eos_token")
    (no_eos / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="names no eos_token"):
        pack([f"zh={corpus['zh_path']}"], no_eos, tmp_path / "t", progress=False)
    assert not (tmp_path / "t").exists()


def test_uint32_shards_for_vocabularies_beyond_65536(tok_dir, corpus, tmp_path):
    """A vocabulary over 2^16 ids switches the shard dtype; the ids survive unchanged."""
    from tokenizers import Tokenizer

    big = tmp_path / "big"
    shutil.copytree(tok_dir, big)
    t = Tokenizer.from_file(str(big / "tokenizer.json"))
    t.add_special_tokens([f"<extra_{i}>" for i in range(70_000 - t.get_vocab_size(with_added_tokens=True))])
    t.save(str(big / "tokenizer.json"))
    pack([f"zh={corpus['zh_path']}"], big, tmp_path / "t", progress=False)
    source = TokenSource(tmp_path / "t" / "zh")
    assert source.index["dtype"] == "uint32" and source.index["vocab_size"] == 70_000
    small = TextTokenizer.from_dir(tok_dir)
    assert np.array_equal(source.document(0)[:-1], small.encode(corpus["zh"][0]))


def test_trailing_blank_lines_never_make_a_piece_without_records(tmp_path):
    """A cut just before a file's trailing blank lines would plan a shard with no document in it."""
    from skyloom.data.pack import file_pieces

    path = tmp_path / "docs.jsonl"
    records = "".join(json.dumps({"text": f"document {i} " + "x" * 80}) + "\n" for i in range(10))
    path.write_text(records + "\n" * 50, encoding="utf-8")
    shard_bytes = len(records.encode()) // 2
    pieces = file_pieces(path, shard_bytes)
    assert len(pieces) == 2 and pieces[-1].end == path.stat().st_size
    for piece in pieces:
        with open(path, "rb") as f:
            f.seek(piece.start)
            assert f.read(piece.end - piece.start).strip()  # every piece holds at least one record
