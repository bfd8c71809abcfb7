"""`eval ppl`: the Table-6 average, the window conventions, bits per byte, the trainer's validation loss,
and the command on the authors' real domain sets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from skyloom.cli import main
from skyloom.eval.backends import load_lm
from skyloom.eval.perplexity import (
    TABLE6_DOMAINS,
    WindowConvention,
    average,
    average_of_perplexities,
    domain_result,
    packed_windows,
    report_windows,
    rolling_windows,
    score_documents,
)
from skyloom.eval.textdata import Documents, read_documents, read_texts
from tests.conftest import SHARED_DATA
from tests.test_eval_fixtures import tiny_checkpoint, tokenizer, workdir

# The report's Table 6: per-domain perplexities (Tech, Movie, Gov., Game, Finance, General) and Average.
TABLE6 = {
    "ChatGLM3-6B": ([12.48, 23.48, 5.07, 18.45, 5.67, 7.47], 10.25),
    "MOSS-7B": ([20.83, 39.66, 11.08, 31.24, 10.59, 13.25], 18.50),
    "InternLM-7B": ([13.43, 24.9, 5.88, 19.78, 6.17, 8.10], 11.17),
    "Qwen-7B": ([13.39, 25.16, 5.55, 19.26, 5.76, 7.78], 10.83),
    "Baichuan2-7B": ([12.89, 23.26, 5.34, 18.36, 5.68, 7.62], 10.41),
    "LLaMA2-13B": ([23.26, 50.66, 18.09, 32.52, 14.85, 16.55], 23.54),
    "Xverse-13B": ([12.55, 23.49, 5.20, 17.69, 5.54, 7.46], 10.19),
    "Baichuan-13B": ([12.38, 22.46, 5.21, 17.59, 5.42, 7.37], 10.03),
    "Baichuan2-13B": ([12.14, 21.85, 5.05, 17.15, 5.35, 7.24], 9.81),
    "Qwen-14B": ([11.90, 22.43, 4.89, 16.94, 5.24, 7.03], 9.67),
    "InternLM-20B": ([12.34, 22.06, 5.75, 17.45, 5.73, 7.78], 10.34),
    "Aquila2-34B": ([14.62, 29.09, 5.72, 21.78, 5.83, 8.45], 11.73),
    "Skywork-13B": ([11.58, 21.84, 4.76, 17.28, 4.92, 6.82], 9.42),
}


@pytest.fixture(scope="module")
def lm():
    return load_lm(tiny_checkpoint(), progress=False)


def test_table6_average_is_the_geometric_mean_of_perplexities():
    assert round(average_of_perplexities(TABLE6["Skywork-13B"][0]), 2) == 9.42
    for model, (ppls, reported) in TABLE6.items():
        assert average_of_perplexities(ppls) == pytest.approx(reported, abs=0.01), model
        assert np.mean(ppls) > reported + 0.5  # an arithmetic mean would not reproduce the column
    avg = average([math.log(11.58), math.log(21.84)])
    assert avg["ppl"] == pytest.approx(math.sqrt(11.58 * 21.84))


def test_report_convention_cuts_characters_then_tokens():
    ids = list(range(100))
    [w] = report_windows(ids, 64)
    assert w.ids == tuple(range(64)) and w.n_predict == 63
    assert report_windows([7], 64) == []


@pytest.mark.parametrize(
    "n,max_tokens,stride,prefix",
    [
        (1, 8, None, 0),
        (8, 8, None, 0),
        (9, 8, None, 0),
        (50, 8, None, 0),
        (50, 8, 3, 0),
        (50, 8, 8, None),
        (17, 4, 1, 0),
    ],
)
def test_rolling_windows_predict_every_token_once(n, max_tokens, stride, prefix):
    ids = list(range(100, 100 + n))
    windows = rolling_windows(ids, max_tokens, stride, prefix)
    s = ([prefix] if prefix is not None else []) + ids
    predicted = []
    for w in windows:
        assert len(w.ids) - 1 <= max_tokens  # the model input fits
        begin = next(i for i in range(len(s)) if tuple(s[i : i + len(w.ids)]) == w.ids)
        predicted += list(range(begin + len(w.ids) - w.n_predict, begin + len(w.ids)))
    assert predicted == list(range(1, len(s)))  # each token after the first, once, in order
    if stride is None and len(windows) > 1:  # disjoint windows: one token of context at each boundary,
        assert len(windows[1].ids) == max_tokens + 1  # like lm-eval's get_rolling_token_windows(context_len=1)


def test_packed_windows_match_training_batches():
    windows = packed_windows(list(range(23)), 4)
    assert [w.ids for w in windows] == [tuple(range(i, i + 5)) for i in (0, 5, 10, 15)]  # tail of 3 dropped
    assert all(w.n_predict == 4 for w in windows)


def test_rolling_loss_equals_a_direct_sum_and_bits_per_byte(lm):
    texts = read_texts(SHARED_DATA / "skywork" / "zh_game.jsonl", limit=3)
    scores = score_documents(lm, Documents("game", texts=texts), WindowConvention("rolling", 128, 50, "bos"))
    tok = tokenizer()
    with torch.no_grad():
        total, count = 0.0, 0
        for text in texts:  # the first window predicts 128 tokens, each later one the next 50 (≥ 78 of context)
            s = [tok.bos_id] + tok.encode(text)
            start = 1
            while start < len(s):
                end = min(start + (128 if start == 1 else 50), len(s))
                begin = max(0, end - 1 - 128)
                logits = lm.model(torch.tensor([s[begin : end - 1]]))[0]
                targets = torch.tensor(s[begin + 1 : end])
                nll = F.cross_entropy(logits, targets, reduction="none")
                total += float(nll[-(end - start) :].sum())
                count += end - start
                start = end
    r = domain_result(scores)
    assert r["tokens"] == count and r["loss"] == pytest.approx(total / count, abs=1e-5)
    assert r["bytes"] == sum(len(t.encode("utf-8")) for t in texts)
    assert r["bpb"] == pytest.approx(total / (math.log(2) * r["bytes"]), rel=1e-6)
    assert r["ppl"] == pytest.approx(math.exp(r["loss"]))


def test_packed_convention_equals_the_trainer_validation_loss(lm, tmp_path):
    validation = pytest.importorskip("skyloom.train.validation")
    rows = [json.loads(line) for line in open(SHARED_DATA / "skywork" / "zh_finance.jsonl", encoding="utf-8")][:12]
    file = tmp_path / "val.jsonl"
    file.write_text("".join(json.dumps({"text": r["text"]}, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    seq_len = 96
    stream = validation.tokenize_files([file], tokenizer())
    for budget in (None, 1000):  # the whole set, and a validation set's max_tokens budget
        windows = validation.make_windows(stream, seq_len, budget)
        trainer_loss, trainer_tokens = validation.evaluate_loss(lm.model, windows, batch_size=4)
        conv = WindowConvention("packed", seq_len, budget=budget)
        ours = domain_result(score_documents(lm, read_documents(file), conv))
        assert ours["tokens"] == trainer_tokens == (1056 if budget else len(stream) // 97 * 96)
        assert ours["loss"] == pytest.approx(trainer_loss, abs=1e-5)


def test_token_shard_directory_scores_like_its_text(lm, tmp_path):
    from skyloom.data.shards import finalize_index, write_shard

    tok = tokenizer()
    texts = read_texts(SHARED_DATA / "skywork" / "zh_tech.jsonl", limit=3)
    docs = [tok.encode(t) + [tok.eos_id] for t in texts]
    write_shard(
        tmp_path / "tech",
        "0",
        docs,
        vocab_size=tok.vocab_size,
        source="tech",
        tokenizer=tok.tokenizer_id,
        eos_id=tok.eos_id,
    )
    finalize_index(tmp_path / "tech")
    conv = WindowConvention("packed", 200)
    from_shards = domain_result(score_documents(lm, read_documents(tmp_path / "tech"), conv))
    from_text = domain_result(score_documents(lm, Documents("tech", texts=texts), conv))
    assert from_shards["tokens"] == from_text["tokens"]
    assert from_shards["loss"] == pytest.approx(from_text["loss"], abs=1e-9)


def test_eval_ppl_command_on_the_authors_domain_sets(tmp_path, capsys):
    out = tmp_path / "ppl.json"
    assert (
        main(["eval", "ppl", "--model", str(tiny_checkpoint()), "--limit", "2", "--no-progress", "--output", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert list(result["domains"]) == [name for name, _ in TABLE6_DOMAINS]
    for d in result["domains"].values():
        assert set(d) >= {"loss", "ppl", "bpb", "tokens", "documents"}
        assert d["documents"] == 2 and d["tokens"] > 100
        assert d["ppl"] == pytest.approx(math.exp(d["loss"]))
        assert 6.5 < d["loss"] < 8.5  # random init over 2,048 tokens: about ln 2048 = 7.6
    losses = [d["loss"] for d in result["domains"].values()]
    assert result["average"]["ppl"] == pytest.approx(math.exp(np.mean(losses)))
    assert result["convention"] == {"kind": "report", "max_tokens": 2048}
    assert "| Model | Tech | Movie | Gov. | Game | Finance | General | Average |" in printed


def test_eval_ppl_reports_bad_input_by_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n', encoding="utf-8")
    assert main(["eval", "ppl", "--model", str(tiny_checkpoint()), "--data", f"x={bad}", "--no-progress"]) == 2
    assert f"{bad}:2: no 'text' field" in capsys.readouterr().err
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "ok"}\n', encoding="utf-8")
    assert main(["eval", "ppl", "--model", str(workdir("nothing")), "--data", f"x={good}"]) == 2
    assert "neither a skyloom checkpoint" in capsys.readouterr().err
