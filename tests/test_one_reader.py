"""Every JSON-lines reader goes through `tokenizer.corpus` (the one document reader): gzip is looked through and a
bad line is an `InputError` naming FILE:LINE, whether the file holds pretraining text, SFT chats or math problems."""

import gzip
import json

import pytest

from skyloom.eval.math import read_math_problems
from skyloom.sft.data import read_conversations
from skyloom.tokenizer.corpus import InputError

PROBLEM = {"question": "1+1?", "answer": "#### 2"}
CHAT = {"instruction": "say hi", "output": "hi"}


def _write(path, records, extra=b""):
    data = b"".join(json.dumps(r).encode() + b"\n" for r in records) + extra
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


@pytest.mark.parametrize("read, record", [(read_math_problems, PROBLEM), (read_conversations, CHAT)])
def test_gzipped_json_lines_are_read(tmp_path, read, record):
    assert len(read(_write(tmp_path / "set.jsonl.gz", [record] * 3))) == 3


@pytest.mark.parametrize("read, record", [(read_math_problems, PROBLEM), (read_conversations, CHAT)])
@pytest.mark.parametrize("bad, message", [(b"{not json\n", "not valid JSON"), (b'{"x": "\xff"}\n', "not valid UTF-8")])
def test_a_bad_line_names_file_and_line(tmp_path, read, record, bad, message):
    path = _write(tmp_path / "set.jsonl", [record] * 2, extra=b"\n" + bad)
    with pytest.raises(InputError, match=rf"set\.jsonl:4: {message}"):
        read(path)
