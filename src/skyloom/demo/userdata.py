"""`skyloom demo --data DIR`: the demo's corpus from the user's files, or from `../shared/data`-style inputs.

Either way the result has the starter corpus's layout (`raw/<domain>.jsonl`, `heldout/<domain>.jsonl`,
`manifest.json`), so every later phase is the same.

- **shared-data layout** (a directory with `wikitext2/`, `gsm8k/`, `skywork/`, `fewclue_zh/`): English Wikipedia
  (WikiText-2 validation) and Chinese novels/news (FewCLUE ChID) are trained on with hash-split held-out parts;
  GSM8K train is the STEM source. The Table-6 perplexities use the Skywork authors' own Chinese domain sets
  (`skywork/zh_*.jsonl`, never trained on) and Table 8 uses GSM8K train (the trained records), GSM8K test and
  the authors' GPT-4-written reference set — the report's own setting.
- **any other directory**: every `.jsonl` / `.json` / `.txt` file (recursively) is one domain named after the file
  (JSON lines: field `text`, or question + answer). A domain named like `stem`, `math` or `gsm8k` is the STEM
  source candidate (the pipeline's STEM split decides in the end). Table 8 runs when `DIR/leakage/` holds
  `train.jsonl`, `test.jsonl` and `ref.jsonl`; otherwise the report says it was skipped and why.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from skyloom.demo.corpus import _take, _write_jsonl, split_heldout

SHARED_MARKERS = ("wikitext2", "gsm8k", "skywork", "fewclue_zh")
STEM_NAME = re.compile(r"stem|math|gsm", re.I)


def is_shared_layout(path: Path) -> bool:
    """All four shared-data folders: the shared layout. Two or three of them: a shared-data copy with a folder
    missing (or misspelt) — refused, rather than silently read as "any other directory" of user files."""
    present = [m for m in SHARED_MARKERS if (path / m).is_dir()]
    if 2 <= len(present) < len(SHARED_MARKERS):
        missing = [m for m in SHARED_MARKERS if m not in present]
        raise FileNotFoundError(
            f"--data {path}: looks like the shared-data layout ({', '.join(present)}) but lacks "
            f"{', '.join(missing)}/; add it, or give a directory of your own files"
        )
    return len(present) == len(SHARED_MARKERS)


def _read(path: Path, limit_chars: int, text_keys: tuple[str, ...] = ("text", "content")) -> list[str]:
    """Documents of one file: `.txt` = one document per blank-line-separated block when it is large, JSON lines
    or a JSON list of records (first of `text_keys`, else question + answer)."""
    from skyloom.eval.textdata import read_texts

    if path.suffix == ".txt":
        text = path.read_text(encoding="utf-8", errors="replace")
        blocks = [b.strip() for b in re.split(r"\n\s*\n", text) if len(b.strip()) > 200]
        docs = blocks if len(blocks) > 1 else [text]
    else:
        docs = []
        for key in text_keys:
            try:
                docs = read_texts(path, key)
                break
            except ValueError:
                continue
        if not docs:
            docs = read_texts(path, None)  # question + answer records
    return _take([d for d in docs if d.strip()], limit_chars)


def _json_lines(path: Path, key: str) -> list[str]:
    """One record per line (FewCLUE's `.json` files are JSON lines); errors name the file and line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)[key]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{n}: expected a JSON object with a {key!r} field ({err})") from None
            if isinstance(text, str) and text.strip():
                out.append(text.strip())
    return out


def wikitext_articles(path: Path) -> list[str]:
    """WikiText's tokenised articles (split at ' = Title = ' lines), with ' @-@ ' and friends undone."""
    text = path.read_text(encoding="utf-8")
    parts = re.split(r"\n (?== [^=].* = \n)", text)
    out = []
    for p in parts:
        p = re.sub(r" @(.)@ ", r"\1", p).replace(" , ", ", ").replace(" . ", ". ").strip()
        if len(p) > 500:
            out.append(p)
    return out


def build_from_shared(data: Path, out: Path, chars: int, heldout_fraction: float = 0.08) -> dict[str, Any]:
    """The demo corpus from the shared real data (see the module docstring)."""
    from skyloom.eval.textdata import read_texts

    domains = {
        "en_wiki": _take(wikitext_articles(data / "wikitext2" / "valid.txt"), chars),
        "zh_novels": _take(_json_lines(data / "fewclue_zh" / "chid" / "unlabeled.json", "content"), chars),
    }
    counts: dict[str, dict[str, int]] = {}
    for name, docs in domains.items():
        train, held = split_heldout(docs, heldout_fraction)
        counts[name] = {
            "train": _write_jsonl(out / "raw" / f"{name}.jsonl", train),
            "heldout": _write_jsonl(out / "heldout" / f"{name}.jsonl", held),
        }
    gsm_train = read_texts(data / "gsm8k" / "train.jsonl", None)
    n_stem = max(200, chars // 250)
    counts["stem"] = {"train": _write_jsonl(out / "raw" / "stem.jsonl", gsm_train[:n_stem])}
    held_stem = read_texts(data / "gsm8k" / "test.jsonl", None)[:150]
    counts["stem"]["heldout"] = _write_jsonl(out / "heldout" / "stem.jsonl", held_stem)
    leak = out / "leakage"
    _write_jsonl(leak / "train.jsonl", gsm_train[: min(150, n_stem)])
    _write_jsonl(leak / "test.jsonl", held_stem)
    _write_jsonl(leak / "ref.jsonl", read_texts(data / "skywork" / "mock_gsm8k_test_public.jsonl", None)[:150])
    table6 = {p.stem.removeprefix("zh_"): str(p) for p in sorted((data / "skywork").glob("zh_*.jsonl"))}
    manifest = {
        "source": f"shared data at {data}",
        "domains": sorted(counts),
        "stem_domains": ["stem"],
        "table6": table6 or None,
        "leakage": {k: str(leak / f"{k}.jsonl") for k in ("train", "test", "ref")},
        "leakage_note": "train = GSM8K train records the STEM source holds (trained on in Stage-2), "
        "test = GSM8K test, ref = the Skywork authors' GPT-4-written look-alikes",
        "counts": counts,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def build_from_files(data: Path, out: Path, chars: int, heldout_fraction: float = 0.08) -> dict[str, Any]:
    """The demo corpus from arbitrary user files (see the module docstring)."""
    files = sorted(
        p
        for p in data.rglob("*")
        if p.is_file() and p.suffix in (".jsonl", ".json", ".txt") and "leakage" not in p.relative_to(data).parts
    )
    if not files:
        raise FileNotFoundError(f"{data}: no .jsonl, .json or .txt files to build a corpus from")
    counts: dict[str, dict[str, int]] = {}
    for path in files:
        name = re.sub(r"[^A-Za-z0-9_]+", "_", path.stem).strip("_") or "domain"
        while name in counts:
            name += "_"
        docs = _read(path, chars)  # errors name the file and line
        if len(docs) < 2:
            raise ValueError(f"{path}: needs at least 2 documents (one is held out for validation), got {len(docs)}")
        train, held = split_heldout(docs, heldout_fraction)
        counts[name] = {
            "train": _write_jsonl(out / "raw" / f"{name}.jsonl", train),
            "heldout": _write_jsonl(out / "heldout" / f"{name}.jsonl", held),
        }
    leak_dir = data / "leakage"
    leakage = None
    if all((leak_dir / f"{k}.jsonl").is_file() for k in ("train", "test", "ref")):
        leakage = {k: str(leak_dir / f"{k}.jsonl") for k in ("train", "test", "ref")}
    manifest = {
        "source": f"user files in {data}",
        "domains": sorted(counts),
        "stem_domains": [n for n in counts if STEM_NAME.search(n)],
        "table6": None,
        "leakage": leakage,
        "leakage_note": None if leakage else f"no {leak_dir}/{{train,test,ref}}.jsonl given",
        "counts": counts,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest
