"""The characters row of an extension: full-width digits and letters (１９９８, ＧＤＰ) become entries, each set of ten
digits whole, so Chinese news no longer falls back to 3 byte tokens per digit (issue 18 item 4a).

A tiny English base is extended with a few lines of Chinese; no shared data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from skyloom.tokenizer import TextTokenizer
from skyloom.tokenizer.chinese import whole_digit_sets
from skyloom.tokenizer.text import is_chinese_char_or_symbol, is_fullwidth_form
from skyloom.tokenizer.train import TrainSettings, train_tokenizer

ZH = [
    "１９９８年１月１日，新华社北京电：中国经济发展很快，ＧＤＰ增长了百分之八。",
    "人民日报（２０００年）报道：今天北京天气很好，我们去公园散步。",
    "经济发展和人民生活水平提高，ＣＰＵ价格下降。",
]
EN = ["The quick brown fox jumps over the lazy dog in 1998.", "Economic growth was strong, the report said."]
MIXED = "１９９８年３月７日，ＧＤＰ增长５．６％ GDP grew 5.6% in 1998（人民日报）：ＣＰＵ　价格。\n"
FULLWIDTH_DIGITS = "０１２３４５６７８９"  # ３-８ never occur in ZH: they come with the set


def _write(path: Path, docs: list[str]) -> str:
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return str(path)


def _settings(tmp: Path, out: str, **extra) -> TrainSettings:
    """70 characters/symbols + 26 words on a 304-entry English base (which holds no full-width form)."""
    return TrainSettings(
        inputs=[str(tmp / "zh.jsonl")],
        out=str(tmp / out),
        extend=str(tmp / "base"),
        total=400,
        chinese_chars=70,
        reserved=0,
        workers=1,
        progress=False,
        **extra,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("fullwidth")
    _write(tmp / "zh.jsonl", ZH * 3)
    base = TrainSettings(
        inputs=[_write(tmp / "en.jsonl", EN * 4)], out=str(tmp / "base"), total=304, base_size=300, chinese_chars=0
    )
    base.reserved, base.workers, base.progress = 4, 1, False
    train_tokenizer(base)
    for name, extra in {
        "default": {},
        "runs": {"word_rank": "bpe-runs"},
        "former": {"fullwidth_chars": False},
    }.items():
        train_tokenizer(_settings(tmp, name, **extra))
    return tmp


def test_fullwidth_forms_are_candidates_ascii_and_halfwidth_are_not():
    assert all(is_fullwidth_form(c) and is_chinese_char_or_symbol(c) for c in "１Ａｚ（：\u3000")
    assert not any(is_fullwidth_form(c) for c in "1A中ｱ")  # ASCII, Han (wide, not full-width), half-width kana
    assert not is_chinese_char_or_symbol("１", fullwidth=False) and is_chinese_char_or_symbol("，", fullwidth=False)


def test_a_seen_digit_brings_its_whole_set_of_ten():
    counts = whole_digit_sets(Counter({"１": 5, "９": 3, "中": 7, "1": 9, "٣": 2}), is_chinese_char_or_symbol)
    assert {d: counts[d] for d in FULLWIDTH_DIGITS} == dict.fromkeys(FULLWIDTH_DIGITS, 8)
    assert counts["中"] == 7 and counts["1"] == 9 and counts["٣"] == 2  # ASCII, and a digit set `keep` refuses
    assert "０" not in whole_digit_sets(Counter({"１": 5}), lambda c: c != "０")


@pytest.mark.parametrize("name", ["default", "runs"])
def test_fullwidth_digits_and_letters_are_single_tokens_and_text_round_trips(built, name):
    tok = TextTokenizer.from_dir(built / name)
    for ch in FULLWIDTH_DIGITS + "ＧＤＰＣＵ":
        assert len(tok.encode(ch)) == 1, ch
    ids = tok.encode(MIXED)
    assert tok.decode(ids) == MIXED and tok.encode_batch([MIXED, MIXED]) == [ids, ids]
    pieces = [tok.tokenizer.id_to_token(i) for i in ids]
    assert [p for p in pieces if any(is_fullwidth_form(c) and c.isdigit() for c in p)] == list("１９９８３７５６")
    seen = set("".join(ZH))  # a character of the corpus never falls back to bytes; ．％ and the space may
    assert all(tok.tokenizer.token_to_id(c) is not None for c in seen if is_chinese_char_or_symbol(c))
    breakdown = json.loads((built / name / "vocab_breakdown.json").read_text(encoding="utf-8"))
    assert breakdown["settings"]["fullwidth_chars"] is True


def test_the_former_choice_stays_reproducible_and_leaves_fullwidth_digits_to_bytes(built):
    tok = TextTokenizer.from_dir(built / "former")
    ids = tok.encode("１")
    assert [tok.tokenizer.id_to_token(i) for i in ids] == ["<0xEF>", "<0xBC>", "<0x91>"] and tok.decode(ids) == "１"
    assert tok.decode(tok.encode(MIXED)) == MIXED
    breakdown = json.loads((built / "former" / "vocab_breakdown.json").read_text(encoding="utf-8"))
    assert breakdown["settings"]["fullwidth_chars"] is False and breakdown["rows"][1]["size"] == 70


def test_the_build_does_not_depend_on_the_process(built, tmp_path):
    """Same inputs, another interpreter with another hash seed: the same tokenizer.json, byte for byte."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path\n"
        "from tests.test_tokenizer_extend_chars import _settings\n"
        "from skyloom.tokenizer.train import train_tokenizer\n"
        "s = _settings(Path(sys.argv[2]), 'again', word_rank='bpe-runs')\n"
        "s.out = sys.argv[3]; train_tokenizer(s)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONHASHSEED": "12345", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code, str(root), str(built), str(tmp_path / "again")], check=True, env=env)
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (built / "runs" / "tokenizer.json").read_bytes()


