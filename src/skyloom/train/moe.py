"""MoE training hooks: the aux losses enter the loss, the adaptive coefficients move, the routers are monitored.

`standard_callbacks.default_callbacks` adds `MoECallback` when `model.moe` is set. Per optimizer step:

* after every MoE layer's forward on every micro-batch: its router statistics (sums) and aux loss are recorded
  (detached, on the device — no host sync). Without pipeline stages `extra_loss` records them and returns
  Σ_l α_l·L_aux^(l) (added to that micro-batch's loss); under pipeline parallelism each stage reports its own
  layers (`StageModule.on_moe_forward`) and attaches the aux losses to its output itself (train/parallel/pipeline.py);
* before the update (`pre_optim_step`, finite steps only): every MoE layer's records are summed over all ranks
  in one all-reduce (a rank contributes the layers it holds — under PP its stages' — and zeros for the others,
  with each layer's current α), so every rank sees the global drop rate d_l and α_l of every layer; with
  `moe.adaptive`, α_l ← β·α_l + (1−β)·min(ξ·d_l, α_max) (report §4.2) — in place on the held layers'
  `aux_coef` buffers, outside autograd. The buffers are part of the model's state, so checkpoints carry them
  and `--resume` continues with exactly the same coefficients;
* after the step (`post_step`): per-layer diagnostics into the metrics line — `moe/L{i}/drop_rate`, `load`
  (fraction of routed slots per expert), `entropy` (nats), `max1_max2`, `max2_max3`, `aux_loss`, `aux_coef`,
  and on log steps (every `train.log_every`, the first and the last) `expert_similarity` — plus the means over
  layers `moe/drop_rate`, `moe/max1_max2`, `moe/aux_coef` and the weighted total `moe/aux_loss`. Every rank
  has every layer's numbers (the logging rank holds only the first stage's layers under PP).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from skyloom.model.moe import MoE, expert_lr_scale_fn, expert_similarity, moe_layers, summarize_stats, weighted_aux_loss
from skyloom.model.moe_config import MoEConfig
from skyloom.model.moe_losses import update_coefficient
from skyloom.train.callbacks import Callback
from skyloom.train.distributed import all_reduce_sum

if TYPE_CHECKING:
    from skyloom.train.trainer import Trainer

_STAT_KEYS = ("tokens", "assigned", "kept", "entropy_sum", "max12_sum", "max23_sum")


def _pipeline(trainer: Trainer):
    """The trainer's pipeline (None without one, or for a stand-in trainer that has none)."""
    return getattr(trainer, "pipeline", None)


def _record_fields(n_experts: int) -> dict[str, int]:
    """The sizes of one layer's record: router statistic sums, its aux loss and α·aux loss (one forward)."""
    sizes = {k: n_experts if k in ("assigned", "kept") else 1 for k in _STAT_KEYS}
    return {**sizes, "aux": 1, "weighted_aux": 1}


def lr_scale_fn_for(cfg: MoEConfig):
    """The trainer's `lr_scale_fn` for `moe.expert_lr_scale` (None when the experts keep the global LR)."""
    return None if cfg.expert_lr_scale == "none" else expert_lr_scale_fn(cfg)


