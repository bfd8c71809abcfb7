"""Pipeline parallelism with `torch.distributed.pipelining`: the model cut into stages, run by a 1F1B schedule.

Stages: the first holds the token (and position) embedding, the last the final norm, the output projection and
the loss; each holds a contiguous run of blocks, `pp_split` of them (unequal splits allowed, e.g. fewer layers on
the first and last stage, which carry the embedding and the loss — Skywork-MoE report B.2), else as even as
possible with the spare layers in the middle stages. Stage s runs on pipeline rank s mod pp (with
`Interleaved1F1B` a rank holds pp_stages_per_rank stages: s, s + pp, …). Every parameter keeps its full-model name
(the blocks sit in a ModuleDict keyed by their index), so the init (one generator per name), the optimizer's groups
and checkpoints do not depend on the cut.

One optimizer step = one schedule step over this data-parallel rank's micro-batches (the gradient accumulation is
the schedule's micro-batching; `scale_grads` off). The loss function is the trainer's: sum of token losses × dp /
global target tokens, so gradients are those of the single-process run. Only plain windows are pipelined (no
per-sample positions or attention masks: stages after the first would need them too).

MoE: the schedule calls the loss function on the last stage only, so each stage attaches the weighted aux loss
α_l·L_aux^(l) of every MoE layer it runs to its own output (`moe_losses.attach_aux_loss`): the backward of that
micro-batch feeds d(loss)/d(α_l·L_aux^(l)) = `aux_loss_scale` (1 / micro-batches, the trainer's weight of an
extra loss) into it, on the stage that owns the layer — nothing but the hidden state crosses stages. After
each MoE layer's training forward the stage calls `on_moe_forward(layer index, layer)` (train/moe.py tallies the
router statistics there and combines them over all ranks once per step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from skyloom.model.moe import MoE
from skyloom.model.moe_losses import attach_aux_loss
from skyloom.model.transformer import Transformer, rope_cos_sin
from skyloom.train.parallel.config import ParallelConfig
from skyloom.train.parallel.mesh import coordinates, sub_mesh


def split_layers(n_layers: int, n_stages: int, pp_split: list[int] | None = None) -> list[range]:
    """The block indices of each stage: `pp_split` when given, else as even as possible, spare layers in the middle."""
    if pp_split is None:
        base, spare = divmod(n_layers, n_stages)
        by_centre = sorted(range(n_stages), key=lambda s: (-min(s, n_stages - 1 - s), s))
        extra = set(by_centre[:spare])
        pp_split = [base + (s in extra) for s in range(n_stages)]
    if sum(pp_split) != n_layers or len(pp_split) != n_stages or min(pp_split) < 1:
        raise ValueError(f"cannot cut {n_layers} layers into stages {pp_split}")
    starts = [sum(pp_split[:s]) for s in range(n_stages)]
    return [range(start, start + n) for start, n in zip(starts, pp_split)]


class StageModule(nn.Module):
    """One pipeline stage: some blocks, the embedding on the first stage, norm + output on the last."""

    def __init__(self, model: Transformer, layers: range, first: bool, last: bool):
        super().__init__()
        self.config = model.config
        self.first, self.last = first, last
        self.rotary = model.pos_emb is None  # learned positions (GPT) are added once, by the first stage
        if first:
            self.tok_emb = model.tok_emb
            self.pos_emb = model.pos_emb
            self.emb_dropout = model.emb_dropout
        self.layers = nn.ModuleDict({str(i): model.layers[i] for i in layers})
        if last:
            self.norm = model.norm
            self.output = model.output

    init_weights = Transformer.init_weights  # the documented init, by parameter name: the same as the full model's
    sequence_shards = 1  # sequence parallelism (tensor.py) sets tp: a later stage receives T/tp positions per rank
    aux_loss_scale = 1.0  # d(loss)/d(α·L_aux) of one micro-batch (`Pipeline.step` sets it)
    on_moe_forward: Callable[[int, MoE], None] | None = None  # called after each MoE layer's training forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] → hidden states (first stage); hidden → hidden; hidden → logits (last stage)."""
        t = x.shape[1] if self.first else x.shape[1] * self.sequence_shards
        positions = torch.arange(t, device=x.device).unsqueeze(0)
        if self.first:
            h = self.tok_emb(x)
            if self.pos_emb is not None:
                h = h + self.pos_emb(positions)
            x = self.emb_dropout(h)
        rope = None
        if self.rotary:
            cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
            rope = (cos.unsqueeze(1), sin.unsqueeze(1))
        for index, block in self.layers.items():
            x = block(x, rope, None)
            if self.training and isinstance(block.ffn, MoE):
                x = self._carry_aux_loss(int(index), block.ffn, x)
        return self.output(self.norm(x)) if self.last else x

    def _carry_aux_loss(self, index: int, layer: MoE, x: torch.Tensor) -> torch.Tensor:
        """Report the layer's forward, and attach its weighted aux loss to the hidden state (module docstring)."""
        if self.on_moe_forward is not None:
            self.on_moe_forward(index, layer)
        if layer.last_aux_loss is None or not torch.is_grad_enabled():
            return x
        return attach_aux_loss(x, layer.aux_coef.float() * layer.last_aux_loss, self.aux_loss_scale)


