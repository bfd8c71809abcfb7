"""The model owns decoding: for every registered architecture (and MoE), cached incremental decoding through
`Transformer.forward(..., cache=)` gives the full forward's logits, and greedy generation with the cache equals a
no-cache loop; a block type whose forward forgets (or bends) the cache path is caught. Architectures are read from
the registry (model/arch.py), never compared by name."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from skyloom.config import build
from skyloom.model.accounting import count_params
from skyloom.model.arch import ARCHS, arch_spec
from skyloom.model.config import ModelConfig
from skyloom.model.kv_cache import left_padded_positions, padded_causal_mask
from skyloom.model.transformer import Block, Transformer
from tests.test_eval_fixtures import tiny_model

SRC = Path(__file__).resolve().parents[1] / "src" / "skyloom"


def tiny_config(arch: str, moe: bool = False, **overrides) -> ModelConfig:
    """A 2-layer model of a registered architecture, with grouped-query attention where it allows it."""
    data = {
        "arch": arch,
        "vocab_size": 97,
        "dim": 32,
        "n_layers": 2,
        "n_heads": 4,
        "max_seq_len": 64,
        "n_kv_heads": 2 if arch_spec(arch).grouped_query else None,
    }
    if moe:
        data["moe"] = {"n_experts": 4, "top_k": 2}
    data.update(overrides)
    return build(ModelConfig, data)


def build_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(cfg).double().eval()


def assert_cached_decoding_matches(
    model: Transformer, ids: torch.Tensor, valid: torch.Tensor, prefill: int, atol: float = 1e-5
) -> None:
    """Prefill `prefill` positions, then one position per call; every real token's logits must equal the full
    forward over that row's real tokens alone (AssertionError otherwise)."""
    cache = model.build_kv_cache(ids.shape[0], 4)  # small capacity: exercises growth
    with torch.no_grad():
        chunks = [model(ids[:, :prefill], cache=cache, valid=valid[:, :prefill])]
        chunks += [
            model(ids[:, t : t + 1], cache=cache, valid=valid[:, t : t + 1]) for t in range(prefill, ids.shape[1])
        ]
        got = torch.cat(chunks, dim=1)
        for row in range(ids.shape[0]):
            full = model(ids[row][valid[row]][None])[0]
            torch.testing.assert_close(got[row][valid[row]], full, atol=atol, rtol=atol)


def left_padded_batch(vocab: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (3, 20), generator=generator)
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[0, :5] = False  # left padding on two rows
    valid[2, :9] = False
    return ids, valid


def greedy_with_cache(model: Transformer, prompt: list[int], steps: int) -> list[int]:
    cache = model.build_kv_cache(1, len(prompt))
    out: list[int] = []
    with torch.no_grad():
        logits = model(torch.tensor([prompt]), cache=cache)
        for _ in range(steps):
            out.append(int(logits[0, -1].argmax()))
            logits = model(torch.tensor([[out[-1]]]), cache=cache)
    return out


