"""Contrastive losses with explicit collectives over the batch axes (`jax.shard_map`).

The global losses in `contrastive.py` let GSPMD partition a [B, B] logits
matrix, so every device holds at least a [B/n, B] slice of it (plus its
gradient): memory per device grows with the global batch, whatever the device
count. The two losses here equal the global ones (value and gradient) but
decide their own communication:

  * `sigmoid_loss_ring` (SigLIP; Zhai et al. 2023, sec. 3.3): b's rows travel
    around a ring of the n devices with `ppermute`; each step scores one
    [b, b] block (b = B/n) of local a rows against the visiting b rows. A
    custom VJP runs the ring a second time for the gradient, from the local
    inputs, sending each visiting block's gradient along with the block, so
    nothing of size [B, .] is ever kept. Memory per device is
    O(b*b + b*D), independent of B for a fixed per-device batch.
  * `softmax_loss_gathered` (CLIP): a softmax needs all of a row, so each
    device scores its b rows of one tower against all B gathered rows of the
    other ([b, B] logits, as open_clip's `local_loss=True`). Memory matches the
    sharded global version; the gain is that the collectives are explicit.

Both are normalised like the global versions, honour the same per-example
presence masks (which travel, or are gathered, with their embeddings), and take
the same arguments plus `mesh` and `axis` (the mesh axes the batch is split
over, by default those of `parallel.BATCH_AXES` that the mesh has).

The objective wrappers ("sigmoid_chunked", "softmax_gathered") find the mesh
from context: the trainer must trace its step under `with jax.set_mesh(mesh):`
(JAX 0.10 has no other way to hand a mesh to code running inside `jit`).
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, Mesh, PartitionSpec as P

from mmjax import parallel
# The global versions' private helpers are reused on purpose: the distributed
# losses must mask, cast and normalise exactly as they do.
from mmjax.objectives.contrastive import (
    _MASKED, Metrics, PairLoss, _as_f32_scalar, _validity, two_modality_objective)
from mmjax.objectives.registry import OBJECTIVES

AxisNames = tuple[str, ...]


# ---------------------------------------------------------------------------
# Plumbing shared by both losses
# ---------------------------------------------------------------------------
def _batch_axes(mesh: Mesh | AbstractMesh, axis: str | tuple[str, ...] | None) -> AxisNames:
    """The mesh axes the batch is split over, as a tuple; None -> the mesh's BATCH_AXES."""
    if axis is None:
        axes = tuple(a for a in parallel.BATCH_AXES if a in mesh.axis_names)
        if not axes:
            raise ValueError(f"mesh axes {list(mesh.axis_names)} include none of the batch axes "
                             f"{list(parallel.BATCH_AXES)}; pass axis=")
        return axes
    axes = (axis,) if isinstance(axis, str) else tuple(axis)
    unknown = [a for a in axes if a not in mesh.axis_names]
    if unknown:
        raise ValueError(f"batch axes {unknown} not in mesh axes {list(mesh.axis_names)}")
    return axes


def _dot(x: jax.Array, y: jax.Array) -> jax.Array:
    """x @ y at HIGHEST precision, as contrastive._scaled_similarity does (see why there)."""
    return jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST)


def _varying(x, axes: AxisNames):
    # Loop carries must keep one type; a fresh constant is "invariant" over the
    # batch axes and would turn "varying" after the first update.
    return jax.lax.pcast(x, axes, to="varying")


def _psum_mean(x: jax.Array, mask: jax.Array, axes: AxisNames) -> jax.Array:
    """Global mean of x over mask from each device's rows; 0 when nothing is selected."""
    total = jax.lax.psum(jnp.sum(jnp.where(mask, x, 0.0)), axes)
    return total / jnp.maximum(jax.lax.psum(jnp.sum(mask), axes), 1)


def _merge_argmax(best, arg, values, args):
    """Running (max, argmax) with jnp.argmax's tie rule: the lowest index wins."""
    take = (values > best) | ((values == best) & (args < arg))
    return jnp.where(take, values, best), jnp.where(take, args, arg)


