"""Evaluation inputs: documents from JSONL / JSON / plain-text files or skyloom token-shard directories.

A JSONL record gives its text through `field` (default `text`); records with `question` and `answer`
instead (GSM8K and its kind) become question + " " + answer — the concatenation the report's Table 8
scores and the authors' own `pt_train.jsonl` uses. Errors name the file and line.

The byte-level half of reading (gzip looked through; a damaged `.gz`, bad JSON or invalid UTF-8 is
`tokenizer.corpus.InputError` naming FILE:LINE) is `skyloom.tokenizer.corpus`, the one document reader.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

from skyloom.tokenizer.corpus import iter_records, read_text_file

QA_JOINER = " "


def shared_data_dir() -> Path:
    """Where the shared real data lives: $SKYLOOM_SHARED_DATA, else ../shared/data from the working directory."""
    return Path(os.environ.get("SKYLOOM_SHARED_DATA", "../shared/data"))


@dataclass
class Documents:
    """Texts (from text files) or token ids (from a token-shard directory) of one evaluation set."""

    source: Path
    texts: list[str] | None = None
    token_ids: list[list[int]] | None = None
    meta: dict[str, Any] = dc_field(default_factory=dict)
    shards: Any = None  # the TokenSource token_ids came from: its tokenizer and vocabulary are checked against a model

    def __len__(self) -> int:
        return len(self.texts if self.texts is not None else self.token_ids or [])


def record_text(record: Any, field: str | None, where: str, joiner: str = QA_JOINER) -> str:
    """The text of one record: `field`, else `text`, else question + joiner + answer."""
    if isinstance(record, str) and field is None:
        return record
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if field is not None:
        if field not in record:
            raise ValueError(f"{where}: no field {field!r} (fields: {', '.join(map(str, record))})")
        value = record[field]
    elif "text" in record:
        value = record["text"]
    elif "question" in record and "answer" in record:
        value = f"{record['question']}{joiner}{record['answer']}"
    else:
        raise ValueError(
            f"{where}: no 'text' field and no 'question'/'answer' pair "
            f"(fields: {', '.join(map(str, record))}); pass the field name"
        )
    if not isinstance(value, str):
        raise ValueError(f"{where}: field value is {type(value).__name__}, not text")
    return value


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed record) for every non-blank line; bad JSON, bad UTF-8 or a damaged .gz names
    file:line (`tokenizer.corpus.iter_records`)."""
    return iter_records(path)


def read_texts(
    path: str | Path, field: str | None = None, limit: int | None = None, joiner: str = QA_JOINER
) -> list[str]:
    """Documents of a .jsonl(.gz) / .json / .txt file (a .txt file is one document)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {p}")
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    texts: list[str] = []
    if name.endswith(".jsonl"):
        for number, record in iter_jsonl(p):
            texts.append(record_text(record, field, f"{p}:{number}", joiner))
            if limit is not None and len(texts) >= limit:
                break
    elif name.endswith(".json"):
        try:
            payload = json.loads(read_text_file(p))
        except json.JSONDecodeError as err:
            raise ValueError(f"{p}:{err.lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(payload, list):
            raise ValueError(f"{p}: expected a JSON list of records")
        for i, record in enumerate(payload[:limit] if limit else payload):
            texts.append(record_text(record, field, f"{p}[{i}]", joiner))
    else:
        texts = [read_text_file(p)]
    if not texts:
        raise ValueError(f"{p}: no documents")
    return texts


def read_documents(path: str | Path, field: str | None = None, limit: int | None = None) -> Documents:
    """Text documents from a file, or token ids from a skyloom token-shard directory (with index.json)."""
    p = Path(path)
    if p.is_dir():
        if not (p / "index.json").is_file():
            raise ValueError(f"{p}: a directory must be a skyloom token-shard directory (index.json)")
        from skyloom.data.shards import TokenSource

        source = TokenSource(p)
        docs: list[list[int]] = []
        for doc in source.documents():
            docs.append([int(t) for t in doc])
            if limit is not None and len(docs) >= limit:
                break
        return Documents(
            p, token_ids=docs, meta={"tokenizer": source.index.get("tokenizer"), "eos_id": source.eos_id}, shards=source
        )
    return Documents(p, texts=read_texts(p, field, limit))
