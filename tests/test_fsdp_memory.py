"""What keeps an FSDP2 rank's host memory down (issue 16: peak RSS ≤ 0.6× one process, bench_fsdp_memory.py).

- AdamW over sharded (DTensor) parameters runs the fused kernel — no parameter-sized temporary at the step — and
  gives bit-for-bit the update the one-process (plain-parameter) run gets.
- On CPU with glibc, the trainer fixes malloc's mmap threshold, so a large freed buffer is unmapped, not kept.
Both run in a child process: a process group, and mallopt, are process-wide.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.train_helpers import cli_env

FUSED_ON_SHARDS = r"""
import copy, json, sys
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from skyloom.train.config import TrainConfig
from skyloom.train.optim import build_optimizer

dist.init_process_group("gloo", store=dist.FileStore(sys.argv[1], 1), rank=0, world_size=1)
torch.manual_seed(0)
plain = nn.Sequential(nn.Embedding(32, 16), nn.Linear(16, 16), nn.LayerNorm(16))
sharded = fully_shard(copy.deepcopy(plain), mesh=init_device_mesh("cpu", (1,)))
cfg = TrainConfig(lr=1e-2)
out = {}
for name, model in (("plain", plain), ("sharded", sharded)):
    opt = build_optimizer(model, cfg)
    for step in range(3):
        torch.manual_seed(step)
        for p in model.parameters():
            g = torch.randn(p.shape)
            p.grad = g if name == "plain" else torch.distributed.tensor.distribute_tensor(g, p.device_mesh, p.placements)
        opt.step()
    out[name] = {"fused": opt.defaults.get("fused"), "weights": [p.full_tensor().tolist() if hasattr(p, "full_tensor")
                 else p.tolist() for p in model.parameters()]}
print(json.dumps(out))
dist.destroy_process_group()
"""

HEAP_RETENTION = r"""
import ctypes, json, sys
import torch
from skyloom.train.host_memory import limit_heap_retention

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = [limit_heap_retention("cuda"), limit_heap_retention(sys.argv[1])]
big = torch.ones(8 << 20, dtype=torch.uint8)
del big  # glibc's default raises its mmap threshold to a freed mmapped block's size (8 MB)
before = libc.mallinfo2().hblkhd
buffer = torch.ones(4 << 20, dtype=torch.uint8)  # 4 MB: mmapped only under a fixed 128 KiB threshold
print(json.dumps({"applied": applied, "mapped": libc.mallinfo2().hblkhd - before}))
"""


def child(script: str, *args: str, env: dict | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env or cli_env(), timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_adamw_on_fsdp2_shards_is_fused_and_matches_plain_parameters_bit_for_bit(tmp_path):
    out = child(FUSED_ON_SHARDS, str(tmp_path / "store"))
    assert out["sharded"]["fused"] is True
    assert out["sharded"]["weights"] == out["plain"]["weights"]


glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt/mallinfo2: Linux only")


@glibc
def test_cpu_training_process_unmaps_large_freed_buffers():
    out = child(HEAP_RETENTION, "cpu")
    assert out["applied"] == [False, True]  # not for a GPU run; set for the CPU one
    assert out["mapped"] >= 4 << 20


@glibc
def test_a_users_own_malloc_setting_is_left_in_force():
    out = child(HEAP_RETENTION, "cpu", env={**cli_env(), "MALLOC_MMAP_THRESHOLD_": str(64 << 20)})
    assert out["applied"] == [False, False]
    assert out["mapped"] == 0  # the user's 64 MB threshold keeps a 4 MB block in the heap


def test_the_lean_heap_is_the_default_only_where_parameters_are_sharded():
    """Its page faults cost ~30% CPU time per step: `auto` pays that only under FSDP, where memory is the point."""
    from skyloom.train.host_memory import wants_lean_heap

    assert [wants_lean_heap("auto", n) for n in (1, 2)] == [False, True]
    assert [wants_lean_heap("lean", 1), wants_lean_heap("fast", 4)] == [True, False]
