"""Per-device memory of contrastive loss + gradient: global logits vs ring / gathered.

For each global batch size B, compiles `value_and_grad` (w.r.t. both embedding
matrices and the scalars) of

  * the global losses in `mmjax.objectives.contrastive`, with the [B, D]
    embeddings sharded on a "data" axis and GSPMD left to partition the
    [B, B] logits, and
  * their shard_map counterparts in `mmjax.objectives.distributed`
    (SigLIP on a ring, CLIP with gathered candidates),

and reads XLA's buffer assignment through `compiled.memory_analysis()`: the
per-device temporary, argument and output bytes of one partitioned program.
Nothing is executed, so batch sizes far beyond what 2 CPU cores could run are
fine. Gradients are pinned to the inputs' sharding so that both versions
return the same thing.

    python benchmarks/contrastive_memory.py --out benchmarks/results/contrastive_memory.md

The issue's target: the chunked SigLIP loss needs at most 1/4 of the global
version's temporary memory at 8 devices.
"""
import os
import sys

DEVICES = 8
# XLA reads the flag once, when the backend starts: before jax is imported.
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={DEVICES}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

from mmjax.objectives import contrastive, distributed  # noqa: E402

TARGET = 0.25  # distributed / global temp bytes for the sigmoid loss at 8 devices
MiB = 2**20
NOTES = """\
How to read it (b = B/8 rows per device, D = embedding width):
- global, both losses (read from the compiled HLO): GSPMD all-gathers zb ([B, D] =
  8 [b, D]), all-reduces a full [B, D] partial gradient of zb, and keeps [b, B] row
  slices of the logits and their gradient. The [b, B] terms grow like B^2/8 and
  dominate from B ~ 2048 (D = 512) on.
- sigmoid ring: a few [b, b] blocks plus ~4-5 [b, D] buffers (the visiting block and
  its gradient, each also in flight, and d za). When the [b, D] buffers dominate
  (small B), the ratio cannot drop much below ~4/16 = 1/4; once the logits dominate,
  it falls like b/B = 1/8 per [b, b] block kept.
- softmax gathered: two [b, B] logits (a->b and b->a, as open_clip's local loss)
  plus both gathered towers; GSPMD's global version shares one [b, B] slice for both
  directions (column log-sum-exp via an all-reduce of [B] vectors), so it is smaller.
  The gathered version's point is explicit, predictable collectives, not memory.
- XLA:CPU buffer assignment; TPU/GPU partitioners may differ in the constants.
"""


def _loss_fns(mesh):
    """(name, global loss, distributed loss, number of scalar args)."""
    return [
        ("sigmoid", contrastive.sigmoid_contrastive_loss,
         lambda *a: distributed.sigmoid_loss_ring(*a, mesh=mesh), 2),
        ("softmax", contrastive.softmax_contrastive_loss,
         lambda *a: distributed.softmax_loss_gathered(*a, mesh=mesh), 1),
    ]


def compiled_memory(loss, mesh, batch: int, dim: int, n_scalars: int):
    """memory_analysis() of jit(value_and_grad(loss)) on row-sharded [B, D] inputs."""
    rows, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    shardings = (rows, rows) + (replicated,) * n_scalars
    args = [jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=rows)] * 2
    args += [jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)] * n_scalars
    value_and_grad = jax.value_and_grad(lambda *a: loss(*a)[0], argnums=tuple(range(len(args))))
    step = jax.jit(value_and_grad, in_shardings=shardings, out_shardings=(replicated, shardings))
    return step.lower(*args).compile().memory_analysis()


def table(batch_sizes, dim: int) -> str:
    mesh = jax.make_mesh((DEVICES,), ("data",), axis_types=(AxisType.Auto,))
    lines = [
        "| loss | B | b = B/8 | global temp MiB | distributed temp MiB | ratio | args MiB (both) "
        "| outputs MiB global / distributed | ratio <= 1/4 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, global_loss, dist_loss, n_scalars in _loss_fns(mesh):
        for batch in batch_sizes:
            g = compiled_memory(global_loss, mesh, batch, dim, n_scalars)
            d = compiled_memory(dist_loss, mesh, batch, dim, n_scalars)
            ratio = d.temp_size_in_bytes / g.temp_size_in_bytes
            # The target is the ring's; the gathered CLIP loss keeps [b, B] logits by design.
            verdict = ("yes" if ratio <= TARGET else "**no**") if name == "sigmoid" else "n/a"
            lines.append(
                f"| {name} | {batch} | {batch // DEVICES} | {g.temp_size_in_bytes / MiB:.2f} "
                f"| {d.temp_size_in_bytes / MiB:.2f} | {ratio:.3f} | {g.argument_size_in_bytes / MiB:.2f} "
                f"| {g.output_size_in_bytes / MiB:.2f} / {d.output_size_in_bytes / MiB:.2f} | {verdict} |")
            print(lines[-1], file=sys.stderr, flush=True)  # progress: big batches take a while
    return "\n".join(lines)


def _python() -> str:
    """The interpreter as typed from the repository root: a venv path, else its name."""
    rel = os.path.relpath(sys.executable)
    return rel if not rel.startswith("..") else os.path.basename(sys.executable)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--out", default=None, help="also write the report (Markdown) here")
    args = parser.parse_args()
    assert jax.device_count() == DEVICES, f"expected {DEVICES} simulated devices, got {jax.device_count()}"
    report = "\n".join([
        "# Contrastive loss memory: global logits vs ring / gathered",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.machine()} CPU, {os.cpu_count()} cores, {DEVICES} simulated XLA CPU devices "
        f"(mesh data={DEVICES}); jax {jax.__version__}",
        f"- command: `{' '.join(shlex.quote(a) for a in [_python(), *sys.argv])}`",
        f"- D = {args.dim}, float32; per-device bytes of jit(value_and_grad(loss)) from "
        "`compiled.memory_analysis()` (temp = XLA's preallocated scratch; nothing is run)",
        "",
        table(args.batch_sizes, args.dim),
        "",
        NOTES,
    ])
    print(report)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
