"""The measured matmul peak that MFU is quoted against: XLA square matmul GFLOP/s.

Times `jax.jit(a @ b)` on [n, n] operands of the given dtype on the default
device, `inner` back-to-back calls per timing (so a GPU's launch latency is
amortised), best of `repeats` timings. The best, not the median: the peak is
what the hardware and XLA's matmul can do, and any slower timing only measures
interference (on a shared CPU, other processes).

    python benchmarks/matmul_peak.py                         # fp32, n=4096 on CPU
    python benchmarks/matmul_peak.py --dtype bfloat16 --n 8192   # on a GPU
    # the model's GEMMs (ViT-B/16, batch 8: 8*197 rows) and torch's GEMM beside XLA's
    python benchmarks/matmul_peak.py --torch --shapes '1576,768,3072;1576,3072,768;768,1576,3072'
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def default_size() -> int:
    # Large enough that the matmul is compute bound, small enough to take ~1 s on 2 CPU cores.
    return 4096 if jax.default_backend() == "cpu" else 8192


def _best(run, repeats: int, inner: int) -> list[float]:
    run()  # compile / warm up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            out = run()
        getattr(out, "block_until_ready", lambda: None)()
        seconds.append((time.perf_counter() - start) / inner)
    return seconds


def matmul_peak(dtype: str = "float32", n: int | None = None, repeats: int = 5, inner: int | None = None,
                shape: tuple[int, int, int] | None = None) -> dict:
    """{"gflops": best GFLOP/s, "shape": (m, k, n), "dtype", "device", "seconds": every timing per matmul}.

    shape: (m, k, n) for a [m, k] @ [k, n] product instead of the square n.
    """
    n = n or default_size()
    m, k, n = shape or (n, n, n)
    inner = inner or (1 if jax.default_backend() == "cpu" else 20)
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (m, k), DTYPES[dtype])
    b = jax.random.normal(kb, (k, n), DTYPES[dtype])
    # The accumulation and output dtype are the operands' (bf16 in, bf16 out, fp32
    # accumulate inside the tensor cores), as in the model's bf16 Dense layers.
    matmul = jax.jit(jnp.matmul)
    seconds = _best(lambda: matmul(a, b), repeats, inner)
    return {"gflops": 2 * m * k * n / min(seconds) / 1e9, "shape": (m, k, n), "dtype": dtype,
            "device": jax.devices()[0].device_kind, "seconds": seconds}


def torch_matmul_peak(dtype: str, shape: tuple[int, int, int], repeats: int = 5) -> dict:
    """The same measurement with torch.matmul on CPU (the open_clip peer's GEMM), for comparison."""
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    m, k, n = shape
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    a, b = torch.randn(m, k, dtype=tdtype), torch.randn(k, n, dtype=tdtype)
    seconds = _best(lambda: torch.matmul(a, b), repeats, 1)
    return {"gflops": 2 * m * k * n / min(seconds) / 1e9, "seconds": seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--n", type=int, default=None, help="matrix size (default 4096 on CPU, 8192 otherwise)")
    parser.add_argument("--shapes", default="", help="also [m, k] @ [k, n] products: 'm,k,n;m,k,n;...'")
    parser.add_argument("--torch", action="store_true", help="also time torch.matmul on CPU, same shapes")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    peak = matmul_peak(args.dtype, args.n, args.repeats)
    times = ", ".join(f"{s * 1e3:.1f}" for s in peak["seconds"])
    print(f"matmul peak: {peak['gflops']:.1f} GFLOP/s ({peak['dtype']}, {'x'.join(map(str, peak['shape']))}, "
          f"{peak['device']}, {len(os.sched_getaffinity(0))} CPU cores; ms per matmul: {times})")
    shapes = [peak["shape"]] + [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";") if s]
    for i, shape in enumerate(shapes):
        if i:
            print(f"  {'x'.join(map(str, shape))}: XLA {matmul_peak(args.dtype, shape=shape)['gflops']:.1f} GFLOP/s")
        if args.torch:
            print(f"  {'x'.join(map(str, shape))}: torch {torch_matmul_peak(args.dtype, shape)['gflops']:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
