"""Device mesh, sharding rules and host<->global array plumbing.

Everything is `jax.jit` + `NamedSharding`: params and optimizer state are
placed by regex rules on their tree paths, the batch is split over the data
axes, and XLA's SPMD partitioner inserts the collectives. Multi-host runs are
the same program: each process feeds its slice of the global batch.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
# The batch dimension is split over both data-parallel axes: FSDP is data
# parallelism whose params happen to be sharded too.
BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh with axes ("data", "fsdp", "tensor") from e.g. {data: -1, fsdp: 1, tensor: 1}.

    At most one axis may be -1: it takes the devices the others leave.
    """
    devices = list(jax.devices() if devices is None else devices)
    unknown = set(mesh_cfg.keys()) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; valid: {list(MESH_AXES)}")
    sizes = [int(mesh_cfg.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not split over mesh {dict(zip(MESH_AXES, sizes))}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, have {len(devices)}")
    # Auto axes: GSPMD propagates shardings through the program from the
    # annotated inputs/outputs, as big_vision and MaxText rely on.
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def tree_paths(tree) -> list[str]:
    """'/'-joined key paths of every leaf, e.g. 'params/image_encoder/patch_embed/kernel'."""
    def name(k):
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)
    return ["/".join(name(k) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _fsdp_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
    """Shard the largest dimension divisible by the fsdp axis (ZeRO-3 style)."""
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


# Megatron-style tensor parallelism for the shared transformer block: attention
# heads and MLP hidden units split over 'tensor', so each block needs one
# all-reduce after attention and one after the MLP. Specs name the trailing
# dims (see tree_shardings), so they also fit scanned params with a layer axis.
TENSOR_PARALLEL_RULES = (
    (r"attn/(query|key|value)/kernel$", ("tensor", None)),  # [D, heads, head_dim]
    (r"attn/(query|key|value)/bias$", ("tensor", None)),  # [heads, head_dim]
    (r"attn/out/kernel$", ("tensor", None, None)),  # [heads, head_dim, D]
    (r"mlp/fc1/kernel$", (None, "tensor")),  # [D, mlp]
    (r"mlp/fc1/bias$", ("tensor",)),
    (r"mlp/fc2/kernel$", ("tensor", None)),  # [mlp, D]
)


def tree_shardings(tree, mesh: Mesh, rules: Sequence[tuple[str, Sequence[Any]]] = (), fsdp_min_size: int = 2**18):
    """NamedSharding for every leaf of `tree` (arrays or ShapeDtypeStructs).

    `rules` are (regex, partition spec) pairs matched with re.search against
    the leaf path; the first match wins. A spec shorter than the array's rank
    names its trailing dimensions (leading ones, e.g. the layer axis of
    `nn.scan` params, stay unsharded). Optimizer states embed the param path
    (e.g. 'opt_state/0/mu/image_encoder/...'), so one rule covers a param and
    its moments. Unmatched leaves with at least `fsdp_min_size` elements are
    sharded over 'fsdp' when that axis is > 1; all else is replicated.
    """
    compiled = [(re.compile(pattern), P(*spec)) for pattern, spec in rules]
    fsdp_size = mesh.shape["fsdp"]
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    specs = []
    for path, leaf in zip(tree_paths(tree), leaves):
        shape = tuple(np.shape(leaf))
        spec = next((s for rx, s in compiled if rx.search(path)), None)
        if spec is not None and len(spec) < len(shape):
            spec = P(*([None] * (len(shape) - len(spec))), *spec)
        if spec is None:
            big = fsdp_size > 1 and int(np.prod(shape, dtype=np.int64)) >= fsdp_min_size
            spec = _fsdp_spec(shape, fsdp_size) if big else P()
        _check_divisible(path, shape, spec, mesh)
        specs.append(NamedSharding(mesh, spec))
    return jax.tree_util.tree_unflatten(treedef, specs)


def _check_divisible(path: str, shape, spec: P, mesh: Mesh) -> None:
    if len(spec) > len(shape):
        raise ValueError(f"sharding rule {spec} has more dims than {path} {shape}")
    for dim, axes in zip(shape, spec):
        axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
        n = int(np.prod([mesh.shape[a] for a in axes]))
        if dim % n:
            raise ValueError(f"{path} dim {dim} does not divide over mesh axes {axes} (size {n})")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data-parallel axes."""
    return NamedSharding(mesh, P(BATCH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def host_to_global(local_batch: dict, mesh: Mesh) -> dict:
    """This process's rows of the batch -> global jax.Arrays sharded on the data axes."""
    sharding = batch_sharding(mesh)
    return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                                  local_batch)
