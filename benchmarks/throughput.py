"""CLIP train-step throughput: mmjax vs open_clip, same shapes, same run; MFU.

One step = forward of both towers, softmax CLIP loss, backward, AdamW update.
  * mmjax: `ContrastiveModel` from mmjax.models, the "softmax" objective from
    mmjax.objectives, the optimiser from mmjax.optim, in the train step mmjax/train.py
    runs (mmjax.step: value_and_grad -> tx.update -> apply_updates, plus the step's
    metrics), `jax.jit` with the state donated; the batch is already on the device.
  * open_clip: `open_clip.create_model(name)`, `ClipLoss`, `torch.optim.AdamW`
    (benchmarks/peers/open_clip_step.py), the same batch.
The two alternate step by step after their warm-up steps (compilation, first
allocations), so both see the same machine load; the median step time of each
is reported. MFU = analytic model FLOPs per second / the matmul peak measured by
benchmarks/matmul_peak.py in the same process (formula in `train_flops`).

    python benchmarks/throughput.py --model vit_b16 --batch 8           # CPU, fp32
    python benchmarks/throughput.py --model vit_b16 --batch 256 --dtype bfloat16   # GPU, bf16 autocast

Imports mmjax.step and mmjax.models (with the objectives and optimiser they use; no grain or
tfds), so it runs where only jax, flax (with its orbax-checkpoint), optax,
ml_collections and torch are: see benchmarks/README.md for a GPU machine.
"""
from __future__ import annotations

import os
import sys

# JAX and PyTorch share the GPU: JAX's pool would take 75% of its memory up front; half each
# (ViT-B/16 at batch 256, unrolled, needs 28 GiB of temporaries). No effect on CPU.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # matmul_peak, peers/
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # mmjax, if not installed

from matmul_peak import matmul_peak  # noqa: E402
from mmjax import step as step_lib  # noqa: E402
from mmjax.models import layers  # noqa: E402
from mmjax.models.towers import ContrastiveModel  # noqa: E402

IMAGE, PATCH, CONTEXT, VOCAB = 224, 16, 77, 49408
EOT = VOCAB - 1  # CLIP's <end_of_text>: the largest id, which open_clip's argmax pooling relies on
# open_clip's model configs ViT-B-16.json and ViT-S-16.json: (width, depth, heads, mlp) per tower.
MODELS = {
    "vit_b16": dict(open_clip="ViT-B-16", embed=512, image=(768, 12, 12, 3072), text=(512, 12, 8, 2048)),
    "vit_s16": dict(open_clip="ViT-S-16", embed=384, image=(384, 12, 6, 1536), text=(384, 12, 6, 1536)),
}
# open_clip_train's defaults for ViT training (lr, wd, betas, eps); no gradient clipping.
OPTIM = dict(name="adamw", lr=5e-4, warmup_steps=0, schedule="constant", min_lr_ratio=1.0, b1=0.9, b2=0.98,
             eps=1e-6, weight_decay=0.2, grad_clip_norm=0.0,
             no_decay_regex=r"(bias|scale|embedding|pos_embedding|cls|log_logit_scale)$", freeze_regex="")


def tower(width, depth, heads, mlp, **fields) -> dict:
    return dict(width=width, depth=depth, num_heads=heads, mlp_dim=mlp, posemb="learn", **fields)


def build_model(name: str, dtype: str = "float32", scan: bool = False, remat: str = "none") -> ContrastiveModel:
    """mmjax's ContrastiveModel with open_clip's shapes for `name` (class-token ViT, causal eot text)."""
    spec = MODELS[name]
    towers = {
        "image": tower(*spec["image"], encoder="vit", patch_size=PATCH, pool="tok", scan=scan, remat=remat),
        "text": tower(*spec["text"], encoder="text", vocab_size=VOCAB, max_len=CONTEXT, eot_id=EOT, causal=True,
                      pool="eot", scan=scan, remat=remat),
    }
    return ContrastiveModel(towers=towers, embed_dim=spec["embed"], dtype=dtype, param_dtype="float32")


def transformer_flops(tokens: int, width: int, depth: int, mlp: int) -> int:
    """Forward matmul FLOPs of one sequence through `depth` pre-LN blocks.

    Per block: q, k, v, out projections 4 * 2*n*d^2, MLP 2 * 2*n*d*m, and the
    attention scores q k^T and their use on v, 2 * 2*n^2*d (a causal mask is
    not discounted: both implementations compute the full square).
    """
    return depth * (2 * tokens * (4 * width**2 + 2 * width * mlp) + 4 * tokens**2 * width)


