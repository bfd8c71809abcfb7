"""SFT: exact prompt masking, packing ≡ padding, no attention across packed samples, vocabulary growth,
data formats, and a short `skyloom sft` run whose Hugging Face export applies the chat template."""

from __future__ import annotations

import json

import pytest
import torch

from skyloom.data.batch import IGNORE_INDEX
from skyloom.sft.data import Sample, encode_conversations, read_conversations, record_to_messages
from skyloom.sft.packing import SFTBatchSource, block_causal_mask, build_window, make_batch
from skyloom.tokenizer.chat import Message, TemplateEncoder, get_template
from tests.test_sft_support import tiny_base  # noqa: F401
from tests.train_helpers import single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def sft_tok(tiny_base, tmp_path_factory):
    from skyloom.sft.vocab import add_special_tokens
    from skyloom.tokenizer.loading import TextTokenizer

    out = tmp_path_factory.mktemp("sft_tok")
    t = get_template("skywork")
    add_special_tokens(tiny_base, out, t.added_tokens, t.jinja)
    return TextTokenizer.from_dir(out)


@pytest.fixture(scope="module")
def gsm_records(shared_data):
    with open(shared_data / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(40), f)]


def _model(vocab: int, seed: int = 0):
    from skyloom.config import build
    from skyloom.model.config import ModelConfig
    from skyloom.model.transformer import Transformer
    from tests.test_sft_support import TINY_SFT_MODEL

    torch.manual_seed(seed)
    return Transformer(build(ModelConfig, dict(TINY_SFT_MODEL, vocab_size=vocab))).eval()


def test_prompt_masking_boundary_is_exact(sft_tok, gsm_records):
    enc = TemplateEncoder(get_template("skywork"), sft_tok)
    sep, user, bot = (sft_tok.tokenizer.token_to_id(t) for t in ("[SEP]", "[USER]", "[BOT]"))
    for r in gsm_records[:10]:
        ids, trainable = enc.encode([Message("user", r["question"]), Message("assistant", r["answer"])])
        prompt = [sft_tok.eos_id] + [user] + sft_tok.encode(r["question"]) + [sep, bot]  # this BPE has no BOS
        answer = sft_tok.encode(r["answer"]) + [sep]
        assert ids == prompt + answer
        assert trainable == [False] * len(prompt) + [True] * len(answer)
        assert enc.prompt_ids(r["question"]) == prompt
        # in a training window: position t predicts ids[t+1]; a loss exactly on the answer tokens
        sample = Sample(ids, trainable)
        x, labels, pos, block = build_window([sample], len(ids) + 7, 0, "packed")
        kept = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
        assert kept == list(range(len(prompt) - 1, len(ids) - 1))
        assert labels[kept].tolist() == answer
        assert sample.n_targets == len(answer)
    # a literal "[SEP]" typed in a question stays text, never the special id
    ids, _ = enc.encode([Message("user", "what is [SEP]?"), Message("assistant", "x")])
    assert ids.count(sep) == 2


def test_messages_multi_turn_and_formats(sft_tok, tmp_path):
    enc = TemplateEncoder(get_template("skywork"), sft_tok)
    msgs = record_to_messages(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "1+1?"},
                {"role": "assistant", "content": "2"},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
            ]
        },
        "x",
    )
    ids, trainable = enc.encode(msgs)
    answers = [sft_tok.decode([i for i, t in zip(ids, trainable) if t])]
    assert answers == ["2[SEP]4[SEP]"]
    assert record_to_messages({"instruction": "Sum", "input": "1 2", "output": "3"}, "x")[0].content == "Sum\n\n1 2"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "b"}\n{"foo": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: unknown record format"):
        read_conversations(bad)
    with pytest.raises(ValueError, match="expected a assistant turn|expected an assistant"):
        enc.encode([Message("user", "a"), Message("user", "b")])
    plain = TemplateEncoder(get_template("plain"), sft_tok)
    ids, trainable = plain.encode([Message("user", "Hi"), Message("assistant", "Yo")])
    assert sft_tok.decode(ids) == "User: Hi\nAssistant: Yo<|endoftext|>" and ids[-1] == sft_tok.eos_id


def _samples(sft_tok, gsm_records, n=24, seq_len=256):
    enc = TemplateEncoder(get_template("skywork"), sft_tok)
    convs = [
        [Message("user", r["question"]), Message("assistant", r["answer"][: 60 + 13 * i % 200])]
        for i, r in enumerate(gsm_records[:n])
    ]
    samples, _ = encode_conversations(enc, convs, seq_len + 1)
    return samples


def test_packed_and_padded_give_the_same_loss(sft_tok, gsm_records):
    from skyloom.sft.runner import masked_loss

    samples = _samples(sft_tok, gsm_records)
    model = _model(sft_tok.vocab_size)
    packed, n1 = masked_loss(model, samples, 256, sft_tok.pad_id, batch_size=3, layout="packed")
    padded, n2 = masked_loss(model, samples, 256, sft_tok.pad_id, batch_size=5, layout="padded")
    assert n1 == n2 == sum(s.n_targets for s in samples)
    assert packed == pytest.approx(padded, rel=1e-5)
    # and the batch sources really pack: fewer windows, higher non-pad share
    a = SFTBatchSource(samples, 256, 4, 2, 1.0, sft_tok.pad_id, "packed")
    b = SFTBatchSource(samples, 256, 4, 2, 1.0, sft_tok.pad_id, "padded")
    assert a.stats()["windows"] < b.stats()["windows"] and a.stats()["non_pad_share"] > b.stats()["non_pad_share"]
    assert a.stats()["target_tokens"] == b.stats()["target_tokens"]


def test_no_attention_across_packed_samples(sft_tok, gsm_records):
    samples = _samples(sft_tok, gsm_records, n=3, seq_len=256)
    a, b = samples[0], samples[1]
    a2 = Sample([(t * 7 + 3) % 500 + 5 for t in a.ids], a.trainable)  # a different sample A of the same length
    model = _model(sft_tok.vocab_size)
    seq = len(a) + len(b) + 10
    with torch.no_grad():
        out = []
        for first in (a, a2):
            batch = make_batch([[first, b]], seq, sft_tok.pad_id, "packed")
            out.append(model(batch.input_ids, position_ids=batch.position_ids, attn_mask=batch.attn_mask)[0])
        alone = make_batch([[b]], len(b) - 1, sft_tok.pad_id, "padded")
        ref = model(alone.input_ids)[0]
    lo, hi = len(a) - 1, len(a) + len(b) - 2
    assert not torch.allclose(out[0][:lo], out[1][:lo])  # A's own logits did change
    torch.testing.assert_close(out[0][lo:hi], out[1][lo:hi], rtol=0, atol=0)  # B's did not, bit for bit
    torch.testing.assert_close(out[0][lo:hi], ref, rtol=1e-5, atol=1e-5)  # and equal B computed alone
    mask = block_causal_mask(torch.tensor([[0, 0, 1, 1, -1]]))[0, 0]
    assert mask.tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]


