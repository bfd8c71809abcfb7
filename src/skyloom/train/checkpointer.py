"""Save, resume and init-from over a run's stateful parts — the one owner of checkpoints during training.

Parts: the model and optimizer — one process: model.safetensors + optimizer.safetensors; every multi-process layout
(DDP, ZeRO-1, FSDP, TP, EP, PP): `torch.distributed.checkpoint`, each rank writing and hashing its own part, nothing
gathered on one rank. Both are keyed by parameter name (the optimizer flattened: `state.<name>.exp_avg`), so a
checkpoint of any layout resumes onto any other — a DCP one through DCP's resharding, a single-process one streamed
tensor by tensor, each rank reading only its own slices — and the JSON parts —
trainer state (step, tokens, fault counters), the loader's position and the callbacks' state — which go into
trainer_state.json. The layout, manifests and pruning rule are `skyloom.train.checkpointing`'s.

What it guarantees: a checkpoint is verified against its manifest before anything reads it (`verify=False`
skips the checksums); a resume falls back past checkpoints that are broken or cannot be read, and reports them;
a checkpoint that cannot be written (disk full) stops the run with an `abort` event, its partial directory
removed and the earlier ones untouched; a DCP checkpoint's pickled `dcp/.metadata` is opened only after the
manifest vouched for it; a resumed session drops the metrics lines of the lost steps and records the settings
that changed (`config_changed`).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from skyloom.config import save as save_config
from skyloom.config import to_dict
from skyloom.data.mixture import MixtureLoader
from skyloom.model.checkpoint import (
    WEIGHTS_FILE,
    load_state_into,
    read_weights,
    single_process_dcp,
    write_model_json,
)
from skyloom.model.manifest import NO_VERIFY_HINT, CheckpointError, ensure_intact
from skyloom.model.manifest import check as check_manifest
from skyloom.train import checkpointing as ckpt
from skyloom.train.distributed import DistEnv, all_gather_object, all_reduce_sum, barrier, broadcast_object
from skyloom.train.metrics import truncate_after
from skyloom.train.optim import LAYOUT_KEYS, is_zero1, load_zero1_state_dict, zero1_state_dict

if TYPE_CHECKING:
    from skyloom.train.callbacks import Callback
    from skyloom.train.config import RunConfig
    from skyloom.train.metrics import MetricsLogger


def _optimizer_by_name():
    """DCP state-dict options: the optimizer state keyed by parameter name, its hyper-parameters too
    (`param_groups.<name>.lr`), so ranks holding different parameters (pipeline stages) save and load their own."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(flatten_optimizer_state_dict=True)


def _setting(flat_key: str) -> str:
    """`param_groups.<name>.lr` → `lr`."""
    return flat_key.rsplit(".", 1)[1]


class TrainingAborted(RuntimeError):
    """The run cannot go on (e.g. too many consecutive non-finite steps); the message says why."""


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainerState:
    """The loop's own counters: what a resume must restore besides weights, optimizer and data position."""

    step: int = 0
    tokens: int = 0
    bad_steps: int = 0  # consecutive non-finite steps (the abort policy reads it)
    skipped_steps: int = 0  # non-finite steps in total

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.tokens,
            "bad_steps": self.bad_steps,
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.bad_steps, self.skipped_steps = int(state.get("bad_steps", 0)), int(state.get("skipped_steps", 0))