def train_flops(name: str) -> int:
    """Model FLOPs of one training sample: 3x the forward matmuls (backward = 2x forward).

    Forward = patch embedding (2 * patches * p^2*3 * d) + image transformer
    on patches+1 tokens + text transformer on 77 tokens + both projections
    (2 * d * embed). Left out: layer norms, softmax, GELU, biases, the embedding
    lookup, the [B, B] loss (2 * B * embed per sample) and the optimizer, all
    O(params) or O(tokens * d) against O(tokens * d^2); the patch embedding's
    input gradient, which is not computed, is counted (~0.2% of the total).
    """
    spec = MODELS[name]
    patches = (IMAGE // PATCH) ** 2
    (d_img, depth_img, _, mlp_img), (d_txt, depth_txt, _, mlp_txt) = spec["image"], spec["text"]
    forward = (2 * patches * PATCH * PATCH * 3 * d_img + transformer_flops(patches + 1, d_img, depth_img, mlp_img)
               + transformer_flops(CONTEXT, d_txt, depth_txt, mlp_txt) + 2 * (d_img + d_txt) * spec["embed"])
    return 3 * forward


def make_batch(batch: int, seed: int = 0) -> dict:
    """Random images [B, H, W, 3] and captions [B, 77]: ids in [1, EOT), one EOT, zero padding after."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, IMAGE, IMAGE, 3), dtype=np.float32)
    text = rng.integers(1, EOT, (batch, CONTEXT)).astype(np.int32)
    ends = rng.integers(5, CONTEXT, batch)
    text[np.arange(batch), ends] = EOT
    text[np.arange(CONTEXT)[None, :] > ends[:, None]] = 0
    return {"image": images, "text": text}


def make_train_step(model, batch: dict):
    """(jitted donated step(state, batch) -> (state, metrics), initial state): mmjax.step's train step,
    the one mmjax/train.py runs, on `model` with the softmax CLIP loss and open_clip's optimiser."""
    config = ml_collections.ConfigDict({
        "model": {}, "objective": {"name": "softmax", "modalities": ("image", "text")}, "optim": OPTIM,
        "total_steps": 1, "accumulation": {"steps": 1, "mode": "gradcache"}})  # steps=1: no accumulation
    setup = step_lib.build(config, model=model)
    state = jax.jit(lambda b: step_lib.init_state(setup, b, jax.random.key(0)))(batch)
    return step_lib.jit_train_step(setup, jax.random.key(1)), state


def timed(fn, *args):
    """(wall seconds, result) with the device work finished."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, out


def compile_step(step, state, batch) -> dict:
    """Lowers and compiles the step once: {"step": the executable, "lower_s", "compile_s", "xla_flops"}.

    XLA's FLOP count (cost_analysis) counts a while loop's body once, so under
    nn.scan it is about one layer's share: compare it with the analytic count
    only for the unrolled model.
    """
    start = time.perf_counter()
    lowered = step.lower(state, batch)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # a list in older jax
    memory = compiled.memory_analysis()
    return {"step": compiled, "lower_s": lowered_at - start, "compile_s": time.perf_counter() - lowered_at,
            "xla_flops": float(cost.get("flops", float("nan"))),
            "temp_gib": getattr(memory, "temp_size_in_bytes", float("nan")) / 2**30}


def make_peer(model: str, dtype: str, host: dict):
    """open_clip's train step for `model` on torch's device, and the batch as torch tensors there."""
    import torch

    from peers.open_clip_step import OpenClipTrainStep

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":  # as many threads as XLA's pool: the cores this process may run on
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    amp = torch.bfloat16 if dtype == "bfloat16" else None
    peer = OpenClipTrainStep(MODELS[model]["open_clip"], device=device, amp_dtype=amp)
    images = torch.from_numpy(host["image"].transpose(0, 3, 1, 2).copy()).to(device)  # NHWC -> NCHW
    texts = torch.from_numpy(host["text"].astype(np.int64)).to(device)
    print(f"open_clip: {peer.num_params / 1e6:.1f}M params, torch {torch.__version__} on {device}, "
          f"{torch.get_num_threads()} threads", flush=True)
    return peer, images, texts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit_b16", choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each implementation")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps first (first-run allocations; compilation comes before them)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="compute dtype: mmjax model dtype / torch.autocast dtype; params stay fp32")
    parser.add_argument("--scan", action="store_true",
                        help="layers under nn.scan (default: unrolled, faster steps, slower compile)")
    parser.add_argument("--no-peer", dest="peer", action="store_false", help="mmjax only (no torch/open_clip)")
    parser.add_argument("--attention", default="mmjax", choices=("mmjax", "flax"),
                        help="attention core: mmjax.models.layers' (jax.nn, cuDNN on GPU in bf16) or flax's default "
                             "(the 'before' of the before/after ablation)")
    parser.add_argument("--json", default="", help="append the result as one JSON line to this file")
    args = parser.parse_args()

    if args.attention == "flax":  # EncoderBlock looks the core up at trace time
        layers.dot_product_attention = nn.dot_product_attention
    backend = jax.default_backend()
    device = jax.devices()[0]
    host = make_batch(args.batch)
    peak = matmul_peak(args.dtype)
    print(f"device: {backend} {device.device_kind} x{jax.device_count()} (first used), "
          f"{len(os.sched_getaffinity(0))} CPU cores, jax {jax.__version__}; "
          f"matmul peak {peak['gflops']:.1f} GFLOP/s ({args.dtype}, n={peak['shape'][0]})", flush=True)

    model = build_model(args.model, args.dtype, scan=args.scan)
    batch = jax.device_put({k: jnp.asarray(v) for k, v in host.items()}, device)
    step, state = make_train_step(model, batch)
    compiled = compile_step(step, state, batch)
    step = compiled["step"]
    flops = train_flops(args.model)
    num_params = sum(x.size for x in jax.tree_util.tree_leaves(state["params"]))
    # XLA's count is only meaningful unrolled and on CPU (GPU library calls, cuBLAS and cuDNN, count 0).
    xla = "" if args.scan else f", {compiled['xla_flops'] / args.batch / 1e9:.1f} G by XLA's cost_analysis"
    print(f"mmjax: {num_params / 1e6:.1f}M params, compiled in {compiled['compile_s']:.1f} s, "
          f"{compiled['temp_gib']:.1f} GiB of temporaries; "
          f"model FLOPs/sample {flops / 1e9:.1f} G analytic{xla}", flush=True)

    if args.peer:
        peer, images, texts = make_peer(args.model, args.dtype, host)

    times = {"mmjax": [], "open_clip": []}  # every step's seconds; the warm-up ones are dropped below
    for i in range(args.warmup + args.steps):
        seconds, (state, metrics) = timed(step, state, batch)
        times["mmjax"].append(seconds)
        line = (f"step {i}{' (warm-up)' if i < args.warmup else ''}: mmjax {seconds:.3f} s "
                f"loss {float(metrics['loss']):.4f}")
        if args.peer:
            seconds, peer_loss = peer.timed_step(images, texts)
            times["open_clip"].append(seconds)
            line += f"; open_clip {seconds:.3f} s loss {peer_loss:.4f}"
        print(line, flush=True)

    result = {"model": args.model, "batch": args.batch, "dtype": args.dtype, "scan": args.scan,
              "attention": args.attention, "backend": backend, "cpu_cores": len(os.sched_getaffinity(0)),
              "device": device.device_kind, "peak_gflops": peak["gflops"], "flops_per_sample": flops,
              "xla_flops_per_sample": None if args.scan else compiled["xla_flops"] / args.batch}
    for name, ts in times.items():
        ts = ts[args.warmup:]
        if not ts:
            continue
        median = statistics.median(ts)
        sps = args.batch / median
        result[name] = {"step_s": median, "min_s": min(ts), "max_s": max(ts), "samples_per_s": sps,
                        "mfu": sps * flops / (peak["gflops"] * 1e9)}
        print(f"{name}: median step {median:.3f} s (min {min(ts):.3f}, max {max(ts):.3f}, {len(ts)} steps), "
              f"{sps:.2f} samples/s, {sps * flops / 1e9:.1f} model GFLOP/s, MFU {result[name]['mfu']:.1%}")
    if args.peer:
        result["ratio"] = result["mmjax"]["samples_per_s"] / result["open_clip"]["samples_per_s"]
        print(f"mmjax / open_clip samples/s: {result['ratio']:.3f}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
