"""Shared pieces for the SFT/SkyMath tests: a small BPE trained on real GSM8K + Alpaca text and a tiny base model.

(No tests here; the fixtures are imported by tests/test_sft*.py and tests/test_skymath*.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY_SFT_MODEL = dict(arch="llama", vocab_size=1024, dim=64, n_layers=2, n_heads=4, ffn_dim=192, max_seq_len=256)


def make_tiny_base(shared_data: Path, root: Path, vocab_size: int = 1024) -> Path:
    """A tokenizer trained on GSM8K train + the Chinese Alpaca sample, and a randomly initialised tiny model
    saved as a skyloom checkpoint beside it (the 'pretrained base' of the tests)."""
    import torch

    from skyloom.config import build
    from skyloom.model.checkpoint import save_model
    from skyloom.model.config import ModelConfig
    from skyloom.model.transformer import Transformer
    from skyloom.tokenizer.loading import TextTokenizer
    from skyloom.train.prepare import train_bpe

    base = root / "base"
    if (base / "model.safetensors").is_file():
        return base
    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "corpus.txt"
    lines = []
    with open(shared_data / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
        for _i, line in zip(range(500), f):
            r = json.loads(line)
            lines.append(r["question"] + "\n" + r["answer"])
    with open(shared_data / "skywork" / "alpaca_data_zh_51k_sample_1k.jsonl", encoding="utf-8") as f:
        for _, line in zip(range(200), f):
            r = json.loads(line)
            lines.append(r["instruction"] + "\n" + r["output"])
    corpus.write_text("\n\n".join(lines), encoding="utf-8")
    train_bpe([corpus], base, vocab_size=vocab_size)
    tok = TextTokenizer.from_dir(base)
    torch.manual_seed(0)
    model = Transformer(build(ModelConfig, dict(TINY_SFT_MODEL, vocab_size=tok.vocab_size)))
    save_model(model, base)
    return base


@pytest.fixture(scope="session")
def tiny_base(shared_data: Path, tmp_path_factory) -> Path:
    return make_tiny_base(shared_data, tmp_path_factory.getbasetemp() / "sft_base")
