"""Token shards: packed token ids on disk, memory-mapped for reading without copies.

One directory per source (e.g. `tokens/wiki_en/`):

    shard_<name>.bin         token ids, raw little-endian uint16 (vocab ≤ 65,536) or uint32, no header;
                             documents back to back, each ending with EOS (the packer appends it)
    shard_<name>.docs.bin    uint64 end offset of every document inside the shard
    shard_<name>.json        the shard's metadata: tokens, documents, dtype, sha256 of the .bin —
                             written last, atomically: a shard without it is unfinished and ignored
    index.json               {"format": "skyloom-tokens", "source", "tokenizer", "vocab_size", "dtype",
                              "eos_id", "tokens", "documents", "shards": [...]} — rebuilt from the shard
                             metadata by `finalize_index`, so parallel writers never share a file

Writing is append-friendly (a new shard is a new file) and atomic per shard (temp file + rename).

The datatrove layout (`skyloom data pack --layout datatrove`) holds the same bytes under the names datatrove's
`DocumentTokenizer` gives them (shuffle_documents=False, one task per shard):

    <name>_unshuffled.ds          the tokens (uint16 / uint32 as above)
    <name>_unshuffled.ds.index    uint64 end offset of every document
    <name>_unshuffled.ds.metadata "<tokenizer.json path>|<bytes per token>\n<tokens>\n<tokens, humanized>"

next to skyloom's `shard_<name>.json` and `index.json`. A folder written by datatrove itself (only `*.ds`,
`*.ds.index` and `*.ds.metadata`, no `index.json`) is read as a source too: see `datatrove_index`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "skyloom-tokens"
INDEX_FILE = "index.json"
LAYOUTS = ("skyloom", "datatrove")
DATATROVE_FORMAT = "datatrove-tokens"  # the index `datatrove_index` builds for a folder datatrove wrote


def shard_file_names(name: str, layout: str = "skyloom") -> tuple[str, str, str]:
    """(tokens, document ends, metadata JSON) file names of shard `name` in `layout`."""
    if layout == "datatrove":
        return f"{name}_unshuffled.ds", f"{name}_unshuffled.ds.index", f"shard_{name}.json"
    return f"shard_{name}.bin", f"shard_{name}.docs.bin", f"shard_{name}.json"


def shard_files(name: str) -> list[str]:
    """Every file shard `name` may have in either layout, metadata first (a half-deleted shard reads as unfinished)."""
    tokens, ends, meta = shard_file_names(name, "datatrove")
    return [meta, *shard_file_names(name)[:2], tokens, ends, f"{tokens}.metadata"]


def shard_name(meta: dict) -> str:
    """The task name of a finished shard (its metadata as `finished_shards` returns it)."""
    return meta.get("name") or meta["file"][len("shard_") : -len(".bin")]


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab ≤ 65,536), else uint32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_write_json(path: Path, payload: dict) -> None:
    _atomic_write_bytes(path, (json.dumps(payload, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_shard(
    directory: str | Path,
    name: str,
    documents: Iterable[Sequence[int] | np.ndarray],
    *,
    vocab_size: int,
    source: str,
    tokenizer: str = "",
    eos_id: int | None = None,
    layout: str = "skyloom",
    tokenizer_path: str = "",
) -> dict:
    """Write one complete shard atomically; returns its metadata. Documents are written as given.
    `layout` "datatrove" names the files as datatrove does and adds its `.ds.metadata` (naming `tokenizer_path`)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    dtype = dtype_for_vocab(vocab_size)
    bin_path, docs_path, meta_path = (out / f for f in shard_file_names(name, layout))
    tmp = bin_path.with_name(bin_path.name + ".tmp")
    ends: list[int] = []
    total = 0
    digest = hashlib.sha256()
    with open(tmp, "wb") as f:
        for doc in documents:
            arr = np.asarray(doc)
            if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
                raise ValueError(f"{bin_path}: token id out of range [0, {vocab_size}) in document {len(ends)}")
            data = arr.astype(dtype, copy=False).tobytes()
            f.write(data)
            digest.update(data)
            total += arr.size
            ends.append(total)
        f.flush()
        os.fsync(f.fileno())
    _atomic_write_bytes(docs_path, np.asarray(ends, dtype="<u8").tobytes())
    os.replace(tmp, bin_path)
    if layout == "datatrove":
        _atomic_write_bytes(
            bin_path.with_name(bin_path.name + ".metadata"), datatrove_metadata(tokenizer_path, dtype, total)
        )
    meta = {
        "format": FORMAT,
        **({"name": name, "layout": layout} if layout != "skyloom" else {}),
        "file": bin_path.name,
        "docs_file": docs_path.name,
        "source": source,
        "tokenizer": tokenizer,
        "vocab_size": vocab_size,
        "dtype": dtype.name,
        "eos_id": eos_id,
        "tokens": total,
        "documents": len(ends),
        "sha256": digest.hexdigest(),
    }
    _atomic_write_json(meta_path, meta)
    return meta


