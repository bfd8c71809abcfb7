"""Rebuild tests/data/ from the full real data: each file a byte-exact prefix of its source.

Usage: `.venv/bin/python tests/data/make_fixtures.py [SOURCE]` (SOURCE defaults to ../shared/data).
Text and JSON-lines files keep their first lines; JSON arrays and objects keep their first records (the bytes
of the source up to the end of record N, then the closing bracket); benchmark folders keep their first subject
files (sorted by name); the extraction pages are the first ones by file name. The slices are just big enough
for what the tests read — change SLICES and the tests together. See tests/data/README.md for sources/licences.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (relative path, how to cut, how much): "lines" = first N lines, "chars+article" = whole lines up to the
# WikiText article boundary after N characters, "array" = first N records of a one-line JSON list,
# "subjects" = first N files of a folder (sorted), "pages" = first N extraction pages and their ground truth.
SLICES: list[tuple[str, str, int]] = [
    ("wikitext2/valid.txt", "chars+article", 300_000),
    ("wikitext2/test.txt", "chars+article", 200_000),
    ("gsm8k/train.jsonl", "lines", 500),
    ("gsm8k/test.jsonl", "lines", 200),
    ("skywork/pt_train.jsonl", "lines", 200),
    ("skywork/mock_gsm8k_test_public.jsonl", "lines", 150),
    ("skywork/alpaca_data_zh_51k_sample_1k.jsonl", "lines", 200),
    ("skywork/zh_tech.jsonl", "lines", 12),
    ("skywork/zh_movie.jsonl", "lines", 40),
    ("skywork/zh_government.jsonl", "lines", 16),
    ("skywork/zh_game.jsonl", "lines", 12),
    ("skywork/zh_finance.jsonl", "lines", 12),
    ("skywork/zh_general.jsonl", "lines", 24),
    ("cmrc2018/cmrc2018_dev.json", "array", 40),
    ("cmrc2018/cmrc2018_trial.json", "array", 40),
    ("ceval/dev", "subjects", 38),
    ("ceval/val", "subjects", 38),
    ("cmmlu/dev", "subjects", 30),
    ("cmmlu/test", "subjects", 4),
    ("extraction", "pages", 13),
    ("tokenizers/mistral-7b-v0.1.model", "whole", 0),
]
LICENSES = ["wikitext2", "gsm8k", "skywork", "cmrc2018", "ceval", "extraction", "tokenizers"]
WIKITEXT_HEADING = re.compile(r"^ = [^=].* = $")


def first_lines(src: Path, n: int) -> bytes:
    with open(src, "rb") as f:
        return b"".join(line for _, line in zip(range(n), f))


def wikitext_prefix(src: Path, min_chars: int) -> bytes:
    """Whole lines until `min_chars` characters are in, then on to the next article heading (articles stay whole)."""
    out, chars = [], 0
    with open(src, encoding="utf-8", newline="") as f:
        for line in f:
            if chars >= min_chars and WIKITEXT_HEADING.match(line.rstrip("\n")):
                break
            out.append(line)
            chars += len(line)
    return "".join(out).encode("utf-8")


def json_array_prefix(src: Path, n: int) -> bytes:
    """The source bytes of a one-line JSON list up to the end of record n, then `]`."""
    raw = src.read_bytes()
    starts = [m.start() for m in re.finditer(rb', \{"context_id": ', raw)]
    out = raw[:starts[n - 1]] + b"]"
    assert json.loads(out) == json.loads(raw)[:n], src
    return out


def extraction_prefix(src: Path, dst: Path, n: int) -> None:
    """The first n pages (by file name), and ground-truth.json cut after their entries (it is sorted by key)."""
    pages = sorted((src / "html").glob("*.html.gz"))[:n]
    (dst / "html").mkdir(parents=True, exist_ok=True)
    for p in pages:
        shutil.copyfile(p, dst / "html" / p.name)
    raw = (src / "ground-truth.json").read_bytes()
    full = json.loads(raw)
    keys = [p.name.split(".")[0] for p in pages]
    assert list(full)[:n] == keys, "ground-truth.json is not in file-name order"
    cut = raw.index(b',\n "' + list(full)[n].encode() + b'"')
    out = raw[:cut] + b"\n}"
    assert json.loads(out) == {k: full[k] for k in keys}
    (dst / "ground-truth.json").write_bytes(out)


def build(source: Path, target: Path = HERE) -> None:
    for rel, how, n in SLICES:
        src, dst = source / rel, target / rel
        if how == "subjects":
            dst.mkdir(parents=True, exist_ok=True)
            for p in sorted(src.glob("*.csv"))[:n]:
                shutil.copyfile(p, dst / p.name)
            continue
        if how == "pages":
            extraction_prefix(src, dst, n)
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if how == "whole":
            shutil.copyfile(src, dst)
        elif how == "lines":
            dst.write_bytes(first_lines(src, n))
        elif how == "chars+article":
            dst.write_bytes(wikitext_prefix(src, n))
        elif how == "array":
            dst.write_bytes(json_array_prefix(src, n))
        assert src.read_bytes().startswith(dst.read_bytes().removesuffix(b"]")), rel
    for folder in LICENSES:
        shutil.copyfile(source / folder / "LICENSE", target / folder / "LICENSE")


if __name__ == "__main__":
    build(Path(sys.argv[1] if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "data"))
