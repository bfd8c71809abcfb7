"""Training checkpoints: atomic directories with a manifest of checksums, retention, and finding the newest good one.

    RUN_DIR/checkpoints/step_00001000/
      model.safetensors, model.json     the weights (`skyloom.load_model(dir)` opens the directory as is)
                                        (multi-process runs: model.json only, the weights are in dcp/)
      tokenizer.json, …                 the run's tokenizer files, when it has one
      optimizer.safetensors + .json     one process: AdamW state (tensors) and param groups / scalar state /
                                        parameter names (JSON)
      rng.safetensors                   torch RNG state of every rank
      trainer_state.json                step, tokens, data-loader position, fault counters, session info
      dcp/                              multi-process runs (DDP, ZeRO-1, FSDP, TP, PP, EP): model + optimizer
                                        via torch.distributed.checkpoint, each rank writing (and hashing) its
                                        own part — never gathered on one rank; `load_model` streams it
      manifest.json                     every file's size and sha256 — written last

A checkpoint is written into `.tmp-step_…` and renamed when complete, so a crash never leaves a directory
that looks finished; a checkpoint whose manifest is missing or whose files do not match it is "broken" and
skipped by `--resume` (and reported). The manifest itself is read and checked in `skyloom.model.manifest`, the
one place every loader uses. Nothing here unpickles: weights and optimizer tensors are safetensors, the rest
JSON. (DCP's own `.metadata` file, multi-process runs only, is PyTorch's pickle: the trainer opens it only after the
manifest verified it.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from skyloom.model import manifest
from skyloom.model.manifest import FORMAT, MANIFEST, CheckpointError  # noqa: F401  (re-exported: the trainer's names)

TRAINER_STATE = "trainer_state.json"
DCP_DIR = "dcp"  # multi-process runs' state; its .metadata is a pickle, so every file there must be in the manifest
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- optimizer state without pickle ----


def optimizer_state_to_files(state: dict, out_dir: Path, names: list[str] | None = None) -> None:
    """A torch optimizer state_dict → optimizer.safetensors (tensors) + optimizer.json (everything else).
    `names`: each parameter index's name (optimizer.json's "param_names"), so a sharded or pipelined layout can
    take its own parameters' state out of the file (`stream_optimizer`)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in state["state"].items():
        entry = scalars.setdefault(str(idx), {})
        for key, value in per_param.items():
            if torch.is_tensor(value):
                name = f"{idx}.{key}"
                tensors[name] = value.detach().contiguous().cpu()
                entry[key] = {"tensor": name}
            else:
                entry[key] = {"value": value}
    save_file(tensors, str(out_dir / "optimizer.safetensors"))
    meta = {"state": scalars, "param_groups": state["param_groups"]}
    if names is not None:
        meta["param_names"] = names
    write_json(out_dir / "optimizer.json", meta)


def optimizer_state_from_files(ckpt_dir: Path) -> dict:
    """The inverse of `optimizer_state_to_files`; unreadable files raise CheckpointError naming the directory."""
    try:
        tensors = load_file(str(ckpt_dir / "optimizer.safetensors"))
        meta = json.loads((ckpt_dir / "optimizer.json").read_text(encoding="utf-8"))
        state = {}
        for idx, entry in meta["state"].items():
            state[int(idx)] = {k: tensors[v["tensor"]] if "tensor" in v else v["value"] for k, v in entry.items()}
        groups = meta["param_groups"]
        for g in groups:
            if "betas" in g and isinstance(g["betas"], list):
                g["betas"] = tuple(g["betas"])
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{ckpt_dir}: cannot read the optimizer state ({type(err).__name__}: {err})") from None
    return {"state": state, "param_groups": groups}


# ---- a single-process checkpoint streamed into a sharded / multi-process layout ----


def stream_tensors(file: Path, targets: dict[str, Any], source_of: Callable[[str], str]) -> None:
    """Fill every tensor of `targets` from the tensor `source_of(key)` of safetensors `file`, reading one tensor
    at a time — of a DTensor only this rank's shard (its slice of the file) — so memory stays bounded by the
    largest tensor, whatever the model's size. A missing tensor or another shape → CheckpointError naming both."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    try:
        with safe_open(str(file), framework="pt") as f, torch.no_grad():
            available = set(f.keys())
            for key, target in targets.items():
                name = source_of(key)
                if name not in available:
                    raise CheckpointError(f"{file}: has no tensor {name!r} (for {key})")
                part = f.get_slice(name)
                shape = tuple(part.get_shape())
                if shape != tuple(target.shape):
                    raise CheckpointError(
                        f"{file}: {name} has shape {list(shape)}, this run needs {list(target.shape)}"
                    )
                if isinstance(target, DTensor) and shape:
                    local_shape, offset = compute_local_shape_and_global_offset(
                        shape, target.device_mesh, target.placements
                    )
                    local = target.to_local()
                    if local.numel():
                        local.copy_(part[tuple(slice(o, o + n) for o, n in zip(offset, local_shape))])
                elif isinstance(target, DTensor):
                    target.to_local().copy_(f.get_tensor(name))
                else:
                    target.copy_(f.get_tensor(name))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{file}: cannot read it as safetensors ({err})") from None


def stream_optimizer(ckpt_dir: Path, flat: dict[str, Any], keep: frozenset[str] = frozenset()) -> None:
    """Fill `flat` — this rank's optimizer state keyed by parameter name (`state.<name>.<key>`,
    `param_groups.<name>.<key>`, as `get_state_dict(..., flatten_optimizer_state_dict=True)` gives it) — from a
    single-process checkpoint's optimizer.safetensors + .json, tensor by tensor (see `stream_tensors`).
    Group settings named in `keep` keep their current value."""
    file = ckpt_dir / "optimizer.json"
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
        names = meta.get("param_names")
        if names is None:
            raise CheckpointError(
                f"{file}: has no param_names (written before optimizer state could be resharded); resume it on "
                "the layout that wrote it, or use train.init_from without init_optimizer for a fresh optimizer"
            )
        index = {name: i for i, name in enumerate(names)}
        group_of = {i: g for g in meta["param_groups"] for i in g["params"]}
        tensors: dict[str, str] = {}
        for key in list(flat):
            section, rest = key.split(".", 1)
            name, field = rest.rsplit(".", 1)
            if name not in index:
                raise CheckpointError(f"{file}: no optimizer state for parameter {name!r}")
            i = index[name]
            if section == "param_groups":
                if field not in keep:
                    value = group_of[i][field]
                    flat[key] = tuple(value) if field == "betas" else value
                continue
            entry = meta["state"][str(i)][field]
            if "tensor" in entry:
                tensors[key] = entry["tensor"]
            elif torch.is_tensor(flat[key]):
                flat[key].copy_(torch.tensor(entry["value"]))
            else:
                flat[key] = entry["value"]
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{file}: cannot read the optimizer state ({type(err).__name__}: {err})") from None
    stream_tensors(ckpt_dir / "optimizer.safetensors", {k: flat[k] for k in tensors}, tensors.__getitem__)


def optimizer_param_names(ckpt_dir: Path) -> list[str] | None:
    """optimizer.json's parameter names (None: written before they were recorded, or unreadable)."""
    try:
        names = json.loads((ckpt_dir / "optimizer.json").read_text(encoding="utf-8")).get("param_names")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return names if isinstance(names, list) else None


