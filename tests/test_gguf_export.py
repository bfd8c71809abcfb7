"""`skyloom export gguf`: the file read back with gguf's own reader, loaded by transformers' GGUF loader (logits and
tokenizer ids), and the refusals for what llama.cpp would tokenize or run differently."""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from skyloom.cli import main
from skyloom.config import build
from skyloom.model.checkpoint import save_model
from skyloom.model.config import ModelConfig
from skyloom.model.gguf_export import (
    GGUFRefused,
    gguf_name,
    permute_qk,
    spm_encode,
    unpermute_qk,
    write_gguf,
)
from skyloom.model.transformer import Transformer
from skyloom.tokenizer import TextTokenizer

gguf = pytest.importorskip("gguf", reason="gguf (skyloom[all]) is not installed")

_ROOT = Path(tempfile.mkdtemp(prefix="skyloom-gguf-tests-"))
EN = "The quick brown fox jumps over the lazy dog. It's 2024 and models learn from 12345 tokens, isn't it? "
ZH = "我们在北京大学学习自然语言处理。今天天气很好，我们去公园散步吧！中华人民共和国成立于1949年。模型训练需要数据。"
ZH_MORE = "深度学习是机器学习的一个分支，神经网络通过反向传播算法训练参数。深度学习模型需要大量数据和计算资源。"
TEXTS = [EN * 3, ZH * 3, (EN + ZH) * 2, "  code:\n\tdef f(x):\n\t\treturn x ** 2\n    if x:\n        pass\n"] * 20
# English, Chinese (in and out of the vocabulary), digits, emoji, accents, a control byte, whitespace runs.
# (No run of 2+ spaces before a digit: transformers 5.24 rebuilds llama.cpp's 'starcoder' byte-level tokenizer
# without its digit split, so there it would differ from skyloom and llama.cpp; see docs/model.md.)
MIXED = "Hello 世界! 123 45 我们学习深度学习 🚀🎉 café naïve \x01 tabs\t\tand   spaces\n    if 模型训练 x=3.14 Ω→∑"


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    shutil.rmtree(_ROOT, ignore_errors=True)


@functools.cache
def byte_level_dir() -> Path:
    """The recipes' byte-level BPE (single digits, then GPT-2's regex): llama.cpp's 'starcoder' pre-tokenizer."""
    from skyloom.tokenizer.base import train_byte_level_bpe

    return train_byte_level_bpe(TEXTS, _ROOT / "byte-level", 400)


@functools.cache
def sentencepiece_dir() -> Path:
    """A SentencePiece BPE .model with byte fallback (LLaMA's kind), converted and extended with Chinese
    characters and words as `skyloom tokenizer train --extend` does for the report's LLaMA base."""
    spm = pytest.importorskip("sentencepiece")
    from skyloom.tokenizer.train import TrainSettings, train_tokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS),
        model_writer=buf,
        vocab_size=420,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        minloglevel=2,
    )
    model = _ROOT / "sp.model"
    model.write_bytes(buf.getvalue())
    corpus = _ROOT / "extend.txt"
    corpus.write_text(((EN + ZH + ZH_MORE) * 2 + "\n") * 30, encoding="utf-8")
    out = _ROOT / "sp-extended"
    settings = TrainSettings(
        inputs=[str(corpus)],
        out=str(out),
        total=450,
        base_size=420,
        chinese_chars=10,
        reserved=8,
        extend=str(model),
        fill="none",
        workers=1,
        progress=False,
    )
    breakdown = train_tokenizer(settings)
    assert breakdown["rows"][2]["size"] > 0  # Chinese words were added by merges
    return out


def _checkpoint(tokenizer: Path, name: str, **overrides) -> tuple[Transformer, Path]:
    tok = TextTokenizer.from_dir(tokenizer)
    torch.manual_seed(0)
    cfg = {"preset": "tiny", "vocab_size": tok.vocab_size + 3, "n_layers": 2, "n_kv_heads": 2, "max_seq_len": 64}
    model = Transformer(build(ModelConfig, {**cfg, **overrides})).eval()
    out = _ROOT / name
    save_model(model, out)
    tok.copy_files_to(out)
    return model, out


def _field(reader, key: str):
    return reader.fields[key].contents()


