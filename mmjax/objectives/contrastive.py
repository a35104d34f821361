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

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from mmjax.objectives.registry import OBJECTIVES

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


# Logit for an absent example: exp() underflows to exactly 0, and unlike -inf
# it keeps fully-masked rows finite, so no NaN leaks into gradients.
_MASKED = -1e9


def _validity(n: int, valid_a, valid_b) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(valid_a, valid_b, pair) as bool [B]; None means every example has the modality.

    Row i is a positive pair only when both sides are present; a side that is
    present still serves as a negative for the other side's queries.
    """
    va = jnp.ones((n,), bool) if valid_a is None else jnp.asarray(valid_a, bool)
    vb = jnp.ones((n,), bool) if valid_b is None else jnp.asarray(valid_b, bool)
    return va, vb, va & vb


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of x over mask; 0 when nothing is selected (a batch with no pairs)."""
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def _in_batch_accuracy(a2b: jax.Array, b2a: jax.Array, pair: jax.Array) -> Metrics:
    """Top-1 accuracy of finding the paired item within the batch, both directions.

    The logits already carry _MASKED on absent candidates (a2b masks b's
    columns, b2a a's rows); only rows of present pairs count.
    """
    target = jnp.arange(a2b.shape[0])
    return {
        "a2b_acc": _masked_mean(jnp.argmax(a2b, axis=1) == target, pair),
        "b2a_acc": _masked_mean(jnp.argmax(b2a, axis=0) == target, pair),
    }


def softmax_contrastive_loss(
    za: jax.Array, zb: jax.Array, logit_scale: jax.Array, valid_a=None, valid_b=None
) -> tuple[jax.Array, Metrics]:
    """CLIP symmetric InfoNCE (Radford et al. 2021; open_clip `ClipLoss`).

    Args:
      za, zb: L2-normalised embeddings [B, D]; row i of each is a positive pair.
      logit_scale: positive multiplier (already exponentiated), scalar.
      valid_a, valid_b: optional bool [B], False where the example lacks that
        modality: its row is no query and its embedding no candidate.

    Returns:
      (loss, metrics): loss = (CE(logits, arange) + CE(logits.T, arange)) / 2,
      each CE a mean over the present pairs, with logits = scale * za @ zb.T
      (float32). With all examples present this is exactly the CLIP loss.
    """
    va, vb, pair = _validity(za.shape[0], valid_a, valid_b)
    logits = _scaled_similarity(za, zb, logit_scale)  # [B, B]
    positives = jnp.diagonal(logits)  # [B]
    # CE(logits, arange)[i] = logsumexp_j logits[i, j] - logits[i, i]; the
    # transposed direction is the same along axis 0, so no transpose is needed.
    # Candidates are masked per direction: b's for a's queries, a's for b's.
    a2b = jnp.where(vb[None, :], logits, _MASKED)
    b2a = jnp.where(va[:, None], logits, _MASKED)
    ce_a2b = jax.nn.logsumexp(a2b, axis=1) - positives
    ce_b2a = jax.nn.logsumexp(b2a, axis=0) - positives
    loss = 0.5 * (_masked_mean(ce_a2b, pair) + _masked_mean(ce_b2a, pair))
    metrics = _in_batch_accuracy(a2b, b2a, pair)
    metrics["logit_scale"] = _as_f32_scalar(logit_scale)
    return loss, metrics


def sigmoid_contrastive_loss(
    za: jax.Array, zb: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array,
    valid_a=None, valid_b=None,
) -> tuple[jax.Array, Metrics]:
    """SigLIP pairwise sigmoid loss (Zhai et al. 2023, Algorithm 1; big_vision).

    Args:
      za, zb: L2-normalised embeddings [B, D]; row i of each is a positive pair.
      logit_scale: positive multiplier (already exponentiated), scalar.
      logit_bias: additive scalar bias.
      valid_a, valid_b: optional bool [B]; pair (i, j) counts only when a_i and
        b_j are both present.

    Returns:
      (loss, metrics): loss = -sum_ij log_sigmoid(y_ij * logits_ij) / P with
      logits = scale * za @ zb.T + bias, y = 2I - 1 and P the number of present
      positive pairs (B when all are present). Each of the B^2 pairs is a binary
      problem; the sum is divided by B as in the paper, not by B^2.
    """
    va, vb, pair = _validity(za.shape[0], valid_a, valid_b)
    bias = _as_f32_scalar(logit_bias)
    logits = _scaled_similarity(za, zb, logit_scale) + bias  # [B, B]
    n = logits.shape[0]
    labels = 2.0 * jnp.eye(n, dtype=jnp.float32) - 1.0  # +1 on pairs, -1 elsewhere
    counted = va[:, None] & vb[None, :]
    loss = -jnp.sum(jnp.where(counted, jax.nn.log_sigmoid(labels * logits), 0.0)) / jnp.maximum(jnp.sum(pair), 1)
    # A shared bias shifts every logit equally, so it cannot change the argmax.
    masked = jnp.where(counted, logits, _MASKED)
    metrics = _in_batch_accuracy(masked, masked, pair)
    metrics["logit_scale"] = _as_f32_scalar(logit_scale)
    metrics["logit_bias"] = bias
    return loss, metrics


