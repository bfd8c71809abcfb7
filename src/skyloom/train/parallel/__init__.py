"""Parallel layouts on one DeviceMesh: data (DDP / ZeRO-1 / FSDP2), pipeline, tensor and expert parallelism.

config.py — the `train.parallel` section; mesh.py — the mesh and each rank's coordinates in it; apply.py —
`parallelize` (TP/SP, EP, activation checkpointing, compile, FSDP2/DDP, in torchtitan's order); pipeline.py —
pipeline stages and schedules; tensor.py / expert.py — the TP and EP plans.
"""
