"""Hugging Face interop for the dense model: export to / import from a `LlamaForCausalLM` directory.

MoE models go to / come from `MixtralForCausalLM` instead (model/hf_mixtral.py); the functions here dispatch.

Export and import need only `safetensors` and JSON; `transformers` (the `hf` extra) is needed only to
*run* the exported model (e.g. `skyloom export hf --verify`). Our RoPE uses the same rotate-half
layout as `LlamaForCausalLM`, so the weight mapping is a renaming, no q/k permutation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from skyloom.config import build
from skyloom.model.arch import arch_spec
from skyloom.model.config import ModelConfig
from skyloom.model.transformer import Transformer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")

# skyloom parameter names → Hugging Face Llama names (Mixtral shares the attention and top-level ones)
ATTN_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_LAYER_MAP = {
    **ATTN_MAP,
    "ffn.w1.weight": "mlp.gate_proj.weight",
    "ffn.w3.weight": "mlp.up_proj.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
}
TOP_MAP = {
    "tok_emb.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def require_transformers(purpose: str) -> Any:
    """Import transformers or fail with the extra to install."""
    try:
        import transformers
    except ImportError:
        raise ImportError(f"{purpose} needs Hugging Face transformers: pip install 'skyloom[hf]'") from None
    return transformers


def to_hf_name(name: str) -> str:
    if name in TOP_MAP:
        return TOP_MAP[name]
    _, index, rest = name.split(".", 2)  # layers.{i}.{rest}
    return f"model.layers.{index}.{_LAYER_MAP[rest]}"


def from_hf_name(name: str) -> str:
    for ours, theirs in TOP_MAP.items():
        if name == theirs:
            return ours
    reverse = {v: k for k, v in _LAYER_MAP.items()}
    if name.startswith("model.layers."):
        _, _, index, rest = name.split(".", 3)
        if rest in reverse:
            return f"layers.{index}.{reverse[rest]}"
    raise KeyError(name)


def hf_config(cfg: ModelConfig, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.json for LlamaForCausalLM with the same shape as `cfg`."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,  # read by transformers 4.x and most other runtimes
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},  # written by transformers 5
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": cfg.init_std,
        "dtype": "float32",
        **(extra or {}),
    }


def export_hf(model: Transformer, out_dir: str | Path, source_dir: str | Path | None = None) -> Path:
    """Write `model` as a Hugging Face LlamaForCausalLM directory (MixtralForCausalLM for an MoE model);
    copies tokenizer files from `source_dir`."""
    cfg = model.config
    if cfg.moe is not None:
        from skyloom.model.hf_mixtral import export_mixtral

        return export_mixtral(model, out_dir, source_dir)
    if not arch_spec(cfg).exports_hf(cfg):
        raise ValueError(
            f"only the LLaMA architecture without biases exports to LlamaForCausalLM (got arch={cfg.arch!r}, "
            f"bias={cfg.bias})"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {}
    for name, tensor in model.state_dict().items():
        if cfg.tie_embeddings and name == "output.weight":
            continue
        state[to_hf_name(name)] = tensor.detach().contiguous().cpu()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    extra = write_tokenizer_and_generation_config(out, cfg, source_dir)
    (out / "config.json").write_text(json.dumps(hf_config(cfg, extra), indent=2) + "\n", encoding="utf-8")
    return out


def generation_ids(source: Path | None) -> dict[str, Any]:
    """bos/eos/pad ids for config.json and generation_config.json, from the tokenizer in `source`.

    `eos_token_id` lists EOS plus the chat template's turn end (`[SEP]` after `skyloom sft`), so `generate` in
    transformers, vLLM and TGI stops where skyloom's generation stops. Every key is written even when unknown
    (None): an absent `bos_token_id` makes transformers assume Llama's 1. `pad_token_id` falls back to EOS, as
    skyloom's own batching does."""
    ids: dict[str, Any] = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if source is None or not (source / "tokenizer.json").is_file():
        return ids
    from skyloom.tokenizer.chat import chat_stop_tokens
    from skyloom.tokenizer.loading import TextTokenizer

    tok = TextTokenizer.from_dir(source)
    tok_cfg = source / "tokenizer_config.json"
    chat_template = json.loads(tok_cfg.read_text(encoding="utf-8")).get("chat_template") if tok_cfg.is_file() else None
    stops = [tok.tokenizer.token_to_id(t) for t in chat_stop_tokens(chat_template, tok.tokenizer.token_to_id)]
    eos = list(dict.fromkeys(i for i in [tok.eos_id, *stops] if i is not None))
    ids["bos_token_id"] = tok.bos_id
    ids["eos_token_id"] = eos[0] if len(eos) == 1 else (eos or None)
    ids["pad_token_id"] = tok.pad_id if tok.pad_id is not None else tok.eos_id
    return ids


