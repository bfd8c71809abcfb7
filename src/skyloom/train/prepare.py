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

from skyloom.config import ConfigError
from skyloom.train.config import DataConfig
from skyloom.train.validation import expand_paths, expand_placeholders, iter_documents

EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [EOS_TOKEN, "<|pad|>", "<|unk|>"]


def _resolve_files(primary: Sequence[str], fallback: Sequence[str], what: str,
                   log: Callable[[str], None] = print) -> list[Path]:
    """The files `primary` names. `fallback` stands in only when the data `primary` points into is absent as a
    whole (e.g. no ../shared/data on this machine), and says so. A name that matches nothing while another one
    matches, or while the directory it names exists, is a typo: refused naming the key, never skipped or replaced
    by the fallback (which would train on other data without a word)."""
    missing = [p for p in primary if not expand_paths(p)]
    found = [p for p in primary if p not in missing]
    if missing and found:
        raise ConfigError(what, f"{', '.join(missing)} matches no file (while {', '.join(found)} does); "
                                "fix the path or remove it")
    typos = [(p, d) for p in missing if (d := _fixed_dir(p)).is_dir()]
    if typos:
        p, d = typos[0]
        raise ConfigError(what, f"{p} matches no file, though its directory {d} exists; fix the path")
    if found:
        return expand_paths(primary)
    files = expand_paths(fallback) if fallback else []
    if not files:
        raise ConfigError(what, f"none of {list(primary) + list(fallback)} exists")
    if primary:
        log(f"note: {what}: {', '.join(primary)} not found (no such directory); using the fallback "
            f"{', '.join(fallback)} ({len(files)} file(s))")
    return files


def _fixed_dir(pattern: str) -> Path:
    """The directory a path or glob names before any wildcard: `a/b/c.txt` → a/b, `a/*/x.py` → a."""
    parts = Path(expand_placeholders(pattern)).parts
    fixed = []
    for part in parts:
        if any(ch in part for ch in "*?["):
            return Path(*fixed) if fixed else Path(".")
        fixed.append(part)
    return Path(*fixed[:-1]) if len(fixed) > 1 else Path(".")


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
    """Create the tokenizer and any missing token shards the config describes (idempotent). Every file list is
    resolved first, so a wrong path is refused before minutes of tokenizer training are spent."""
    raw_files = {name: _resolve_files(src.raw, src.raw_fallback, f"data.sources.{name}.raw", log)
                 for name, src in data.sources.items()
                 if not (Path(src.path) / "index.json").is_file() and (src.raw or src.raw_fallback)}
    if raw_files and not data.tokenizer:
        raise ConfigError(f"data.sources.{next(iter(raw_files))}.raw", "packing raw text needs data.tokenizer")
    if data.tokenizer and not (Path(data.tokenizer) / "tokenizer.json").is_file() and data.train_tokenizer:
        spec = data.train_tokenizer
        files = _resolve_files(spec.files, spec.fallback, "data.train_tokenizer.files", log)
        log(f"training a {spec.vocab_size}-entry byte-level BPE tokenizer on {len(files)} file(s) → {data.tokenizer}")
        train_bpe(files, Path(data.tokenizer), spec.vocab_size, spec.text_key, spec.max_chars)
    tokenizer = None
    for name, files in raw_files.items():
        src = data.sources[name]
        if tokenizer is None:
            from skyloom.tokenizer.loading import TextTokenizer

            tokenizer = TextTokenizer.from_dir(data.tokenizer)
        log(f"packing source '{name}' from {len(files)} file(s) → {src.path}")
        index = pack_files(files, Path(src.path), tokenizer, name, src.text_key)
        log(f"  {index['tokens']:,} tokens in {index['documents']:,} documents")
