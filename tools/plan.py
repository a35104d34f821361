"""Per-device memory of a config on a pod mesh, planned on a laptop: no devices, no compilation.

    python tools/plan.py --config configs/pod/clip_vitb16.py --mesh data=64,fsdp=4[,tensor=1] [--top 10]
    python tools/plan.py --config configs/pod/audiomae_vitb_audioset.py:size=tiny --mesh data=2,fsdp=2 --config.batch_size=8

The state is `mmjax.step.state_layout` under `jax.eval_shape` on a `jax.sharding.AbstractMesh`,
with the shardings training would use (the config's regex rules, tensor-parallel rules, FSDP
above sharding.fsdp_min_size); inputs have the shapes of `mmjax.data.pipeline.input_specs` (each
modality's, from config.data), so no data is read. Rows of the table:
  params, optimizer state  every leaf's bytes on one device: its shard shape is its shape
                           with each dimension divided by the mesh axes its PartitionSpec names
  activations              the residuals JAX keeps for the backward pass of the train step's
                           forward + objective (mmjax.step.Setup: the EMA teacher's targets
                           included) on one device's micro-batch (batch / (data-parallel devices
                           x accumulation steps)), with the config's remat policy and dtypes,
                           found by tracing (no compilation); the inputs themselves excluded
Not counted, so leave headroom: gradients and optimiser-update temporaries (about one more
copy of the params per device), XLA temporaries and fusion buffers, the layer recomputed during
a rematerialised backward, FSDP's all-gathered weights (one layer at a time under scan), and
the [B, B] logits of a contrastive loss beyond the local micro-batch's share.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
from types import SimpleNamespace

import jax
import numpy as np
from jax._src.ad_checkpoint import saved_residuals  # public only as print_saved_residuals; jax is pinned
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `configs` imports `configs.*`, as under `python -m mmjax.main` from the root

from mmjax import accumulate, parallel  # noqa: E402
from mmjax import step as step_lib  # noqa: E402
from mmjax.config_utils import apply_overrides, split_overrides  # noqa: E402
from mmjax.data import bpe, pipeline  # noqa: E402
from mmjax.data.tokenizer import from_data_config  # noqa: E402

GIB = 2**30


def load_config(spec: str, overrides=()):
    """`path[:variant]` -> the config, with `a.b=value` overrides applied."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("plan_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    apply_overrides(config, overrides)
    return config


def parse_mesh(text: str) -> AbstractMesh:
    """'data=64,fsdp=4[,tensor=1]' -> an AbstractMesh over mmjax's axes (unnamed axes are 1)."""
    sizes = dict.fromkeys(parallel.MESH_AXES, 1)
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep or name not in sizes or not value.isdigit() or int(value) < 1:
            raise ValueError(f"bad mesh entry {item!r}: expected axis=size with axis in {list(sizes)}")
        sizes[name] = int(value)
    return AbstractMesh(tuple(sizes.values()), tuple(sizes), axis_types=(AxisType.Auto,) * len(sizes))


def shapes_tokenizer(data_cfg):
    """The config's tokenizer, or, without its vocabulary file, CLIP's vocabulary size and eot id:
    models need only those two numbers."""
    try:
        return from_data_config(data_cfg)
    except FileNotFoundError:
        text = data_cfg.text
        if text.tokenizer != "bpe":
            raise
        vocab = 2 * 256 + bpe.CLIP_NUM_MERGES + 2  # bytes, bytes + </w>, merges, sot, eot: 49,408
        print(f"note: {text.tokenizer_path} not found; sizing CLIP's {vocab:,}-id vocabulary")
        return SimpleNamespace(vocab_size=vocab, eot_id=vocab - 1, max_len=text.max_len)


