"""Checkpoint manifests: every file's size and sha256, written last, checked before anything reads the files.

The one place where a checkpoint is verified. Every loader goes through `ensure_intact`: `load_model` (and so
`skyloom.load_model`, the eval backends, `export hf`, `moe upcycle`), the trainer's `--resume` and
`train.init_from`, and — before PyTorch unpickles it — an FSDP checkpoint's `dcp/.metadata`. A file whose bytes
differ from what was written is refused with its name, instead of silently giving other numbers.
A directory without a manifest (`model init`, `export hf`, `import hf` output, a Hugging Face directory) has
nothing to verify and loads as is — except for DCP files, which are pickle and are opened only when verified.
`verify=False` (`--no-verify`) skips the check for speed (a check reads every byte once).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from skyloom.config import ConfigError
from skyloom.data.shards import sha256_file

MANIFEST = "manifest.json"
FORMAT = "skyloom-train-checkpoint"
NO_VERIFY_HINT = "pass --no-verify (verify=False) to load it anyway"


class CheckpointError(ConfigError):
    """A checkpoint cannot be used (corrupt, unreadable, unverifiable); the message names the directory or file."""

    def __init__(self, message: str):
        super().__init__("", message)


def file_entries(
    directory: Path, known: dict[str, dict[str, Any]] | None = None, only: Callable[[str], bool] | None = None
) -> dict[str, dict[str, Any]]:
    """{relative path: {"bytes", "sha256"}} of every file under `directory` except the manifest itself.

    `known`: entries another process already computed (a sharded checkpoint: each rank hashes the files it wrote),
    taken as they are; `only`: hash just the files whose relative path it accepts.
    """
    known = known or {}
    entries = {}
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).as_posix()
        if not p.is_file() or rel == MANIFEST or (only is not None and not only(rel)):
            continue
        entries[rel] = known[rel] if rel in known else {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return entries


def write_manifest(directory: Path, fields: dict[str, Any], known: dict[str, dict[str, Any]] | None = None) -> Path:
    """Checksum every file (but those in `known`) and write manifest.json last (flushed to disk), so its presence
    means 'complete'."""
    path = directory / MANIFEST
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"format": FORMAT, "version": 1, **fields, "files": file_entries(directory, known)}, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return path


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The parsed manifest, or None when there is none; a manifest that is not JSON raises CheckpointError."""
    path = Path(directory) / MANIFEST
    manifest, reason = _parse(path)
    if reason is not None:
        raise CheckpointError(f"{path.parent}: {reason}")
    return manifest


def _parse(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    if not path.is_file():
        return None, None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"manifest.json is corrupt ({getattr(err, 'msg', err)})"
    if not isinstance(manifest, dict):
        return None, "manifest.json is corrupt (not an object)"
    return manifest, None


def check(
    directory: str | Path, checksums: bool = True, require: bool = False, complete_under: str | None = None
) -> str | None:
    """None when every file the manifest lists has its size (and sha256) — else the reason, naming the file.

    Without a skyloom manifest there is nothing to check (None), unless `require` (a training checkpoint, DCP).
    `complete_under`: a subdirectory whose every file must be listed too (DCP: an added pickle is not "intact").
    """
    d = Path(directory)
    manifest, reason = _parse(d / MANIFEST)
    if reason is not None:
        return reason
    if manifest is None or manifest.get("format") != FORMAT:
        if not require:
            return None
        return (
            "no manifest.json (the write did not finish)"
            if manifest is None
            else "manifest.json is not a skyloom training checkpoint manifest"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        return "manifest.json lists no files"
    for rel, info in files.items():
        if PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
            return f"manifest.json names {rel!r}, outside the checkpoint"
        if not isinstance(info, dict):
            return f"manifest.json: the entry of {rel} is corrupt"
        p = d / rel
        if not p.is_file():
            return f"{rel} is missing"
        size = p.stat().st_size
        if size != info.get("bytes"):
            return f"{rel} has {size} bytes, the manifest says {info.get('bytes')} (truncated?)"
        if checksums and sha256_file(p) != info.get("sha256"):
            return f"{rel} does not match its sha256 in manifest.json (corrupted)"
    if complete_under and (d / complete_under).is_dir():
        for p in sorted((d / complete_under).rglob("*")):
            rel = p.relative_to(d).as_posix()
            if p.is_file() and rel not in files:
                return f"{rel} is not in manifest.json (added after the checkpoint was written)"
    return None


def ensure_intact(directory: str | Path, verify: bool = True, require: bool = False) -> None:
    """Raise CheckpointError (naming the file) when `directory`'s manifest says it is broken; no-op if not `verify`."""
    if not verify:
        return
    reason = check(directory, checksums=True, require=require)
    if reason is not None:
        raise CheckpointError(f"{directory}: {reason}; refusing to load it ({NO_VERIFY_HINT})")
