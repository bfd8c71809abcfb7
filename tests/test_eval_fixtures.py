"""Builders shared by the evaluation tests: a BPE tokenizer trained on real text, tiny checkpoints, a tiny trainer.

Everything is built once per test session (cached functions writing into one temporary directory), so
the evaluation test modules can all use the same tokenizer and models. The tests at the bottom check the
builders themselves: both tokenizer front-ends (skyloom's and transformers') see the same ids.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from skyloom.config import build
from skyloom.model.checkpoint import save_model
from skyloom.model.config import ModelConfig
from skyloom.model.transformer import Transformer
from skyloom.tokenizer import TextTokenizer
from tests.conftest import SHARED_DATA

_ROOT = Path(tempfile.mkdtemp(prefix="skyloom-eval-tests-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)

SPECIALS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
VOCAB = 2048


def _training_texts() -> list[str]:
    texts = []
    with open(SHARED_DATA / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= 500:
                break
            r = json.loads(line)
            texts.append(r["question"] + " " + r["answer"])
    for name in ("zh_general.jsonl", "zh_tech.jsonl"):
        with open(SHARED_DATA / "skywork" / name, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i >= 12:
                    break
                texts.append(json.loads(line)["text"][:3000])
    for folder in ("ceval/dev", "cmmlu/dev"):
        for path in sorted((SHARED_DATA / folder).glob("*.csv"))[:30]:
            texts.append(path.read_text(encoding="utf-8"))
    return texts


@functools.cache
def tokenizer_dir() -> Path:
    """A byte-level BPE (2,048 entries) trained on GSM8K, Skywork Chinese domain text and C-Eval/CMMLU."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=SPECIALS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=list(SPECIALS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_texts(), trainer)
    out = _ROOT / "tokenizer"
    out.mkdir()
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 4096, **SPECIALS}
    (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return out


def tokenizer() -> TextTokenizer:
    return TextTokenizer.from_dir(tokenizer_dir())


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    """A 2-layer model of the `tiny` shape over the test tokenizer (long context for few-shot prompts)."""
    # (for training in tests pass dim=64, ffn_dim=176: a quarter of the compute, still learns in seconds)
    torch.manual_seed(seed)
    cfg = {"preset": "tiny", "vocab_size": VOCAB, "n_layers": 2, "max_seq_len": 2048, **overrides}
    return Transformer(build(ModelConfig, cfg)).eval()


def save_checkpoint(model: Transformer, out: Path) -> Path:
    save_model(model, out)
    tokenizer().copy_files_to(out)
    return out


@functools.cache
def tiny_checkpoint(seed: int = 0) -> Path:
    """A randomly initialised tiny checkpoint directory with its tokenizer files."""
    return save_checkpoint(tiny_model(seed), _ROOT / f"tiny-{seed}")


@functools.cache
def tiny_hf_dir(seed: int = 0) -> Path:
    """The same weights exported as a Hugging Face LlamaForCausalLM directory (tokenizer included)."""
    from skyloom.model.checkpoint import load_model
    from skyloom.model.hf import export_hf

    ckpt = tiny_checkpoint(seed)
    return export_hf(load_model(ckpt), _ROOT / f"tiny-{seed}-hf", source_dir=ckpt)


def train_tiny(
    model: Transformer,
    texts: list[str],
    steps: int,
    lr: float = 1e-2,
    batch: int = 8,
    seq_len: int = 128,
    seed: int = 0,
    keep: str = "head",
) -> Transformer:
    """A minimal next-token training loop (AdamW, CPU): enough to make a tiny model learn or memorise text.

    Each text is cut to `seq_len` tokens, its first (`keep="head"`) or last (`keep="tail"`) ones.
    """
    tok = tokenizer()
    docs = [ids[:seq_len] if keep == "head" else ids[-seq_len:] for ids in tok.encode_batch(texts)]
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    model.train()
    pad = tok.pad_id
    for _step in range(steps):
        pick = torch.randint(0, len(docs), (batch,), generator=generator).tolist()
        width = max(len(docs[i]) for i in pick)
        ids = torch.full((batch, width), pad, dtype=torch.long)
        for row, i in enumerate(pick):
            ids[row, : len(docs[i])] = torch.as_tensor(docs[i])
        logits = model(ids[:, :-1])
        targets = ids[:, 1:].masked_fill(ids[:, 1:] == pad, -100)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


def workdir(name: str) -> Path:
    path = _ROOT / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_tokenizer_fixture_has_the_special_tokens():
    tok = tokenizer()
    assert tok.vocab_size == VOCAB
    assert {tok.bos_id, tok.eos_id, tok.pad_id} == {1, 2, 3}
    text = "Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72 危机的韩国半导体"
    assert tok.decode(tok.encode(text)) == text


def test_transformers_tokenizer_gives_the_same_ids():
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir()), local_files_only=True)
    tok = tokenizer()
    text = "以下是中国关于计算机网络考试的单项选择题 Question: 12 + 30?\nAnswer: 42"
    assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert hf.eos_token_id == tok.eos_id and hf.bos_token_id == tok.bos_id
