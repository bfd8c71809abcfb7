"""`train.parallel`: the old spellings map onto the mesh degrees, and impossible layouts are refused up front
with the dotted key (product ≠ world size, a pipeline split that does not sum to the layers, heads per TP rank)."""

from __future__ import annotations

import pytest

from skyloom.config import ConfigError, build
from skyloom.train.config import RunConfig, TrainConfig
from skyloom.train.parallel.config import ParallelConfig
from skyloom.train.parallel.mesh import coordinates, data_parallel_rank
from tests.train_helpers import TINY_MODEL


def _train(**parallel) -> TrainConfig:
    return build(TrainConfig, {"max_steps": 1, **parallel}, "train")


def _run(parallel, **model) -> RunConfig:
    return build(
        RunConfig,
        {
            "model": {**TINY_MODEL, **model},
            "data": {"sources": {"a": {"path": "x"}}},
            "train": {"max_steps": 1, "global_batch_tokens": 512, "parallel": parallel},
        },
    )


def test_old_spellings_map_to_degrees():
    ddp = _train(parallel="ddp", zero1=False).parallel
    assert (ddp.dp_replicate, ddp.dp_shard, ddp.zero1) == (-1, 1, False)
    fsdp = _train(parallel="fsdp").parallel
    assert (fsdp.dp_replicate, fsdp.dp_shard) == (1, -1)
    assert _train().parallel == ParallelConfig()  # default: DDP over the world, ZeRO-1
    assert _train(zero1=False).zero1 is False  # `train.zero1` is still read and written through
    assert fsdp.resolved(4).dp_shard == 4 and ddp.resolved(4).dp_replicate == 4
    assert ddp.resolved(4).describe() == "DDP (4)" and _train().parallel.resolved(2).describe() == "DDP + ZeRO-1 (2)"


@pytest.mark.parametrize(
    "bad, key, words",
    [
        ({"parallel": "ddpp"}, "train.parallel", "one of ['ddp', 'fsdp']"),
        ({"parallel": {"pp": 0}}, "train.parallel.pp", "positive degree"),
        ({"parallel": {"dp_shard": -1}}, "train.parallel.dp_shard", "cannot both be -1"),
        ({"parallel": {"pp": 2, "pp_split": [1]}}, "train.parallel.pp_split", "2 entries"),
        ({"parallel": {"pp": 2, "pp_schedule": "Interleaved1F1B"}}, "train.parallel.pp_stages_per_rank", "2 or more"),
        ({"parallel": {"pp": 2, "pp_stages_per_rank": 2}}, "train.parallel.pp_stages_per_rank", "Interleaved1F1B"),
        ({"parallel": {"zero1": True}, "zero1": False}, "train.zero1", "contradicts"),
    ],
)
def test_bad_sections_name_the_key(bad, key, words):
    with pytest.raises(ConfigError) as err:
        _train(**bad)
    assert err.value.key == key and words in str(err.value)


@pytest.mark.parametrize(
    "parallel, model, key, words",
    [
        ({"pp": 2, "pp_split": [1, 2]}, {}, "train.parallel.pp_split", "sums to 3 layers, the model has n_layers=2"),
        ({"pp": 2, "pp_schedule": "Interleaved1F1B", "pp_stages_per_rank": 2}, {}, "train.parallel.pp", "4 pipeline"),
        ({"tp": 3}, {}, "train.parallel.tp", "4 heads not divisible by tp=3"),
        ({"tp": 4}, {"n_kv_heads": 2}, "train.parallel.tp", "2 key/value heads not divisible by tp=4"),
        ({"ep": 2}, {}, "train.parallel.ep", "needs an MoE model"),
        ({"tp": 4}, {"max_seq_len": 66}, "train.parallel.tp", "66 sequence positions"),  # SP splits the windows
        ({"tp": 2}, {"moe": {"n_experts": 4, "top_k": 2}}, "train.parallel.tp", "set train.parallel.ep: 2"),
        (
            {"tp": 2, "ep": 2, "sequence_parallel": False},
            {"moe": {"n_experts": 4, "top_k": 2}},
            "train.parallel.sequence_parallel",
            "routes each tp rank's sequence shard",
        ),
        ({"pp": 2}, {"tie_embeddings": True}, "train.parallel.pp", "tie_embeddings"),
    ],
)
def test_layouts_the_model_cannot_take_are_refused(parallel, model, key, words):
    with pytest.raises(ConfigError) as err:
        _run(parallel, **model)
    assert err.value.key == key and words in str(err.value)


def test_product_must_equal_the_world():
    with pytest.raises(ConfigError) as err:
        ParallelConfig(dp_replicate=2, pp=2).resolved(2)
    assert err.value.key == "train.parallel" and "= 4, but the world has 2 rank(s)" in str(err.value)
    with pytest.raises(ConfigError) as err:
        ParallelConfig(pp=2, tp=2).resolved(6)
    assert err.value.key == "train.parallel.dp_replicate" and "6 rank(s) are not divisible" in str(err.value)
    assert ParallelConfig(pp=2).resolved(4).dp_replicate == 2


def test_rank_coordinates_are_row_major_pp_dp_tp():
    layout = ParallelConfig(dp_replicate=2, pp=2, tp=2)
    assert coordinates(layout, 5) == {"pp": 1, "dp_replicate": 0, "dp_shard": 0, "tp": 1}
    # the loader slices the batch by the data-parallel index: both stages and both TP ranks of a slot agree
    assert [data_parallel_rank(layout, r) for r in range(8)] == [(0, 2), (0, 2), (1, 2), (1, 2)] * 2


def test_pipeline_takes_moe_and_cuts_layers_evenly_with_spares_in_the_middle():
    from skyloom.train.parallel.pipeline import split_layers

    # each stage carries its MoE layers' aux losses itself (tests/test_parallel_pp.py trains one)
    assert _run({"pp": 2}, arch="llama", moe={"n_experts": 4, "top_k": 2}).train.parallel.pp == 2
    assert [len(r) for r in split_layers(10, 4)] == [2, 3, 3, 2]  # first/last carry the embedding and the loss
    assert [list(r) for r in split_layers(4, 2, [1, 3])] == [[0], [1, 2, 3]]