class RankModel(nn.Module):
    """What one pipeline rank holds — its stages' modules under their full-model names (the optimizer's and the
    checkpoint's view; the schedule runs the stages themselves)."""

    def __init__(self, stages: list[StageModule]):
        super().__init__()
        self.config = stages[0].config
        self.layers = nn.ModuleDict()
        for stage in stages:
            for name, child in stage.named_children():
                if name == "layers":
                    self.layers.update(child)
                else:
                    setattr(self, name, child)


@dataclass
class Pipeline:
    """This rank's stages and the schedule that runs them."""

    stages: list[nn.Module]  # as run (possibly DDP-wrapped / FSDP-sharded)
    rank_model: RankModel
    schedule: object
    has_last_stage: bool
    replicate_group: object = None  # DDP-style data parallelism: gradients averaged here after each step
    pp_group: object = None  # the pipeline ranks of this data-parallel slot (group rank = pp coordinate)
    stage_ids: tuple[int, ...] = ()  # the global index of each of `stages`
    n_stages: int = 0
    n_microbatches: int = 0  # per step; the first step also runs each stage once on placeholders (shape inference)
    modules: tuple[StageModule, ...] = ()  # `stages` unwrapped

    def step(self, inputs: torch.Tensor, labels: torch.Tensor, aux_loss_scale: float | None = None) -> None:
        """Forward + backward of every micro-batch; inputs go to the first stage, labels to the last. The MoE aux
        losses enter with weight `aux_loss_scale` per micro-batch (default 1 / micro-batches)."""
        for m in self.modules:
            m.aux_loss_scale = 1.0 / self.n_microbatches if aux_loss_scale is None else aux_loss_scale
        self.schedule.step(inputs, target=labels)
        if self.replicate_group is not None:
            average_gradients(self.rank_model.parameters(), self.replicate_group)

    @torch.no_grad()
    def loss_sums(
        self, windows: torch.Tensor, batch_size: int, device: torch.device, autocast_dtype: torch.dtype | None = None
    ) -> tuple[float, int]:
        """(sum of token losses, target count) over [n, L+1] windows — `validation.windowed_loss_sums` through the
        stages.

        Forward only, batch by batch, stage after stage in order: a rank runs its stage on the tokens (first) or
        on the activations received from the previous stage's rank, and sends its output on; the last stage's
        logits go to the shared loss loop. Every pipeline rank returns the last stage's sums (broadcast), so every
        rank logs what one process would. Plain blocking send/recv, no schedule: exact, and nothing of the
        training schedule's state is touched."""
        import torch.distributed as dist

        from skyloom.train.validation import windowed_loss_sums

        pp = dist.get_world_size(self.pp_group)
        mine = dict(zip(self.stage_ids, self.stages))

        def logits_of(inputs: torch.Tensor) -> torch.Tensor | None:
            out = None
            for s, stage in sorted(mine.items()):
                x = inputs if s == 0 else recv_tensor((s - 1) % pp, self.pp_group, device)
                out = stage(x)
                if s != self.n_stages - 1:
                    send_tensor(out, (s + 1) % pp, self.pp_group)
                    out = None
            return out

        total, count = windowed_loss_sums(windows, batch_size, device, autocast_dtype, logits_of, self.stages)
        dist.broadcast(total, group=self.pp_group, group_src=(self.n_stages - 1) % pp)
        return float(total), count


