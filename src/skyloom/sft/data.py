"""Instruction data → conversations → token samples with a per-token trainable mask.

Accepted JSONL records (the format is detected per record; errors name file and line):
* Alpaca:   {"instruction", "input" (optional), "output"} — the input follows the instruction after a blank line;
* messages: {"messages": [{"role": "system"|"user"|"assistant", "content": …}, …]} — every assistant turn is trained;
* GSM8K:    {"question", "answer"} (also SkyMath's own generated data);
* pairs:    {"prompt", "completion"}.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from skyloom.tokenizer.chat import Message, TemplateEncoder
from skyloom.tokenizer.corpus import iter_records


@dataclass
class Sample:
    """One encoded conversation: token ids and which of them carry a loss (the answer tokens)."""

    ids: list[int]
    trainable: list[bool]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_targets(self) -> int:
        """Tokens predicted with a loss: position t predicts ids[t+1], trained where trainable[t+1]."""
        return sum(self.trainable[1:])


def record_to_messages(record: object, where: str) -> list[Message]:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        msgs = record["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError(f"{where}: 'messages' must be a non-empty list")
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"{where}: messages[{i}] needs string 'role' and 'content'")
            out.append(Message(m["role"], m["content"]))
        return out
    if "instruction" in record and "output" in record:
        prompt = str(record["instruction"]).strip()
        extra = str(record.get("input") or "").strip()
        if extra:
            prompt = f"{prompt}\n\n{extra}"
        return [Message("user", prompt), Message("assistant", str(record["output"]))]
    for q, a in (("question", "answer"), ("prompt", "completion")):
        if q in record and a in record:
            return [Message("user", str(record[q])), Message("assistant", str(record[a]))]
    raise ValueError(
        f"{where}: unknown record format (fields: {', '.join(map(str, record))}); expected "
        "instruction/output, messages, question/answer or prompt/completion"
    )


def read_conversations(path: str | Path, limit: int | None = None) -> list[list[Message]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such SFT data file")
    out = []
    for number, record in iter_records(path):  # bad JSON / UTF-8, a damaged .gz: InputError naming FILE:LINE
        out.append(record_to_messages(record, f"{path}:{number}"))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise ValueError(f"{path}: no records")
    return out


def encode_conversations(
    encoder: TemplateEncoder, conversations: Iterable[Sequence[Message]], max_len: int
) -> tuple[list[Sample], int]:
    """Samples of at most `max_len` tokens (longer ones are cut at the end); returns (samples, number cut).
    Conversations with no trainable token left after cutting are dropped."""
    samples, cut = [], 0
    for messages in conversations:
        ids, trainable = encoder.encode(messages)
        if len(ids) > max_len:
            cut += 1
            ids, trainable = ids[:max_len], trainable[:max_len]
        if any(trainable[1:]):
            samples.append(Sample(ids, trainable))
    return samples, cut