def datatrove_metadata(tokenizer_path: str, dtype: np.dtype, tokens: int) -> bytes:
    """A `.ds.metadata` file as datatrove's `TokenizedFile.write_final_metadata` writes it (no final newline)."""
    try:
        import humanize

        pretty = humanize.metric(tokens, unit="T")
    except ImportError:  # humanize comes with datatrove; the line is for people, datatrove never parses it
        pretty = f"{tokens} T"
    name = tokenizer_path or "Unknown Tokenizer"
    return f"{name}|{dtype.itemsize}\n{tokens}\n{pretty}".encode()


def _datatrove_tokenizer(name: str) -> tuple[str, int | None]:
    """(skyloom fingerprint, vocabulary size) of the tokenizer a `.ds.metadata` names, when it is a local
    tokenizer.json (or a directory holding one); ('', None) for a hub name or a missing file."""
    path = Path(name)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not name or not file.is_file():
        return "", None
    raw = file.read_bytes()
    try:
        from tokenizers import Tokenizer

        vocab = Tokenizer.from_str(raw.decode("utf-8")).get_vocab_size(with_added_tokens=True)
    except Exception:  # not a tokenizer file after all: no fingerprint, no vocabulary check
        return "", None
    return hashlib.sha256(raw).hexdigest()[:16], vocab


def datatrove_index(directory: str | Path) -> dict | None:
    """The index of a folder tokenized by datatrove (`DocumentTokenizer`, `DocumentTokenizerMerger`): its `*.ds`
    files in name order, each with its `.ds.index` (required: document ends) and `.ds.metadata` (bytes per token,
    tokenizer; without it the size is inferred from the index). None when the folder holds no `*.ds` file.

    The tokenizer is fingerprinted when the metadata names a local tokenizer.json, so `check_model_fit` can refuse
    another model's tokenizer; datatrove records no EOS id (`eos_id` is None). `.ds.loss` files are ignored."""
    directory = Path(directory)
    files = sorted(p for p in directory.glob("*.ds") if p.is_file())
    if not files:
        return None
    shards, names, sizes = [], set(), set()
    for path in files:
        index_path = path.with_name(path.name + ".index")
        if not index_path.is_file():
            raise ValueError(f"{path}: no {index_path.name} (document ends); tokenize with save_index=True")
        ends = np.fromfile(index_path, dtype="<u8")
        tokens = int(ends[-1]) if len(ends) else 0
        size = path.stat().st_size
        meta_path = path.with_name(path.name + ".metadata")
        if meta_path.is_file():
            first = meta_path.read_text(encoding="utf-8").splitlines()[0]
            name, _, token_size = first.rpartition("|")
            if token_size not in ("2", "4"):
                raise ValueError(f"{meta_path}: first line {first!r} does not end in '|2' or '|4' (bytes per token)")
            names.add(name)
            token_size = int(token_size)
        elif tokens:
            token_size = size // tokens
        else:
            token_size = 2
        if size != tokens * token_size:
            raise ValueError(
                f"{path}: {size} bytes, its index ends at token {tokens} ({token_size} bytes each): "
                "files do not belong together"
            )
        sizes.add(token_size)
        shards.append(
            {"file": path.name, "docs_file": index_path.name, "tokens": tokens, "documents": len(ends), "sha256": None}
        )
    if len(sizes) > 1 or len(names) > 1:
        raise ValueError(f"{directory}: .ds files of different tokenizers or token sizes ({sorted(names)}, {sizes})")
    fingerprint, vocab = _datatrove_tokenizer(names.pop() if names else "")
    return {
        "format": DATATROVE_FORMAT,
        "source": directory.name,
        "tokenizer": fingerprint,
        "vocab_size": vocab,
        "dtype": "uint16" if sizes.pop() == 2 else "uint32",
        "eos_id": None,
        "tokens": sum(s["tokens"] for s in shards),
        "documents": sum(s["documents"] for s in shards),
        "shards": shards,
    }


