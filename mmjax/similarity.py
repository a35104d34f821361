"""Similarity functions shared by the objectives (losses) and the evaluators (zero-shot,
retrieval), so neither imports the other.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def l2_normalize(z) -> jax.Array:
    """z / |z| over the last axis, in float32.

    rsqrt of a clamped squared norm, not z / |z|: the gradient of |z| at z = 0
    (an absent modality's zero-filled input can embed to exactly 0) is NaN, and
    0 * NaN survives the loss's presence mask.
    """
    z = z.astype(jnp.float32)
    return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-12))


def filip_similarities(tokens_a, tokens_b, token_valid_a=None, token_valid_b=None) -> tuple[jax.Array, jax.Array]:
    """FILIP's late interaction (Yao et al. 2021), [A, B] each, between token sets [A, Na, D] and
    [B, Nb, D] (a batch against itself in the loss; examples against class prompts in zero-shot):
    s_ab[i, j] = mean over valid tokens t of a_i of max over valid tokens s of b_j of <a_it, b_js>,
    s_ba[i, j] = mean over valid tokens s of b_j of max over valid tokens t of a_i of the same.
    The [A, B, Na, Nb] cosines are materialised: fine at CPU scale, not for huge batches."""
    ta, tb = l2_normalize(tokens_a), l2_normalize(tokens_b)
    if ta.ndim != 3 or tb.ndim != 3 or ta.shape[2] != tb.shape[2]:
        raise ValueError(f"FILIP wants token arrays [B, N, D] of equal D, got {ta.shape} and {tb.shape}")
    ma = jnp.ones(ta.shape[:2], bool) if token_valid_a is None else jnp.asarray(token_valid_a, bool)
    mb = jnp.ones(tb.shape[:2], bool) if token_valid_b is None else jnp.asarray(token_valid_b, bool)
    cos = jnp.einsum("ind,jmd->ijnm", ta, tb, precision=jax.lax.Precision.HIGHEST)  # [B, B, Na, Nb]
    # Cosines lie in [-1, 1], so a padded token set to -2 never wins a max.
    best_for_a = jnp.max(jnp.where(mb[None, :, None, :], cos, -2.0), axis=3)  # [B, B, Na]
    best_for_b = jnp.max(jnp.where(ma[:, None, :, None], cos, -2.0), axis=2)  # [B, B, Nb]
    s_ab = jnp.sum(jnp.where(ma[:, None, :], best_for_a, 0.0), -1) / jnp.maximum(jnp.sum(ma, 1), 1)[:, None]
    s_ba = jnp.sum(jnp.where(mb[None, :, :], best_for_b, 0.0), -1) / jnp.maximum(jnp.sum(mb, 1), 1)[None, :]
    return s_ab, s_ba