def greedy_without_cache(model: Transformer, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


VARIANTS = [(arch, False) for arch in ARCHS] + [(arch, True) for arch in ARCHS if ARCHS[arch].moe_experts]


@pytest.mark.parametrize("arch, moe", VARIANTS, ids=[f"{a}{'-moe' if m else ''}" for a, m in VARIANTS])
def test_cached_decoding_equals_the_full_forward(arch, moe):
    for bias in (False,) if moe else (False, True):
        model = build_model(tiny_config(arch, moe, bias=bias))
        assert model.moe_layers() if moe else not model.moe_layers()
        ids, valid = left_padded_batch(model.config.vocab_size)
        assert_cached_decoding_matches(model, ids, valid, prefill=12)


@pytest.mark.parametrize("arch, moe", VARIANTS, ids=[f"{a}{'-moe' if m else ''}" for a, m in VARIANTS])
def test_greedy_generation_with_the_cache_equals_a_no_cache_loop(arch, moe):
    model = build_model(tiny_config(arch, moe, bias=not moe), seed=2)
    prompt = [5, 17, 3, 42, 8, 8, 61]
    expected = greedy_without_cache(model, prompt, 16)
    assert greedy_with_cache(model, prompt, 16) == expected
    assert len(set(expected)) > 1  # a constant answer would not show a position mix-up


def test_kv_cache_forward_equals_the_full_forward():
    """Moved from tests/test_eval_lm.py (the deleted eval/kv_cache.py's check), now through the model's forward:
    float32, the `tiny` preset with GQA, left padding, prefill then single steps."""
    model = tiny_model(seed=3, n_kv_heads=2)
    ids = torch.randint(4, 2048, (3, 40))
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[0, :7] = False  # left padding on two rows
    valid[2, :19] = False
    cache = model.build_kv_cache(3, 8)  # small capacity: exercises growth
    with torch.no_grad():
        prefill = model(ids[:, :30], cache=cache, valid=valid[:, :30])
        steps = [model(ids[:, t : t + 1], cache=cache, valid=valid[:, t : t + 1]) for t in range(30, 40)]
        for row in range(3):
            real = ids[row][valid[row]]
            full = model(real[None])[0]
            got = torch.cat([prefill[row], *[s[row] for s in steps]])[valid[row]]
            torch.testing.assert_close(got, full, atol=1e-4, rtol=1e-4)
        # and the uncached left-padded forward (SkyloomLM's kv_cache=False path) agrees with both
        padded = model(ids, position_ids=left_padded_positions(valid), attn_mask=padded_causal_mask(valid))
        got = torch.cat([prefill, *steps], dim=1)
        torch.testing.assert_close(padded[valid], got[valid], atol=1e-4, rtol=1e-4)


class ForgetfulBlock(Block):
    """A new block type that never passes its cache slot on: decoding would attend over the new token only."""

    def forward(self, x, rope, attn_mask, kv=None):
        return super().forward(x, rope, attn_mask)


class DivergentBlock(Block):
    """Goes through the cache but drops the rotary positions on that path: the drift a copied cached_forward allowed."""

    def forward(self, x, rope, attn_mask, kv=None):
        return super().forward(x, None if kv is not None else rope, attn_mask, kv)


def _register_dummy(monkeypatch, name: str, block) -> Transformer:
    monkeypatch.setitem(ARCHS, name, dataclasses.replace(ARCHS["llama"], name=name, block=block))
    cfg = ModelConfig(arch=name, vocab_size=97, dim=32, n_layers=2, n_heads=4, max_seq_len=64)
    cfg.validate()
    return build_model(cfg)


def test_a_block_that_forgets_the_cache_path_is_refused(monkeypatch):
    model = _register_dummy(monkeypatch, "forgetful", ForgetfulBlock)
    ids, valid = left_padded_batch(97)
    with pytest.raises(RuntimeError, match=r"layers \[0, 1\] did not use the KV cache"):
        assert_cached_decoding_matches(model, ids, valid, prefill=12)


def test_a_block_whose_cache_path_diverges_fails_the_equality_check(monkeypatch):
    model = _register_dummy(monkeypatch, "divergent", DivergentBlock)
    ids, valid = left_padded_batch(97)
    with pytest.raises(AssertionError):
        assert_cached_decoding_matches(model, ids, valid, prefill=12)


def test_the_cache_rejects_a_mask_or_positions_and_valid_needs_a_cache():
    model = build_model(tiny_config("llama"))
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="come from the cache"):
        model(ids, cache=model.build_kv_cache(1, 4), position_ids=torch.arange(3)[None])
    with pytest.raises(ValueError, match="without one pass attn_mask"):
        model(ids, valid=torch.ones_like(ids, dtype=torch.bool))


def test_decoding_past_learned_positions_is_refused_naming_the_length():
    learned = [name for name, spec in ARCHS.items() if spec.learned_positions]
    for arch in learned:
        model = build_model(tiny_config(arch, max_seq_len=8))
        cache = model.build_kv_cache(1, 8)
        with torch.no_grad():
            model(torch.tensor([[1, 2, 3, 4, 5, 6, 7]]), cache=cache)
            model(torch.tensor([[8]]), cache=cache)  # position 7: the last one
            with pytest.raises(ValueError, match="sequence of 9 tokens exceeds .* max_seq_len=8"):
                model(torch.tensor([[9]]), cache=cache)
    assert learned


@pytest.mark.parametrize("arch, moe", VARIANTS, ids=[f"{a}{'-moe' if m else ''}" for a, m in VARIANTS])
def test_parameter_count_from_the_spec_equals_the_built_model(arch, moe):
    for tie, bias in ((False, False), (True, False), (False, not moe)):
        cfg = tiny_config(arch, moe, tie_embeddings=tie, bias=bias)
        assert count_params(cfg).total == sum(p.numel() for p in Transformer(cfg).parameters())


def test_no_architecture_is_compared_by_name_outside_the_registry():
    """`arch ==`/`!=` anywhere in src/ would bypass the registry (a new architecture would silently miss it)."""
    pattern = re.compile(r"\barch\s*[!=]=|[!=]=\s*\w*\.?arch\b")
    offenders = [
        f"{path.relative_to(SRC)}:{n}"
        for path in SRC.rglob("*.py")
        if path.name != "arch.py"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