_WIRE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def send_tensor(x: torch.Tensor, dst: int, group) -> None:
    """`x` to group rank `dst`, preceded by its dtype and shape (a stage's output dtype depends on autocast/FSDP's
    mixed precision, its shape on sequence parallelism), so the receiver needs no inference."""
    import torch.distributed as dist

    header = torch.tensor([_WIRE_DTYPES.index(x.dtype), x.dim(), *x.shape], dtype=torch.int64, device=x.device)
    header = torch.cat([header, header.new_zeros(8 - len(header))])
    dist.send(header, group=group, group_dst=dst)
    dist.send(x.contiguous(), group=group, group_dst=dst)


def recv_tensor(src: int, group, device: torch.device) -> torch.Tensor:
    """What `send_tensor` sent from group rank `src`."""
    import torch.distributed as dist

    header = torch.zeros(8, dtype=torch.int64, device=device)
    dist.recv(header, group=group, group_src=src)
    code, ndim, *shape = header.tolist()
    x = torch.empty(shape[:ndim], dtype=_WIRE_DTYPES[code], device=device)
    dist.recv(x, group=group, group_src=src)
    return x


def average_gradients(parameters, group) -> None:
    """Mean of every gradient over `group`, in one flat buffer per dtype (what DDP does, without its reducer,
    which expects one backward per step and breaks under a schedule's micro-batches)."""
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = [p.grad for p in parameters if p.grad is not None]
    for dtype in {g.dtype for g in grads}:
        same = [g for g in grads if g.dtype == dtype]
        flat = _flatten_dense_tensors(same)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        flat /= dist.get_world_size(group)
        for g, reduced in zip(same, _unflatten_dense_tensors(flat, same)):
            g.copy_(reduced)


def build_pipeline(
    model: Transformer,
    pcfg: ParallelConfig,
    mesh: DeviceMesh,
    rank: int,
    device: torch.device,
    *,
    n_microbatches: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    wrap: Callable[[nn.Module], nn.Module],
) -> Pipeline:
    """Cut `model` (built on meta) into this rank's stages, `wrap` each (the data/tensor-parallel layout and its
    materialisation, train/parallel/apply.py — without DDP: `Pipeline.step` averages the gradients over
    dp_replicate itself) and build the schedule."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleInterleaved1F1B

    n_stages = pcfg.n_stages
    if n_microbatches < pcfg.pp:
        raise ValueError(
            f"pipeline parallelism over {pcfg.pp} stages needs at least {pcfg.pp} micro-batches per "
            f"step, this layout gives {n_microbatches}: lower train.micro_batch_size or raise "
            "train.global_batch_tokens"
        )
    cuts = split_layers(model.config.n_layers, n_stages, pcfg.pp_split)
    pp_rank = coordinates(pcfg, rank)["pp"]
    pp_group = sub_mesh(mesh, "pp").get_group()
    mine = list(range(pp_rank, n_stages, pcfg.pp))
    modules = [StageModule(model, cuts[s], first=s == 0, last=s == n_stages - 1) for s in mine]
    rank_model = RankModel(modules)
    run = [wrap(m) for m in modules]
    stages = [PipelineStage(m, s, n_stages, device, group=pp_group) for m, s in zip(run, mine)]
    if pcfg.pp_schedule == "1F1B":
        schedule = Schedule1F1B(stages[0], n_microbatches, loss_fn=loss_fn, scale_grads=False)
    else:
        schedule = ScheduleInterleaved1F1B(stages, n_microbatches, loss_fn=loss_fn, scale_grads=False)
    replicate = sub_mesh(mesh, "dp_replicate").get_group() if pcfg.dp_replicate > 1 and pcfg.dp_shard == 1 else None
    return Pipeline(
        run,
        rank_model,
        schedule,
        has_last_stage=(n_stages - 1) in mine,
        replicate_group=replicate,
        pp_group=pp_group,
        stage_ids=tuple(mine),
        n_stages=n_stages,
        n_microbatches=n_microbatches,
        modules=tuple(modules),
    )


def clip_grad_norm_over_stages(parameters, max_norm: float, pp_group) -> float:
    """`clip_grad_norm_` whose norm covers every stage's gradients (each rank holds only its stages'): the squared
    local norms are summed over the pipeline ranks. Returns the global norm."""
    import torch.distributed as dist

    params = [p for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0)
    if hasattr(norm, "full_tensor"):  # sharded gradients (FSDP2 / TP): the norm is a DTensor
        norm = norm.full_tensor()
    squared = norm.double() ** 2
    dist.all_reduce(squared, op=dist.ReduceOp.SUM, group=pp_group)
    total = squared.sqrt()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total.to(params[0].grad.dtype if params else torch.float32))
    return float(total)
