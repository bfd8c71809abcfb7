"""Tensor + sequence parallelism (Megatron-LM, Korthikanti et al. 2022) with DTensor's `parallelize_module`.

The plan, per block (as torchtitan lays out LLaMA):
  attention: wq/wk/wv column-parallel (each rank computes its own heads), wo row-parallel;
  FFN: w1/w3 column-parallel (each rank its slice of the hidden width), w2 row-parallel;
  embedding row-parallel over the vocabulary, output projection column-parallel with the logits gathered
  (no loss parallelism: the loss is computed from full logits, bit-for-bit the single-process formula).
With sequence parallelism the residual stream between the sub-layers is split along the sequence: the norms run on
sequence shards (`SequenceParallel`), each sub-layer all-gathers its input and its row-parallel output is
reduce-scattered back (the all-reduce of plain TP, split in two, and activations 1/tp the size). Without it the
residual stream is replicated and the norms' weights are replicated DTensors, so every parameter is a DTensor on the
TP mesh (FSDP2 then shards them on a 2-D mesh; the gradient norm is one `full_tensor`).

Every parameter between blocks keeps its full-model name, so checkpoints and the init (one generator per name,
model/transformer.py) do not depend on the layout. MoE blocks run as Expert Data Parallelism (the MoE report's B.1,
expert.py): with sequence parallelism and ep = tp, an MoE layer takes its rank's sequence shard as it is (no
all-gather) and returns it shard for shard; its experts are sharded over the same tp ranks by
`apply_expert_data_parallel`. Dropout is refused: TP ranks would draw the same masks for different shards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from skyloom.config import ConfigError

if TYPE_CHECKING:
    from torch import nn
    from torch.distributed.device_mesh import DeviceMesh

    from skyloom.model.config import ModelConfig


def check_tensor_parallel(
    model: ModelConfig,
    tp: int,
    key: str = "train.parallel.tp",
    seq_len: int | None = None,
    sequence_parallel: bool = True,
    ep: int = 1,
) -> None:
    """Refuse a model that `tp` ranks cannot split evenly (no torch import: runs when the config is built).

    `seq_len`: the training windows' length, which sequence parallelism splits over the tp ranks. MoE blocks need
    Expert Data Parallelism: ep = tp and sequence parallelism."""
    if tp <= 1:
        return
    need = [
        ("heads", model.n_heads),
        ("key/value heads", model.kv_heads),
        ("FFN width", model.hidden_ffn_dim),
        ("vocabulary entries", model.vocab_size),
    ]
    if sequence_parallel and seq_len is not None:
        need.append(("sequence positions (sequence parallelism splits the sequence)", seq_len))
    for what, n in need:
        if n % tp:
            raise ConfigError(key, f"{n} {what} not divisible by tp={tp}")
    if model.moe is not None and ep != tp:
        raise ConfigError(
            key,
            "MoE blocks under tensor parallelism run as Expert Data Parallelism, the experts sharded over the "
            f"same ranks: set train.parallel.ep: {tp} (got ep={ep})",
        )
    if model.moe is not None and not sequence_parallel:
        raise ConfigError(
            key.rsplit(".", 1)[0] + ".sequence_parallel",
            "Expert Data Parallelism routes each tp rank's sequence shard: set sequence_parallel: true",
        )
    if model.dropout > 0:
        raise ConfigError(
            key,
            f"tensor parallelism needs model.dropout: 0 (got {model.dropout}): the TP ranks "
            "would draw the same dropout masks for different shards",
        )


def _replicate_module(module: nn.Module, mesh: DeviceMesh) -> None:
    """Its parameters become replicated DTensors; it takes and returns plain (replicated) tensors."""
    from torch import Tensor
    from torch.distributed.tensor import DTensor, Replicate, distribute_module

    def inputs_in(_mod, inputs, device_mesh):
        return tuple(
            DTensor.from_local(x, device_mesh, [Replicate()], run_check=False)
            if isinstance(x, Tensor) and not isinstance(x, DTensor)
            else x
            for x in inputs
        )

    def output_out(_mod, output, _device_mesh):
        return output.to_local() if isinstance(output, DTensor) else output

    distribute_module(module, mesh, input_fn=inputs_in, output_fn=output_out)


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The model's blocks (a ModuleList, or a ModuleDict / holes when a pipeline stage keeps only some)."""
    layers = getattr(model, "layers", None)
    if layers is None:
        return []
    items = layers.values() if hasattr(layers, "values") else layers
    return [block for block in items if block is not None]