class MoECallback(Callback):
    extra_loss_under_pipeline = True  # each stage attaches its layers' aux losses (pipeline.py, AuxLossScaler)

    def __init__(self, cfg: MoEConfig):
        self.cfg = cfg
        self._fields = _record_fields(cfg.n_experts)
        self._records: dict[int, list[torch.Tensor]] = {}  # layer → one flat record per forward of this step
        self._summary: dict[int, dict[str, Any]] | None = None

    # ---- per micro-batch ----

    def pre_step(self, trainer: Trainer) -> None:
        if _pipeline(trainer) is not None:
            for stage in _pipeline(trainer).modules:
                stage.on_moe_forward = self._record

    def extra_loss(self, trainer: Trainer, batch) -> torch.Tensor | None:
        for i, layer in moe_layers(trainer.model):
            self._record(i, layer)
        return weighted_aux_loss(trainer.model)

    def _record(self, index: int, layer: MoE) -> None:
        """One forward of one MoE layer: its statistics and aux losses as one flat float64 vector (on the device)."""
        stats = layer.last_stats
        aux = layer.last_aux_loss
        zero = stats["tokens"].new_zeros(())
        weighted = zero if aux is None else layer.aux_coef.float() * aux.detach()
        parts = [stats[k] for k in _STAT_KEYS] + [zero if aux is None else aux.detach(), weighted]
        self._records.setdefault(index, []).append(torch.cat([t.reshape(-1).double() for t in parts]))

    # ---- per optimizer step ----

    def _reduce(self, trainer: Trainer) -> dict[int, dict[str, Any]]:
        """Every MoE layer's records summed over ranks (one all-reduce), summarised per layer."""
        held = dict(moe_layers(trainer.model))
        pipeline = _pipeline(trainer)
        indices = sorted(held)
        keep = None
        if pipeline is not None:  # a rank holds some layers; its first step also runs each stage once on
            indices = [i for i in range(trainer.cfg.model.n_layers) if self.cfg.is_moe_layer(i)]
            keep = pipeline.n_microbatches  # placeholders (shape inference) first: keep the last records
        width = sum(self._fields.values())
        rows = []
        for i in indices:
            records = self._records.get(i, [])[-keep:] if keep else self._records.get(i, [])
            summed = torch.stack(records).sum(0) if records else torch.zeros(width, dtype=torch.float64)
            coef = held[i].aux_coef.double().reshape(1) if i in held else torch.zeros(1, dtype=torch.float64)
            counts = torch.tensor([float(len(records)), float(i in held)], dtype=torch.float64)
            rows.append(torch.cat([t.to(trainer.device) for t in (summed, coef, counts)]))
        if not rows:
            return {}
        flat = all_reduce_sum(torch.stack(rows)).cpu()
        out = {}
        for i, row in zip(indices, flat):
            forwards, holders = float(row[-2]), float(row[-1])
            if not forwards:
                continue
            sums, offset = {}, 0
            for key, size in self._fields.items():
                sums[key] = row[offset : offset + size] if size > 1 else row[offset]
                offset += size
            summary = summarize_stats(sums, self.cfg.top_k)
            summary["aux_loss"] = float(sums["aux"]) / forwards
            summary["weighted_aux_loss"] = float(sums["weighted_aux"]) / forwards
            summary["aux_coef"] = float(row[-3]) / holders  # the same float32 value on every holder
            out[i] = summary
        return out

    def pre_optim_step(self, trainer: Trainer) -> None:
        self._summary = self._reduce(trainer)
        if not self.cfg.adaptive:
            return
        held = dict(moe_layers(trainer.model))
        with torch.no_grad():
            for i, s in self._summary.items():
                alpha = update_coefficient(
                    s["aux_coef"], s["drop_rate"], self.cfg.xi, self.cfg.alpha_max, self.cfg.beta
                )
                s["aux_coef"] = float(torch.tensor(alpha, dtype=torch.float32))  # what the buffer holds
                if i in held:
                    held[i].aux_coef.fill_(alpha)

    def _similarities(self, trainer: Trainer, layers: list[int]) -> dict[int, float | None]:
        """`expert_similarity` of every MoE layer; under PP each layer's comes from its stage (one all-reduce)."""
        local = {i: expert_similarity(layer) for i, layer in moe_layers(trainer.model)}
        if _pipeline(trainer) is None:
            return local
        import torch.distributed as dist

        values = [local[i] if local.get(i) is not None else float("-inf") for i in layers]
        found = torch.tensor(values, dtype=torch.float64, device=trainer.device)
        dist.all_reduce(found, op=dist.ReduceOp.MAX)
        return {i: (v if v != float("-inf") else None) for i, v in zip(layers, found.tolist())}

    def post_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        summary = self._summary if self._summary is not None else self._reduce(trainer)  # skipped step: log only
        log_step = (
            trainer.step % trainer.cfg.train.log_every == 0 or trainer.step == 1 or trainer.step == trainer.total_steps
        )
        similarity = self._similarities(trainer, sorted(summary)) if log_step else {}
        for i, s in sorted(summary.items()):
            prefix = f"moe/L{i}/"
            metrics[prefix + "drop_rate"] = s["drop_rate"]
            metrics[prefix + "load"] = [round(v, 5) for v in s["load"]]
            metrics[prefix + "entropy"] = s["entropy"]
            metrics[prefix + "max1_max2"] = s["max1_max2"]
            metrics[prefix + "max2_max3"] = s["max2_max3"]
            metrics[prefix + "aux_loss"] = s["aux_loss"]
            metrics[prefix + "aux_coef"] = s["aux_coef"]
            if log_step:
                metrics[prefix + "expert_similarity"] = similarity.get(i)
        if summary:
            count = len(summary)
            metrics["moe/drop_rate"] = sum(s["drop_rate"] for s in summary.values()) / count
            metrics["moe/max1_max2"] = sum(s["max1_max2"] for s in summary.values()) / count
            metrics["moe/aux_coef"] = sum(s["aux_coef"] for s in summary.values()) / count
            metrics["moe/aux_loss"] = sum(s["weighted_aux_loss"] for s in summary.values())
        self._records, self._summary = {}, None