def finished_shards(directory: str | Path) -> list[dict]:
    """Metadata of every complete shard in `directory` (sorted by file name)."""
    out = []
    for meta_path in sorted(Path(directory).glob("shard_*.json")):
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") == FORMAT and (Path(directory) / meta["file"]).is_file():
            out.append(meta)
    return out


def finalize_index(directory: str | Path) -> dict:
    """(Re)build `index.json` from the complete shards; refuses mixed tokenizers or dtypes."""
    directory = Path(directory)
    shards = finished_shards(directory)
    if not shards:
        raise ValueError(f"{directory}: no complete token shards")
    first = shards[0]
    for meta in shards[1:]:
        for key in ("source", "tokenizer", "vocab_size", "dtype", "eos_id"):
            if meta[key] != first[key]:
                raise ValueError(
                    f"{directory}/{meta['file']}: {key}={meta[key]!r} differs from "
                    f"{first['file']} ({first[key]!r}); one directory holds one source"
                )
    index = {
        "format": FORMAT,
        "version": 1,
        **{k: first[k] for k in ("source", "tokenizer", "vocab_size", "dtype", "eos_id")},
        "tokens": sum(m["tokens"] for m in shards),
        "documents": sum(m["documents"] for m in shards),
        "shards": [{k: m[k] for k in ("file", "docs_file", "tokens", "documents", "sha256")} for m in shards],
    }
    _atomic_write_json(directory / INDEX_FILE, index)
    return index


class ShardMismatch(ValueError):
    """A token-shard directory does not fit the model reading it (another tokenizer, a bigger vocabulary)."""


def check_token_ids(ids: np.ndarray, vocab_size: int, where: str) -> None:
    """Refuse ids outside [0, vocab_size) before they reach an embedding: there they are a bare IndexError on
    CPU and a device-side assert on a GPU, neither of which names the data."""
    arr = np.asarray(ids)
    if arr.size and (int(arr.max()) >= vocab_size or int(arr.min()) < 0):
        bad = int(np.flatnonzero((arr >= vocab_size) | (arr < 0))[0])
        raise ShardMismatch(
            f"{where}: token id {int(arr[bad])} at position {bad} is outside the model's "
            f"vocabulary of {vocab_size}; the data was packed for another model"
        )


@dataclass
class _Shard:
    tokens: np.memmap
    ends: np.ndarray
    start: int  # global offset of the shard's first token
    path: Path


