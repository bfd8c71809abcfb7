"""Add a chat template's special tokens to a tokenizer and grow the model's embedding/output rows to match.

New rows start at the mean of the existing (trained) embedding rows — and the mean output row for an untied
head — so a new token begins as an "average" token instead of a random direction with an outsized logit
(Hewitt 2021, "Initializing new word embeddings"). Rows of tokens the tokenizer already had stay bit-identical.
Model rows past the old tokenizer's size (vocabulary padding that was never trained) are treated as new.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from skyloom.model.transformer import Transformer


def add_special_tokens(
    src_dir: str | Path, out_dir: str | Path, tokens: Sequence[str], chat_template: str | None = None
) -> list[int]:
    """Copy the tokenizer in `src_dir` to `out_dir` with `tokens` added as special tokens (idempotent: tokens
    already present keep their id); writes `chat_template` into tokenizer_config.json. Returns the tokens' ids."""
    from tokenizers import AddedToken, Tokenizer

    src, out = Path(src_dir), Path(out_dir)
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    missing = [t for t in tokens if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    out.mkdir(parents=True, exist_ok=True)
    for name in ("special_tokens_map.json", "vocab_breakdown.json"):
        if (src / name).is_file() and src.resolve() != out.resolve():
            shutil.copyfile(src / name, out / name)
    tmp = out / "tokenizer.json.tmp"
    tok.save(str(tmp))
    cfg_file = src / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
    cfg.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    extra = [t for t in cfg.get("additional_special_tokens", []) if t not in tokens]
    if tokens:
        cfg["additional_special_tokens"] = extra + list(tokens)
    if chat_template is not None:
        cfg["chat_template"] = chat_template
        cfg["split_special_tokens"] = False  # the template's own [SEP] must be read as a token (as in an export)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out / "tokenizer.json")
    return [tok.token_to_id(t) for t in tokens]


@torch.no_grad()
def grow_vocab(model: Transformer, new_vocab: int, old_vocab: int) -> Transformer:
    """A copy of `model` with `new_vocab` rows; rows ≥ `old_vocab` (new or never-trained) set to the mean of
    rows < `old_vocab`; rows < `old_vocab` unchanged. `old_vocab` is the size of the tokenizer it was trained with."""
    cfg = model.config
    if new_vocab < cfg.vocab_size:
        raise ValueError(f"cannot shrink the vocabulary ({cfg.vocab_size} → {new_vocab})")
    old_vocab = min(old_vocab, cfg.vocab_size)
    grown = Transformer(replace(cfg, vocab_size=new_vocab)).to(next(model.parameters()).device)
    state = model.state_dict()
    new_state = {}
    for name, value in grown.state_dict().items():
        old = state.get(name)
        if name in ("tok_emb.weight", "output.weight") and old is not None:
            rows = old.new_empty((new_vocab, old.shape[1]))
            rows[:old_vocab] = old[:old_vocab]
            rows[old_vocab:] = old[:old_vocab].float().mean(0).to(old.dtype)
            new_state[name] = rows
        elif old is not None:
            new_state[name] = old
        else:
            new_state[name] = value
    grown.load_state_dict(new_state)
    if cfg.tie_embeddings:
        grown.output.weight = grown.tok_emb.weight
    return grown
