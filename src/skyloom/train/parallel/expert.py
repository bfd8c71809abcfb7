"""Expert parallelism (EP) for MoE layers: each rank of an `ep` group holds n_experts/ep of every layer's experts.

Where the ranks come from: the data-parallel ranks (or, under Expert Data Parallelism below, the tensor-parallel
ones). `expert_mesh` lays the dp ranks out as [dp/ep, ep] (row-major, so an ep group is ep consecutive dp ranks —
within one node when dp_shard ≥ ep): ranks of one ep group see different tokens and share one copy of the experts;
the dp/ep groups ("expert replicas") hold the same experts and average their gradients.

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

Three layouts:
* EP over DDP ranks (dp_replicate): DDP for the rest of the model, the experts' gradients as above. ZeRO-1 does not
  apply (the optimizer holds DTensors: its state is saved sharded, through DCP).
* EP over FSDP2 ranks (dp_shard, as torchtitan's `efsdp`): the dense parameters are FSDP-sharded over all dp ranks;
  each MoE layer is an FSDP unit of its own over the "ep_replicate" ranks, so the experts are sharded over ep and
  FSDP-sharded over the remaining dp/ep ranks (2-D DTensors). FSDP averages their gradients over dp/ep ranks, so
  the layer divides by ep instead, and sums its gate's gradient over the ep group (the gate lies in the experts'
  unit: its ranks see different tokens).
* Expert Data Parallelism (the MoE report's B.1, `apply_expert_data_parallel`): ep = tp with sequence parallelism.
  Attention (and the FFN of dense blocks) is tensor-parallel over the tp ranks, the experts are sharded over the
  same ranks, and each rank's sequence shard goes to the experts by all-to-all (model/moe.py, `route_group`: the
  routing is decided over the whole micro-batch, so the numbers are one process's). FSDP2 / replicate over the dp
  ranks take the experts as they take any TP weight, and pipeline stages (pp > 1) too: each stage's MoE layers
  over its tp ranks — the report's own layout for Skywork-MoE (PP × EDP × DP).
Not built: EP over dp ranks with pipeline stages, EP over dp and tp ranks at once (ep ≠ tp with tp > 1); refused
with the key to change.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Shard

from skyloom.config import ConfigError
from skyloom.model.moe import moe_layers
from skyloom.train.parallel.config import ParallelConfig

EXPERT_WEIGHTS = ("w1", "w3", "w2")


def check_expert_layout(pcfg: ParallelConfig, key: str = "train.parallel") -> None:
    """Refuse what EP does not support (a resolved layout; errors name `key`.<field>)."""
    if pcfg.ep <= 1:
        return
    if pcfg.pp > 1 and pcfg.tp == 1:
        raise ConfigError(
            f"{key}.pp",
            "expert parallelism over data-parallel ranks with pp > 1 is not supported yet; "
            "with pipeline stages shard the experts over the tensor-parallel ranks (tp = ep)",
        )
    if pcfg.tp > 1:
        if pcfg.ep != pcfg.tp:
            raise ConfigError(
                f"{key}.ep",
                f"with tp={pcfg.tp} the experts are sharded over the tensor-parallel ranks "
                f"(Expert Data Parallelism): set ep: {pcfg.tp} (got ep={pcfg.ep})",
            )
        if not pcfg.sequence_parallel:
            raise ConfigError(
                f"{key}.sequence_parallel",
                "Expert Data Parallelism (ep = tp) routes each rank's sequence shard: set sequence_parallel: true",
            )
        return
    if pcfg.dp % pcfg.ep:
        raise ConfigError(
            f"{key}.ep",
            f"ep={pcfg.ep} must divide the data-parallel degree "
            f"dp_replicate × dp_shard = {pcfg.dp}: experts are sharded over dp ranks",
        )


def expert_mesh(pcfg: ParallelConfig, device_type: str) -> DeviceMesh:
    """A [dp/ep, ep] mesh named ("ep_replicate", "ep") over the data-parallel ranks (collective; pp = tp = 1).

    Its "ep" dimension is what `apply_expert_parallel` shards over, "ep_replicate" the copies of the experts (the
    experts' own FSDP unit shards over it under FSDP2). Row-major: an ep group is ep consecutive ranks.
    """
    return init_device_mesh(device_type, (pcfg.dp // pcfg.ep, pcfg.ep), mesh_dim_names=("ep_replicate", "ep"))


def expert_parameter_names(model: nn.Module) -> list[str]:
    """Fully-qualified names of the MoE experts' weights (`layers.N.ffn.w1` …), as `model.named_parameters()`."""
    return [f"layers.{i}.ffn.{key}" for i, _ in moe_layers(model) for key in EXPERT_WEIGHTS]


def apply_expert_parallel(
    model: nn.Module,
    ep_mesh: DeviceMesh | None,
    replicate_mesh: DeviceMesh | None = None,
    grad_divisor: int | None = None,
    fsdp: bool = False,
) -> None:
    """Shard every MoE layer's experts over `ep_mesh` (in place; the model may still be on `meta`).

    `replicate_mesh`: the ranks holding the same experts (the "ep_replicate" dimension), None when ep = dp.
    `grad_divisor`: the factor the trainer multiplies the loss by for DDP's averaging (default: every rank of
    both meshes, i.e. the data-parallel degree). Call before DDP wraps the model: DDP is told to skip the experts.
    `fsdp`: each MoE layer becomes an FSDP unit over `replicate_mesh` (the caller's `fully_shard`), which averages
    the experts' and the gate's gradients over it: the layer divides them by ep and sums the gate's over ep ranks.
    """
    if ep_mesh is None or ep_mesh.size() == 1:
        return
    ep = ep_mesh.size()
    replicas = replicate_mesh.size() if replicate_mesh is not None else 1
    divisor = grad_divisor if grad_divisor is not None else (ep if fsdp else ep * replicas)
    replica_group = replicate_mesh.get_group() if replicas > 1 and not fsdp else None
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
        layer.gate_grad_group = ep_mesh.get_group() if fsdp else None
    from torch.nn.parallel import DistributedDataParallel

    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, expert_parameter_names(model))