class CallbackStates:
    """The callbacks' state as one part: {key: state} for every callback with a non-empty `state_dict()`.
    The key is the callback's `state_key` (its name under `callbacks:`) or its class name, numbered when repeated."""

    def __init__(self, callbacks: Sequence[Callback]):
        self.callbacks = callbacks

    def _keyed(self) -> list[tuple[str, Callback]]:
        out, seen = [], {}
        for cb in self.callbacks:
            key = getattr(cb, "state_key", None) or type(cb).__qualname__
            seen[key] = seen.get(key, 0) + 1
            out.append((key if seen[key] == 1 else f"{key}#{seen[key]}", cb))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {key: state for key, cb in self._keyed() if (state := cb.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, cb in self._keyed():
            if key in state:
                cb.load_state_dict(state[key])


def find_checkpoint(path: str | Path, verify: bool = True) -> Path:
    """A checkpoint directory (checked against its manifest, if it has one), or a run directory (→ its newest
    intact checkpoint). `verify=False`: sizes only, no checksums."""
    p = Path(path)
    if (p / ckpt.MANIFEST).is_file() or (p / WEIGHTS_FILE).is_file():
        ensure_intact(p, verify)
        return p
    found, broken = ckpt.latest_complete(p / "checkpoints", checksums=verify)
    if found is None:
        extra = f" (broken: {', '.join(f'{b.name}: {r}' for b, r in broken)})" if broken else ""
        raise FileNotFoundError(f"{p}: no intact checkpoint{extra}")
    return found


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def config_changes(saved: Path, cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """{dotted key: {"old", "new"}} for every setting that differs between a run's saved config.yaml and `cfg`."""
    import yaml

    if not saved.is_file():
        return {}
    try:
        old = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return {"config.yaml": {"old": f"unreadable ({err})", "new": "rewritten"}}
    new = yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
    a, b = _flatten(old), _flatten(new)
    added_empty = {k for k in b.keys() - a.keys() if b[k] in ({}, [])}  # a section newer than the saved config
    return {
        k: {"old": a.get(k), "new": b.get(k)}
        for k in sorted((a.keys() | b.keys()) - added_empty)
        if a.get(k) != b.get(k)
    }


def _broadcast_path(path) -> str | None:
    return broadcast_object(str(path) if path is not None else None)


@dataclass
class SessionStart:
    """How this session began (for the run's events): the checkpoint resumed from, lines dropped, changed settings."""

    resumed_from: Path | None = None
    resume: bool = False
    dropped: int = 0
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)


class Checkpointer:
    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        env: DistEnv,
        *,
        model: torch.nn.Module,
        raw_model: torch.nn.Module,
        optimizer,
        loader,
        state: TrainerState,
        callbacks: Stateful,
        total_steps: int,
        fsdp: bool,
        tokenizer=None,
        verify: bool = True,
        log: Callable[[str], None] = print,
    ):
        self.cfg, self.run_dir, self.env = cfg, Path(run_dir), env
        self.root = self.run_dir / "checkpoints"
        self.model, self.raw_model, self.optimizer, self.loader = model, raw_model, optimizer, loader
        self.state, self.callbacks, self.total_steps = state, callbacks, total_steps
        # `fsdp`: a sharded layout, checkpointed through DCP by every rank for its own part — FSDP, TP and EP are
        # recognised by their DTensor parameters; pipeline stages (plain tensors, other layers per rank) pass True
        sharded = fsdp or any(hasattr(p, "device_mesh") for p in raw_model.parameters())
        self.fsdp, self.tokenizer, self.verify, self.log = sharded, tokenizer, verify, log
        # every multi-process layout checkpoints through DCP: DDP's replicated tensors are written once (DCP's
        # planner spreads them over the ranks), ZeRO-1's optimizer entries by the rank that owns them
        self.dcp = sharded or env.distributed
        self.zero1 = is_zero1(optimizer)
        self.device = env.device
        self.logger: MetricsLogger | None = None  # the run's event log, once the trainer opened it
        self.last_checkpoint: Path | None = None
        self.broken: list[tuple[Path, str]] = []
        self._verified: set[Path] = set()

    # ---- session start ----

    def start(self, resume: bool) -> SessionStart:
        """Resume (newest readable checkpoint) or init-from; then save the config and drop the lost steps' lines."""
        start = SessionStart(resume=resume)
        start.resumed_from = self.resume() if resume else None
        if start.resumed_from is None and self.cfg.train.init_from:
            self.init_from(self.cfg.train.init_from)
        if self.env.is_main:
            if resume:
                start.changes = config_changes(self.run_dir / "config.yaml", self.cfg)
            save_config(self.cfg, self.run_dir / "config.yaml")
            if resume:  # from scratch (nothing intact): every train/val line belongs to lost steps
                start.dropped = truncate_after(
                    self.run_dir / "metrics.jsonl", self.state.step if start.resumed_from else -1
                )
        barrier()
        return start

    def report_start(self, start: SessionStart) -> None:
        """The session's opening events: config_changed, resume / resume_from_scratch (with broken checkpoints)."""
        logger, step = self.logger, self.state.step
        broken = [{"path": str(p), "reason": r} for p, r in self.broken]
        if start.changes:
            self.log(
                "--resume: settings changed since the last session (recorded as a config_changed event):\n"
                + "\n".join(f"  {k}: {v['old']!r} → {v['new']!r}" for k, v in start.changes.items())
            )
            logger.event(step, "config_changed", changes=start.changes)
        if start.resumed_from is not None:
            logger.event(
                step,
                "resume",
                checkpoint=str(start.resumed_from),
                tokens=self.state.tokens,
                world_size=self.env.world_size,
                replayed_lines_dropped=start.dropped,
                broken_checkpoints=broken,
            )
        elif start.resume and (start.dropped or broken):
            self.log(f"--resume: dropped {start.dropped} train/validation line(s) of the lost steps from metrics.jsonl")
            logger.event(0, "resume_from_scratch", replayed_lines_dropped=start.dropped, broken_checkpoints=broken)

    # ---- saving ----

    def _trainer_state(self) -> dict[str, Any]:
        return {
            **self.state.state_dict(),
            "world_size": self.env.world_size,
            "parallel": "fsdp" if self.fsdp else ("ddp" if self.env.distributed else "single"),
            "loader": self.loader.state_dict(),
            "total_steps": self.total_steps,
            "init_from": self.cfg.train.init_from,
            "callbacks": self.callbacks.state_dict(),
        }

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (collective: every rank must call it); rank 0 gets its path."""
        step = self.state.step
        if not self._weights_finite():
            self.logger.event(step, "checkpoint_refused", reason="non-finite weights")
            raise TrainingAborted(f"step {step}: weights are not finite; refusing to write a checkpoint")
        tmp = None
        if self.env.is_main:
            try:
                tmp = ckpt.begin(self.root, step)
            except OSError as err:
                self._write_failed(None, err)
        tmp = Path(_broadcast_path(tmp))
        rngs = all_gather_object({k: v.tolist() for k, v in ckpt.rng_state().items()})
        known, full, opt_state = None, None, None
        if self.dcp:
            known = self._save_sharded(tmp)
        else:
            full = {k: v.detach().contiguous().cpu() for k, v in self.raw_model.state_dict().items()}
            opt_state = self.optimizer.state_dict()
        path = None
        if self.env.is_main:
            if full is not None and self.cfg.model.tie_embeddings:
                full.pop("output.weight", None)
            try:
                self._write_files(tmp, full, opt_state, rngs)
                path = ckpt.commit(tmp, step, self.state.tokens, known=known)
            except (OSError, SafetensorError) as err:
                self._write_failed(tmp, err)
            self.last_checkpoint = path
            deleted = ckpt.prune(self.root, self.cfg.checkpoint.keep_last, self.cfg.checkpoint.keep_every, newest=path)
            self.logger.event(step, "checkpoint", path=str(path), deleted=[p.name for p in deleted])
        barrier()
        return path

    def _save_sharded(self, tmp: Path) -> dict[str, dict[str, Any]]:
        """Every rank writes its own shards of the model and optimizer (DCP) and hashes the files it wrote; rank 0
        gets all the entries for the manifest. Nothing is gathered: memory and time per rank ∝ its shards."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException

        msd, osd = self._state_dicts(optimizer=True)
        try:
            dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / ckpt.DCP_DIR))
            mine = ckpt.shard_entries(tmp, self.env.rank)
        except (CheckpointException, OSError) as err:  # raised on every rank (a BaseException, not an Exception)
            self._write_failed(tmp if self.env.is_main else None, err)
        known: dict[str, dict[str, Any]] = {}
        for entries in all_gather_object(mine):
            known.update(entries)
        return known

    def _write_files(self, tmp: Path, full: dict | None, opt_state: dict | None, rngs: list) -> None:
        if full is not None:
            save_file({k: v.contiguous() for k, v in full.items()}, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        write_model_json(
            self.cfg.model, tmp, {"step": self.state.step, "tokens": self.state.tokens, "run": str(self.run_dir)}
        )
        if self.tokenizer is not None:
            self.tokenizer.copy_files_to(tmp)
        if opt_state is not None:
            names = self._names()
            order = [names[id(p)] for group in self.optimizer.param_groups for p in group["params"]]
            ckpt.optimizer_state_to_files(opt_state, tmp, names=order)
        save_file(
            {f"{k}.rank{r}": torch.tensor(v, dtype=torch.uint8) for r, d in enumerate(rngs) for k, v in d.items()},
            str(tmp / "rng.safetensors"),
        )
        ckpt.write_json(tmp / ckpt.TRAINER_STATE, self._trainer_state())

    def _write_failed(self, tmp: Path | None, err: BaseException):
        """Disk full or unwritable: drop the partial directory (freeing its space), log an `abort` event (best
        effort — the log may sit on the full disk) and stop; the earlier checkpoints are untouched."""
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        last_line = (str(err).strip().splitlines() or [type(err).__name__])[-1]  # DCP's carry a whole traceback
        reason = f"cannot write the checkpoint of step {self.state.step}: {last_line}"
        with contextlib.suppress(OSError):
            self.logger.event(self.state.step, "abort", reason=reason)
        kept = ", ".join(p.name for _, p in ckpt.list_checkpoints(self.root)) or "none"
        raise TrainingAborted(
            f"{reason}. The partial checkpoint was removed and the earlier ones are untouched "
            f"({kept}); free some space, then continue with --resume"
        )

    def _weights_finite(self) -> bool:
        """Every rank's shards finite? One fused reduction and one host read for the model, not one per parameter.
        The max-abs (inf) norm is NaN/inf exactly when a value is, and cannot overflow as a squared norm could."""
        local = [p.to_local() if hasattr(p, "to_local") else p for p in self.raw_model.parameters()]
        local = [t.detach() for t in local if t.numel()]  # an uneven FSDP split may leave a rank an empty shard
        bad = torch.zeros((), dtype=torch.float32, device=self.device)
        if local:
            peaks = torch.stack([n.float() for n in torch._foreach_norm(local, ord=float("inf"))])
            bad = (~torch.isfinite(peaks)).sum().float().to(self.device)
        return bool(all_reduce_sum(bad.reshape(1)).item() == 0)

    # ---- loading ----

    def _names(self) -> dict[int, str]:
        """id(parameter) → its name (a tied weight under its first name, as torch's state-dict API keys it)."""
        return {id(p): name for name, p in self.raw_model.named_parameters()}

    def _state_dicts(self, optimizer: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """This rank's part of the model (and optimizer) state in the name-keyed form every layout shares: what it
        writes through DCP and what it requests on load. ZeRO-1: only the optimizer entries this rank owns."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        msd = get_model_state_dict(self.model)
        if not optimizer:
            return msd, None
        if self.zero1:
            return msd, zero1_state_dict(self.optimizer, self._names())
        return msd, get_optimizer_state_dict(self.model, self.optimizer, options=_optimizer_by_name())

    def _apply(self, msd: dict[str, Any] | None, osd: dict[str, Any] | None) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        if msd is not None:
            set_model_state_dict(self.model, msd)
        if osd is None:
            return
        if self.zero1:
            load_zero1_state_dict(self.optimizer, self._names(), osd)
        else:
            set_optimizer_state_dict(self.model, self.optimizer, osd, options=_optimizer_by_name())

    def load_weights(self, path: Path, state: dict[str, torch.Tensor] | None = None) -> None:
        if (path / ckpt.DCP_DIR).is_dir():  # a sharded checkpoint: DCP reshards it onto this layout, any layout
            self.load_sharded(path, optimizer=False)
            return
        if self.dcp:  # a single-process checkpoint: each rank streams in its own part, tensor by tensor
            from skyloom.model.transformer import Transformer

            tied = self.cfg.model.tie_embeddings
            with torch.device("meta"):
                expected = set(Transformer(self.cfg.model).state_dict())
            ckpt.check_weight_names(path / WEIGHTS_FILE, expected, frozenset({"output.weight"} if tied else ()))
            msd, _ = self._state_dicts(optimizer=False)
            ckpt.stream_tensors(
                path / WEIGHTS_FILE, msd, lambda k: "tok_emb.weight" if tied and k == "output.weight" else k
            )
            self._apply(msd, None)
            return
        if state is None:
            state = read_weights(path / WEIGHTS_FILE)
        if self.cfg.model.tie_embeddings:
            state.pop("output.weight", None)
        with torch.no_grad():
            load_state_into(self.raw_model, {k: v.to(self.device) for k, v in state.items()}, str(path / WEIGHTS_FILE))

    def _require_verified(self, path: Path) -> None:
        """DCP's `.metadata` is a pickle: it is opened only once the manifest has vouched for every byte."""
        if not self.verify or path in self._verified:
            return
        reason = check_manifest(path, require=True, complete_under=ckpt.DCP_DIR)
        if reason is not None:
            raise CheckpointError(
                f"{path}: {reason}; its dcp/.metadata is a pickle, opened only when the manifest "
                f"verifies it ({NO_VERIFY_HINT}, for a checkpoint you wrote yourself)"
            )
        self._verified.add(path)

    def load_sharded(self, path: Path, optimizer: bool) -> None:
        """A DCP checkpoint of any layout onto this one: each rank requests its own part by name, DCP reshards."""
        import torch.distributed.checkpoint as dcp

        self._require_verified(path)
        msd, osd = self._state_dicts(optimizer)
        state = {"model": msd} if osd is None else {"model": msd, "optim": osd}
        kept = {k: v for k, v in (osd or {}).items() if k.startswith("param_groups.") and _setting(k) in LAYOUT_KEYS}
        with contextlib.nullcontext() if self.env.distributed else single_process_dcp():
            dcp.load(state, checkpoint_id=str(path / ckpt.DCP_DIR), no_dist=not self.env.distributed)
        if osd is not None:
            osd.update(kept)  # this layout's kernels, not the writer's
        self._apply(msd, osd)

    def load_optimizer(self, path: Path, state: dict | None = None) -> None:
        if (path / ckpt.DCP_DIR).is_dir():
            self.load_sharded(path, optimizer=True)
            return
        if not (path / "optimizer.safetensors").is_file():
            raise CheckpointError(f"{path}: has no optimizer state (optimizer.safetensors or dcp/)")
        # a multi-process layout streams its own parameters' state out of the file; a file from before the names
        # were recorded still loads whole into a replicated (DDP / ZeRO-1) optimizer
        if self.dcp and (self.fsdp or ckpt.optimizer_param_names(path) is not None):
            _, osd = self._state_dicts(optimizer=True)
            ckpt.stream_optimizer(path, osd, keep=LAYOUT_KEYS)
            self._apply(None, osd)
            return
        self.optimizer.load_state_dict(state if state is not None else ckpt.optimizer_state_from_files(path))

    def _read(self, path: Path) -> dict[str, Any]:
        """What a resume needs from `path`, read into memory before any of it is applied, so a checkpoint that
        verifies but cannot be read (e.g. re-signed garbage) leaves the model untouched for the next older one."""
        state = ckpt.read_trainer_state(path)
        out: dict[str, Any] = {"state": state, "rng": read_weights(path / "rng.safetensors")}
        if (path / ckpt.DCP_DIR).is_dir():
            return out
        if self.dcp:  # streamed later, each rank its own part: only the headers are checked now
            ckpt.check_readable(path / WEIGHTS_FILE)
            if (path / "optimizer.safetensors").is_file():
                ckpt.check_readable(path / "optimizer.safetensors")
            return out
        out["weights"] = read_weights(path / WEIGHTS_FILE)
        if (path / "optimizer.safetensors").is_file():
            out["optimizer"] = ckpt.optimizer_state_from_files(path)
        return out

    def _newest_readable(self) -> tuple[Path | None, dict | None]:
        """Rank 0: the newest checkpoint that verifies and reads (with what was read); the others go to `broken`."""
        for _, path in reversed(ckpt.list_checkpoints(self.root)):
            reason = ckpt.verify(path, checksums=self.verify)
            if reason is None:
                try:
                    return path, self._read(path)
                except CheckpointError as err:
                    reason = f"verified, but cannot be read: {err}"
            self.broken.append((path, reason))
        return None, None

    def resume(self) -> Path | None:
        """Restore every part from the newest readable checkpoint; None (and a note) when there is none."""
        found, loaded = self._newest_readable() if self.env.is_main else (None, None)
        found = _broadcast_path(found)
        self.broken = [(Path(p), r) for p, r in broadcast_object([(str(p), r) for p, r in self.broken])]
        for p, reason in self.broken:
            self.log(f"skipping broken checkpoint {p.name}: {reason}")
        if found is None:
            self.log(f"--resume: no intact checkpoint in {self.root}; starting from scratch")
            return None
        path = Path(found)
        if self.verify:
            self._verified.add(path)
        loaded = loaded if loaded is not None else self._read(path)
        state = loaded["state"]
        if state.get("total_steps") not in (None, self.total_steps):
            raise ValueError(
                f"{path}: the run was planned for {state['total_steps']} steps, now {self.total_steps}; "
                "the schedule would change — start a chained session (train.init_from) instead"
            )
        if (path / ckpt.DCP_DIR).is_dir():  # weights and optimizer in one read of the shards
            self.load_sharded(path, optimizer=True)
        else:
            self.load_weights(path, loaded.get("weights"))
            self.load_optimizer(path, loaded.get("optimizer"))
        self.loader.load_state_dict(state["loader"])
        self.state.load_state_dict(state)
        self.callbacks.load_state_dict(state.get("callbacks") or {})
        rank = self.env.rank
        mine = {k.rsplit(".rank", 1)[0]: v for k, v in loaded["rng"].items() if k.endswith(f".rank{rank}")}
        if mine and state.get("world_size") == self.env.world_size:
            ckpt.set_rng_state(mine)
        else:
            torch.manual_seed(self.cfg.train.seed + 1000003 * self.state.step + rank)
        self.log(f"resumed from {path} (step {self.state.step}, {self.state.tokens:,} tokens)")
        return path

    def init_from(self, source: str) -> None:
        """A chained session: another run's weights (and, if asked, optimizer and loader position)."""
        path, error = None, None
        if self.env.is_main:  # one rank reads every byte to verify; the others take its word
            try:
                path = find_checkpoint(source, self.verify)
            except (CheckpointError, FileNotFoundError) as err:
                error = err
        path, message = broadcast_object((str(path) if path is not None else None, str(error) if error else None))
        if error is not None:
            raise error
        if message is not None:
            raise CheckpointError(message)
        path = Path(path)
        if self.verify and (path / ckpt.MANIFEST).is_file():
            self._verified.add(path)
        self.load_weights(path)
        if self.cfg.train.init_optimizer:
            self.load_optimizer(path)
        if self.cfg.data.init_loader_from_checkpoint and isinstance(self.loader, MixtureLoader):
            state = ckpt.read_trainer_state(path)
            self.loader.load_state_dict(state["loader"], sources_only=True)
        self.log(
            f"initialised from {path} ({'with' if self.cfg.train.init_optimizer else 'fresh'} optimizer state, "
            "fresh schedule)"
        )