def write_tokenizer_and_generation_config(out: Path, cfg: ModelConfig, source_dir: str | Path | None) -> dict[str, Any]:
    """Copy the tokenizer files from `source_dir` (tokenizer_config.json with `model_max_length` set to the model's
    context, so transformers truncates and warns where the model ends, and `split_special_tokens` as skyloom
    encodes) and write generation_config.json; returns the special-token ids config.json states too."""
    source = None if source_dir is None else Path(source_dir)
    if source is not None:
        for name in TOKENIZER_FILES:
            src = source / name
            if not src.is_file():
                continue
            if name == "tokenizer_config.json":
                tok_cfg = json.loads(src.read_text(encoding="utf-8"))
                tok_cfg["model_max_length"] = cfg.max_seq_len
                # text is text (as skyloom encodes it), except that a chat template's control tokens must be read
                # as tokens; its Jinja refuses them typed in a message instead (tokenizer/chat.py)
                tok_cfg["split_special_tokens"] = not tok_cfg.get("chat_template")
                text = json.dumps(tok_cfg, indent=1, ensure_ascii=False) + "\n"
                (out / name).write_text(text, encoding="utf-8")
            else:
                shutil.copyfile(src, out / name)
    ids = generation_ids(source)
    (out / "generation_config.json").write_text(json.dumps(ids, indent=2) + "\n", encoding="utf-8")
    return ids


def config_from_hf(hf: dict[str, Any], source: str) -> ModelConfig:
    """ModelConfig from a Llama (or Mixtral) config.json; refuses features skyloom's model does not have."""
    if hf.get("model_type") == "mixtral":
        from skyloom.model.hf_mixtral import config_from_mixtral

        return config_from_mixtral(hf, source)
    if hf.get("model_type") != "llama":
        raise ValueError(f"{source}: model_type {hf.get('model_type')!r} is not supported (only 'llama')")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise ValueError(f"{source}: {key}=true is not supported")
    return build(ModelConfig, llama_fields(hf, source, norm_eps=1e-6, rope_theta=10000.0), prefix="model")


def llama_fields(hf: dict[str, Any], source: str, norm_eps: float, rope_theta: float) -> dict[str, Any]:
    """The ModelConfig fields a Llama-family config.json (Llama, Mixtral) shares, after refusing what skyloom's
    attention cannot do; `norm_eps` and `rope_theta` are the family's defaults for keys the file leaves out.
    `rope_theta` is read at the top level or, as newer `transformers` versions write it, in `rope_parameters`."""
    if hf.get("rope_scaling"):
        raise ValueError(f"{source}: rope_scaling {hf['rope_scaling']!r} is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (only 'silu')")
    dim, heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, dim // heads):
        raise ValueError(f"{source}: head_dim {hf['head_dim']} != hidden_size / num_attention_heads")
    theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta") or rope_theta
    return dict(
        arch="llama",
        vocab_size=hf["vocab_size"],
        dim=dim,
        ffn_dim=hf["intermediate_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads,
        max_seq_len=hf.get("max_position_embeddings", 4096),
        norm_eps=float(hf.get("rms_norm_eps", norm_eps)),
        rope_theta=float(theta),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def _read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = (
            f" (found {pickles[0]}: pickled weights are never loaded; convert them to safetensors)" if pickles else ""
        )
        raise ValueError(f"{path}: no safetensors weights{hint}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(path / name)))
    return state


def load_hf_llama(path: str | Path, device: str | torch.device = "cpu") -> Transformer:
    """Build a skyloom Transformer from a Hugging Face Llama (or Mixtral) directory (safetensors only)."""
    p = Path(path)
    hf = json.loads((p / "config.json").read_text(encoding="utf-8"))
    if hf.get("model_type") == "mixtral":
        from skyloom.model.hf_mixtral import load_hf_mixtral

        return load_hf_mixtral(p, device=device)
    cfg = config_from_hf(hf, str(p / "config.json"))
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device=device)
    from skyloom.model.checkpoint import load_state_into

    state = {}
    for name, tensor in _read_hf_weights(p).items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        try:
            state[from_hf_name(name)] = tensor.to(device=device, dtype=torch.float32)
        except KeyError:
            raise ValueError(f"{p}: unexpected weight {name!r}") from None
    load_state_into(model, state, str(p))
    if cfg.tie_embeddings:
        model.output.weight = model.tok_emb.weight
    return model