def apply_tensor_parallel(
    model: nn.Module, tp_mesh: DeviceMesh, sequence_parallel: bool = True, expert_parallel: bool = False
) -> nn.Module:
    """Shard `model` (a Transformer or a pipeline stage of one) over the 1-D `tp_mesh`, in place; returns it.

    `expert_parallel`: MoE blocks take their sequence shard as it is (Expert Data Parallelism; the experts are
    sharded afterwards by expert.apply_expert_data_parallel).

    Run before FSDP2 / DDP wrapping and after the model is on its device (or on meta: DTensor placements carry over
    `to_empty`). The model's forward is unchanged: attention reads its local head count from the weight shapes.
    """
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        PrepareModuleInputOutput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    from skyloom.model.moe import MoE

    cfg = getattr(model, "config", None)
    if cfg is not None:
        check_tensor_parallel(
            cfg, tp_mesh.size(), sequence_parallel=sequence_parallel, ep=tp_mesh.size() if expert_parallel else 1
        )
    sp = sequence_parallel
    stream = Shard(1) if sp else Replicate()  # the residual stream between sub-layers
    if sp and hasattr(model, "sequence_shards"):  # a pipeline stage: its hidden-state input holds T/tp positions
        model.sequence_shards = tp_mesh.size()

    top: dict = {}
    if getattr(model, "tok_emb", None) is not None:
        top["tok_emb"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=stream)
    if getattr(model, "pos_emb", None) is not None:  # GPT: added to tok_emb's output, so the same layout
        top["pos_emb"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=stream)
    if getattr(model, "output", None) is not None:
        top["output"] = ColwiseParallel(input_layouts=stream, output_layouts=Replicate())
    if sp and getattr(model, "norm", None) is not None:
        top["norm"] = SequenceParallel()
    tied = cfg is not None and cfg.tie_embeddings and "tok_emb" in top and "output" in top
    if top:
        parallelize_module(model, tp_mesh, top)
    if tied:  # both are Shard(0) over the vocabulary: one parameter again
        model.output.weight = model.tok_emb.weight
    if not sp and getattr(model, "norm", None) is not None:
        _replicate_module(model.norm, tp_mesh)

    for block in _blocks(model):
        moe = isinstance(block.ffn, MoE)
        if moe and not (expert_parallel and sp):
            raise ValueError("MoE blocks under tensor parallelism need Expert Data Parallelism (ep = tp, with SP)")
        plan = {
            "attn": PrepareModuleInput(
                input_layouts=(stream, None, None, None), desired_input_layouts=(Replicate(), None, None, None)
            ),
            "attn.wq": ColwiseParallel(),
            "attn.wk": ColwiseParallel(),
            "attn.wv": ColwiseParallel(),
            "attn.wo": RowwiseParallel(output_layouts=stream),
            "ffn": PrepareModuleInput(input_layouts=(stream,), desired_input_layouts=(Replicate(),)),
            "ffn.w1": ColwiseParallel(),
            "ffn.w2": RowwiseParallel(output_layouts=stream),
        }
        if hasattr(block.ffn, "w3"):
            plan["ffn.w3"] = ColwiseParallel()
        if moe:  # EDP: the layer routes its rank's sequence shard and returns it (local tensors, as the stream)
            for name in ("ffn.w1", "ffn.w2", "ffn.w3"):
                del plan[name]
            plan["ffn"] = PrepareModuleInputOutput(
                input_layouts=(stream,),
                desired_input_layouts=(stream,),
                use_local_input=True,
                output_layouts=(stream,),
                desired_output_layouts=(stream,),
            )
        if sp:
            plan["attn_norm"] = SequenceParallel()
            plan["ffn_norm"] = SequenceParallel()
        parallelize_module(block, tp_mesh, plan)
        if not sp:
            _replicate_module(block.attn_norm, tp_mesh)
            _replicate_module(block.ffn_norm, tp_mesh)
    return model
