"""Freed host memory goes back to the OS during CPU training (glibc's malloc on Linux).

glibc serves a request below its mmap threshold from the heap and keeps freed heap blocks resident for reuse. The
threshold starts at 128 KiB but rises to the size of every mmapped block freed, up to 32 MiB: after the first
step, every per-parameter buffer of a sharded step (FSDP2's unsharded parameters and gradients, reduce-scatter
inputs: a few MB each) comes from the heap, and the holes they leave between live blocks stay resident. An FSDP2
rank of a 0.37B model peaked at 4.4 GB of RSS over ~3.5 GB of live memory (benchmarks/results/fsdp_memory.txt).
Fixing the threshold at glibc's initial 128 KiB (which also stops the trim threshold from rising) maps every
larger block on its own and unmaps it when freed. Cost: every new large buffer is fresh pages, faulted in again
(measured on the shared 2-core machine, one process, under load: +30% CPU time per step for the 0.37B benchmark
model and for a 27M one with 2 MB activations; the tiny test models' buffers mostly stay below 128 KiB). A user's
own `MALLOC_MMAP_THRESHOLD_` is left in force — `MALLOC_MMAP_THRESHOLD_=33554432` (the 32 MiB that glibc's dynamic
threshold climbs to) trades the memory back for that speed; other platforms are left alone. Because of that cost it
is applied where memory is the point (`train.host_memory: auto` = FSDP-sharded layouts; `lean` / `fast` force it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's own initial value, no longer raised
USER_SETTING = "MALLOC_MMAP_THRESHOLD_"

_applied = False


def wants_lean_heap(setting: str, dp_shard: int) -> bool:
    """`train.host_memory`: lean always, fast never, auto when parameters are sharded — FSDP is chosen to save
    memory, while a replicated or one-process run would only pay the extra page faults."""
    return setting == "lean" or (setting == "auto" and dp_shard > 1)


def heap_retention_limited() -> bool:
    """Whether this process runs with the fixed threshold (set by `limit_heap_retention`)."""
    return _applied


def limit_heap_retention(device_type: str) -> bool:
    """Fix glibc's mmap threshold for this process when training on the CPU (once; process-wide).

    Returns whether the fixed threshold is in force: False on another device, OS or C library, or when the user
    set `MALLOC_MMAP_THRESHOLD_` (glibc read it at start-up)."""
    global _applied
    if _applied:
        return True
    if device_type != "cpu" or not sys.platform.startswith("linux") or USER_SETTING in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return _applied