def test_metadata_and_every_tensor_read_back_with_ggufs_reader():
    model, ckpt = _checkpoint(byte_level_dir(), "ckpt-reader", rope_theta=500000.0, norm_eps=1e-6)
    assert main(["export", "gguf", str(ckpt), str(ckpt / "model.gguf")]) == 0
    reader = gguf.GGUFReader(str(ckpt / "model.gguf"))
    cfg = model.config
    expected = {
        "general.architecture": "llama",
        "llama.context_length": 64,
        "llama.embedding_length": cfg.dim,
        "llama.feed_forward_length": cfg.hidden_ffn_dim,
        "llama.block_count": 2,
        "llama.attention.head_count": cfg.n_heads,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": cfg.head_dim,
        "llama.vocab_size": cfg.vocab_size,
        "general.file_type": int(gguf.LlamaFileType.ALL_F32),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "starcoder",
        "tokenizer.ggml.add_bos_token": False,
    }
    assert {k: _field(reader, k) for k in expected} == expected
    assert _field(reader, "llama.rope.freq_base") == 500000.0
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    tok = TextTokenizer.from_dir(byte_level_dir())
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == cfg.vocab_size and tokens[-1] == f"[PAD{cfg.vocab_size - 1}]"
    assert tokens[: tok.vocab_size] == [tok.tokenizer.id_to_token(i) for i in range(tok.vocab_size)]
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tok.eos_id
    assert _field(reader, "tokenizer.ggml.padding_token_id") == tok.pad_id
    types = _field(reader, "tokenizer.ggml.token_type")
    assert types[tok.eos_id] == gguf.TokenType.CONTROL and types[-1] == gguf.TokenType.UNUSED
    merges = json.loads((byte_level_dir() / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
    assert _field(reader, "tokenizer.ggml.merges") == [" ".join(m) if isinstance(m, list) else m for m in merges]

    tensors = {t.name: t for t in reader.tensors}
    state = model.state_dict()
    assert set(tensors) == {gguf_name(n) for n in state}
    for name, value in state.items():
        stored = np.array(tensors[gguf_name(name)].data).reshape(value.shape)
        if name.endswith("attn.wq.weight"):
            stored = unpermute_qk(stored, cfg.n_heads)
        elif name.endswith("attn.wk.weight"):
            stored = unpermute_qk(stored, cfg.kv_heads)
        assert np.array_equal(stored, value.numpy()), name


def test_qk_permutation_is_llama_cpps_and_invertible():
    w = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)  # 2 heads of 4 rows: rotate-half → interleaved
    p = permute_qk(w, 2)
    assert p[:, 0].tolist() == [0, 6, 3, 9, 12, 18, 15, 21]
    assert np.array_equal(unpermute_qk(p, 2), w)


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_half_precision_files_keep_norms_f32(tmp_path, dtype):
    model, ckpt = _checkpoint(byte_level_dir(), f"ckpt-{dtype}", tie_embeddings=True)
    write_gguf(model, ckpt, tmp_path / "m.gguf", dtype)
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert "output.weight" not in kinds  # tied: llama.cpp reuses token_embd
    assert kinds["output_norm.weight"] == "F32" and kinds["blk.0.attn_q.weight"] == dtype.upper()
    assert _field(reader, "general.file_type") == int(
        gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.MOSTLY_BF16
    )
    stored = next(t for t in reader.tensors if t.name == "blk.1.ffn_down.weight")
    values = gguf.quants.dequantize(stored.data, stored.tensor_type)
    expected = model.layers[1].ffn.w2.weight.detach().to(torch.float16 if dtype == "f16" else torch.bfloat16)
    assert np.array_equal(values.reshape(expected.shape), expected.float().numpy())


def test_spm_replay_is_sentencepiece_on_a_plain_model():
    """The replay of llama.cpp's SentencePiece algorithm agrees with sentencepiece itself on its own BPE model."""
    spm = pytest.importorskip("sentencepiece")
    sentencepiece_dir()
    sp = spm.SentencePieceProcessor(model_file=str(_ROOT / "sp.model"))
    tokens = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    scores = [sp.get_score(i) for i in range(sp.get_piece_size())]
    for text in (MIXED, EN, ZH_MORE, "   x  y ", "a"):
        assert spm_encode(text, tokens, scores) == sp.encode(text)


@pytest.mark.parametrize("kind", ["byte-level", "sentencepiece-extended"])
def test_transformers_loads_the_gguf_with_skyloom_logits_and_ids(kind, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer = byte_level_dir() if kind == "byte-level" else sentencepiece_dir()
    model, ckpt = _checkpoint(tokenizer, f"ckpt-{kind}")
    alone = _ROOT / f"gguf-{kind}"  # nothing but the file: transformers must not find our tokenizer.json
    write_gguf(model, ckpt, alone / "model.gguf")
    assert os.listdir(alone) == ["model.gguf"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(alone), gguf_file="model.gguf", dtype=torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (2, 19), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(ids) - hf.eval()(ids).logits).abs().max().item() < 1e-5
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(alone), gguf_file="model.gguf")
    ours = TextTokenizer.from_dir(tokenizer)
    for text in (MIXED, EN + ZH + ZH_MORE):
        assert hf_tok.encode(text, add_special_tokens=False, split_special_tokens=True) == ours.encode(text)
    assert hf.config.eos_token_id == hf_tok.eos_token_id == ours.eos_id


def test_a_skyloom_trained_vocabulary_is_refused_not_written_wrong(tmp_path, capsys):
    """`skyloom tokenizer train`'s own base (bilingual regex split + byte fallback) has no llama.cpp equivalent:
    llama.cpp's converter turned it into a silently different tokenizer; the export refuses and writes nothing."""
    from skyloom.tokenizer.base import train_base
    from skyloom.tokenizer.files import write_tokenizer_dir

    doc = train_base(TEXTS, 300, alphabet=40)
    specials = {"eos_token": "</s>"}
    doc["added_tokens"] = [{"id": 300, "content": "</s>", "special": True, "single_word": False, "lstrip": False,
                            "rstrip": False, "normalized": False}]  # fmt: skip
    write_tokenizer_dir(tmp_path / "tok", doc, specials, [])
    _, ckpt = _checkpoint(tmp_path / "tok", "ckpt-own")
    out = tmp_path / "model.gguf"
    assert main(["export", "gguf", str(ckpt), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skyloom: error:") and "no regex pre-tokenizer" in err and "export hf" in err
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_a_vocabulary_llama_cpp_would_merge_differently_is_refused(tmp_path):
    """Drop one merge: skyloom then never builds that token, llama.cpp (merging any pair that spells a token)
    would; the replay of llama.cpp's algorithm catches it."""
    src = sentencepiece_dir()
    shutil.copytree(src, tmp_path / "tok")
    doc = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    merges = doc["model"]["merges"]
    products = ["".join(m) for m in merges]
    victim = next(i for i, p in enumerate(products) if products.count(p) == 1 and len(p) == 2 and "\u2581" not in p)
    del merges[victim]
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    model, ckpt = _checkpoint(tmp_path / "tok", "ckpt-doctored")
    with pytest.raises(GGUFRefused, match="llama.cpp's SentencePiece tokenizer would encode"):
        write_gguf(model, ckpt, tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"arch": "gpt", "bias": True, "ffn_dim": None, "n_kv_heads": None}, "only the LLaMA architecture"),
        ({"moe": {"n_experts": 4, "top_k": 2}}, "MoE checkpoint"),
    ],
)
def test_architectures_llama_cpp_would_run_differently_are_refused(tmp_path, overrides, match):
    model, ckpt = _checkpoint(byte_level_dir(), f"ckpt-refused-{len(overrides)}", **overrides)
    with pytest.raises(GGUFRefused, match=match):
        write_gguf(model, ckpt, tmp_path / "m.gguf")