def apply_expert_data_parallel(model: nn.Module, tp_mesh: DeviceMesh) -> None:
    """Expert Data Parallelism (B.1): shard every MoE layer's experts over the tensor-parallel ranks `tp_mesh`.

    Run after `apply_tensor_parallel` (which hands each MoE layer its rank's sequence shard, tensor.py). The gate
    becomes a replicated DTensor on the tp mesh (FSDP2 / replicate then treat it as any TP weight) whose gradient,
    each rank's own tokens', is summed over the tp ranks; the experts' gradients need no scaling: every token of
    the group reaches its expert's owner once, and the data-parallel wrapper averages over dp as for dense weights.
    """
    from torch.distributed.tensor import Replicate

    apply_expert_parallel(model, tp_mesh, grad_divisor=1)
    for _, layer in moe_layers(model):
        for name, param in list(layer.gate.named_parameters(recurse=False)):
            replicated = DTensor.from_local(param.detach(), tp_mesh, [Replicate()], run_check=False)
            setattr(layer.gate, name, nn.Parameter(replicated))
        layer.gate_grad_group = layer.route_group = tp_mesh.get_group()


def _squared_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """Σ ‖g‖² (float64) of DTensors that share one mesh and placements, reduced over the dimensions they are
    sharded over (a replicated dimension holds copies: counted once)."""
    from torch.distributed.tensor import Partial, Replicate, Shard
    from torch.distributed.tensor.placement_types import _StridedShard  # FSDP2's dp shards of an ep/tp shard

    g0 = grads[0]
    local = sum(g.to_local().detach().double().pow(2).sum() for g in grads)
    placements = [Partial() if isinstance(p, (Shard, _StridedShard)) else Replicate() for p in g0.placements]
    if any(isinstance(p, Partial) for p in g0.placements):  # unreduced gradients: the norm of a sum, not a sum
        return sum(g.detach().full_tensor().double().pow(2).sum() for g in grads)
    return DTensor.from_local(local.reshape(()), g0.device_mesh, placements, run_check=False).full_tensor()


def clip_grad_norm_(parameters, max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` over plain and sharded (DTensor) parameters on any meshes together.

    Expert parallelism mixes meshes torch's version cannot stack: experts on the ep mesh (2-D under FSDP2),
    dense weights on the dp mesh (FSDP2) or plain (DDP). Each group of one mesh and placements is summed over
    its sharded dimensions, plain gradients are counted once, so every rank gets the global norm and the same
    clip factor.
    """
    plain, sharded = [], {}
    for p in parameters:
        if p.grad is None:
            continue
        if isinstance(p.grad, DTensor):
            sharded.setdefault((id(p.grad.device_mesh), tuple(p.grad.placements)), []).append(p)
        else:
            plain.append(p)
    total_sq = torch.zeros((), dtype=torch.float64)
    for p in plain:
        total_sq = total_sq + p.grad.detach().double().pow(2).sum().cpu()
    for group in sharded.values():  # the parameters' order: the same on every rank
        total_sq = total_sq + _squared_norm([p.grad for p in group]).cpu()
    norm = total_sq.sqrt()
    scale = max_norm / (float(norm) + 1e-6)  # as torch's clip_grad_norm_: only ever scaled down
    if scale < 1.0:
        for p in plain + [p for group in sharded.values() for p in group]:
            p.grad.mul_(scale)
    return norm.float()
