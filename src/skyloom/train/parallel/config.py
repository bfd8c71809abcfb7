"""`train.parallel`: the degrees of one DeviceMesh (pp × dp_replicate × dp_shard × tp) and their options.

Old spellings keep working: `parallel: ddp` is {dp_replicate: -1} (DDP, plus ZeRO-1 when `zero1`), `parallel: fsdp`
is {dp_shard: -1, dp_replicate: 1} (FSDP2). A degree of -1 fills whatever the other degrees leave of the world.
What can be checked without knowing the world size (pipeline split, heads per TP rank, experts per EP rank) is
refused when the config is built; the product of the degrees is checked against the world when training starts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from skyloom.config import ConfigError

LEGACY_LAYOUTS: dict[str, dict[str, Any]] = {
    "ddp": {"dp_replicate": -1, "dp_shard": 1},
    "fsdp": {"dp_shard": -1, "dp_replicate": 1},
}
DEGREES = ("dp_replicate", "dp_shard", "pp", "tp", "ep")


@dataclass
class ParallelConfig:
    """Degrees of the device mesh; their product (ep excluded: it reuses data/tensor-parallel ranks) = world size."""

    dp_replicate: int = -1  # DDP degree (ZeRO-1 over it when `zero1` and dp_shard == 1); -1 = fill the world
    dp_shard: int = 1  # FSDP2 degree (with dp_replicate > 1: HSDP); -1 = fill the world
    pp: int = 1  # pipeline stages over ranks (torch.distributed.pipelining)
    tp: int = 1  # tensor parallel degree (DTensor column/row-parallel attention and FFN)
    ep: int = 1  # expert parallel degree (MoE experts sharded, tokens exchanged by all-to-all)
    zero1: bool = True  # shard the AdamW state over the DDP ranks (ZeroRedundancyOptimizer); pure DDP layouts only
    sequence_parallel: bool = True  # with tp > 1: norms and dropout on sequence shards
    pp_schedule: Literal["1F1B", "Interleaved1F1B"] = "1F1B"
    pp_stages_per_rank: int = 1  # 2+ for Interleaved1F1B (virtual stages per rank)
    pp_split: list[int] | None = None  # layers per stage (pp × pp_stages_per_rank entries); None = as even as possible

    @classmethod
    def from_value(cls, value: Any) -> Any:
        """A legacy name ('ddp' / 'fsdp') → its mapping; anything else is left for `build` to check."""
        if isinstance(value, str):
            if value not in LEGACY_LAYOUTS:
                raise ConfigError("", f"must be a mapping of degrees or one of {sorted(LEGACY_LAYOUTS)}, got {value!r}")
            return dict(LEGACY_LAYOUTS[value])
        return value

    @property
    def n_stages(self) -> int:
        return self.pp * self.pp_stages_per_rank

    def validate(self) -> None:
        for name in DEGREES:
            value = getattr(self, name)
            if value == 0 or value < -1:
                raise ConfigError(name, f"must be a positive degree (or -1 to fill the world), got {value}")
        for name in ("pp", "tp", "ep"):
            if getattr(self, name) == -1:
                raise ConfigError(name, "only dp_replicate or dp_shard may be -1 (fill the world)")
        if self.dp_replicate == -1 and self.dp_shard == -1:
            raise ConfigError("dp_shard", "dp_replicate and dp_shard cannot both be -1")
        if self.pp_stages_per_rank < 1:
            raise ConfigError("pp_stages_per_rank", f"must be ≥ 1, got {self.pp_stages_per_rank}")
        if self.pp_schedule == "1F1B" and self.pp_stages_per_rank != 1:
            raise ConfigError("pp_stages_per_rank", "1F1B runs one stage per rank; use pp_schedule: Interleaved1F1B")
        if self.pp_schedule == "Interleaved1F1B" and self.pp > 1 and self.pp_stages_per_rank < 2:
            raise ConfigError("pp_stages_per_rank", "Interleaved1F1B needs 2 or more stages per rank")
        if self.pp_split is not None:
            if len(self.pp_split) != self.n_stages:
                raise ConfigError(
                    "pp_split", f"needs pp × pp_stages_per_rank = {self.n_stages} entries, got {len(self.pp_split)}"
                )
            for i, n in enumerate(self.pp_split):
                if n < 1:
                    raise ConfigError(f"pp_split[{i}]", f"every stage needs at least one layer, got {n}")

    def check_model(self, model, key: str = "train.parallel", seq_len: int | None = None) -> None:
        """Refuse a layout the model cannot take (`model` is a ModelConfig, `seq_len` the training windows' length);
        errors name `key`.<field>."""
        if self.pp > 1 or self.pp_split is not None:
            if self.pp_split is not None and sum(self.pp_split) != model.n_layers:
                raise ConfigError(
                    f"{key}.pp_split", f"sums to {sum(self.pp_split)} layers, the model has n_layers={model.n_layers}"
                )
            if model.n_layers < self.n_stages:
                raise ConfigError(
                    f"{key}.pp",
                    f"{self.n_stages} pipeline stages need at least as many layers, "
                    f"the model has n_layers={model.n_layers}",
                )
            if model.tie_embeddings and self.pp > 1:
                raise ConfigError(
                    f"{key}.pp",
                    "tied embeddings live on the first and the last stage; "
                    "pipeline parallelism needs model.tie_embeddings: false",
                )
        if self.tp > 1:
            if model.n_heads % self.tp:
                raise ConfigError(f"{key}.tp", f"{model.n_heads} heads not divisible by tp={self.tp}")
            if model.kv_heads % self.tp:
                raise ConfigError(f"{key}.tp", f"{model.kv_heads} key/value heads not divisible by tp={self.tp}")
            from skyloom.train.parallel.tensor import check_tensor_parallel  # FFN width, vocabulary, MoE, dropout

            check_tensor_parallel(
                model, self.tp, f"{key}.tp", seq_len=seq_len, sequence_parallel=self.sequence_parallel, ep=self.ep
            )
        if self.ep > 1:
            if model.moe is None:
                raise ConfigError(f"{key}.ep", "expert parallelism needs an MoE model (model.moe)")
            if model.moe.n_experts % self.ep:
                raise ConfigError(f"{key}.ep", f"{model.moe.n_experts} experts not divisible by ep={self.ep}")

    def resolved(self, world_size: int, key: str = "train.parallel") -> ParallelConfig:
        """The layout with -1 filled in for `world_size` ranks; refused when the degrees do not multiply to it."""
        fixed = (
            self.pp
            * self.tp
            * (self.dp_replicate if self.dp_replicate != -1 else 1)
            * (self.dp_shard if self.dp_shard != -1 else 1)
        )
        out = replace(self)
        if -1 in (self.dp_replicate, self.dp_shard):
            fill = "dp_replicate" if self.dp_replicate == -1 else "dp_shard"
            if world_size % fixed:
                raise ConfigError(
                    f"{key}.{fill}",
                    f"cannot fill the world: {world_size} rank(s) are not divisible "
                    f"by the other degrees' product {fixed}",
                )
            setattr(out, fill, world_size // fixed)
        elif fixed != world_size:
            raise ConfigError(
                f"{key}",
                f"dp_replicate × dp_shard × pp × tp = {self.dp_replicate} × {self.dp_shard}"
                f" × {self.pp} × {self.tp} = {fixed}, but the world has {world_size} rank(s)",
            )
        return out

    @property
    def zero1_applies(self) -> bool:
        """ZeRO-1 shards the optimizer over the DDP ranks of a data-parallel layout, with or without pipeline stages
        (the report's DP256 + PP2 + ZeRO-1: each stage's optimizer over that stage's dp ranks). Not under FSDP
        (already sharded), and not beside DTensor parameters (TP/EP) — shard the optimizer with dp_shard there. Its
        checkpoint needs no consolidation: each rank writes the entries it owns through DCP, keyed by parameter name
        like every other layout's (`skyloom.train.optim.zero1_state_dict`)."""
        return self.zero1 and self.dp_replicate > 1 and self.dp_shard == 1 and self.tp == self.ep == 1

    @property
    def dp(self) -> int:
        """Data-parallel degree (ranks that see different data) of a resolved layout."""
        return self.dp_replicate * self.dp_shard

    def describe(self) -> str:
        """'DDP + ZeRO-1 (2) × PP 2 (1F1B, 2 stages)'-style summary of a resolved layout."""
        parts = []
        if self.dp_replicate > 1:
            zero = " + ZeRO-1" if self.zero1_applies else ""
            parts.append(f"DDP{zero} ({self.dp_replicate})")
        if self.dp_shard > 1:
            parts.append(f"FSDP2 ({self.dp_shard})")
        if self.pp > 1:
            parts.append(f"PP {self.pp} ({self.pp_schedule}, {self.n_stages} stages)")
        if self.tp > 1:
            parts.append(f"TP {self.tp}{' + SP' if self.sequence_parallel else ''}")
        if self.ep > 1:
            parts.append(f"EP {self.ep}")
        return " × ".join(parts) or "single process"