def shard_shape(shape: tuple[int, ...], spec: P, mesh_shape) -> tuple[int, ...]:
    """One device's block of an array of `shape` laid out by `spec` (a dimension divides over the
    product of the mesh axes named for it)."""
    out = []
    for i, dim in enumerate(shape):
        axes = spec[i] if i < len(spec) else None
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        out.append(dim // int(np.prod([mesh_shape[a] for a in axes])))
    return tuple(out)


@dataclasses.dataclass
class Leaf:
    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    spec: P
    total_bytes: int
    device_bytes: int


@dataclasses.dataclass
class Plan:
    leaves: list[Leaf]
    groups: dict[str, tuple[int, int]]  # "params" | "optimizer state" | "other state" -> (total, per device)
    num_params: int
    micro_batch: int  # rows per device per forward
    activation_bytes: int | None  # per device; None where not asked for


def _group(path: str) -> str:
    top = path.split("/", 1)[0]
    return {"params": "params", "opt_state": "optimizer state"}.get(top, "other state")


def make_plan(config, mesh: AbstractMesh, activations: bool = True) -> Plan:
    """The plan of `config` on `mesh`; activations=False skips tracing the backward pass."""
    setup = step_lib.build(config, tokenizer=shapes_tokenizer(config.data))
    specs = pipeline.input_specs(config.data, setup.tokenizer)
    _, abstract, shardings = step_lib.state_layout(setup, mesh, jax.random.key(0), specs)
    leaves, groups = [], {}
    for path, x, sharding in zip(parallel.tree_paths(abstract), jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
        itemsize = np.dtype(x.dtype).itemsize
        leaf = Leaf(path, tuple(x.shape), np.dtype(x.dtype), sharding.spec, int(np.prod(x.shape)) * itemsize,
                    int(np.prod(shard_shape(x.shape, sharding.spec, mesh.shape))) * itemsize)
        leaves.append(leaf)
        total, device = groups.get(_group(path), (0, 0))
        groups[_group(path)] = (total + leaf.total_bytes, device + leaf.device_bytes)
    dp = parallel.data_parallel_size(mesh)
    accumulate.validate(config.accumulation, config.batch_size, dp)
    micro = config.batch_size // (dp * config.accumulation.steps)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"]))
    saved = activation_bytes(setup, abstract, specs, micro) if activations else None
    return Plan(leaves, groups, num_params, micro, saved)


def activation_bytes(setup, abstract_state, specs, rows: int) -> int:
    """Bytes of the residuals saved for the backward pass of the train step's forward + objective
    (mmjax.step.Setup.forward, .loss) on `rows` examples shaped as `specs`."""
    batch = jax.tree.map(lambda s: jax.ShapeDtypeStruct((rows, *s[0]), s[1]), specs,
                         is_leaf=lambda x: isinstance(x, tuple) and isinstance(x[0], tuple))
    key = jax.random.key(0)

    def loss(params, batch, teacher):  # the teacher's targets are stop_gradient'ed: it adds no residuals
        return setup.loss(setup.forward(params, batch, key, teacher), batch, key)[0]

    saved = saved_residuals(loss, abstract_state["params"], batch, abstract_state.get("teacher"))
    return sum(int(np.prod(aval.shape)) * aval.dtype.itemsize for aval, where in saved
               if not where.startswith("from the argument"))


def format_plan(plan: Plan, config, mesh: AbstractMesh, top: int = 10) -> str:
    gib = lambda b: f"{b / GIB:10.3f}"  # noqa: E731
    mesh_text = " ".join(f"{k}={v}" for k, v in mesh.shape.items())
    lines = [f"mesh {mesh_text} ({mesh.size} devices); batch {config.batch_size} = {plan.micro_batch} per device "
             f"x {config.accumulation.steps} micro-batch(es) x {parallel.data_parallel_size(mesh)} data-parallel; "
             f"{plan.num_params / 1e6:.2f}M params",
             f"{'':34}{'total GiB':>10}  {'per device GiB':>14}"]
    device_total = 0
    for name in ("params", "optimizer state", "other state"):
        if name in plan.groups:
            total, device = plan.groups[name]
            device_total += device
            lines.append(f"{name:34}{gib(total)}  {gib(device):>14}")
    remat = sorted({str(t.get("remat", "none")) for t in _towers(config)})
    what = f"activations (remat {'/'.join(remat)}, {config.model.dtype})"
    if plan.activation_bytes is None:
        lines.append(f"{what:34}{'':10}  {'not traced':>14}")
    else:
        device_total += plan.activation_bytes
        lines.append(f"{what:34}{'':10}  {gib(plan.activation_bytes):>14}")
    lines.append(f"{'total per device':34}{'':10}  {gib(device_total):>14}")
    lines.append("largest arrays per device:")
    for leaf in sorted(plan.leaves, key=lambda l: -l.device_bytes)[:top]:
        lines.append(f"  {leaf.device_bytes / 2**20:9.2f} MiB  {leaf.path}  {list(leaf.shape)} {leaf.dtype} "
                     f"{tuple(leaf.spec)}")
    return "\n".join(lines)


def _towers(config):
    return list(config.model.towers.values()) if "towers" in config.model else [config.model.get("encoder", {})]


def main(argv=None) -> None:
    argv, overrides = split_overrides(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file, optionally with ':variant'")
    parser.add_argument("--mesh", required=True, help="e.g. data=64,fsdp=4,tensor=1")
    parser.add_argument("--top", type=int, default=10, help="how many of the largest arrays to list")
    args = parser.parse_args(argv)
    config, mesh = load_config(args.config, overrides), parse_mesh(args.mesh)
    print(format_plan(make_plan(config, mesh), config, mesh, args.top))


if __name__ == "__main__":
    main()
