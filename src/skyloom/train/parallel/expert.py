"""Expert parallelism (EP) for MoE layers: each rank of an `ep` group holds n_experts/ep of every layer's experts.

Where the ranks come from: the data-parallel ranks. `expert_mesh` lays the dp ranks of one pipeline stage / tensor
slice out as [dp/ep, ep] (row-major, so an ep group is ep consecutive dp ranks — within one node when dp_shard
≥ ep): ranks of one ep group see different tokens and share one copy of the experts; the dp/ep groups ("expert
replicas") hold the same experts and average their gradients.

What runs (model/moe.py): every rank routes its own tokens (gate, top-k, capacity, drops, aux loss, statistics —
all per rank and micro-batch, exactly as without EP), writes them into the padded [n_experts, C, dim] buffer and
sends each owner the rows of its experts with one equal-split all-to-all; the owner runs its experts on the rows
of all ranks and sends the results back the same way. Shapes are static (C is the capacity), so no split sizes go
through the host. The numbers are those of the same layout without EP — DDP, or one process whose micro-batch is
a rank's micro-batch — because nothing about the routing depends on where an expert lives. (Pooling the capacity
over the ep group instead would make the training maths change with `ep`, and a resume onto another layout
would change it again; per rank and micro-batch is also Megatron-LM's definition.)

Gradients: the trainer scales each rank's loss by the number of ranks DDP averages over (`grad_divisor`), and DDP
skips the experts (they differ between ranks), so an expert's gradient arrives as grad_divisor × the sum over its
ep group's tokens; the MoE layer's backward divides it by grad_divisor and sums it over the expert replicas.
Expert weights are DTensors sharded (Shard(0)) over the ep mesh: the documented init gives the same full
weights as one process, `torch.distributed.checkpoint` saves each rank's experts, `full_tensor()` gathers them.

Built here: EP over DDP ranks (DDP for the rest of the model, ZeRO-1 off). Not yet: EP combined with FSDP2 (the
experts would need their own FSDP over dp/ep) or with TP (the report's Expert Data Parallelism, B.1); both are
refused with the key to change.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Shard

from skyloom.config import ConfigError
from skyloom.model.moe import moe_layers
from skyloom.train.parallel.config import ParallelConfig

EXPERT_WEIGHTS = ("w1", "w3", "w2")


def check_expert_layout(pcfg: ParallelConfig, key: str = "train.parallel") -> None:
    """Refuse what EP does not support yet (a resolved layout; errors name `key`.<field>)."""
    if pcfg.ep <= 1:
        return
    if pcfg.dp % pcfg.ep:
        raise ConfigError(
            f"{key}.ep",
            f"ep={pcfg.ep} must divide the data-parallel degree "
            f"dp_replicate × dp_shard = {pcfg.dp}: experts are sharded over dp ranks",
        )
    if pcfg.dp_shard > 1:
        raise ConfigError(
            f"{key}.dp_shard",
            "expert parallelism runs over DDP ranks; FSDP2 with ep > 1 is not supported yet (use dp_replicate)",
        )
    if pcfg.tp > 1 or pcfg.pp > 1:
        name = "tp" if pcfg.tp > 1 else "pp"
        raise ConfigError(f"{key}.{name}", f"expert parallelism with {name} > 1 is not supported yet")
    if pcfg.zero1:
        raise ConfigError(
            f"{key}.zero1",
            "ZeRO-1 shards the optimizer over all DDP ranks, but with ep > 1 each "
            "rank owns different experts; set zero1: false",
        )


def expert_mesh(pcfg: ParallelConfig, device_type: str) -> DeviceMesh:
    """A [pp, dp/ep, ep, tp] mesh named ("pp", "ep_replicate", "ep", "tp") over the world (collective).

    Its "ep" dimension is what `apply_expert_parallel` shards over, "ep_replicate" the copies of the experts.
    """
    shape = (pcfg.pp, pcfg.dp // pcfg.ep, pcfg.ep, pcfg.tp)
    return init_device_mesh(device_type, shape, mesh_dim_names=("pp", "ep_replicate", "ep", "tp"))


def expert_parameter_names(model: nn.Module) -> list[str]:
    """Fully-qualified names of the MoE experts' weights (`layers.N.ffn.w1` …), as `model.named_parameters()`."""
    return [f"layers.{i}.ffn.{key}" for i, _ in moe_layers(model) for key in EXPERT_WEIGHTS]


