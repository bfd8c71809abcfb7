"""skyloom's model checkpoint format: a directory with `model.safetensors` + `model.json`.

`model.json` holds {"format": "skyloom-model", "version": 1, "model": <ModelConfig fields>, ...metadata}.
Training checkpoints are the same directory with more files beside (optimizer, loader, RNG state),
so `load_model` opens both. A Hugging Face Llama directory (config.json + *.safetensors) loads too.
Weights are never unpickled. A directory with a manifest.json (a training checkpoint) is verified against it
first (`model/manifest.py`); `verify=False` skips that.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from skyloom.config import build, to_dict
from skyloom.model.config import ModelConfig
from skyloom.model.manifest import CheckpointError, ensure_intact
from skyloom.model.transformer import Transformer

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"
FORMAT = "skyloom-model"


def model_state_for_saving(model: Transformer) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors; a tied output projection is stored once (as the embedding)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("output.weight", None)
    return state


def save_model(model: Transformer, out_dir: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write weights (safetensors) and config (JSON) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(model_state_for_saving(model), str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    write_model_json(model.config, out, metadata)
    return out


def write_model_json(cfg: ModelConfig, out_dir: Path, metadata: dict[str, Any] | None = None) -> None:
    payload = {"format": FORMAT, "version": 1, "model": to_dict(cfg), **(metadata or {})}
    (Path(out_dir) / CONFIG_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def read_model_config(path: str | Path) -> ModelConfig:
    """The ModelConfig stored in a skyloom checkpoint directory."""
    file = Path(path) / CONFIG_FILE
    try:
        payload = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: cannot read the model config: {err}") from None
    if payload.get("format") != FORMAT:
        raise ValueError(f"{file}: not a skyloom model config (format={payload.get('format')!r})")
    return build(ModelConfig, payload["model"], prefix="model")


def load_state_into(model: Transformer, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a state dict strictly (only a tied output may be absent); errors name the file."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed_missing = {"output.weight"} if model.config.tie_embeddings else set()
    if set(missing) - allowed_missing or unexpected:
        raise ValueError(
            f"{source}: weights do not match the config: missing {sorted(set(missing) - allowed_missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )


def read_weights(file: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; an unreadable file (truncated, garbage, I/O error) → CheckpointError naming it."""
    from safetensors import SafetensorError

    try:
        return load_file(str(file), device=str(device))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{file}: cannot read it as safetensors ({err})") from None


def is_skyloom_checkpoint(path: str | Path) -> bool:
    p = Path(path)
    return (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file()


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    verify: bool = True,
) -> Transformer:
    """Load a skyloom checkpoint directory or a Hugging Face Llama directory; returns the model in eval mode.

    With `verify` (the default) a directory holding a manifest.json is checked against it first (sizes and
    sha256 of every file); a mismatch raises CheckpointError naming the file.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such checkpoint: {p}")
    ensure_intact(p, verify)
    if is_skyloom_checkpoint(p):
        cfg = read_model_config(p)
        with torch.device("meta"):
            model = Transformer(cfg)
        model.to_empty(device=device)
        state = read_weights(p / WEIGHTS_FILE, device)
        load_state_into(model, state, str(p / WEIGHTS_FILE))
        if cfg.tie_embeddings:
            model.output.weight = model.tok_emb.weight
    elif (p / "config.json").is_file():
        from skyloom.model.hf import load_hf_llama

        model = load_hf_llama(p, device=device)
    else:
        raise ValueError(
            f"{p}: neither a skyloom checkpoint ({CONFIG_FILE} + {WEIGHTS_FILE}) "
            "nor a Hugging Face model directory (config.json + *.safetensors)"
        )
    if dtype is not None:
        model.to(dtype)
    return model.eval()
