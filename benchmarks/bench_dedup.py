"""Near-duplicate detection (MinHash-LSH, datatrove stages, skyloom shingles): precision / recall on an injected
duplicate set built from real English and Chinese text, and documents per second on one core.

    .venv/bin/python benchmarks/bench_dedup.py [--copies 0.25] [--seed 0]

Distinct base documents: WikiText articles, CMRC 2018 passages, the Skywork Chinese domain sets, GSM8K train
items (templated and alike — hard negatives) and FewCLUE ChID passages. A share of them gets copies with one
kind of edit each: 2 / 5 / 10 % of words (or characters, for Chinese) replaced, a piece of another document
(≤ 200 characters, ≤ 20 % of the text) prepended, the last 10 % cut, or only case/spacing/punctuation changed. Truth: each family keeps
exactly one member. A dropped document is a true positive if its family still has a kept member and at most
size-1 members of the family are dropped; drops of non-injected documents are false positives (reported
with examples, since the sources may hold real duplicates).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EDITS = ("replace_2pct", "replace_5pct", "replace_10pct", "prepend_paragraph", "truncate_10pct", "case_space_punct")


def _is_cjk(text: str) -> bool:
    return sum("\u4e00" <= c <= "\u9fff" for c in text[:500]) > 50


def edit(text: str, kind: str, other: str, rng: random.Random) -> str:
    if kind.startswith("replace_"):
        rate = int(kind.split("_")[1].removesuffix("pct")) / 100
        if _is_cjk(text):
            chars = list(text)
            for i in rng.sample(range(len(chars)), max(1, int(rate * len(chars)))):
                chars[i] = rng.choice(
                    "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动"
                )
            return "".join(chars)
        words = text.split(" ")
        for i in rng.sample(range(len(words)), max(1, int(rate * len(words)))):
            words[i] = rng.choice(["the", "a", "new", "very", "said", "however", "also", "more", "was", "it"])
        return " ".join(words)
    if kind == "prepend_paragraph":  # a paragraph-sized piece of another document: ≤ 200 chars, ≤ 20 % of text
        para = max(other.split("\n"), key=len)[: min(200, len(text) // 5)]
        return para + "\n" + text
    if kind == "truncate_10pct":
        return text[: int(len(text) * 0.9)]
    return re.sub(r"\s+", "  ", text.upper() if not _is_cjk(text) else text).replace("，", ",").replace(". ", "! ")


def base_documents(shared: Path) -> list[tuple[str, str]]:
    from skyloom.data.pipeline.readers import detokenize_wikitext

    docs = []
    for split in ("valid", "test"):
        raw = (shared / "wikitext2" / f"{split}.txt").read_text(encoding="utf-8")
        docs += [("wikitext", detokenize_wikitext(a)) for a in re.split(r"\n(?= = [^=].* = \n)", raw) if a.strip()]
    for split in ("dev", "trial"):
        docs += [
            ("cmrc", d["context_text"])
            for d in json.loads((shared / "cmrc2018" / f"cmrc2018_{split}.json").read_text())
        ]
    for f in sorted((shared / "skywork").glob("zh_*.jsonl")):
        docs += [("zh_web", json.loads(line)["text"]) for line in open(f, encoding="utf-8")]
    with open(shared / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= 2000:
                break
            r = json.loads(line)
            docs.append(("gsm8k", r["question"] + "\n" + r["answer"]))
    with open(shared / "fewclue_zh" / "chid" / "test_public.json", encoding="utf-8") as f:
        docs += [("chid", json.loads(line)["content"]) for line in f]
    # sources can hold verbatim repeats; keep the first of each so the base set is distinct
    seen, out = set(), []
    for src, t in docs:
        key = re.sub(r"\s+", " ", t.strip().lower())
        if key and key not in seen:
            seen.add(key)
            out.append((src, t))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=os.environ.get("SKYLOOM_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    ap.add_argument("--copies", type=float, default=0.25, help="share of base documents that get a copy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary run directory")
    ap.add_argument(
        "--lsh",
        nargs="+",
        default=["14x8", "20x5"],
        help="MinHash band×rows settings to compare (14x8 is datatrove's/FineWeb's default)",
    )
    args = ap.parse_args()

    from loguru import logger

    logger.remove()
    rng = random.Random(args.seed)
    base = base_documents(Path(args.shared))
    records, family, kind_of = [], {}, {}
    for i, (src, text) in enumerate(base):
        records.append({"id": f"b{i}", "text": text, "src": src})
        family[f"b{i}"] = i
    picked = rng.sample(range(len(base)), int(args.copies * len(base)))
    for n, i in enumerate(picked):
        kind = EDITS[n % len(EDITS)]
        other = base[rng.randrange(len(base))][1]
        cid = f"c{n}"
        records.append({"id": cid, "text": edit(base[i][1], kind, other, rng), "src": base[i][0]})
        family[cid], kind_of[cid] = i, kind
    rng.shuffle(records)
    print(
        f"{len(base):,} distinct base documents + {len(picked):,} edited copies = {len(records):,} documents; "
        f"MinHash on 5-gram shingles of words (English) / characters (Chinese)\n"
    )
    for lsh in args.lsh:
        bands, rows = (int(x) for x in lsh.split("x"))
        kept, seconds = run_once(records, bands, rows, args.keep)
        report(kept, seconds, records, family, kind_of, base, bands, rows)


def run_once(records, bands: int, rows: int, keep: bool) -> tuple[set[str], float]:
    from skyloom.data.pipeline.config import load_pipeline_config
    from skyloom.data.pipeline.runner import run_pipeline

    tmp = Path(tempfile.mkdtemp(prefix="bench_dedup_"))
    try:
        (tmp / "in").mkdir()
        with open(tmp / "in" / "docs.jsonl", "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps({"id": r["id"], "text": r["text"], "src": r["src"]}, ensure_ascii=False) + "\n")
        cfg = load_pipeline_config(
            {
                "output_dir": str(tmp / "out"),
                "executor": {"tasks": 1, "workers": 1},
                "inputs": [{"path": str(tmp / "in"), "format": "jsonl", "source": "bench"}],
                "steps": [{"type": "minhash_dedup", "num_buckets": bands, "hashes_per_bucket": rows}],
            }
        )
        _t0, c0 = time.perf_counter(), time.process_time()
        devnull = open(os.devnull, "w")
        stdout, stderr, sys.stdout, sys.stderr = sys.stdout, sys.stderr, devnull, devnull  # datatrove's logs
        try:
            run_pipeline(cfg, quiet=True)
        finally:
            sys.stdout, sys.stderr = stdout, stderr
        seconds = time.process_time() - c0  # CPU time: one core, robust to a shared machine's load
        kept = set()
        for f in (tmp / "out" / "main").glob("*.jsonl.gz"):
            kept |= {json.loads(line)["id"] for line in gzip.open(f, "rt", encoding="utf-8")}
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return kept, seconds


def report(kept, seconds, records, family, kind_of, base, bands, rows) -> None:
    members: dict[int, list[str]] = defaultdict(list)
    for rid, fam in family.items():
        members[fam].append(rid)
    expected = sum(len(m) - 1 for m in members.values())
    tp = fp = 0
    caught_by_kind: Counter = Counter()
    fp_examples = []
    for fam, ids in members.items():
        dropped = [r for r in ids if r not in kept]
        if len(ids) == 1:
            fp += len(dropped)
            if dropped and len(fp_examples) < 3:
                fp_examples.append(base[fam][0] + ": " + base[fam][1][:80].replace("\n", " "))
            continue
        good = min(len(dropped), len(ids) - 1)
        tp += good
        fp += len(dropped) - good
        if dropped:
            copy = next(r for r in ids if r.startswith("c"))
            caught_by_kind[kind_of[copy]] += 1
    per_kind = Counter(kind_of.values())
    precision = tp / max(1, tp + fp)
    recall = tp / max(1, expected)
    threshold = (1 / bands) ** (1 / rows)
    print(f"## {bands} bands × {rows} rows (50 % detection at Jaccard ≈ {threshold:.2f})")
    print(
        f"precision {precision:.4f}  recall {recall:.4f}  (true drops {tp:,}, false drops {fp:,}, "
        f"expected drops {expected:,})"
    )
    print("recall per edit: " + ", ".join(f"{k} {caught_by_kind[k] / per_kind[k]:.3f}" for k in EDITS))
    print(
        f"speed: {len(records) / seconds:,.0f} documents/s on one core "
        f"({seconds:.1f} CPU s for all four stages, {sum(len(r['text']) for r in records) / seconds / 1e6:.2f} "
        f"M chars/s)"
    )
    if fp_examples:
        print("dropped non-injected documents (source near-duplicates or false positives), e.g.:")
        for e in fp_examples:
            print("   ", e)
    print()


if __name__ == "__main__":
    main()
