"""`parallelize`: apply the layout to a model (or one pipeline stage) in torchtitan's order.

1. tensor + sequence parallelism (DTensor plans, train/parallel/tensor.py) — before anything wraps the modules;
2. expert parallelism (train/parallel/expert.py): over dp ranks, or over the tp ranks (Expert Data Parallelism);
3. activation checkpointing per block (recompute in backward);
4. torch.compile per block;
5. data parallelism: FSDP2 `fully_shard` on the embedding, per block, on norm + output and on the root (HSDP when dp_replicate > 1 too), else DDP over
   the dp_replicate ranks (ZeRO-1 is the optimizer's part, train/optim.py). With EP over dp ranks each MoE layer is
   an FSDP unit of its own over the ranks holding the same experts (torchtitan's `efsdp`).
Pipeline stages are cut before this (train/parallel/pipeline.py); each stage module goes through here on its own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from skyloom.train.parallel.config import ParallelConfig
from skyloom.train.parallel.mesh import sub_mesh


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a model or a pipeline stage (`layers` is a ModuleList or a ModuleDict)."""
    layers = model.layers
    return list(layers.values()) if isinstance(layers, nn.ModuleDict) else list(layers)


def fsdp_units(model: nn.Module) -> list[tuple[nn.Module | list[nn.Module], bool]]:
    """The FSDP2 units below the root, in forward order, each with whether to reshard it after forward.

    As torchtitan: the token embedding and norm + output are units of their own, so the vocabulary matrices are
    gathered only around their use instead of with the root for the whole step; the last unit is not resharded
    after forward, since backward needs it at once. A tied output shares the embedding's parameter, which must lie
    in one unit: then both stay with the root. Pipeline stages hold only some of these (pipeline.StageModule).
    """
    emb, norm, output = (getattr(model, name, None) for name in ("tok_emb", "norm", "output"))
    tied = emb is not None and output is not None and output.weight is emb.weight
    units: list[tuple[nn.Module | list[nn.Module], bool]] = []
    if emb is not None and not tied:
        units.append((emb, True))
    units += [(block, True) for block in blocks_of(model)]
    if output is not None and not tied:
        units.append(([norm, output] if norm is not None else output, False))
    return units


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward (saves memory, costs ~1/3 more compute)."""
    from torch.utils.checkpoint import checkpoint

    for block in blocks_of(model):
        inner = block.forward

        def forward(*args, _inner=inner):
            return checkpoint(_inner, *args, use_reentrant=False)

        block.forward = forward


def parallelize(
    model: nn.Module,
    pcfg: ParallelConfig,
    mesh: DeviceMesh | None,
    *,
    device: torch.device,
    mixed_precision: torch.dtype | None = None,
    compile: bool = False,
    activation_checkpointing: bool = False,
    materialize: Callable[[nn.Module], None] | None = None,
    ddp: bool = True,
) -> nn.Module:
    """The model as the step runs it (the same object, or a DDP wrapper); `pcfg` must be resolved.

    With FSDP2 (`dp_shard > 1`) `mixed_precision` becomes its MixedPrecisionPolicy (bf16 parameters, fp32
    gradient reduction) and the caller must not autocast on top; otherwise the caller autocasts.
    A model built on `meta` is given storage by `materialize` once it is sharded (FSDP/TP/EP) and before DDP, which
    broadcasts rank 0's weights when it is built. `ddp=False` leaves the gradient all-reduce over dp_replicate to
    the caller (pipeline stages: DDP's reducer does not follow a schedule's micro-batches, pipeline.py).
    """
    if pcfg.ep > 1:
        from skyloom.train.parallel.expert import check_expert_layout

        check_expert_layout(pcfg)
    if pcfg.tp > 1:  # ---- TP/SP: H16-TP, train/parallel/tensor.py ----
        from skyloom.train.parallel.tensor import apply_tensor_parallel

        apply_tensor_parallel(model, sub_mesh(mesh, "tp"), pcfg.sequence_parallel, expert_parallel=pcfg.ep > 1)
    expert_replicas = None  # EP over dp ranks: the ranks holding the same experts
    if pcfg.ep > 1:  # ---- EP: H16-EP, train/parallel/expert.py ----
        from skyloom.train.parallel.expert import apply_expert_data_parallel, apply_expert_parallel, expert_mesh

        if pcfg.tp > 1:  # Expert Data Parallelism: the experts over the tp ranks
            apply_expert_data_parallel(model, sub_mesh(mesh, "tp"))
        else:
            ep_mesh = expert_mesh(pcfg, device.type)
            expert_replicas = ep_mesh["ep_replicate"]
            apply_expert_parallel(model, ep_mesh["ep"], expert_replicas, fsdp=pcfg.dp_shard > 1)
    if activation_checkpointing:
        enable_activation_checkpointing(model)
    if compile:
        for block in blocks_of(model):
            block.compile()
    if pcfg.dp_shard > 1:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = (
            MixedPrecisionPolicy(param_dtype=mixed_precision, reduce_dtype=torch.float32)
            if mixed_precision is not None
            else MixedPrecisionPolicy()
        )
        dp_mesh = sub_mesh(mesh, "dp_replicate", "dp_shard")
        if expert_replicas is not None:  # each MoE layer (experts + gate) its own unit over the expert replicas
            from skyloom.model.moe import moe_layers

            for _, layer in moe_layers(model):
                fully_shard(layer, mesh=expert_replicas, mp_policy=mp)
        for unit, reshard in fsdp_units(model):
            fully_shard(unit, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard)
        fully_shard(model, mesh=dp_mesh, mp_policy=mp)
    elif pcfg.dp_replicate > 1 and pcfg.tp > 1:  # DDP cannot take DTensor parameters: FSDP2's replicate-only form
        from torch.distributed._composable.replicate_with_fsdp import replicate

        dp_mesh = sub_mesh(mesh, "dp_replicate")
        for block in blocks_of(model):
            replicate(block, mesh=dp_mesh)
        replicate(model, mesh=dp_mesh)
    if materialize is not None:
        materialize(model)
    if pcfg.dp_shard > 1 or pcfg.tp > 1:
        return model
    if pcfg.dp_replicate > 1 and ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        dp_mesh = sub_mesh(mesh, "dp_replicate")
        return DDP(
            model, device_ids=[device.index] if device.type == "cuda" else None, process_group=dp_mesh.get_group()
        )
    return model
