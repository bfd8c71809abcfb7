"""CCNet-style buckets: the Kneser-Ney reference LM (hand-computed oracle), perplexity, cut-offs, the step."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from datatrove.data import Document

from skyloom.config import build
from skyloom.data.pipeline.ccnet import (
    CCNetConfig,
    CCNetModel,
    CCNetModelError,
    cutoffs_from,
    lm_tokens,
    perplexity,
)
from skyloom.data.pipeline.kn_lm import EOS, FALLBACK_DISCOUNTS, KneserNeyLM, estimate_discounts
from tests.test_pipeline_support import write_jsonl

# ------------------------------------------------------------------------------------------- toy text

_EN = {
    "adj": ["old", "large", "northern", "famous", "small", "ancient", "royal", "early"],
    "noun": ["city", "river", "church", "army", "museum", "railway", "school", "bridge"],
    "verb": ["was built near", "was named after", "lies south of", "was founded by", "replaced", "served"],
    "place": ["the valley", "the capital", "the coast", "the old town", "the province", "the harbour"],
}
_ZH = {
    "city": ["北京", "上海", "广州", "南京", "杭州", "成都"],
    "org": ["大学", "博物馆", "图书馆", "医院", "研究所", "铁路局"],
    "act": ["建立了", "扩建了", "管理着", "修复了", "开放了"],
    "obj": ["新的校区", "一座桥梁", "历史建筑", "中心广场", "公共设施"],
}


def en_sentence(r: random.Random) -> str:
    w = {k: r.choice(v) for k, v in _EN.items()}
    return f"The {w['adj']} {w['noun']} {w['verb']} {w['place']} in {r.randint(1800, 1999)}."


def zh_sentence(r: random.Random) -> str:
    w = {k: r.choice(v) for k, v in _ZH.items()}
    return f"{w['city']}的{w['org']}在{r.randint(1950, 2020)}年{w['act']}{w['obj']}。"


def docs_of(make, r: random.Random, n_docs: int, lines: int = 3, per_line: int = 4) -> list[str]:
    return ["\n".join(" ".join(make(r) for _ in range(per_line)) for _ in range(lines)) for _ in range(n_docs)]


def shuffled(text: str, r: random.Random, chars: bool = False) -> str:
    out = []
    for line in text.split("\n"):
        toks = list(line) if chars else line.split()
        r.shuffle(toks)
        out.append(("" if chars else " ").join(toks))
    return "\n".join(out)


def spam(r: random.Random, zh: bool = False) -> str:
    pool = "优惠点击免费下载注册领取红包" if zh else "click free bonus casino win cheap viagra deal"
    toks = list(pool) if zh else pool.split()
    line = ("" if zh else " ").join(r.choice(toks) for _ in range(12))
    return "\n".join([line] * 5)


# ------------------------------------------------------------------------------------------- the LM


def test_kneser_ney_matches_hand_computed_bigram_oracle():
    # <s> a b </s> (three times) | <s> c a </s>; no bigram count is 2 → discounts (0.5, 1, 1.5) at both orders.
    # unigram continuation counts (distinct left neighbours): a 2, b 1, </s> 2, c 1 (raw counts would be 4, 3, 4, 1)
    #   S = 6, gamma = (1 + 0.5 + 1 + 0.5)/6 = 1/2, V = 4 types + unknown = 5:
    #   p1(a) = p1(</s>) = 1/6 + 1/2 · 1/5 = 16/60, p1(b) = p1(c) = 0.5/6 + 1/10 = 11/60, p1(unknown) = 6/60
    # context a: c(a b) = 3, c(a </s>) = 1, S = 4, gamma = (1.5 + 0.5)/4 = 1/2:
    #   p(b|a) = 1.5/4 + 1/2 · 11/60 = 56/120, p(</s>|a) = 0.5/4 + 16/120 = 31/120, p(a|a) = 16/120,
    #   p(c|a) = 11/120, p(unknown|a) = 6/120 (sum 120/120)
    lm = KneserNeyLM.train([["a", "b"], ["a", "b"], ["a", "b"], ["c", "a"]], order=2)
    assert [t.discounts for t in lm.tables] == [FALLBACK_DISCOUNTS] * 2
    assert lm.vocab_size == 5
    expected = {"b": 56, EOS: 31, "a": 16, "c": 11, "x": 6}
    for w, p in expected.items():
        assert lm.prob(w, ["a"]) == pytest.approx(p / 120, rel=1e-12), w
    assert lm.prob("b", ["unseen"]) == pytest.approx(11 / 60, rel=1e-12)  # unseen context: the unigram
    # line "a b": p(a|<s>) = 1.5/4 + 16/120, p(b|a), p(</s>|b) = 1.5/3 + 1/2 · 16/60
    logp, line_of = lm.token_logprobs([["a", "b"]])
    np.testing.assert_allclose(np.exp(logp), [61 / 120, 56 / 120, 76 / 120], rtol=1e-12)
    assert line_of.tolist() == [0, 0, 0]


def test_discounts_follow_chen_goodman_and_fall_back_out_of_range():
    counts = np.array([1, 1, 1, 1, 2, 2, 3, 4])  # n1..n4 = 4, 2, 1, 1 → Y = 1/2
    assert estimate_discounts(counts) == pytest.approx((1 - 2 * 0.5 * 2 / 4, 2 - 3 * 0.5 * 1 / 2, 3 - 4 * 0.5 * 1 / 1))
    assert estimate_discounts(np.array([1, 1, 2])) == FALLBACK_DISCOUNTS  # n3 = 0


@pytest.mark.parametrize("order", [1, 3, 5])
def test_kneser_ney_distributions_sum_to_one_over_the_vocabulary(order):
    r = random.Random(order)
    lines = [[r.choice("abcdefg") for _ in range(r.randint(1, 12))] for _ in range(300)]
    lm = KneserNeyLM.train(lines, order)
    vocab = sorted({t for line in lines for t in line}) + [EOS, "<unknown>"]
    assert lm.vocab_size == len(vocab)
    if order == 3:
        assert lm.tables[-1].discounts != FALLBACK_DISCOUNTS  # estimated from the trigram counts
    for ctx in ([], ["a"], ["b", "c"], ["g", "g", "a", "b"], ["zz", "a"], ["zz", "zz"]):
        total = sum(lm.prob(w, ctx) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-9), (ctx, total)
    # the vectorised scorer gives the same numbers as the one-token lookup
    logp, _ = lm.token_logprobs(lines[:5])
    ref = [math.log(lm.prob(w, line[:i])) for line in lines[:5] for i, w in enumerate([*line, EOS])]
    np.testing.assert_allclose(logp, ref, rtol=1e-12)


# ------------------------------------------------------------------------------------------- perplexity


@pytest.fixture(scope="module")
def en_lm():
    r = random.Random(0)
    return KneserNeyLM.train([lm_tokens(en_sentence(r)) for _ in range(3000)], order=4)


def test_perplexity_orders_reference_like_text_below_shuffled_and_spam(en_lm):
    r = random.Random(1)
    good = docs_of(en_sentence, r, 10)
    bad_shuffled = [shuffled(d, r) for d in good]
    bad_spam = [spam(r) for _ in range(10)]
    ppl = {
        k: [perplexity(en_lm, d) for d in v] for k, v in (("good", good), ("shuf", bad_shuffled), ("spam", bad_spam))
    }
    assert max(ppl["good"]) < min(ppl["shuf"])
    assert max(ppl["shuf"]) < min(ppl["spam"])  # shuffled known words beat unknown words
    assert perplexity(en_lm, "!!! ...\n\n") == math.inf  # nothing to score


def test_cutoffs_are_the_sample_percentiles():
    sample = [float(x) for x in range(1, 101)] + [math.inf]  # an empty document is not counted
    assert cutoffs_from(sample, 30, 60) == [float(np.percentile(range(1, 101), 30)), 60.4]
    with pytest.raises(ValueError, match="no scorable"):
        cutoffs_from([math.inf], 30, 60)


# ------------------------------------------------------------------------------------------- model file + step


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Model trained through the step's `train:` option (English + Chinese), and the sample documents."""
    from skyloom.data.pipeline.builder import step_types

    d = tmp_path_factory.mktemp("ccnet")
    r = random.Random(2)
    inputs = {}
    for lang, make in (("en", en_sentence), ("zh", zh_sentence)):
        ref = write_jsonl(d / f"{lang}_ref.jsonl", [{"text": t} for t in docs_of(make, r, 300)])
        good = docs_of(make, r, 30)
        sample = good + [shuffled(t, r, chars=lang == "zh") for t in good[:20]] + [spam(r, lang == "zh")] * 10
        path = write_jsonl(d / f"{lang}_sample.jsonl", [{"text": t} for t in sample])
        inputs[lang] = {"reference": [{"path": str(ref), "format": "jsonl"}], "sample": [{"path": str(path)}]}
        inputs[lang]["texts"] = sample
    train = {
        "order": 3,
        "languages": {k: {"reference": v["reference"], "sample": v["sample"]} for k, v in inputs.items()},
    }
    cfg = build(
        CCNetConfig, {"model": str(d / "ccnet.safetensors"), "keep_buckets": ["head", "middle"], "train": train}
    )
    step = step_types()["ccnet"].make(cfg)  # trains: the model file did not exist
    return cfg, step, {k: v["texts"] for k, v in inputs.items()}


