"""skyloom's model checkpoint format: a directory with `model.safetensors` + `model.json`.

`model.json` holds {"format": "skyloom-model", "version": 1, "model": <ModelConfig fields>, ...metadata}.
Training checkpoints are the same directory with more files beside (optimizer, loader, RNG state),
so `load_model` opens both. A Hugging Face Llama directory (config.json + *.safetensors) loads too.
Weights are never unpickled. A directory with a manifest.json (a training checkpoint) is verified against it
first (`model/manifest.py`); `verify=False` skips that.
A multi-process training checkpoint (DDP, ZeRO-1, FSDP, TP, PP, EP: `model.json` + `dcp/`, no `model.safetensors`)
is consolidated by
streaming: the model is allocated once and filled tensor by tensor from DCP's files, so the only memory beyond the
model is one tensor (its saved shards) — DCP's `.metadata`, a pickle, is opened only once the manifest verified it.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from skyloom.config import build, to_dict
from skyloom.model.config import ModelConfig
from skyloom.model.manifest import NO_VERIFY_HINT, CheckpointError, check, ensure_intact
from skyloom.model.transformer import Transformer

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"
DCP_DIR = "dcp"  # a sharded checkpoint's torch.distributed.checkpoint files
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


def is_sharded_checkpoint(path: str | Path) -> bool:
    """A training checkpoint of a sharded layout: model.json + dcp/ and no consolidated model.safetensors."""
    p = Path(path)
    return (p / CONFIG_FILE).is_file() and (p / DCP_DIR / ".metadata").is_file() and not (p / WEIGHTS_FILE).is_file()


def is_skyloom_checkpoint(path: str | Path) -> bool:
    p = Path(path)
    return (p / CONFIG_FILE).is_file() and ((p / WEIGHTS_FILE).is_file() or is_sharded_checkpoint(p))


@contextlib.contextmanager
def single_process_dcp():
    """DCP warns on every single-process load (no_dist) that it assumes one process: that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is (disabled|unavailable)")
        yield


def _cached_reader(dcp_dir: Path):
    """A DCP FileSystemReader that unpickles `.metadata` once, not once per tensor."""
    from torch.distributed.checkpoint import FileSystemReader

    class CachedReader(FileSystemReader):
        _metadata = None

        def read_metadata(self):
            if self._metadata is None:
                self._metadata = super().read_metadata()
            return self._metadata

    return CachedReader(str(dcp_dir))


@torch.no_grad()
def stream_sharded_weights(model: Transformer, dcp_dir: Path, prefix: str = "model.") -> None:
    """Fill `model` from a DCP checkpoint one tensor at a time (DCP reassembles each from its saved shards).

    The caller has verified the directory: `.metadata` is a pickle. Names are checked like `load_state_into`.
    """
    import torch.distributed.checkpoint as dcp

    reader = _cached_reader(dcp_dir)
    try:
        saved = {k[len(prefix) :] for k in reader.read_metadata().state_dict_metadata if k.startswith(prefix)}
    except Exception as err:  # a corrupt pickle may raise anything
        raise CheckpointError(f"{dcp_dir}: cannot read the DCP metadata ({type(err).__name__}: {err})") from None
    targets = model.state_dict()
    allowed_missing = {"output.weight"} if model.config.tie_embeddings else set()
    missing, unexpected = set(targets) - saved - allowed_missing, saved - set(targets)
    if missing or unexpected:
        raise ValueError(
            f"{dcp_dir}: weights do not match the config: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    with single_process_dcp():
        for name, target in targets.items():
            if name in saved:
                dcp.load({prefix + name: target}, storage_reader=reader, no_dist=True)


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
    sharded = is_sharded_checkpoint(p)
    if sharded and verify:
        reason = check(p, checksums=True, require=True, complete_under=DCP_DIR)
        if reason is not None:
            raise CheckpointError(
                f"{p}: {reason}; its {DCP_DIR}/.metadata is a pickle, opened only when the manifest "
                f"verifies it ({NO_VERIFY_HINT})"
            )
    else:
        ensure_intact(p, verify)
    if is_skyloom_checkpoint(p):
        cfg = read_model_config(p)
        with torch.device("meta"):
            model = Transformer(cfg)
        model.to_empty(device=device)
        if sharded:
            stream_sharded_weights(model, p / DCP_DIR)
        else:
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