def test_jieba_list_weighs_as_much_as_the_corpus_words():
    from skyloom.tokenizer.chinese import Frequencies
    from skyloom.tokenizer.train import _jieba_list

    listed = _jieba_list(Frequencies(words=Counter({"中国": 30, "经济": 10})), freq_list_weight=2.0)
    assert 2.0 * sum(c for w, c in listed.items() if len(w) > 1) == pytest.approx(40)
    assert listed["的"] > listed["中国"] > 0  # characters come with it
    assert _jieba_list(Frequencies(), 1.0) == Counter()  # nothing counted: nothing to scale to


def test_extend_with_jieba_list_from_the_command_line(built, tmp_path):
    """`--jieba-list`: characters the corpus lacks come ranked from jieba's list, not from the unranked fill."""
    from skyloom.cli import main

    rows = {}
    for name, extra in (("plain", []), ("listed", ["--jieba-list"])):
        out = tmp_path / name
        argv = ["tokenizer", "extend", str(built / "base"), str(built / "zh.jsonl"), "--out", str(out), "-q"]
        assert (
            main([*argv, "--total", "420", "--chinese-chars", "90", "--reserved", "0", "--workers", "1", *extra]) == 0
        )
        breakdown = json.loads((out / "vocab_breakdown.json").read_text(encoding="utf-8"))
        assert breakdown["settings"]["jieba_list"] is bool(extra) and breakdown["rows"][1]["size"] == 90
        rows[name] = breakdown["rows"][1]
    assert rows["plain"]["from_frequency_list"] == 0 and rows["plain"]["from_jieba_fill"] > 0
    assert rows["listed"]["from_frequency_list"] > 0 and rows["listed"]["from_jieba_fill"] == 0
    tok = TextTokenizer.from_dir(tmp_path / "listed")
    assert tok.decode(tok.encode(MIXED)) == MIXED and len(tok.encode("１９９８")) == 4