def check_weight_names(file: Path, expected: set[str], may_lack: frozenset[str] = frozenset()) -> None:
    """As strict as a one-process load: the file holds exactly the model's tensors (`may_lack`: a tied output),
    checked up front — each rank of a sharded layout streams only its own, so none would see an extra one."""
    try:
        with safe_open(str(file), framework="pt") as f:
            saved = set(f.keys())
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{file}: cannot read it as safetensors ({err})") from None
    missing, unexpected = expected - saved - may_lack, saved - expected
    if missing or unexpected:
        raise CheckpointError(
            f"{file}: weights do not match the config: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )


def check_readable(file: Path) -> None:
    """A safetensors file's header parses (a cheap check before anything is applied; the tensors stream later)."""
    try:
        with safe_open(str(file), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{file}: cannot read it as safetensors ({err})") from None


# ---- RNG ----


def rng_state() -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---- writing ----


def shard_entries(tmp: Path, rank: int) -> dict[str, dict[str, Any]]:
    """Manifest entries of the DCP files rank `rank` wrote (DCP names them `__{rank}_…`): each rank hashes its own."""
    return manifest.file_entries(tmp, only=lambda rel: rel.startswith(f"{DCP_DIR}/__{rank}_"))


def begin(root: Path, step: int) -> Path:
    """A fresh temporary directory for checkpoint `step` (a leftover from a crash is removed)."""
    tmp = root / f".tmp-{step_dir_name(step)}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, step: int, tokens: int, extra: dict | None = None, known: dict | None = None) -> Path:
    """Checksum every file (`known`: entries the ranks computed for the shards they wrote), write the manifest
    last, then rename the directory into place."""
    manifest.write_manifest(tmp, {"step": step, "tokens": tokens, **(extra or {})}, known)
    final = tmp.parent / step_dir_name(step)
    if final.exists():  # e.g. a broken copy of the same step from before a crash
        old = tmp.parent / f".old-{step_dir_name(step)}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _fsync_dir(tmp.parent)
    return final


# ---- reading and checking ----


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every finished-looking checkpoint directory, oldest first."""
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def verify(ckpt: Path, checksums: bool = True) -> str | None:
    """None when the checkpoint is complete and intact, else the reason it is broken."""
    reason = manifest.check(ckpt, checksums, require=True, complete_under=DCP_DIR)
    if reason is None and not (ckpt / TRAINER_STATE).is_file():
        return f"{TRAINER_STATE} is missing"
    return reason


def latest_complete(root: Path, checksums: bool = True) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest intact checkpoint and the broken ones newer than it (each with its reason)."""
    broken = []
    for _, path in reversed(list_checkpoints(root)):
        reason = verify(path, checksums)
        if reason is None:
            return path, broken
        broken.append((path, reason))
    return None, broken


def prune(root: Path, keep_last: int, keep_every: int | None, newest: Path | None = None) -> list[Path]:
    """Delete checkpoints beyond the newest `keep_last`, except steps that are multiples of `keep_every`.

    `newest` is the checkpoint just written: it is never deleted, and directories with a later step (left
    from before a resume fell back past them, so broken) are not counted, so they can never push it out.
    Directories that do not look intact (no manifest, wrong sizes) are left for inspection and not counted
    either. Returns the deleted directories.
    """
    limit = int(_STEP_DIR.match(newest.name).group(1)) if newest is not None else None
    intact = [
        (s, p)
        for s, p in list_checkpoints(root)
        if (limit is None or s <= limit) and verify(p, checksums=False) is None
    ]
    doomed = []
    for step, path in intact[:-keep_last] if keep_last else intact:
        if (keep_every and step % keep_every == 0) or (newest is not None and path == newest):
            continue
        doomed.append(path)
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def read_trainer_state(ckpt: Path) -> dict:
    """trainer_state.json; unreadable or incomplete → CheckpointError naming the file."""
    path = ckpt / TRAINER_STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from None
    missing = [k for k in ("step", "tokens", "loader") if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: lacks {', '.join(missing)}")
    return state