@dataclasses.dataclass(frozen=True)
class PairLoss:
    """A loss on two embedding matrices: fn(za, zb, scale[, bias], valid_a=, valid_b=)."""

    fn: Callable[..., tuple[jax.Array, Metrics]]
    uses_bias: bool


def pair_loss(loss: PairLoss, outputs: Mapping[str, Any], batch: Mapping[str, Any], a: str, b: str):
    """`loss` between modalities a and b of the model outputs, with the batch's presence flags."""
    embeddings = outputs["embeddings"]
    missing = [m for m in (a, b) if m not in embeddings]
    if missing:
        raise ValueError(f"objective pair ({a}, {b}): {missing} not among the model's "
                         f"embeddings {sorted(embeddings)}")
    present = batch.get("present", {}) if isinstance(batch, Mapping) else {}
    args = (embeddings[a], embeddings[b], outputs["logit_scale"])
    if loss.uses_bias:
        args += (outputs["logit_bias"],)
    return loss.fn(*args, valid_a=present.get(a), valid_b=present.get(b))


def _prefixed(prefix: str, metrics: Metrics) -> Metrics:
    # One prefix per pair keeps the metrics of several pairs (N modalities) apart.
    return {f"{prefix}/{key}": value for key, value in metrics.items()}


def modality_pair(modalities) -> tuple[str, str]:
    """`config.objective.modalities` of a two-modality objective, checked."""
    names = tuple(modalities)
    if len(names) != 2:
        raise ValueError(f"config.objective.modalities must name exactly two modalities, got {names}")
    return names


def two_modality_objective(loss: PairLoss, name: str) -> Objective:
    """The objective applying `loss` to the two `cfg.modalities` (default image, text)."""
    def objective(outputs, batch, cfg):
        names = modality_pair(cfg.get("modalities", DEFAULT_MODALITIES))
        loss_value, metrics = pair_loss(loss, outputs, batch, *names)
        return loss_value, _prefixed("_".join(names), metrics)
    objective.__name__ = f"{name}_objective"
    objective.__doc__ = f"{name} contrastive loss between the two `cfg.modalities`; metrics prefixed e.g. 'image_text/'."
    return objective


def binding_pairs(cfg) -> list[tuple[str, str]]:
    """The modality pairs a binding objective trains.

    mode="anchor": (anchor, m) for every other modality m (ImageBind / ULIP:
    everything is bound to one anchor, other pairs are never seen together);
    mode="all_pairs": every unordered pair of {anchor} + modalities.
    """
    names = [cfg.anchor] + [m for m in cfg.modalities if m != cfg.anchor]
    if cfg.mode == "anchor":
        return [(cfg.anchor, m) for m in names[1:]]
    if cfg.mode == "all_pairs":
        return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    raise ValueError(f"config.objective.mode={cfg.mode!r}; valid: ['anchor', 'all_pairs']")


def binding_objective(outputs, batch, cfg) -> tuple[jax.Array, Metrics]:
    """N-modality binding: weighted sum of pairwise contrastive losses.

    cfg: anchor, modalities, mode ("anchor" | "all_pairs"), pair_loss
    ("softmax" | "sigmoid"), weights ({"a_b": w}, default 1). A pair whose
    modalities are not in this batch is skipped; absent examples are masked.
    """
    if cfg.pair_loss not in PAIR_LOSSES:
        raise ValueError(f"config.objective.pair_loss={cfg.pair_loss!r}; valid: {sorted(PAIR_LOSSES)}")
    weights = dict(cfg.get("weights", {}) or {})
    pairs = binding_pairs(cfg)
    unknown = set(weights) - {f"{a}_{b}" for a, b in pairs}
    if unknown:
        raise ValueError(f"config.objective.weights has unknown pairs {sorted(unknown)}; "
                         f"valid: {sorted(f'{a}_{b}' for a, b in pairs)}")
    total, metrics = jnp.zeros((), jnp.float32), {}
    for a, b in pairs:
        if a not in outputs["embeddings"] or b not in outputs["embeddings"]:
            continue
        loss, pair_metrics = pair_loss(PAIR_LOSSES[cfg.pair_loss], outputs, batch, a, b)
        total = total + weights.get(f"{a}_{b}", 1.0) * loss
        metrics |= _prefixed(f"{a}_{b}", {"loss": loss, **pair_metrics})
    return total, metrics


PAIR_LOSSES = {"softmax": PairLoss(softmax_contrastive_loss, uses_bias=False),
               "sigmoid": PairLoss(sigmoid_contrastive_loss, uses_bias=True)}
softmax_objective = two_modality_objective(PAIR_LOSSES["softmax"], "softmax")
sigmoid_objective = two_modality_objective(PAIR_LOSSES["sigmoid"], "sigmoid")

OBJECTIVES.register("softmax", softmax_objective)
OBJECTIVES.register("sigmoid", sigmoid_objective)
OBJECTIVES.register("bind", binding_objective)