def _block_argmax(masked: jax.Array, axis: int, offset) -> tuple[jax.Array, jax.Array]:
    return jnp.max(masked, axis=axis), jnp.argmax(masked, axis=axis).astype(jnp.int32) + offset


def _over_batch(body: Callable, mesh, axes: AxisNames, za, zb, valid_a, valid_b, scalars):
    """Runs body(za, zb, va, vb, *scalars) per device on its rows; returns its replicated result.

    Shapes and divisibility are checked on the global arrays, where the error
    message can name the global batch.
    """
    if za.ndim != 2 or za.shape != zb.shape:
        raise ValueError("contrastive loss wants two [B, D] embedding matrices of equal shape, "
                         f"got {za.shape} and {zb.shape}")
    n = 1
    for a in axes:
        n *= mesh.shape[a]
    if za.shape[0] % n:
        raise ValueError(f"global batch {za.shape[0]} does not split over batch axes {axes} ({n} devices)")
    va, vb, _ = _validity(za.shape[0], valid_a, valid_b)
    rows = P(axes)
    sharded = jax.shard_map(body, mesh=mesh, in_specs=(rows,) * 4 + (P(),) * len(scalars), out_specs=P())
    # Up-cast outside the shard_map so the cast is differentiated by JAX and
    # bf16 towers get bf16 gradients, exactly as in the global versions.
    return sharded(za.astype(jnp.float32), zb.astype(jnp.float32), va, vb,
                   *(_as_f32_scalar(s) for s in scalars))


# ---------------------------------------------------------------------------
# SigLIP on a ring
# ---------------------------------------------------------------------------
def _ring(visit: Callable, row_acc, col_acc, zb, vb, axes: AxisNames):
    """Shows every device every b block once; returns (row_acc, col_acc).

    visit(owner, zb_blk, vb_blk, row_acc, col_acc) -> (row_acc, col_acc) sees
    the block of device `owner` (its own first). `row_acc` stays put; `col_acc`
    belongs to the visiting block and travels with it: n-1 shifts take each
    block past all devices, one more shift of `col_acc` alone brings it home.
    """
    n = jax.lax.axis_size(axes)
    me = jax.lax.axis_index(axes)
    shift = functools.partial(jax.lax.ppermute, axis_name=axes, perm=[(i, (i + 1) % n) for i in range(n)])

    def step(s, carry):
        zb_blk, vb_blk, row_acc, col_acc = carry
        row_acc, col_acc = visit((me - s) % n, zb_blk, vb_blk, row_acc, col_acc)
        zb_blk, vb_blk, col_acc = shift((zb_blk, vb_blk, col_acc))
        return zb_blk, vb_blk, row_acc, col_acc

    zb_blk, vb_blk, row_acc, col_acc = jax.lax.fori_loop(0, n - 1, step, (zb, vb, row_acc, col_acc))
    # The last block needs no onward shift; only what it accumulated goes home.
    row_acc, col_acc = visit((me + 1) % n, zb_blk, vb_blk, row_acc, col_acc)
    return row_acc, shift(col_acc)


def _sigmoid_block(za, va, zb_blk, vb_blk, owner, scale, bias, axes):
    """(sim, logits, signs, counted) for local a rows against one visiting b block, all [b, b]."""
    sim = _dot(za, zb_blk.T)
    logits = scale * sim + bias
    positive = (owner == jax.lax.axis_index(axes)) & jnp.eye(za.shape[0], dtype=bool)
    signs = jnp.where(positive, 1.0, -1.0)
    counted = va[:, None] & vb_blk[None, :]
    return sim, logits, signs, counted


