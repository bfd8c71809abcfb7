"""Make a recipe's data exist before training: an on-the-fly tokenizer and token shards from raw text.

Real pipelines build tokenizers with `skyloom tokenizer train` and shards with `skyloom data pack`. Small
recipes (the demo `recipes/tiny.yaml`) instead name raw text files: when `data.tokenizer` does not exist and
`data.train_tokenizer` is given, a byte-level BPE (digits split one by one, EOS `<|endoftext|>`) is trained on
those files; when a source's `path` has no `index.json` and the source lists `raw` files, they are tokenized
and packed there. Both steps are skipped when their outputs already exist.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from skyloom.config import ConfigError
from skyloom.train.config import DataConfig
from skyloom.train.validation import expand_paths, expand_placeholders, iter_documents


def _resolve_files(
    primary: Sequence[str], fallback: Sequence[str], what: str, log: Callable[[str], None] = print
) -> list[Path]:
    """The files `primary` names. `fallback` stands in only when the data `primary` points into is absent as a
    whole (e.g. no ../shared/data on this machine), and says so. A name that matches nothing while another one
    matches, or while the directory it names exists, is a typo: refused naming the key, never skipped or replaced
    by the fallback (which would train on other data without a word)."""
    missing = [p for p in primary if not expand_paths(p)]
    found = [p for p in primary if p not in missing]
    if missing and found:
        raise ConfigError(
            what, f"{', '.join(missing)} matches no file (while {', '.join(found)} does); fix the path or remove it"
        )
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
        log(
            f"note: {what}: {', '.join(primary)} not found (no such directory); using the fallback "
            f"{', '.join(fallback)} ({len(files)} file(s))"
        )
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


def train_bpe(
    files: Sequence[Path], out_dir: Path, vocab_size: int, text_key: str = "text", max_chars: int = 20_000_000
) -> Path:
    """A byte-level BPE tokenizer directory trained on the first `max_chars` characters of `files`
    (`tokenizer.base.train_byte_level_bpe`)."""
    from skyloom.tokenizer.base import train_byte_level_bpe

    return train_byte_level_bpe(_texts(files, text_key, max_chars), out_dir, vocab_size, trained_on=files)


def pack_files(
    files: Sequence[Path], out_dir: Path, tokenizer, source: str, text_key: str = "text", docs_per_shard: int = 20_000
) -> dict:
    """Tokenize documents (+EOS, `data.pack.encode_documents`) and write token shards of `docs_per_shard`
    documents each + index.json into `out_dir`."""
    from skyloom.data.pack import encode_documents
    from skyloom.data.shards import finalize_index, write_shard

    if tokenizer.eos_id is None:
        raise ValueError(f"tokenizer {tokenizer.source} has no eos_token; cannot pack documents")
    docs = (doc for path in files for doc in iter_documents(path, text_key))
    for shard in itertools.count():
        chunk = list(itertools.islice(docs, docs_per_shard))
        if not chunk:
            break
        write_shard(
            out_dir,
            f"{shard:05d}",
            encode_documents(chunk, tokenizer),
            vocab_size=tokenizer.vocab_size,
            source=source,
            tokenizer=tokenizer.tokenizer_id,
            eos_id=tokenizer.eos_id,
        )
    return finalize_index(out_dir)


def prepare_data(data: DataConfig, log: Callable[[str], None] = print) -> None:
    """Create the tokenizer and any missing token shards the config describes (idempotent). Every file list is
    resolved first, so a wrong path is refused before minutes of tokenizer training are spent."""
    raw_files = {
        name: _resolve_files(src.raw, src.raw_fallback, f"data.sources.{name}.raw", log)
        for name, src in data.sources.items()
        if not (Path(src.path) / "index.json").is_file() and (src.raw or src.raw_fallback)
    }
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


def prepare_run_data(cfg, log: Callable[[str], None] = print) -> None:
    """The command layer's step before a `Trainer` is built: rank 0 creates what `cfg.data` lacks (tokenizer,
    shards), every rank waits for it. Under torchrun this joins the process group first (idempotent)."""
    from skyloom.train.distributed import barrier, init_distributed

    env = init_distributed(cfg.train.device)
    if env.is_main:
        prepare_data(cfg.data, log)
    barrier()
