"""AdamW with the report's settings, parameter groups, and learning-rate schedules.

Weight decay (0.1) applies to matrices only — the weights of linear layers. Norm gains and biases are not
decayed (decaying a gain pulls it toward 0, i.e. toward switching the layer off, which is not a
regulariser), and neither are the token/position embeddings (a row of the embedding is only updated when its
token occurs, so decay would shrink rare tokens' rows on every step they are absent — LLaMA / OLMo /
nanoGPT-style practice leaves them undecayed). The untied output projection is a linear layer and is decayed.

Every group may carry `lr_scale` (default 1): the schedule sets `lr = schedule(step) · lr_scale`, the hook a
later MoE setup uses to give experts or routers their own learning rates (`lr_scale_fn`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from skyloom.train.config import TrainConfig


def _is_embedding_param(model: nn.Module, name: str) -> bool:
    module_name = name.rsplit(".", 1)[0]
    module = model.get_submodule(module_name) if module_name != name else model
    return isinstance(module, nn.Embedding)


def param_groups(
    model: nn.Module,
    weight_decay: float,
    lr_scale_fn: Callable[[str, nn.Parameter], float] | None = None,
) -> list[dict]:
    """Groups keyed by (decayed?, lr_scale); each group lists its parameter names under "names"."""
    groups: dict[tuple[bool, float], dict] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        decay = p.ndim >= 2 and not _is_embedding_param(model, name)
        scale = float(lr_scale_fn(name, p)) if lr_scale_fn else 1.0
        group = groups.setdefault(
            (decay, scale),
            {
                "params": [],
                "names": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": scale,
            },
        )
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(
    model: nn.Module,
    cfg: TrainConfig,
    *,
    zero1: bool = False,
    zero1_group=None,
    lr_scale_fn: Callable[[str, nn.Parameter], float] | None = None,
) -> torch.optim.Optimizer:
    """AdamW(β=cfg.betas, eps=cfg.eps), wrapped in ZeroRedundancyOptimizer (ZeRO-1) when `zero1` — sharded over
    `zero1_group` (the data-parallel ranks of a pipeline/tensor-parallel layout; None = every rank)."""
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, cfg.weight_decay, lr_scale_fn)]
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    # The fused kernel (CPU and CUDA) is ~7× faster than the per-tensor loop on CPU, and sharded DTensor parameters
    # (FSDP2, TP) take it too: the foreach path would hold a parameter-sized temporary (sqrt of exp_avg_sq over all
    # tensors at once) at the step — on an FSDP2 rank a quarter of its state (benchmarks/bench_fsdp_memory.py).
    fusable = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    sharded = [type(p) is not torch.nn.Parameter for g in groups for p in g["params"]]
    if any(sharded) and not all(sharded):  # expert parallelism: DTensor experts beside plain weights
        kwargs["foreach"] = False  # the foreach kernels refuse a mix of DTensor and torch.Tensor
    else:
        kwargs["fused" if fusable else "foreach"] = True
    if zero1:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, process_group=zero1_group, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def clips_in_step(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer` can apply gradient clipping inside its own step: a plain fused AdamW over plain tensors
    divides every gradient by `optimizer.grad_scale` in its kernel (the hook AMP's GradScaler uses), which saves
    clipping's separate read-modify-write pass over all gradients (0.6–2% of a CPU step at `small` in A/B runs)."""
    return (
        type(optimizer) is torch.optim.AdamW
        and bool(optimizer.defaults.get("fused"))
        and all(type(p) is torch.nn.Parameter for g in optimizer.param_groups for p in g["params"])
    )


def clip_in_step(optimizer: torch.optim.Optimizer, parameters, max_norm: float) -> float:
    """`clip_grad_norm_`'s norm and scaling, the scaling left to the optimizer's next step (`clips_in_step`):
    grads are divided by (norm + 1e-6) / max_norm when that exceeds 1, as torch multiplies them by its inverse.
    Returns the total norm before clipping."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        optimizer.grad_scale = None
        return 0.0
    norm = torch.nn.utils.get_total_norm(grads, 2.0)
    divisor = (norm.float() + 1e-6) / max_norm
    optimizer.grad_scale = divisor if bool(divisor > 1) else None
    return float(norm)


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based) of this session.

    cosine: linear warmup from lr/warmup to lr over `warmup_steps`, then cosine from lr down to `min_lr` at the
    last step (the report's 6e-4 → 6e-5). constant: warmup (if any), then `lr` (a chained session such as the
    report's 2–3T continuation at a constant 6e-5 sets lr: 6e-5, schedule: constant).
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    decay_steps = max(total_steps - cfg.warmup_steps - 1, 1)
    progress = min(max((step - cfg.warmup_steps) / decay_steps, 0.0), 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


# ---- checkpoint state in the name-keyed form every layout shares ----

# Settings that say how the update runs on a layout (which kernel), not where training stands: a resume keeps the
# current layout's own — e.g. the fused CPU kernel of a DDP run does not take FSDP's DTensor parameters.
LAYOUT_KEYS = frozenset({"fused", "foreach", "capturable", "differentiable"})


def is_zero1(optimizer) -> bool:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return isinstance(optimizer, ZeroRedundancyOptimizer)


def zero1_state_dict(optimizer, names: Mapping[int, str]) -> dict[str, Any]:
    """This rank's share of a ZeRO-1 optimizer, flattened and keyed by parameter name exactly as
    `get_state_dict(..., flatten_optimizer_state_dict=True)` keys a full optimizer (`state.<name>.exp_avg`,
    `param_groups.<name>.lr`): only the parameters this rank owns, so DCP writes each entry once, from its owner,
    and no rank ever holds the whole optimizer state. `names`: id(parameter) → its name."""
    from torch.distributed.checkpoint.state_dict import _init_optim_state

    local = optimizer.optim
    _init_optim_state(local)  # a fresh optimizer: one zero-gradient, lr-0 step creates the state (torch's own way)
    out: dict[str, Any] = {}
    for group in local.param_groups:
        for param in group["params"]:
            name = names[id(param)]
            out.update({f"state.{name}.{key}": value for key, value in local.state[param].items()})
            out.update({f"param_groups.{name}.{key}": value for key, value in group.items() if key != "params"})
    return out


def load_zero1_state_dict(optimizer, names: Mapping[int, str], flat: Mapping[str, Any]) -> None:
    """The inverse of `zero1_state_dict`: this rank's owned parameters' entries of `flat` (any layout wrote them)
    into its local optimizer; the hyper-parameters into the ZeRO wrapper's groups too (its step copies them down)."""
    local = optimizer.optim
    with torch.no_grad():
        for group, shared in zip(local.param_groups, optimizer.param_groups, strict=True):
            for param in group["params"]:
                state = local.state[param]
                for key, current in list(state.items()):
                    value = flat[f"state.{names[id(param)]}.{key}"]
                    if torch.is_tensor(current) and torch.is_tensor(value):
                        if value is not current:
                            current.copy_(value)
                    else:
                        state[key] = value
            if not group["params"]:
                continue
            first = names[id(group["params"][0])]
            for key in group:
                if key != "params" and key not in LAYOUT_KEYS:
                    group[key] = flat[f"param_groups.{first}.{key}"]
                    if key in shared:
                        shared[key] = group[key]
