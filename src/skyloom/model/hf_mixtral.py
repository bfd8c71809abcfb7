"""Hugging Face interop for MoE checkpoints: export to / import from a `MixtralForCausalLM` directory.

Mixtral's router is skyloom's gate with everything optional switched off: logits = W x (no bias), softmax over
all experts in fp32, top-k, the k probabilities renormalised by their sum, no capacity (never drops). So the
exported model reproduces skyloom's logits exactly when skyloom's config has no gating logit normalisation and no
gate bias (or an all-zero one), in eval mode (dropless unless `drop_in_eval`; `dropless` makes training mode match
too). Gate normalisation or a non-zero bias cannot be expressed in Mixtral and are refused; every block must be an
MoE block (`every_n_layers: 1`).

The weights are written in Mixtral's original on-disk layout (`block_sparse_moe.gate`,
`block_sparse_moe.experts.{j}.w1/w2/w3`), which every `transformers` version and other runtimes read;
import also accepts the fused layout newer `transformers` versions save (`mlp.gate`, `mlp.experts.gate_up_proj`,
`mlp.experts.down_proj`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from skyloom.config import build
from skyloom.model.arch import arch_spec
from skyloom.model.config import ModelConfig
from skyloom.model.hf import ATTN_MAP, TOP_MAP
from skyloom.model.transformer import Transformer


def check_mixtral_compatible(model: Transformer) -> list[str]:
    """Raise if `model` cannot be written as Mixtral; return notes on behaviour that changes (capacity)."""
    cfg = model.config
    moe = cfg.moe
    if moe is None:
        raise ValueError("not an MoE model (export dense models as LlamaForCausalLM)")
    if not arch_spec(cfg).supports_moe(cfg):
        raise ValueError(f"Mixtral needs arch=llama without biases (got arch={cfg.arch!r}, bias={cfg.bias})")
    if moe.every_n_layers != 1:
        raise ValueError(
            f"Mixtral has experts in every layer; moe.every_n_layers={moe.every_n_layers} cannot be expressed"
        )
    if moe.gate_norm:
        raise ValueError(
            "gating logit normalisation (moe.gate_norm) has no Mixtral equivalent; the exported router "
            "would compute different probabilities"
        )
    notes = []
    for i, layer in model.moe_layers():
        if layer.gate.bias is not None and bool(layer.gate.bias.detach().ne(0).any()):
            raise ValueError(f"layer {i}: the gate bias is non-zero and Mixtral's router has no bias")
    if not moe.dropless and moe.drop_in_eval:
        notes.append(
            f"Mixtral never drops tokens; this model applies capacity_factor={moe.capacity_factor} in eval "
            "mode too (drop_in_eval), so the exported model matches it only where no expert overflows"
        )
    return notes


def mixtral_config(cfg: ModelConfig, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.json for MixtralForCausalLM with the shape of `cfg`: the Llama fields, experts as the FFN."""
    from skyloom.model.hf import hf_config

    out = hf_config(cfg)
    for key in ("attention_bias", "mlp_bias"):  # not Mixtral config keys
        del out[key]
    moe = cfg.moe
    out.update(
        {
            "architectures": ["MixtralForCausalLM"],
            "model_type": "mixtral",
            "intermediate_size": cfg.expert_ffn_dim,
            "sliding_window": None,
            "num_local_experts": moe.n_experts,
            "num_experts_per_tok": moe.top_k,
            "output_router_logits": False,
            "router_aux_loss_coef": moe.aux_coef,
            "router_jitter_noise": 0.0,
            "attention_dropout": 0.0,
            **(extra or {}),
        }
    )
    return out