# The ring body is differentiated by hand: JAX's own VJP of the loop would keep
# every visiting block (n * [b, D] = [B, D]) or every logits block ([b, B]) as
# residuals, which is the memory this loss exists to avoid. The backward pass
# instead runs the ring again from the local inputs.
@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _sigmoid_ring_local(za, zb, scale, bias, va, vb, axes):
    """Per device: (sum of this device's rows' pair losses, a2b hits [b], b2a hits [b])."""
    b = za.shape[0]
    me = jax.lax.axis_index(axes)
    own = me * b + jnp.arange(b, dtype=jnp.int32)  # global indices of the local rows

    def visit(owner, zb_blk, vb_blk, row_acc, col_acc):
        total, row_best, row_arg = row_acc
        _, logits, signs, counted = _sigmoid_block(za, va, zb_blk, vb_blk, owner, scale, bias, axes)
        total = total - jnp.sum(jnp.where(counted, jax.nn.log_sigmoid(signs * logits), 0.0))
        # Accuracy as in the global version: argmax over counted candidates.
        masked = jnp.where(counted, logits, _MASKED)
        row_best, row_arg = _merge_argmax(row_best, row_arg, *_block_argmax(masked, 1, owner * b))
        col_acc = _merge_argmax(*col_acc, *_block_argmax(masked, 0, me * b))
        return (total, row_best, row_arg), col_acc

    best = _varying((jnp.full((b,), -jnp.inf), jnp.full((b,), jnp.iinfo(jnp.int32).max)), axes)
    (total, _, row_arg), (_, col_arg) = _ring(visit, (_varying(jnp.zeros(()), axes), *best), best, zb, vb, axes)
    return total, (row_arg == own).astype(jnp.float32), (col_arg == own).astype(jnp.float32)


def _sigmoid_ring_fwd(za, zb, scale, bias, va, vb, axes):
    # Residuals are the local inputs only: O(b * D), whatever the device count.
    return _sigmoid_ring_local(za, zb, scale, bias, va, vb, axes), (za, zb, scale, bias, va, vb)


def _sigmoid_ring_bwd(axes, residuals, cotangents):
    za, zb, scale, bias, va, vb = residuals
    g = cotangents[0]  # the hit counts are metrics: no gradient flows from them

    def visit(owner, zb_blk, vb_blk, row_acc, dzb_blk):
        dza, dscale, dbias = row_acc
        sim, logits, signs, counted = _sigmoid_block(za, va, zb_blk, vb_blk, owner, scale, bias, axes)
        # d/dx -log_sigmoid(y x) = -y sigmoid(-y x)
        dlogits = jnp.where(counted, -signs * jax.nn.sigmoid(-signs * logits), 0.0) * g
        dza = dza + scale * _dot(dlogits, zb_blk)
        dzb_blk = dzb_blk + scale * _dot(dlogits.T, za)
        return (dza, dscale + jnp.sum(dlogits * sim), dbias + jnp.sum(dlogits)), dzb_blk

    zeros = _varying((jnp.zeros(za.shape), jnp.zeros(()), jnp.zeros(()), jnp.zeros(zb.shape)), axes)
    (dza, dscale, dbias), dzb = _ring(visit, zeros[:3], zeros[3], zb, vb, axes)
    # Masks are not differentiable; None is the custom_vjp spelling of "no cotangent".
    return dza, dzb, dscale, dbias, None, None


_sigmoid_ring_local.defvjp(_sigmoid_ring_fwd, _sigmoid_ring_bwd)


def sigmoid_loss_ring(
    za: jax.Array, zb: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array, *,
    mesh: Mesh | AbstractMesh, axis: str | tuple[str, ...] | None = None, valid_a=None, valid_b=None,
) -> tuple[jax.Array, Metrics]:
    """`contrastive.sigmoid_contrastive_loss` with b's rows passed around a device ring.

    Args:
      za, zb: global [B, D] embeddings, B divisible by the batch-axes size n;
        ideally already sharded on those axes (any layout works, but the
        shard_map then reshards them).
      logit_scale, logit_bias, valid_a, valid_b: as in the global version.
      mesh: the Mesh (or AbstractMesh, inside jit) the batch is sharded on.
      axis: mesh axis name(s) the batch is split over.

    Returns:
      (loss, metrics), equal to the global version's: never more than one
      [b, b] logits block (b = B / n) is live per device.
    """
    axes = _batch_axes(mesh, axis)

    def body(za, zb, va, vb, scale, bias):
        # Scalars enter the custom VJP as per-device values so that JAX sums
        # their per-device gradients (the transpose of pcast is a psum).
        total, a2b_hit, b2a_hit = _sigmoid_ring_local(
            za, zb, _varying(scale, axes), _varying(bias, axes), va, vb, axes)
        pair = va & vb
        loss = jax.lax.psum(total, axes) / jnp.maximum(jax.lax.psum(jnp.sum(pair), axes), 1)
        return loss, {"a2b_acc": _psum_mean(a2b_hit, pair, axes), "b2a_acc": _psum_mean(b2a_hit, pair, axes)}

    loss, metrics = _over_batch(body, mesh, axes, za, zb, valid_a, valid_b, (logit_scale, logit_bias))
    metrics["logit_scale"] = _as_f32_scalar(logit_scale)
    metrics["logit_bias"] = _as_f32_scalar(logit_bias)
    return loss, metrics