def test_embedding_growth_keeps_old_rows(tiny_base, sft_tok):
    import skyloom
    from skyloom.sft.vocab import grow_vocab
    from skyloom.tokenizer.loading import TextTokenizer

    old_tok = TextTokenizer.from_dir(tiny_base)
    model = skyloom.load_model(tiny_base)
    new_vocab = sft_tok.vocab_size
    assert new_vocab == old_tok.vocab_size + 3
    grown = grow_vocab(model, new_vocab, old_tok.vocab_size)
    n = old_tok.vocab_size
    for name in ("tok_emb.weight", "output.weight"):
        old, new = model.state_dict()[name], grown.state_dict()[name]
        assert new.shape == (new_vocab, old.shape[1])
        assert torch.equal(new[:n], old[:n])
        for row in range(n, new_vocab):
            torch.testing.assert_close(new[row], old[:n].mean(0))
    text = "Natalia sold 48/2 = <<48/2=24>>24 clips. 答案是 24"
    assert sft_tok.encode(text) == old_tok.encode(text)  # old tokens keep their ids
    with torch.no_grad():  # the old tokens' logits are unchanged by growth
        ids = torch.tensor([old_tok.encode(text)])
        torch.testing.assert_close(grown(ids)[..., :n], model(ids))


def test_sft_run_exports_hf_with_chat_template(tiny_base, shared_data, tmp_path):
    from skyloom.sft.config import build_sft_config
    from skyloom.sft.runner import run_sft

    cfg = build_sft_config(
        {
            "base": str(tiny_base),
            "data": {
                "sources": {
                    "gsm8k": {"path": str(shared_data / "gsm8k" / "train.jsonl"), "limit": 60},
                    "alpaca": {
                        "path": str(shared_data / "skywork" / "alpaca_data_zh_51k_sample_1k.jsonl"),
                        "limit": 30,
                        "weight": 0.5,
                    },
                },
                "val_fraction": 0.1,
            },
            "train": {"max_steps": 6, "global_batch_tokens": 1024, "micro_batch_size": 2, "lr": 2e-3, "device": "cpu"},
            "validation": {"every": 3},
        }
    )
    summary = run_sft(cfg, tmp_path / "run")
    assert summary["status"] == "finished" and summary["steps"] == 6
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [m for m in metrics if m["kind"] == "val"]
    assert [m["step"] for m in val] == [0, 3, 6] and val[-1]["loss"] < val[0]["loss"]
    train = [m for m in metrics if m["kind"] == "train"]
    assert len(train) == 6 and all(m["tokens"] > 0 for m in train)

    transformers = pytest.importorskip("transformers")
    hf_dir = tmp_path / "run" / "hf"
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    from skyloom.tokenizer.loading import TextTokenizer

    ours = TemplateEncoder(get_template("skywork"), TextTokenizer.from_dir(tmp_path / "run" / "tokenizer"))
    msgs = [
        {"role": "user", "content": "Tom has 3 apples and buys 4 more. How many?"},
        {"role": "assistant", "content": "3+4 = <<3+4=7>>7. So, the answer is 7."},
    ]
    want, _ = ours.encode([Message(**m) for m in msgs])
    got = tok.apply_chat_template(msgs, tokenize=True)
    got = got["input_ids"] if isinstance(got, dict) or hasattr(got, "keys") else got
    assert list(got) == want
    prompt = tok.apply_chat_template(msgs[:1], tokenize=True, add_generation_prompt=True)
    prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    assert list(prompt) == ours.prompt_ids(msgs[0]["content"])
    # the exported weights are the final checkpoint's
    import skyloom

    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    mine = skyloom.load_model(summary["checkpoint"])
    ids = torch.tensor([want])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, mine(ids), rtol=1e-4, atol=1e-4)