def apply_expert_parallel(
    model: nn.Module,
    ep_mesh: DeviceMesh | None,
    replicate_mesh: DeviceMesh | None = None,
    grad_divisor: int | None = None,
) -> None:
    """Shard every MoE layer's experts over `ep_mesh` (in place; the model may still be on `meta`).

    `replicate_mesh`: the ranks holding the same experts (the "ep_replicate" dimension), None when ep = dp.
    `grad_divisor`: the factor the trainer multiplies the loss by for DDP's averaging (default: every rank of
    both meshes, i.e. the data-parallel degree). Call before DDP wraps the model: DDP is told to skip the experts.
    """
    if ep_mesh is None or ep_mesh.size() == 1:
        return
    ep = ep_mesh.size()
    replicas = replicate_mesh.size() if replicate_mesh is not None else 1
    divisor = grad_divisor if grad_divisor is not None else ep * replicas
    replica_group = replicate_mesh.get_group() if replicas > 1 else None
    index = ep_mesh.get_local_rank()
    for _, layer in moe_layers(model):
        if layer.n_experts % ep:
            raise ConfigError("train.parallel.ep", f"{layer.n_experts} experts not divisible by ep={ep}")
        n_local = layer.n_experts // ep
        for key in EXPERT_WEIGHTS:
            weight = getattr(layer, key)
            if isinstance(weight, DTensor):
                raise ConfigError("train.parallel.ep", "the experts are already sharded (apply EP before FSDP)")
            local = weight.detach()[index * n_local : (index + 1) * n_local].clone()
            sharded = nn.Parameter(
                DTensor.from_local(
                    local, ep_mesh, [Shard(0)], run_check=False, shape=weight.shape, stride=weight.stride()
                )
            )
            setattr(layer, key, sharded)
        layer.ep_group, layer.ep_size = ep_mesh.get_group(), ep
        layer.ep_replicas, layer.ep_grad_divisor = replica_group, float(divisor)
    from torch.nn.parallel import DistributedDataParallel

    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, expert_parameter_names(model))


def clip_grad_norm_(parameters, max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` over plain and expert-sharded (DTensor) parameters together.

    The experts' squared norm is summed over their ep group (each rank holds different experts), the rest of
    the model's counted once, so every rank gets the global norm and the same clip factor.
    """
    plain, sharded = [], []
    for p in parameters:
        if p.grad is not None:
            (sharded if isinstance(p.grad, DTensor) else plain).append(p)
    total_sq = torch.zeros((), dtype=torch.float64)
    for p in plain:
        total_sq = total_sq + p.grad.detach().double().pow(2).sum().cpu()
    if sharded:
        ep_sq = torch.zeros((), dtype=torch.float64, device=sharded[0].grad.to_local().device)
        for p in sharded:
            ep_sq = ep_sq + p.grad.to_local().detach().double().pow(2).sum()
        groups = {id(p.grad.device_mesh): p.grad.device_mesh.get_group() for p in sharded}
        for group in groups.values():  # one ep mesh in practice
            dist.all_reduce(ep_sq, group=group)
        total_sq = total_sq + ep_sq.cpu()
    norm = total_sq.sqrt()
    scale = max_norm / (float(norm) + 1e-6)  # as torch's clip_grad_norm_: only ever scaled down
    if scale < 1.0:
        for p in plain + sharded:
            p.grad.mul_(scale)
    return norm.float()