# ---------------------------------------------------------------------------
# CLIP with local rows against gathered columns
# ---------------------------------------------------------------------------
def softmax_loss_gathered(
    za: jax.Array, zb: jax.Array, logit_scale: jax.Array, *,
    mesh: Mesh | AbstractMesh, axis: str | tuple[str, ...] | None = None, valid_a=None, valid_b=None,
) -> tuple[jax.Array, Metrics]:
    """`contrastive.softmax_contrastive_loss` from local queries against gathered candidates.

    Each device scores its b rows of a against all B rows of b (a->b CE of its
    rows) and its b rows of b against all B rows of a (b->a CE of its columns).
    open_clip needs `gather_with_grad` because torch's all_gather has no
    backward; JAX transposes `all_gather` into a reduce-scatter, so each device
    receives the sum of every device's cotangent for its own rows, which is
    the global gradient with no hand-stitched local slice. Arguments and
    result as in `sigmoid_loss_ring`, without the bias.
    """
    axes = _batch_axes(mesh, axis)

    def body(za, zb, va, vb, scale):
        b = za.shape[0]
        own = jax.lax.axis_index(axes) * b + jnp.arange(b)  # global indices of the local rows
        gather = functools.partial(jax.lax.all_gather, axis_name=axes, tiled=True)
        pair = va & vb

        def queries(q, candidates, candidate_valid):
            """CE and top-1 hits of local queries q [b, D] against all candidates [B, D]."""
            logits = scale * _dot(q, gather(candidates).T)  # [b, B]
            positives = jnp.take_along_axis(logits, own[:, None], axis=1)[:, 0]
            masked = jnp.where(gather(candidate_valid)[None, :], logits, _MASKED)
            ce = jax.nn.logsumexp(masked, axis=1) - positives
            return ce, jnp.argmax(masked, axis=1) == own

        ce_a2b, a2b_hit = queries(za, zb, vb)
        ce_b2a, b2a_hit = queries(zb, za, va)
        loss = 0.5 * (_psum_mean(ce_a2b, pair, axes) + _psum_mean(ce_b2a, pair, axes))
        return loss, {"a2b_acc": _psum_mean(a2b_hit, pair, axes), "b2a_acc": _psum_mean(b2a_hit, pair, axes)}

    loss, metrics = _over_batch(body, mesh, axes, za, zb, valid_a, valid_b, (logit_scale,))
    metrics["logit_scale"] = _as_f32_scalar(logit_scale)
    return loss, metrics


# ---------------------------------------------------------------------------
# Objective wrappers
# ---------------------------------------------------------------------------
def _context_mesh() -> AbstractMesh:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        raise ValueError("distributed contrastive objectives need the mesh in context: "
                         "trace the train step under `with jax.set_mesh(mesh):`")
    return mesh


def _in_context_mesh(loss_fn: Callable) -> Callable:
    """loss_fn with `mesh` taken from the context at trace time (the objective signature has none)."""
    return lambda *args, **kwargs: loss_fn(*args, mesh=_context_mesh(), **kwargs)


sigmoid_chunked_objective = two_modality_objective(PairLoss(_in_context_mesh(sigmoid_loss_ring), uses_bias=True),
                                                   "sigmoid_chunked")
softmax_gathered_objective = two_modality_objective(
    PairLoss(_in_context_mesh(softmax_loss_gathered), uses_bias=False), "softmax_gathered")

OBJECTIVES.register("sigmoid_chunked", sigmoid_chunked_objective)
OBJECTIVES.register("softmax_gathered", softmax_gathered_objective)