class TokenSource:
    """Read-only view of one source's shards: `len()`, `read(start, n)`, `document(i)`; memory-mapped."""

    def __init__(self, directory: str | Path, verify: bool = False):
        self.directory = Path(directory)
        index_path = self.directory / INDEX_FILE
        try:
            self.index = json.loads(index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            index = datatrove_index(self.directory) if self.directory.is_dir() else None
            if index is None:
                raise FileNotFoundError(
                    f"{index_path}: no token index (pack the source first) and no datatrove *.ds files"
                ) from None
            self.index = index
        except json.JSONDecodeError as err:
            raise ValueError(f"{index_path}: corrupt index: {err}") from None
        if self.index.get("format") not in (FORMAT, DATATROVE_FORMAT):
            raise ValueError(f"{index_path}: not a skyloom token index")
        self.dtype = np.dtype(self.index["dtype"]).newbyteorder("<")
        self._shards: list[_Shard] = []
        offset = 0
        for entry in self.index["shards"]:
            path = self.directory / entry["file"]
            if verify and entry["sha256"] and sha256_file(path) != entry["sha256"]:
                raise ValueError(f"{path}: checksum mismatch (file changed or truncated)")
            expected_bytes = entry["tokens"] * self.dtype.itemsize
            if path.stat().st_size != expected_bytes:
                raise ValueError(f"{path}: {path.stat().st_size} bytes, index says {expected_bytes}")
            tokens = np.memmap(path, dtype=self.dtype, mode="r") if entry["tokens"] else np.zeros(0, self.dtype)
            ends = np.fromfile(self.directory / entry["docs_file"], dtype="<u8")
            self._shards.append(_Shard(tokens, ends, offset, path))
            offset += entry["tokens"]
        self._starts = np.array([s.start for s in self._shards], dtype=np.int64)
        self.n_tokens = offset
        self._doc_counts = np.cumsum([len(s.ends) for s in self._shards])
        self.vocab_limit: int | None = None  # set by check_model_fit: reads then refuse ids ≥ it

    @property
    def tokenizer_id(self) -> str:
        """The packing tokenizer's fingerprint ('' when the packer did not record one)."""
        return self.index.get("tokenizer") or ""

    def check_model_fit(
        self, what: str, vocab_size: int, tokenizer_id: str | None = None, tokenizer_name: str = ""
    ) -> None:
        """Refuse shards a model cannot read correctly, before any id reaches its embedding: packed with another
        tokenizer (the ids mean other strings: silently wrong numbers) or for a bigger vocabulary (IndexError).

        The one check every shard consumer runs (training sources, validation sets, `eval --data`). `what`
        names the consumer (e.g. "data.sources.en"); an unknown fingerprint on either side ('' / None) skips
        the tokenizer comparison. Afterwards every read also checks its ids against `vocab_size`, so a shard
        changed after packing is named instead of crashing the forward pass.
        """
        packed, vocab = self.tokenizer_id, int(self.index["vocab_size"] or 0)  # datatrove's: maybe unknown
        if packed and tokenizer_id and packed != tokenizer_id:
            model_tok = f"{tokenizer_id} ({tokenizer_name})" if tokenizer_name else tokenizer_id
            raise ShardMismatch(
                f"{what}: {self.directory} was packed with tokenizer {packed} (vocabulary {vocab:,}), "
                f"the model's tokenizer is {model_tok}; pack the data again with the model's "
                "tokenizer"
            )
        if vocab > vocab_size:
            raise ShardMismatch(
                f"{what}: {self.directory} was packed for a vocabulary of {vocab:,} (tokenizer "
                f"{packed or 'unrecorded'}), more than the model's {vocab_size:,} embeddings"
            )
        self.vocab_limit = vocab_size

    @property
    def source(self) -> str:
        return self.index["source"]

    @property
    def n_documents(self) -> int:
        return int(self._doc_counts[-1]) if len(self._doc_counts) else 0

    @property
    def eos_id(self) -> int | None:
        return self.index.get("eos_id")

    def __len__(self) -> int:
        return self.n_tokens

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) across shards; a view (no copy) when inside one shard."""
        if start < 0 or length < 0 or start + length > self.n_tokens:
            raise IndexError(f"{self.directory}: read [{start}, {start + length}) outside {self.n_tokens} tokens")
        i = int(np.searchsorted(self._starts, start, side="right") - 1)
        shard = self._shards[i]
        local = start - shard.start
        if local + length <= len(shard.tokens):
            return self._checked(shard, local, shard.tokens[local : local + length])
        parts, remaining = [], length
        while remaining > 0:
            shard = self._shards[i]
            take = min(remaining, len(shard.tokens) - local)
            parts.append(self._checked(shard, local, shard.tokens[local : local + take]))
            remaining -= take
            i, local = i + 1, 0
        return np.concatenate(parts)

    def _checked(self, shard: _Shard, local: int, tokens: np.ndarray) -> np.ndarray:
        if self.vocab_limit is not None:
            check_token_ids(tokens, self.vocab_limit, f"{shard.path} (from token {local:,})")
        return tokens

    def document(self, i: int) -> np.ndarray:
        """Tokens of document i (EOS included)."""
        if not 0 <= i < self.n_documents:
            raise IndexError(f"document {i} outside {self.n_documents}")
        s = int(np.searchsorted(self._doc_counts, i, side="right"))
        local = i - (int(self._doc_counts[s - 1]) if s else 0)
        shard = self._shards[s]
        begin = int(shard.ends[local - 1]) if local else 0
        return self._checked(shard, begin, shard.tokens[begin : int(shard.ends[local])])

    def documents(self) -> Iterator[np.ndarray]:
        for i in range(self.n_documents):
            yield self.document(i)
