"""Make a recipe's data exist before training: an on-the-fly tokenizer and token shards from raw text.

Real pipelines build tokenizers with `skyloom tokenizer train` and shards with `skyloom data pack`. Small
recipes (the demo `recipes/tiny.yaml`) instead name raw text files: when `data.tokenizer` does not exist and
`data.train_tokenizer` is given, a byte-level BPE (digits split one by one, EOS `<|endoftext|>`) is trained on
those files; when a source's `path` has no `index.json` and the source lists `raw` files, they are tokenized
and packed there. Both steps are skipped when their outputs already exist.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from skyloom.train.config import DataConfig
from skyloom.train.validation import expand_paths, iter_documents

EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [EOS_TOKEN, "<|pad|>", "<|unk|>"]


def _resolve_files(primary: Sequence[str], fallback: Sequence[str], what: str) -> list[Path]:
    files = expand_paths(primary) if primary else []
    if not files and fallback:
        files = expand_paths(fallback)
    if not files:
        raise FileNotFoundError(f"{what}: none of {list(primary) + list(fallback)} exists")
    return files


def _texts(files: Iterable[Path], text_key: str, max_chars: int | None = None) -> Iterable[str]:
    used = 0
    for path in files:
        for doc in iter_documents(path, text_key):
            yield doc
            used += len(doc)
            if max_chars is not None and used >= max_chars:
                return


def train_bpe(files: Sequence[Path], out_dir: Path, vocab_size: int, text_key: str = "text",
              max_chars: int = 20_000_000) -> Path:
    """A byte-level BPE tokenizer directory (tokenizer.json + tokenizer_config.json) trained on `files`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2,
    )
    tok.train_from_iterator(_texts(files, text_key, max_chars), trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "tokenizer.json.tmp"
    tok.save(str(tmp))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS_TOKEN, "pad_token": "<|pad|>",
        "unk_token": "<|unk|>", "model_max_length": 1 << 20,
        "trained_on": [str(f) for f in files][:50],
    }, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out_dir / "tokenizer.json")
    return out_dir


def pack_files(files: Sequence[Path], out_dir: Path, tokenizer, source: str, text_key: str = "text",
               docs_per_shard: int = 20_000) -> dict:
    """Tokenize documents (+EOS) and write token shards + index.json into `out_dir`."""
    from skyloom.data.shards import finalize_index, write_shard

    eos = tokenizer.eos_id
    if eos is None:
        raise ValueError(f"tokenizer {tokenizer.source} has no eos_token; cannot pack documents")
    batch: list[str] = []
    shard = 0

    def flush() -> None:
        nonlocal shard
        docs = [np.asarray(ids + [eos], dtype=np.int64) for ids in tokenizer.encode_batch(batch)]
        write_shard(out_dir, f"{shard:05d}", docs, vocab_size=tokenizer.vocab_size, source=source,
                    tokenizer=tokenizer.tokenizer_id, eos_id=eos)
        shard += 1
        batch.clear()

    for path in files:
        for doc in iter_documents(path, text_key):
            batch.append(doc)
            if len(batch) >= docs_per_shard:
                flush()
    if batch:
        flush()
    return finalize_index(out_dir)


def prepare_data(data: DataConfig, log: Callable[[str], None] = print) -> None:
    """Create the tokenizer and any missing token shards the config describes (idempotent)."""
    tokenizer = None
    if data.tokenizer and not (Path(data.tokenizer) / "tokenizer.json").is_file() and data.train_tokenizer:
        spec = data.train_tokenizer
        files = _resolve_files(spec.files, spec.fallback, "data.train_tokenizer.files")
        log(f"training a {spec.vocab_size}-entry byte-level BPE tokenizer on {len(files)} file(s) → {data.tokenizer}")
        train_bpe(files, Path(data.tokenizer), spec.vocab_size, spec.text_key, spec.max_chars)
    for name, src in data.sources.items():
        if (Path(src.path) / "index.json").is_file() or not (src.raw or src.raw_fallback):
            continue
        if not data.tokenizer:
            raise ValueError(f"data.sources.{name}: packing raw text needs data.tokenizer")
        if tokenizer is None:
            from skyloom.tokenizer.loading import TextTokenizer

            tokenizer = TextTokenizer.from_dir(data.tokenizer)
        files = _resolve_files(src.raw, src.raw_fallback, f"data.sources.{name}.raw")
        log(f"packing source '{name}' from {len(files)} file(s) → {src.path}")
        index = pack_files(files, Path(src.path), tokenizer, name, src.text_key)
        log(f"  {index['tokens']:,} tokens in {index['documents']:,} documents")