def test_an_sft_tokenizers_chat_template_and_turn_end_travel(tmp_path):
    """After `skyloom sft` the tokenizer has [USER]/[BOT]/[SEP] and the skywork template: the GGUF carries the
    template, marks the three as control tokens and names [SEP] the end of turn (llama.cpp stops there)."""
    from skyloom.sft.vocab import add_special_tokens
    from skyloom.tokenizer.chat import get_template

    template = get_template("skywork")
    add_special_tokens(byte_level_dir(), tmp_path / "tok", template.added_tokens, template.jinja)
    model, ckpt = _checkpoint(tmp_path / "tok", "ckpt-sft")
    write_gguf(model, ckpt, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    assert _field(reader, "tokenizer.chat_template") == template.jinja
    assert tokens[_field(reader, "tokenizer.ggml.eot_token_id")] == "[SEP]"
    assert all(types[tokens.index(t)] == gguf.TokenType.CONTROL for t in ("[USER]", "[BOT]", "[SEP]"))


def test_cli_replays_llama_cpp_on_the_users_texts(tmp_path, capsys):
    _, ckpt = _checkpoint(sentencepiece_dir(), "ckpt-cli-spm")
    texts = tmp_path / "check.jsonl"
    texts.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in (MIXED, ZH_MORE)), "utf-8")
    rc = main(["export", "gguf", str(ckpt), str(tmp_path / "m.gguf"), "--dtype", "f16", "--check-text", str(texts)])
    assert rc == 0
    vocab = TextTokenizer.from_dir(sentencepiece_dir()).vocab_size
    assert (
        f"tokenizer llama, llama.cpp's algorithm replayed on {5 + vocab + 2:,} texts, same ids"
        in capsys.readouterr().out
    )


def _doctor_byte_level(path: Path, change) -> Path:
    shutil.copytree(byte_level_dir(), path)
    doc = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
    change(doc)
    (path / "tokenizer.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return path


def _rename_vocab_entry(doc: dict, old: str, new: str) -> None:
    doc["model"]["vocab"][new] = doc["model"]["vocab"].pop(old)
    doc["model"]["merges"] = [m for m in doc["model"]["merges"] if old not in (m if isinstance(m, list) else [m])]


PREFIX_SPACE = {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True}
METASPACE_FIRST = {"type": "Sequence", "pretokenizers": [{"type": "Metaspace"}, {"type": "ByteLevel"}]}


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: d.update(pre_tokenizer=PREFIX_SPACE), "no llama.cpp name"),
        (lambda d: d.update(pre_tokenizer=METASPACE_FIRST), "no llama.cpp name"),
        (lambda d: _rename_vocab_entry(d, "Ā", "not-a-byte"), "without a token for byte 0x00"),
        (lambda d: d["model"].update(type="WordPiece"), "WordPiece tokenizer is not exported"),
    ],
)
def test_tokenizers_llama_cpp_has_no_exact_equivalent_for_are_refused(tmp_path, change, match):
    from skyloom.model.gguf_export import gguf_tokenizer

    with pytest.raises(GGUFRefused, match=match):
        gguf_tokenizer(_doctor_byte_level(tmp_path / "tok", change), 500)
