"""Contrastive objectives over a pair of modalities: CLIP (softmax) and SigLIP (sigmoid).

Two layers:
  * pure losses on embedding matrices, `softmax_contrastive_loss` and
    `sigmoid_contrastive_loss`, which know nothing about models or configs;
  * objective wrappers with the trainer's signature
    `(outputs, batch, cfg) -> (loss, metrics)`, which pick the two modalities
    named in `cfg.modalities`, plus a flat name -> function registry.

Sharding contract: the losses are written on the global batch. Under `jax.jit`
with the embeddings sharded on a data axis, GSPMD inserts whatever collectives
the [B, B] similarity needs, so the value equals the single-device one. There are
deliberately no collectives in here; a memory-bounded (chunked / ring) variant
would be a separate `shard_map` function with its own equivalence test.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]
Objective = Callable[[Mapping[str, Any], Mapping[str, Any], Any], tuple[jax.Array, Metrics]]

DEFAULT_MODALITIES = ("image", "text")


def _as_f32_scalar(x: jax.Array) -> jax.Array:
    # reshape(()) accepts a () or (1,) parameter and rejects anything bigger.
    return jnp.reshape(jnp.asarray(x, jnp.float32), ())


def _scaled_similarity(za: jax.Array, zb: jax.Array, logit_scale: jax.Array) -> jax.Array:
    """Returns `logit_scale * za @ zb.T` as float32 [B, B]; validates shapes."""
    if za.ndim != 2 or za.shape != zb.shape:
        raise ValueError(
            "contrastive loss wants two [B, D] embedding matrices of equal shape, "
            f"got {za.shape} and {zb.shape}")
    # Up-cast so bf16 towers still get a float32 loss. HIGHEST keeps TPU/GPU from
    # running the float32 matmul as bf16/TF32 passes, whose ~1e-3 relative error
    # the logit scale (up to 100) would amplify into visible logit noise; the
    # [B, B, D] matmul is tiny next to the towers, so the extra passes are cheap.
    za = za.astype(jnp.float32)
    zb = zb.astype(jnp.float32)
    sim = jnp.matmul(za, zb.T, precision=jax.lax.Precision.HIGHEST)
    return _as_f32_scalar(logit_scale) * sim


def _in_batch_accuracy(logits: jax.Array) -> Metrics:
    """Top-1 accuracy of finding the paired item within the batch, both directions."""
    target = jnp.arange(logits.shape[0])
    return {
        "a2b_acc": jnp.mean(jnp.argmax(logits, axis=1) == target),
        "b2a_acc": jnp.mean(jnp.argmax(logits, axis=0) == target),
    }


def softmax_contrastive_loss(
    za: jax.Array, zb: jax.Array, logit_scale: jax.Array
) -> tuple[jax.Array, Metrics]:
    """CLIP symmetric InfoNCE (Radford et al. 2021; open_clip `ClipLoss`).

    Args:
      za, zb: L2-normalised embeddings [B, D]; row i of each is a positive pair.
      logit_scale: positive multiplier (already exponentiated), scalar.

    Returns:
      (loss, metrics): loss = (CE(logits, arange) + CE(logits.T, arange)) / 2,
      each CE a batch mean, with logits = scale * za @ zb.T (float32).
    """
    logits = _scaled_similarity(za, zb, logit_scale)  # [B, B]
    positives = jnp.diagonal(logits)  # [B]
    # CE(logits, arange)[i] = logsumexp_j logits[i, j] - logits[i, i]; the
    # transposed direction is the same along axis 0, so no transpose is needed.
    ce_a2b = jax.nn.logsumexp(logits, axis=1) - positives
    ce_b2a = jax.nn.logsumexp(logits, axis=0) - positives
    loss = 0.5 * (jnp.mean(ce_a2b) + jnp.mean(ce_b2a))
    metrics = _in_batch_accuracy(logits)
    metrics["logit_scale"] = _as_f32_scalar(logit_scale)
    return loss, metrics


def sigmoid_contrastive_loss(
    za: jax.Array, zb: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array
) -> tuple[jax.Array, Metrics]:
    """SigLIP pairwise sigmoid loss (Zhai et al. 2023, Algorithm 1; big_vision).

    Args:
      za, zb: L2-normalised embeddings [B, D]; row i of each is a positive pair.
      logit_scale: positive multiplier (already exponentiated), scalar.
      logit_bias: additive scalar bias.

    Returns:
      (loss, metrics): loss = -sum_ij log_sigmoid(y_ij * logits_ij) / B with
      logits = scale * za @ zb.T + bias and y = 2I - 1. Each of the B^2 pairs is
      a binary problem; the sum is divided by B as in the paper, not by B^2.
    """
    bias = _as_f32_scalar(logit_bias)
    logits = _scaled_similarity(za, zb, logit_scale) + bias  # [B, B]
    n = logits.shape[0]
    labels = 2.0 * jnp.eye(n, dtype=jnp.float32) - 1.0  # +1 on pairs, -1 elsewhere
    loss = -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / n
    # A shared bias shifts every logit equally, so it cannot change the argmax.
    metrics = _in_batch_accuracy(logits)
    metrics["logit_scale"] = _as_f32_scalar(logit_scale)
    metrics["logit_bias"] = bias
    return loss, metrics


def _modality_pair(outputs: Mapping[str, Any], cfg: Any) -> tuple[str, jax.Array, jax.Array]:
    """Picks the embeddings named by `cfg.modalities`; returns (prefix, za, zb)."""
    names = tuple(cfg.get("modalities", DEFAULT_MODALITIES))
    if len(names) != 2:
        raise ValueError(
            f"config.objective.modalities must name exactly two modalities, got {names}")
    embeddings = outputs["embeddings"]
    missing = [m for m in names if m not in embeddings]
    if missing:
        raise ValueError(
            f"config.objective.modalities {names}: {missing} not among the model's "
            f"embeddings {sorted(embeddings)}")
    return "_".join(names), embeddings[names[0]], embeddings[names[1]]


def _prefixed(prefix: str, metrics: Metrics) -> Metrics:
    # One prefix per pair keeps the metrics of several pairs (N modalities) apart.
    return {f"{prefix}/{key}": value for key, value in metrics.items()}


def softmax_objective(
    outputs: Mapping[str, Any], batch: Mapping[str, Any], cfg: Any
) -> tuple[jax.Array, Metrics]:
    """CLIP loss between `cfg.modalities`; metrics prefixed e.g. 'image_text/'."""
    del batch  # Positives are aligned by row index; nothing else is needed.
    prefix, za, zb = _modality_pair(outputs, cfg)
    loss, metrics = softmax_contrastive_loss(za, zb, outputs["logit_scale"])
    return loss, _prefixed(prefix, metrics)


def sigmoid_objective(
    outputs: Mapping[str, Any], batch: Mapping[str, Any], cfg: Any
) -> tuple[jax.Array, Metrics]:
    """SigLIP loss between `cfg.modalities`; metrics prefixed e.g. 'image_text/'."""
    del batch  # Positives are aligned by row index; nothing else is needed.
    prefix, za, zb = _modality_pair(outputs, cfg)
    loss, metrics = sigmoid_contrastive_loss(
        za, zb, outputs["logit_scale"], outputs["logit_bias"])
    return loss, _prefixed(prefix, metrics)


OBJECTIVES: dict[str, Objective] = {
    "softmax": softmax_objective,
    "sigmoid": sigmoid_objective,
}


def get_objective(name: str) -> Objective:
    """Returns the objective registered as `name` (`config.objective.name`)."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(
            f"unknown objective {name!r}; valid names: {sorted(OBJECTIVES)}") from None
