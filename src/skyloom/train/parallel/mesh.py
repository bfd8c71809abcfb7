"""One DeviceMesh for the whole layout, and each rank's coordinates in it.

Dimensions, outermost first (torchtitan's order): "pp", "dp_replicate", "dp_shard", "tp". A dimension of degree 1
is left out of the mesh (no process group is made for it); `sub_mesh` returns None for it. Rank r sits at
row-major coordinates of the shape [pp, dp_replicate, dp_shard, tp], so ranks of one tensor-parallel group are
neighbours (the same node on a GPU cluster) and pipeline stages are furthest apart.
Expert parallelism (`ep`) adds no dimension here: its ranks are taken from the data/tensor-parallel ones
(train/parallel/expert.py documents which).
"""

from __future__ import annotations

from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from skyloom.train.parallel.config import ParallelConfig

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "tp")


def mesh_shape(pcfg: ParallelConfig) -> dict[str, int]:
    """{dimension: degree} of a resolved layout, every dimension included."""
    return {name: getattr(pcfg, name) for name in MESH_DIMS}


def coordinates(pcfg: ParallelConfig, rank: int) -> dict[str, int]:
    """Rank `rank`'s index along every dimension (degree-1 dimensions give 0)."""
    coords = {}
    for name in reversed(MESH_DIMS):
        degree = getattr(pcfg, name)
        coords[name] = rank % degree
        rank //= degree
    return {name: coords[name] for name in MESH_DIMS}


def data_parallel_rank(pcfg: ParallelConfig, rank: int) -> tuple[int, int]:
    """(index among the ranks that see different data, their number): what the loader slices the batch by."""
    c = coordinates(pcfg, rank)
    return c["dp_replicate"] * pcfg.dp_shard + c["dp_shard"], pcfg.dp


def build_mesh(pcfg: ParallelConfig, world_size: int, device_type: str) -> DeviceMesh | None:
    """The layout's mesh over the initialised process group (None in a single process)."""
    if world_size == 1:
        return None
    dims = {name: degree for name, degree in mesh_shape(pcfg).items() if degree > 1}
    if not dims:
        return None
    return init_device_mesh(device_type, tuple(dims.values()), mesh_dim_names=tuple(dims))


def sub_mesh(mesh: DeviceMesh | None, *names: str) -> DeviceMesh | None:
    """The sub-mesh over those of `names` the mesh has (None when it has none of them)."""
    if mesh is None or not mesh.mesh_dim_names:
        return None
    present = tuple(n for n in names if n in mesh.mesh_dim_names)
    if not present:
        return None
    return mesh[present[0]] if len(present) == 1 else mesh[present]