def test_model_round_trip_keeps_tables_cutoffs_and_scores(trained, tmp_path):
    cfg, _, texts = trained
    model = CCNetModel.load(cfg.model)
    assert set(model.languages) == {"en", "zh"}
    again = CCNetModel.load(model.save(tmp_path / "copy.safetensors"))
    for lang, m in model.languages.items():
        m2 = again.languages[lang]
        assert m2.cutoffs == m.cutoffs and m2.lm.vocab_size == m.lm.vocab_size and m2.lm.order == 3
        for t, t2 in zip(m.lm.tables, m2.lm.tables):
            assert np.array_equal(t.keys, t2.keys) and np.array_equal(t.alpha, t2.alpha)
            assert np.array_equal(t.ctx_keys, t2.ctx_keys) and np.array_equal(t.gamma, t2.gamma)
            assert t.discounts == t2.discounts
        assert [again.perplexity(x, lang) for x in texts[lang]] == [model.perplexity(x, lang) for x in texts[lang]]
        # cut-offs: the 30th / 60th percentiles of the sample's perplexities
        assert m.cutoffs == cutoffs_from([model.perplexity(x, lang) for x in texts[lang]], 30, 60)


def test_step_tags_buckets_drops_tail_and_the_funnel_balances(trained, tmp_path):
    from skyloom.data.pipeline.base import Accounted
    from skyloom.data.pipeline.builder import step_types

    cfg, step, texts = trained
    docs = [
        Document(text=t, id=f"{lang}{i}", metadata={"language": lang, "source": "web"})
        for lang in ("en", "zh")
        for i, t in enumerate(texts[lang])
    ]
    docs.append(Document(text="Bonjour tout le monde, voici une page.", id="fr", metadata={"language": "fr"}))
    kept = list(Accounted(step, "ccnet", str(tmp_path), "ccnet").run(iter(docs)))
    tagged = [d for d in docs if "ccnet_bucket" in d.metadata]
    assert len(tagged) == len(docs) - 1 and "ccnet_bucket" not in docs[-1].metadata  # no French LM: kept, untagged
    assert docs[-1] in kept
    for lang in ("en", "zh"):
        mine = [d for d in tagged if d.metadata["language"] == lang]
        buckets = [d.metadata["ccnet_bucket"] for d in mine]
        n = len(mine)
        assert abs(buckets.count("head") - 0.3 * n) <= 1 and buckets.count("tail") >= 0.35 * n
        assert all(d.metadata["ccnet_bucket"] == "tail" for d in mine[-10:])  # spam repeats
        assert all(d.metadata["ccnet_bucket"] != "tail" for d in mine[:20])  # reference-like text
        ppl = [d.metadata["ccnet_perplexity"] for d in mine]
        cut = CCNetModel.load(cfg.model).languages[lang].cutoffs
        assert all((p <= cut[1]) == (b != "tail") for p, b in zip(ppl, buckets))
    assert [d for d in kept if d.metadata.get("ccnet_bucket") == "tail"] == []
    funnel = json.loads((tmp_path / "00000_ccnet.json").read_text())
    n_tail = sum(d.metadata.get("ccnet_bucket") == "tail" for d in docs)
    for key, cell in funnel["cells"].items():
        dropped = sum(v["docs"] for v in cell["dropped"].values())
        assert cell["docs_in"] == cell["docs_out"] + dropped, key
    assert sum(c["dropped"].get("ccnet_tail", {}).get("docs", 0) for c in funnel["cells"].values()) == n_tail
    assert funnel["counters"]["bucket:tail"] == n_tail and funnel["counters"]["no_model:fr"] == 1
    # unknown_language: drop → the French page leaves with its own reason
    strict = step_types()["ccnet"].make(build(CCNetConfig, {"model": cfg.model, "unknown_language": "drop"}))
    french = Document(text=docs[-1].text, id="fr2", metadata={"language": "fr"})
    assert list(strict.run(iter([french]))) == [] and french.metadata["filter_reason"] == "ccnet_no_model:fr"


def test_bad_or_missing_model_file_is_a_clear_error_naming_it(tmp_path):
    from safetensors.numpy import save_file

    from skyloom.data.pipeline.ccnet import make_ccnet_step

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 not a model")
    other = tmp_path / "other.safetensors"
    save_file({"weight": np.zeros(3, np.float32)}, str(other), metadata={"format": "skyloom-quality-v1"})
    for path, what in ((garbage, "not a readable CCNet model"), (other, "not a skyloom CCNet model")):
        with pytest.raises(CCNetModelError, match=what) as err:
            make_ccnet_step(build(CCNetConfig, {"model": str(path)}))
        assert str(path) in str(err.value)
    with pytest.raises(CCNetModelError, match="not found") as err:
        make_ccnet_step(build(CCNetConfig, {"model": str(tmp_path / "missing.safetensors")}))
    assert "missing.safetensors" in str(err.value)
