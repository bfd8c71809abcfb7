"""MoE training hooks: the aux losses enter the loss, the adaptive coefficients move, the routers are monitored.

`standard_callbacks.default_callbacks` adds `MoECallback` when `model.moe` is set. Per optimizer step:

* after every micro-batch's forward (`extra_loss`): returns Σ_l α_l·L_aux^(l) (added to that micro-batch's loss)
  and adds each layer's router statistics (sums) to the step's tally;
* before the update (`pre_optim_step`, finite steps only): sums the tallies over ranks (one all-reduce), so every
  rank sees the same global drop rate d_l of each layer; with `moe.adaptive`, α_l ← β·α_l + (1−β)·min(ξ·d_l,
  α_max) (report §4.2) — in place on the layers' `aux_coef` buffers, outside autograd. The buffers are part of
  the model's state, so checkpoints carry them and `--resume` continues with exactly the same coefficients;
* after the step (`post_step`): per-layer diagnostics into the metrics line — `moe/L{i}/drop_rate`, `load`
  (fraction of routed slots per expert), `entropy` (nats), `max1_max2`, `max2_max3`, `aux_loss`, `aux_coef`,
  and on log steps (every `train.log_every`, the first and the last) `expert_similarity` — plus the means over
  layers `moe/drop_rate`, `moe/max1_max2`, `moe/aux_coef` and the weighted total `moe/aux_loss`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from skyloom.model.moe import expert_lr_scale_fn, expert_similarity, moe_layers, summarize_stats, weighted_aux_loss
from skyloom.model.moe_config import MoEConfig
from skyloom.model.moe_losses import update_coefficient
from skyloom.train.callbacks import Callback
from skyloom.train.distributed import all_reduce_sum

if TYPE_CHECKING:
    from skyloom.train.trainer import Trainer

_STAT_KEYS = ("tokens", "assigned", "kept", "entropy_sum", "max12_sum", "max23_sum")


def lr_scale_fn_for(cfg: MoEConfig):
    """The trainer's `lr_scale_fn` for `moe.expert_lr_scale` (None when the experts keep the global LR)."""
    return None if cfg.expert_lr_scale == "none" else expert_lr_scale_fn(cfg)


class MoECallback(Callback):
    def __init__(self, cfg: MoEConfig):
        self.cfg = cfg
        self._tally: dict[int, dict[str, torch.Tensor]] = {}
        self._aux: dict[int, torch.Tensor] = {}
        self._weighted_aux: torch.Tensor | None = None
        self._micro_batches = 0
        self._summary: dict[int, dict[str, Any]] | None = None

    # ---- per micro-batch ----

    def extra_loss(self, trainer: Trainer, batch) -> torch.Tensor | None:
        model = trainer.model
        for i, layer in moe_layers(model):
            stats = layer.last_stats
            tally = self._tally.get(i)
            self._tally[i] = dict(stats) if tally is None else {k: tally[k] + stats[k] for k in _STAT_KEYS}
            if layer.last_aux_loss is not None:
                value = layer.last_aux_loss.detach().double()
                self._aux[i] = value if i not in self._aux else self._aux[i] + value
        self._micro_batches += 1
        total = weighted_aux_loss(model)
        if total is not None:
            value = total.detach().double()
            self._weighted_aux = value if self._weighted_aux is None else self._weighted_aux + value
        return total

    # ---- per optimizer step ----

    def _reduce(self) -> dict[int, dict[str, Any]]:
        """Sum the step's tallies over ranks (one all-reduce) and summarise them per layer."""
        layers = sorted(self._tally)
        if not layers:
            return {}
        flat = torch.cat([torch.cat([self._tally[i][k].reshape(-1).double() for k in _STAT_KEYS]) for i in layers])
        flat = all_reduce_sum(flat)
        out, offset = {}, 0
        n = self.cfg.n_experts
        for i in layers:
            sizes = {"tokens": 1, "assigned": n, "kept": n, "entropy_sum": 1, "max12_sum": 1, "max23_sum": 1}
            sums = {}
            for k in _STAT_KEYS:
                sums[k] = flat[offset : offset + sizes[k]].reshape(()) if sizes[k] == 1 else flat[offset : offset + n]
                offset += sizes[k]
            out[i] = summarize_stats(sums, self.cfg.top_k)
        return out

    def pre_optim_step(self, trainer: Trainer) -> None:
        self._summary = self._reduce()
        if not self.cfg.adaptive:
            return
        with torch.no_grad():
            for i, layer in moe_layers(trainer.model):
                if i not in self._summary:
                    continue
                alpha = update_coefficient(
                    float(layer.aux_coef), self._summary[i]["drop_rate"], self.cfg.xi, self.cfg.alpha_max, self.cfg.beta
                )
                layer.aux_coef.fill_(alpha)

    def post_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        summary = self._summary if self._summary is not None else self._reduce()  # skipped step: log only
        world = trainer.env.world_size
        layers = dict(moe_layers(trainer.model))
        log_step = (
            trainer.step % trainer.cfg.train.log_every == 0 or trainer.step == 1 or trainer.step == trainer.total_steps
        )
        zero = torch.zeros((), dtype=torch.float64, device=trainer.device)
        aux = all_reduce_sum(
            torch.stack(
                [self._aux.get(i, zero).to(trainer.device) for i in sorted(layers)]
                + [(self._weighted_aux if self._weighted_aux is not None else zero).to(trainer.device)]
            )
        )
        denom = max(self._micro_batches, 1) * world
        for pos, (i, layer) in enumerate(sorted(layers.items())):
            s = summary.get(i)
            if s is None:
                continue
            prefix = f"moe/L{i}/"
            metrics[prefix + "drop_rate"] = s["drop_rate"]
            metrics[prefix + "load"] = [round(v, 5) for v in s["load"]]
            metrics[prefix + "entropy"] = s["entropy"]
            metrics[prefix + "max1_max2"] = s["max1_max2"]
            metrics[prefix + "max2_max3"] = s["max2_max3"]
            metrics[prefix + "aux_loss"] = float(aux[pos]) / denom
            metrics[prefix + "aux_coef"] = float(layer.aux_coef)
            if log_step:
                metrics[prefix + "expert_similarity"] = expert_similarity(layer)
        if summary:
            count = len(summary)
            metrics["moe/drop_rate"] = sum(s["drop_rate"] for s in summary.values()) / count
            metrics["moe/max1_max2"] = sum(s["max1_max2"] for s in summary.values()) / count
            metrics["moe/aux_coef"] = sum(float(layers[i].aux_coef) for i in summary) / count
            metrics["moe/aux_loss"] = float(aux[-1]) / denom
        self._tally, self._aux, self._weighted_aux, self._micro_batches, self._summary = {}, {}, None, 0, None
