"""The measured matmul peak that MFU is quoted against: XLA square matmul GFLOP/s.

Times `jax.jit(a @ b)` on [n, n] operands of the given dtype on the default
device, `inner` back-to-back calls per timing (so a GPU's launch latency is
amortised), best of `repeats` timings. The best, not the median: the peak is
what the hardware and XLA's matmul can do, and any slower timing only measures
interference (on a shared CPU, other processes).

    python benchmarks/matmul_peak.py                         # fp32, n=4096 on CPU
    python benchmarks/matmul_peak.py --dtype bfloat16 --n 8192   # on a GPU
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def default_size() -> int:
    # Large enough that the matmul is compute bound, small enough to take ~1 s on 2 CPU cores.
    return 4096 if jax.default_backend() == "cpu" else 8192


def matmul_peak(dtype: str = "float32", n: int | None = None, repeats: int = 5, inner: int | None = None) -> dict:
    """{"gflops": best GFLOP/s, "n", "dtype", "device", "seconds": every timing per matmul}."""
    n = n or default_size()
    inner = inner or (1 if jax.default_backend() == "cpu" else 20)
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), DTYPES[dtype])
    b = jax.random.normal(kb, (n, n), DTYPES[dtype])
    # The accumulation and output dtype are the operands' (bf16 in, bf16 out, fp32
    # accumulate inside the MXU/tensor core), as in the model's bf16 Dense layers.
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()  # compile and warm up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            out = matmul(a, b)
        out.block_until_ready()
        seconds.append((time.perf_counter() - start) / inner)
    return {"gflops": 2 * n**3 / min(seconds) / 1e9, "n": n, "dtype": dtype,
            "device": jax.devices()[0].device_kind, "seconds": seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--n", type=int, default=None, help="matrix size (default 4096 on CPU, 8192 otherwise)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    peak = matmul_peak(args.dtype, args.n, args.repeats)
    times = ", ".join(f"{s * 1e3:.1f}" for s in peak["seconds"])
    print(f"matmul peak: {peak['gflops']:.1f} GFLOP/s ({peak['dtype']}, n={peak['n']}, {peak['device']}; "
          f"ms per matmul: {times})")


if __name__ == "__main__":
    main()
