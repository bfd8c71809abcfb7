"""The LanguageModel interface: both backends agree with a direct forward pass; batching, padding and the
key/value cache change nothing; generation is deterministic and stops where asked."""

from __future__ import annotations

import builtins
import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skyloom.eval.backends import SkyloomLM, load_lm
from skyloom.eval.lm import Sampling, cut_at_stop, length_batches
from skyloom.eval.perplexity import WindowConvention, domain_result, score_documents
from skyloom.eval.textdata import read_documents
from tests.conftest import SHARED_DATA
from tests.test_eval_fixtures import tiny_checkpoint, tiny_hf_dir, tiny_model, tokenizer

transformers = pytest.importorskip("transformers", reason="transformers (skyloom[hf]) is not installed")


@pytest.fixture(scope="module")
def sky():
    return load_lm(tiny_checkpoint(), progress=False)


@pytest.fixture(scope="module")
def hf():
    return load_lm(tiny_hf_dir(), progress=False)


def _direct_loss(model, texts: list[str], max_tokens: int) -> tuple[float, int]:
    """The report convention written out by hand: one unbatched forward per document."""
    tok = tokenizer()
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor(tok.encode(text[: max_tokens // 3])[:max_tokens])
            logits = model(ids[None, :-1])[0]
            total += float(F.cross_entropy(logits, ids[1:], reduction="sum"))
            count += len(ids) - 1
    return total / count, count


def test_backends_are_chosen_from_the_directory(sky, hf):
    assert sky.backend == "skyloom" and type(sky.model).__name__ == "Transformer"
    assert hf.backend == "hf" and type(hf.model).__name__ == "LlamaForCausalLM"
    assert load_lm(tiny_hf_dir(), backend="skyloom", progress=False).backend == "skyloom"


def test_loss_three_ways_agrees_on_real_text(sky, hf):
    docs = read_documents(SHARED_DATA / "skywork" / "zh_movie.jsonl", limit=6)
    conv = WindowConvention("report", 600)
    ours = domain_result(score_documents(sky, docs, conv))
    theirs = domain_result(score_documents(hf, docs, conv))
    direct, count = _direct_loss(sky.model, docs.texts, 600)
    assert ours["tokens"] == theirs["tokens"] == count > 500
    assert ours["loss"] == pytest.approx(direct, abs=1e-5)
    assert theirs["loss"] == pytest.approx(direct, abs=1e-5)


def test_batching_padding_and_order_do_not_change_scores(sky):
    rng = random.Random(0)
    seqs = [[rng.randrange(4, 2048) for _ in range(rng.randrange(2, 90))] for _ in range(23)]
    one_by_one = SkyloomLM(sky.model, sky.tokenizer, batch_tokens=1, progress=False).score(seqs)
    batched = SkyloomLM(sky.model, sky.tokenizer, batch_tokens=4096, max_batch_size=64, progress=False).score(seqs)
    order = list(range(len(seqs)))
    rng.shuffle(order)
    shuffled = sky.score([seqs[i] for i in order])
    for i, (a, b) in enumerate(zip(one_by_one, batched)):
        assert len(a) == len(seqs[i]) - 1
        np.testing.assert_allclose(a, b, atol=2e-5)
        np.testing.assert_allclose(a, shuffled[order.index(i)], atol=2e-5)


def test_projecting_only_scored_positions_changes_no_score(sky):
    """The split path (hidden states, then the output projection of the scored rows only, chunk by chunk) against
    full [B, T, V] logits: same per-token log-probabilities, log-likelihoods and greedy flags, padding included."""
    rng = random.Random(1)
    seqs = [[rng.randrange(4, 2048) for _ in range(rng.randrange(2, 90))] for _ in range(23)]
    requests = [(s[:-k], s[-k:]) for s in seqs[:12] for k in (1, min(3, len(s) - 1))]
    requests += [(seqs[0][:-2], seqs[0][-2:-1])]  # same model input as a longer request's, fewer scored rows
    split = SkyloomLM(sky.model, sky.tokenizer, batch_tokens=700, max_batch_size=8, progress=False)
    full = SkyloomLM(sky.model, sky.tokenizer, batch_tokens=700, max_batch_size=8, progress=False, split_head=False)
    assert split.split_head and not full.split_head
    split._head_rows = lambda: 7  # several chunks per batch, a ragged last one
    split._logits = lambda ids: pytest.fail("the split path materialised full logits")
    tails = [rng.randrange(0, len(s)) for s in seqs]  # only the last k log-probabilities asked for
    for a, b, c, k in zip(split.score(seqs), full.score(seqs), split.score(seqs, last=tails), tails):
        assert a.shape == b.shape == c.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
        assert np.isnan(c[: len(c) - k]).all()
        np.testing.assert_allclose(c[len(c) - k :], a[len(a) - k :], rtol=0, atol=1e-5)
    ours, theirs = split.loglikelihood(requests), full.loglikelihood(requests)
    assert [g for _, g in ours] == [g for _, g in theirs]
    np.testing.assert_allclose([x for x, _ in ours], [x for x, _ in theirs], rtol=0, atol=1e-5)


def test_length_batches_respect_the_token_budget():
    lengths = [5, 100, 7, 64, 64, 3, 120]
    batches = length_batches(lengths, batch_tokens=200, max_batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0][0] == 6  # longest first
    for b in batches:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 200)


def test_loglikelihood_matches_score_and_shares_identical_inputs(sky):
    ctx = sky.encode(
        "以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。\n\n滑动窗口的作用是____。\n答案："
    )
    options = [sky.encode(x) for x in ("A", "B", "C", "D")]
    calls = []
    hook = sky.model.register_forward_pre_hook(lambda _, args: calls.append(args[0].shape))
    try:
        results = sky.loglikelihood([(ctx, o) for o in options])
    finally:
        hook.remove()
    assert len(calls) == 1 and calls[0][0] == 1  # four single-token answers, one forward pass of one row
    for (ll, _), option in zip(results, options):
        assert ll == pytest.approx(float(sky.score([ctx + option])[0][-len(option) :].sum()), abs=1e-5)
    greedy = [g for _, g in results]
    assert sum(greedy) <= 1


def test_greedy_generation_is_identical_across_backends_and_cache(sky, hf):
    prompts = [
        sky.encode("Question: Natalia sold 48 clips in April.\nAnswer:"),
        sky.encode("答案："),
        sky.encode("The room is 12 feet long"),
    ]
    cached = sky.generate(prompts, max_new_tokens=24)
    uncached = SkyloomLM(sky.model, sky.tokenizer, kv_cache=False, progress=False).generate(prompts, max_new_tokens=24)
    single = [sky.generate([p], max_new_tokens=24)[0] for p in prompts]
    assert cached == uncached == single == hf.generate(prompts, max_new_tokens=24)
    assert all(len(sky.encode(t)) >= 20 for t in cached)  # random weights rarely pick EOS


def test_sampling_is_seeded_per_request(sky, hf):
    prompts = [sky.encode("Question: how many clips?"), sky.encode("以下是")]
    a = sky.generate(prompts, max_new_tokens=16, sampling=Sampling(temperature=1.0, top_p=0.9, seed=1))
    b = sky.generate(prompts[::-1], max_new_tokens=16, sampling=Sampling(temperature=1.0, top_p=0.9, seed=1))
    c = sky.generate(prompts, max_new_tokens=16, sampling=Sampling(temperature=1.0, top_p=0.9, seed=2))
    assert a == hf.generate(prompts, max_new_tokens=16, sampling=Sampling(temperature=1.0, top_p=0.9, seed=1))
    assert a[0] != c[0] or a[1] != c[1]
    # a request's sample depends on its own index and the seed, not on its batch-mates' order
    assert sky.generate([prompts[0]], max_new_tokens=16, sampling=Sampling(1.0, 0, 0.9, 1))[0] == a[0]
    assert b != a or prompts[0] == prompts[1]


def test_generation_stops_at_stop_strings(sky):
    prompt = [sky.encode("Question: what?\nAnswer:")]
    free = sky.generate(prompt, max_new_tokens=30)[0]
    stop = free[5:8]
    cut = sky.generate(prompt, max_new_tokens=30, stop=[stop])[0]
    assert cut == free[: free.find(stop)] and stop not in cut
    assert cut_at_stop("12 apples\n\nQuestion: next", ["Question:", "\n\n"]) == ("12 apples", True)


def test_max_length_is_enforced(sky):
    with pytest.raises(ValueError, match="exceeds the model's maximum length"):
        sky.score([[5] * (sky.max_length + 2)])
    with pytest.raises(ValueError, match="leaves no room"):
        sky.generate([[5]], max_new_tokens=sky.max_length)


def test_missing_transformers_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("No module named 'transformers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(ImportError, match=r"pip install 'skyloom\[hf\]'"):
        load_lm(tiny_hf_dir(), backend="hf", progress=False)


def test_checkpoint_without_tokenizer_is_a_clear_error(tmp_path):
    from skyloom.model.checkpoint import save_model

    save_model(tiny_model(), tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json next to the model"):
        load_lm(tmp_path / "ckpt", progress=False)
    assert json.loads((tmp_path / "ckpt" / "model.json").read_text())["format"] == "skyloom-model"
