"""Gradient accumulation over micro-batches: exact for contrastive losses (GradCache).

`config.accumulation = {"steps": k, "mode": "gradcache" | "plain"}` splits the
global batch into k micro-batches so that only one micro-batch's activations
are live at a time; k = 1 is off and is exactly `jax.value_and_grad`.

gradcache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size
under Memory Limited Setup"): a contrastive loss couples every example with
every other, so averaging per-micro-batch losses would change it (each row
would see B/k negatives instead of B). Instead:
  (a) embed every micro-batch, forward only (`lax.map`, nothing kept for a
      backward pass), and concatenate the model outputs over the global batch;
  (b) evaluate the objective on the whole global batch and take its gradient
      with respect to those outputs (the "representation gradient");
  (c) re-run each micro-batch's forward under `jax.vjp` and pull its slice of
      the representation gradient back to the parameters, summing over
      micro-batches (`lax.scan`).
Loss, metrics and gradients are those of the global batch up to summation
order; the price is a second forward pass. Model outputs are cached except
`UNCACHED` ("tokens", [B, N, D], the one large output; an objective that
reads it, such as FILIP, is rejected). Every cached output is either per
example, with the batch as its leading dimension, or a scalar computed from
the params alone (the learned temperature and bias): a scalar is the same for
every micro-batch, so it is taken from micro-batch 0 and its gradient is
pulled back through micro-batch 0 only.
Outputs that are not floats (a masked autoencoder's bool masks) are carried
along but not differentiated. The objective's own randomness (batch["rng"])
is the global batch's, as with k = 1.

plain: the mean over micro-batches of each micro-batch's loss, metrics and
gradients. Exact for a loss that is a mean of per-example terms over equally
sized micro-batches (MAE with a fixed masking ratio); *not* exact for
contrastive losses, whose negatives shrink to the micro-batch.

Micro-batches and parallelism: micro-batch j takes rows [j*b, (j+1)*b) of
every data-parallel shard (b = B / (k * dp)), so each micro-batch is spread
over all devices and the split is a local reshape, no communication. The
global batch must therefore divide by k * dp (`validate`).

Randomness: micro-batch j's model randomness (dropout, masking) comes from
`jax.random.split(rng, k)[j]`. It cannot be the full batch's draw: JAX's
counter-based threefry makes a [B, N] draw a function of each element's
position in *that* array, so rows j*b.. of a [B, N] draw are not any [b, N]
draw. Masks are therefore i.i.d. with the same distribution as the full
batch's, not the same masks; with k = 1 the rng is passed through untouched.
The GradCache re-forward (c) reuses the key of (a), so it recomputes exactly
the embeddings whose gradient (b) computed.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from mmjax.parallel import BATCH_AXES

MODES = ("gradcache", "plain")
UNCACHED = ("tokens",)

# forward(params, batch, rng) -> model outputs; loss(outputs, batch, rng) -> (loss, metrics)
Forward = Callable[[Any, Mapping[str, Any], jax.Array], Mapping[str, Any]]
Loss = Callable[[Mapping[str, Any], Mapping[str, Any], jax.Array], tuple[jax.Array, dict]]


def validate(cfg: Mapping[str, Any], batch_size: int, data_parallel: int) -> None:
    """Fails with the reason unless `cfg` is a valid accumulation of `batch_size` over `data_parallel` devices."""
    mode, steps = cfg["mode"], cfg["steps"]
    if mode not in MODES:
        raise ValueError(f"accumulation.mode={mode!r}; valid: {list(MODES)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"accumulation.steps={steps!r}: expected an integer >= 1 (1 = no accumulation)")
    if batch_size % (steps * data_parallel):
        raise ValueError(
            f"batch_size={batch_size} does not split into accumulation.steps={steps} micro-batches over "
            f"{data_parallel} data-parallel devices: it must be a multiple of {steps} x {data_parallel} = "
            f"{steps * data_parallel}")


def value_and_grad(forward: Forward, loss: Loss, params, batch: Mapping[str, Any], rng: jax.Array,
                   cfg: Mapping[str, Any]):
    """((loss, metrics), grads) of `loss(forward(params, batch, rng), batch, rng)` over cfg["steps"] micro-batches.

    Call inside `jax.jit`; under `jax.set_mesh` the micro-batches follow the
    mesh's data-parallel axes (module doc).
    """
    steps = cfg["steps"]
    if steps == 1:  # the unaccumulated step, unchanged
        return jax.value_and_grad(lambda p: loss(forward(p, batch, rng), batch, rng), has_aux=True)(params)
    dp = _data_parallel_size()
    validate(cfg, jax.tree.leaves(batch)[0].shape[0], dp)
    micro = jax.tree.map(lambda x: _split(x, steps, dp), batch)
    keys = jax.random.split(rng, steps)
    if cfg["mode"] == "plain":
        return _plain(forward, loss, params, micro, keys)
    return _gradcache(forward, loss, params, batch, rng, micro, keys, dp)


def _plain(forward, loss, params, micro, keys):
    def one(mb, key):
        return jax.value_and_grad(lambda p: loss(forward(p, mb, key), mb, key), has_aux=True)(params)

    shapes = jax.eval_shape(one, jax.tree.map(lambda x: x[0], micro), keys[0])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, _accumulator_dtype(s.dtype)), shapes)

    def body(total, xs):
        return jax.tree.map(lambda t, v: t + v.astype(t.dtype), total, one(*xs)), None

    total, _ = jax.lax.scan(body, zeros, (micro, keys))
    (value, metrics), grads = jax.tree.map(lambda t: t / len(keys), total)
    return (value, metrics), jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)


def _gradcache(forward, loss, params, batch, rng, micro, keys, dp):
    steps = len(keys)

    def embed(p, mb, key):
        outputs = forward(p, mb, key)
        return {k: v for k, v in outputs.items() if k not in UNCACHED}

    # (a) Forward only, one micro-batch at a time.
    stacked = jax.lax.map(lambda xs: embed(params, *xs), (micro, keys))  # leaves [k, b, ...] or [k]
    leaves, treedef = jax.tree.flatten(stacked)
    diff = [i for i, x in enumerate(leaves) if jnp.issubdtype(x.dtype, jnp.inexact)]
    shared = {i for i, x in enumerate(leaves) if x.ndim == 1}  # per-step scalars, equal in every micro-batch
    merged = [x[0] if i in shared else _merge(x, steps, dp) for i, x in enumerate(leaves)]

    # (b) The objective on the global batch and its gradient w.r.t. the cached outputs.
    def loss_of(float_leaves):
        full = list(merged)
        for i, v in zip(diff, float_leaves):
            full[i] = v
        try:
            return loss(treedef.unflatten(full), batch, rng)
        except KeyError as e:
            if e.args and e.args[0] in UNCACHED:
                raise ValueError(f"accumulation.mode='gradcache' caches the model outputs except {list(UNCACHED)}, "
                                 f"but the objective reads {e.args[0]!r}; use accumulation.steps=1") from e
            raise

    (value, metrics), d_out = jax.value_and_grad(loss_of, has_aux=True)([merged[i] for i in diff])
    # Per micro-batch cotangents: batch slices, and the scalars' whole gradient at micro-batch 0.
    d_batched = [None if i in shared else _split(d, steps, dp) for i, d in zip(diff, d_out)]

    # (c) Re-forward each micro-batch under vjp and pull its cotangents back to the params.
    def body(total, xs):
        j, mb, key, d_mb = xs
        def float_outputs(p):
            out = jax.tree.leaves(embed(p, mb, key))
            return [out[i] for i in diff]
        _, pullback = jax.vjp(float_outputs, params)
        cotangents = [jnp.where(j == 0, d, jnp.zeros_like(d)) if i in shared else dm
                      for i, d, dm in zip(diff, d_out, d_mb)]
        (grads,) = pullback(cotangents)
        return jax.tree.map(lambda t, g: t + g.astype(t.dtype), total, grads), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, _accumulator_dtype(p.dtype)), params)
    grads, _ = jax.lax.scan(body, zeros, (jnp.arange(steps), micro, keys, d_batched))
    return (value, metrics), jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)


def _accumulator_dtype(dtype):
    """Sums in at least float32 (bf16 would round away small micro-batch terms)."""
    return jnp.promote_types(dtype, jnp.float32) if jnp.issubdtype(dtype, jnp.inexact) else jnp.float32


def _data_parallel_size() -> int:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return 1
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES if a in mesh.shape]))


def _constrain(x, spec: P):
    """Pins the layout of a reshaped batch under a mesh; a no-op without one."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return x
    return jax.lax.with_sharding_constraint(x, spec)


def _split(x, steps: int, dp: int):
    """[B, ...] -> [k, B/k, ...]: micro-batch j holds rows [j*b, (j+1)*b) of every data-parallel shard."""
    b = x.shape[0] // (steps * dp)
    x = x.reshape(dp, steps, b, *x.shape[1:]).swapaxes(0, 1).reshape(steps, dp * b, *x.shape[1:])
    return _constrain(x, P(None, BATCH_AXES))


def _merge(x, steps: int, dp: int):
    """Inverse of `_split`: [k, B/k, ...] -> [B, ...] in the global batch's row order."""
    b = x.shape[1] // dp
    x = x.reshape(steps, dp, b, *x.shape[2:]).swapaxes(0, 1).reshape(steps * dp * b, *x.shape[2:])
    return _constrain(x, P(BATCH_AXES))