def export_mixtral(model: Transformer, out_dir: str | Path, source_dir: str | Path | None = None) -> Path:
    """Write `model` as a Hugging Face MixtralForCausalLM directory (config.json + model.safetensors, plus the
    tokenizer files and generation_config.json from `source_dir`, as `export_hf`)."""
    from skyloom.model.hf import write_tokenizer_and_generation_config

    cfg = model.config
    check_mixtral_compatible(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        t = tensor.detach().contiguous().cpu()
        if name in TOP_MAP:
            if not (cfg.tie_embeddings and name == "output.weight"):
                state[TOP_MAP[name]] = t
            continue
        _, index, rest = name.split(".", 2)
        prefix = f"model.layers.{index}"
        if rest in ATTN_MAP:
            state[f"{prefix}.{ATTN_MAP[rest]}"] = t
        elif rest == "ffn.gate.weight":
            state[f"{prefix}.block_sparse_moe.gate.weight"] = t
        elif rest in ("ffn.w1", "ffn.w2", "ffn.w3"):
            for j in range(t.shape[0]):
                state[f"{prefix}.block_sparse_moe.experts.{j}.{rest[-2:]}.weight"] = t[j].contiguous()
        elif rest in ("ffn.gate.bias", "ffn.aux_coef"):
            continue  # checked zero / a training-only coefficient
        else:
            raise ValueError(f"no Mixtral name for weight {name!r}")
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    extra = write_tokenizer_and_generation_config(out, cfg, source_dir)
    (out / "config.json").write_text(json.dumps(mixtral_config(cfg, extra), indent=2) + "\n", encoding="utf-8")
    return out


def config_from_mixtral(hf: dict[str, Any], source: str) -> ModelConfig:
    """ModelConfig from a Mixtral config.json: a dropless top-k MoE without gate bias or normalisation.

    Mixtral's training loss is the Switch form (pooled over layers in `transformers`); the imported config uses
    the per-layer Switch form with `router_aux_loss_coef` as the fixed coefficient.
    """
    if hf.get("model_type") != "mixtral":
        raise ValueError(f"{source}: model_type {hf.get('model_type')!r} is not 'mixtral'")
    if hf.get("sliding_window") not in (None, 0) and hf["sliding_window"] < hf.get("max_position_embeddings", 0):
        raise ValueError(f"{source}: sliding-window attention ({hf['sliding_window']}) is not supported")
    from skyloom.model.hf import llama_fields

    fields = llama_fields(hf, source, norm_eps=1e-5, rope_theta=1e6)
    fields["moe"] = dict(
        n_experts=hf["num_local_experts"],
        top_k=hf["num_experts_per_tok"],
        every_n_layers=1,
        dropless=True,
        gate_bias=False,
        gate_norm=False,
        aux_loss="switch",
        aux_coef=float(hf.get("router_aux_loss_coef", 0.02)),
    )
    return build(ModelConfig, fields, prefix="model")


_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def mixtral_state_to_skyloom(state: dict[str, torch.Tensor], cfg: ModelConfig, source: str) -> dict[str, torch.Tensor]:
    """Rename (and stack) Mixtral weights, original or fused layout, into skyloom's names."""
    reverse_top = {v: k for k, v in TOP_MAP.items()}
    reverse_attn = {v: k for k, v in ATTN_MAP.items()}
    n = cfg.moe.n_experts
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    for name, t in state.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if name in reverse_top:
            out[reverse_top[name]] = t
            continue
        m = _LAYER.match(name)
        if m is None:
            raise ValueError(f"{source}: unexpected weight {name!r}")
        i, rest = int(m.group(1)), m.group(2)
        rest = rest.replace("block_sparse_moe.", "mlp.")
        if rest in reverse_attn:
            out[f"layers.{i}.{reverse_attn[rest]}"] = t
        elif rest == "mlp.gate.weight":
            out[f"layers.{i}.ffn.gate.weight"] = t
        elif rest == "mlp.experts.gate_up_proj":  # fused [n, 2H, D]: gate (w1) then up (w3)
            w1, w3 = t.chunk(2, dim=1)
            out[f"layers.{i}.ffn.w1"], out[f"layers.{i}.ffn.w3"] = w1.contiguous(), w3.contiguous()
        elif rest == "mlp.experts.down_proj":
            out[f"layers.{i}.ffn.w2"] = t
        else:
            em = re.match(r"^mlp\.experts\.(\d+)\.(w[123])\.weight$", rest)
            if em is None:
                raise ValueError(f"{source}: unexpected weight {name!r}")
            experts.setdefault((i, em.group(2)), {})[int(em.group(1))] = t
    for (i, w), parts in experts.items():
        if sorted(parts) != list(range(n)):
            raise ValueError(f"{source}: layer {i} {w}: experts {sorted(parts)} found, expected 0..{n - 1}")
        out[f"layers.{i}.ffn.{w}"] = torch.stack([parts[j] for j in range(n)])
    for i in range(cfg.n_layers):
        out[f"layers.{i}.ffn.aux_coef"] = torch.tensor(float(cfg.moe.aux_coef))
    return out


def load_hf_mixtral(path: str | Path, device: str | torch.device = "cpu") -> Transformer:
    """Build a skyloom MoE Transformer from a Hugging Face Mixtral directory (safetensors only)."""
    from skyloom.model.checkpoint import load_state_into
    from skyloom.model.hf import _read_hf_weights

    p = Path(path)
    hf = json.loads((p / "config.json").read_text(encoding="utf-8"))
    cfg = config_from_mixtral(hf, str(p / "config.json"))
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device=device)
    state = mixtral_state_to_skyloom(_read_hf_weights(p), cfg, str(p))
    load_state_into(model, {k: v.to(device=device, dtype=torch.float32) for k, v in state.items()}, str(p))
    if cfg.tie_embeddings:
        model.output.weight = model.tok_emb.weight
    return model
