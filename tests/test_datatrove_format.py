"""datatrove's token format both ways: `skyloom data pack --layout datatrove` writes byte for byte what datatrove's
DocumentTokenizer writes, datatrove's readers (DatatroveFileDataset, DocumentTokenizerMerger) read it, and a folder
datatrove tokenized (unshuffled, shuffled, merged) is a skyloom training source with the same tokens."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from skyloom.cli import main
from skyloom.data.shards import ShardMismatch, TokenSource
from skyloom.tokenizer.base import BYTE_LEVEL_EOS, train_byte_level_bpe
from skyloom.tokenizer.loading import TextTokenizer

WORDS = "river hill calm voice stone light water field morning 山 水 风 月 雨 花".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """A byte-level BPE (≤ 400 entries) and two gzipped JSONL files of 17 + 13 short documents (no special-token text)."""
    root = tmp_path_factory.mktemp("dt_corpus")
    rng = np.random.default_rng(0)
    docs = [" ".join(str(rng.choice(WORDS)) for _ in range(int(rng.integers(3, 40)))) + f" #{i}." for i in range(30)]
    tok_dir = train_byte_level_bpe(docs * 4, root / "tok", vocab_size=400)
    files = []
    for name, part in (("a", docs[:17]), ("b", docs[17:])):
        path = root / "in" / f"{name}.jsonl.gz"
        path.parent.mkdir(exist_ok=True)
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in part)
        files.append(path)
    return {"tok": tok_dir, "tok_json": str((tok_dir / "tokenizer.json").resolve()), "files": files, "docs": docs}


def _datatrove_tokenize(corpus: dict, out: Path, shuffle: bool, tasks: int = 2) -> Path:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    pipeline = [
        JsonlReader(str(corpus["files"][0].parent), glob_pattern="*.jsonl.gz", compression="gzip"),
        DocumentTokenizer(
            str(out),
            tokenizer_name_or_path=corpus["tok_json"],  # a local file: nothing from the hub
            eos_token=BYTE_LEVEL_EOS,
            shuffle_documents=shuffle,
            seed=3,
        ),
    ]
    LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=str(out.parent / f"{out.name}_logs")).run()
    return out


def _pack_argv(corpus: dict, out: Path, *extra: str) -> list[str]:
    options = ["-t", str(corpus["tok"]), "-o", str(out), "-q", "--workers", "1", "--shard-bytes", "1", *extra]
    return ["data", "pack", *options, *(f"docs={f}" for f in corpus["files"])]


def _skyloom_pack(corpus: dict, out: Path, *extra: str) -> Path:
    assert main(_pack_argv(corpus, out, *extra)) == 0
    return out / "docs"


def _documents(source: TokenSource) -> list[list[int]]:
    return [d.tolist() for d in source.documents()]


def test_pack_layout_datatrove_writes_what_datatroves_tokenizer_writes(corpus, tmp_path):
    ours = _skyloom_pack(corpus, tmp_path / "ours", "--layout", "datatrove")
    theirs = _datatrove_tokenize(corpus, tmp_path / "theirs", shuffle=False)
    datatrove_files = sorted(p.name for p in theirs.iterdir())
    assert datatrove_files == [f"0000{r}_unshuffled.ds{x}" for r in (0, 1) for x in ("", ".index", ".metadata")]
    for name in datatrove_files:  # tokens (uint16), document ends (uint64) and the metadata file, byte for byte
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name
    assert (theirs / "00000_unshuffled.ds.metadata").read_text().startswith(f"{corpus['tok_json']}|2\n")
    # skyloom's own bookkeeping beside them: the same tokens as the default layout
    source, default = TokenSource(ours, verify=True), TokenSource(_skyloom_pack(corpus, tmp_path / "default"))
    assert _documents(source) == _documents(default) and source.n_documents == 30
    assert not list(ours.glob("*.bin"))
    # a second run resumes: no shard written again
    before = {p.name: p.stat().st_mtime_ns for p in ours.glob("*_unshuffled.ds*")}
    _skyloom_pack(corpus, tmp_path / "ours", "--layout", "datatrove")
    assert {p.name: p.stat().st_mtime_ns for p in ours.glob("*_unshuffled.ds*")} == before and len(before) == 6
    # a different layout in the same folder is refused
    assert main(_pack_argv(corpus, tmp_path / "ours")) == 2


def test_datatrove_readers_read_the_datatrove_layout(corpus, tmp_path):
    from datatrove.pipeline.tokens import DocumentTokenizerMerger
    from datatrove.utils.dataset import DatatroveFileDataset, DatatroveFolderDataset

    ours = _skyloom_pack(corpus, tmp_path / "ours", "--layout", "datatrove")
    source = TokenSource(ours)
    stream = source.read(0, len(source))
    first = _documents(source)[:17]
    n = sum(len(d) for d in first)
    seq_len = 7
    ds = DatatroveFileDataset(str(ours / "00000_unshuffled.ds"), seq_len, token_size=2)
    assert len(ds) == n // (seq_len + 1)
    for i in range(len(ds)):
        assert ds[i]["input_ids"].tolist() == stream[i * (seq_len + 1) : (i + 1) * (seq_len + 1)].tolist()
    folder = DatatroveFolderDataset(str(ours), seq_len, filename_pattern="*.ds", token_size=2)
    assert len(folder) == len(ds) + (len(stream) - n) // (seq_len + 1)
    assert folder[0]["input_ids"].tolist() == ds[0]["input_ids"].tolist()
    merged = tmp_path / "merged"
    DocumentTokenizerMerger(str(ours), str(merged), "all", shuffle=False, progress=False).run()
    assert np.fromfile(merged / "000_all.ds", dtype="<u2").tolist() == stream.tolist()
    ends = np.fromfile(merged / "000_all.ds.index", dtype="<u8")
    assert ends.tolist() == np.cumsum([len(d) for d in _documents(source)]).tolist()
    assert (merged / "000_all.ds.metadata").read_text().startswith(f"{corpus['tok_json']}|2\n")


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_datatrove_tokenized_folder_is_a_source_with_the_same_tokens(corpus, tmp_path, shuffle):
    theirs = _datatrove_tokenize(corpus, tmp_path / "theirs", shuffle=shuffle)
    packed = TokenSource(_skyloom_pack(corpus, tmp_path / "packed"))
    source = TokenSource(theirs)
    tok = TextTokenizer.from_dir(corpus["tok"])
    assert source.dtype == np.dtype("<u2") and source.tokenizer_id == tok.tokenizer_id == packed.tokenizer_id
    assert len(source) == len(packed) and source.n_documents == packed.n_documents == 30
    if shuffle:
        assert sorted(_documents(source)) == sorted(_documents(packed)) and _documents(source) != _documents(packed)
    else:
        assert _documents(source) == _documents(packed)
    assert all(d[-1] == tok.eos_id for d in _documents(source))
    source.check_model_fit("data.sources.web", 512, tok.tokenizer_id)
    with pytest.raises(ShardMismatch, match="packed with tokenizer"):
        source.check_model_fit("data.sources.web", 512, "0123456789abcdef")
    with pytest.raises(ShardMismatch, match=f"vocabulary of {tok.vocab_size}"):
        source.check_model_fit("data.sources.web", tok.vocab_size - 1, tok.tokenizer_id)


def test_a_merged_datatrove_folder_trains_through_the_mixture(corpus, tmp_path):
    """Windows the mixture draws from a merged (shuffled) datatrove folder are windows of its token stream."""
    from datatrove.pipeline.tokens import DocumentTokenizerMerger

    from skyloom.train.trainer import build_mixture_loader, load_tokenizer
    from tests.train_helpers import build_run_config, tiny_run_config

    theirs = _datatrove_tokenize(corpus, tmp_path / "theirs", shuffle=True)
    merged = tmp_path / "merged"
    DocumentTokenizerMerger(str(theirs), str(merged), "web", seed=1, progress=False).run()
    cfg = tiny_run_config({"tokenizer": corpus["tok"], "en": merged, "zh": merged, "val_en": merged})
    cfg["model"]["vocab_size"] = 512
    cfg["data"].update(seq_len=8, sources={"web": {"path": str(merged)}})
    cfg["train"].update(global_batch_tokens=64, max_steps=4)
    run = build_run_config(cfg)
    loader = build_mixture_loader(run, load_tokenizer(run))
    source = TokenSource(merged)
    assert source.n_documents == 30 and list(merged.glob("*.ds")) == [merged / "000_web.ds"]
    stream = source.read(0, len(source))
    windows = {tuple(stream[j * 9 : (j + 1) * 9].tolist()) for j in range(len(stream) // 9)}
    drawn = [
        (inputs, labels)
        for batch in loader.next_batches()
        for inputs, labels in zip(batch.input_ids.tolist(), batch.labels.tolist())
    ]
    assert len(drawn) == 8
    assert all(tuple(inputs + labels[-1:]) in windows and inputs[1:] == labels[:-1] for inputs, labels in drawn)


def test_a_datatrove_folder_without_document_ends_is_refused(corpus, tmp_path):
    theirs = _datatrove_tokenize(corpus, tmp_path / "theirs", shuffle=False, tasks=1)
    (theirs / "00000_unshuffled.ds.index").unlink()
    with pytest.raises(ValueError, match=r"no 00000_unshuffled.ds.index \(document ends\)"):
        TokenSource(theirs)
    with pytest.raises(FileNotFoundError, match="no datatrove \\*.ds files"):
        TokenSource(tmp_path)
