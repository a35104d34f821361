"""Compile time and step time of the CLIP train step, layers under nn.scan vs unrolled.

For each variant: the time of `jax.jit(step).lower(...)` (tracing + StableHLO)
and of `.compile()` (XLA), then the median of `--steps` timed steps of the
compiled executable after one warm-up step. The unrolled variant also gives
XLA's FLOP count (cost_analysis), the cross-check of throughput.py's analytic
model FLOPs. Model, batch and step are throughput.py's (mmjax only).

    python benchmarks/compile_time.py --model vit_b16 --batch 8
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput  # noqa: E402


def measure(model_name: str, batch_size: int, scan: bool, steps: int, dtype: str) -> dict:
    batch = {k: jnp.asarray(v) for k, v in throughput.make_batch(batch_size).items()}
    step, state = throughput.make_train_step(throughput.build_model(model_name, dtype, scan=scan), batch)
    result = throughput.compile_step(step, state, batch)
    compiled = result.pop("step")
    times = []
    for _ in range(1 + steps):  # the first call is a warm-up (first-touch allocations)
        seconds, (state, _) = throughput.timed(compiled, state, batch)
        times.append(seconds)
    return {**result, "step_s": statistics.median(times[1:]), "steps": times[1:]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit_b16", choices=sorted(throughput.MODELS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()
    print(f"{args.model}, batch {args.batch}, {args.dtype}, {jax.default_backend()}, jax {jax.__version__}")
    analytic = throughput.train_flops(args.model)
    for scan in (True, False):
        r = measure(args.model, args.batch, scan, args.steps, args.dtype)
        steps = ", ".join(f"{s:.2f}" for s in r["steps"])
        line = (f"{'nn.scan' if scan else 'unrolled'}: lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s, "
                f"step {r['step_s']:.2f} s median of [{steps}], {r['temp_gib']:.1f} GiB of temporaries")
        if not scan and jax.default_backend() == "cpu":  # on GPU, cuBLAS/cuDNN calls count 0 FLOPs
            xla = r["xla_flops"] / args.batch
            line += (f"; XLA cost_analysis {xla / 1e9:.1f} GFLOP/sample vs analytic {analytic / 1e9:.1f} "
                     f"({xla / analytic:.3f}x)")
        print(line, flush=True)


if __name__ == "__main__":
    main()
