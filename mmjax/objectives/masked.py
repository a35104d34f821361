"""Masked-modelling losses: pixel/patch reconstruction, point clouds, features.

Pure functions on arrays, each returning (loss, metrics) with a float32
scalar loss; they know nothing about models or configs and take their inputs
already cut into patches (mmjax.models.patches). Only masked positions enter
a loss: a (finite) prediction at a visible position changes neither the value
nor the gradient. To drop examples that lack a modality, AND their rows of the
mask with the per-example `present` flag. With nothing masked a loss is 0, not
NaN.

  mae_loss                     MAE / AudioMAE: per-patch MSE, optional norm_pix
  simmim_loss                  SimMIM: L1 (or L2) on masked pixels
  chamfer_l2                   Point-MAE: Chamfer-L2 per masked group
  feature_regression_loss      data2vec (L2 / smooth L1) and EVA (cosine), with
  normalize_features           the teacher-target normalisations (the EMA
                               teacher itself is mmjax.teacher)

Objectives over outputs["masked"][m] = {pred, target, mask}, summed over m:
"mae" (MAE, AudioMAE, Point-MAE, MultiMAE), "simmim" and "masked_feature".
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from mmjax.objectives.registry import OBJECTIVES

Metrics = dict[str, jax.Array]

NORM_PIX_EPS = 1e-6  # MAE: (target - mean) / (var + 1e-6) ** 0.5
FEATURE_NORM_EPS = 1e-5  # torch layer_norm / instance_norm default, as data2vec uses them
FEATURE_NORMS = ("none", "layer", "instance")
REGRESSION_KINDS = ("l2", "smooth_l1", "cosine")


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of values over mask (same shape); 0 when nothing is selected."""
    mask = mask.astype(bool)
    return jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def _check_same(pred: jax.Array, target: jax.Array, what: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{what}: prediction {pred.shape} and target {target.shape} differ in shape")


def mae_loss(pred: jax.Array, target: jax.Array, mask: jax.Array, norm_pix: bool = False) -> tuple[jax.Array, Metrics]:
    """MAE reconstruction loss (He et al. 2022), also AudioMAE's on spectrogram patches.

    pred, target: [B, N, P] patches (mmjax.models.patches.patchify of the input for the target);
    mask: bool [B, N], True where masked. With norm_pix each target patch is
    standardised by its own mean and *unbiased* variance (torch's default
    `var`, as MAE computes it): (t - mean) / sqrt(var + 1e-6).
    loss = sum over masked patches of mean_P (pred - target)^2 / #masked.
    metrics["mse_visible"] is the same error on visible patches (not trained;
    a diagnostic of how well the decoder copies what the encoder saw).
    """
    _check_same(pred, target, "mae_loss")
    pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
    if norm_pix:
        if target.shape[-1] < 2:
            raise ValueError("norm_pix needs patches of at least 2 values")
        mean = target.mean(axis=-1, keepdims=True)
        var = target.var(axis=-1, ddof=1, keepdims=True)
        target = (target - mean) / jnp.sqrt(var + NORM_PIX_EPS)
    per_patch = jnp.mean(jnp.square(pred - target), axis=-1)  # [B, N]
    loss = _masked_mean(per_patch, mask)
    return loss, {"mse_visible": _masked_mean(per_patch, ~mask.astype(bool))}


def simmim_loss(pred: jax.Array, target: jax.Array, mask_pixels: jax.Array,
                loss: str = "l1") -> tuple[jax.Array, Metrics]:
    """SimMIM's loss (Xie et al. 2022) on images [B, H, W, C].

    mask_pixels: bool [B, H, W] (mmjax.models.patches.mask_to_pixels of the token mask), True
    where masked. As SimMIM: sum(|pred - target| * mask) / (#masked pixels +
    1e-5) / C, i.e. the mean absolute error over masked pixel channels.
    loss="l2" squares the error instead (the paper's ablation of the
    regression loss reports l1, smooth-l1 and l2 on par on ImageNet).
    """
    _check_same(pred, target, "simmim_loss")
    if mask_pixels.shape != pred.shape[:3]:
        raise ValueError(f"simmim_loss: pixel mask {mask_pixels.shape} must be [B, H, W] = {pred.shape[:3]}")
    if loss not in ("l1", "l2"):
        raise ValueError(f"simmim_loss: loss={loss!r}; valid: 'l1', 'l2'")
    diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
    err = jnp.mean(jnp.abs(diff) if loss == "l1" else diff * diff, axis=-1)  # [B, H, W]
    mask = mask_pixels.astype(bool)
    value = jnp.sum(jnp.where(mask, err, 0.0)) / (jnp.sum(mask) + 1e-5)
    return value, {f"{loss}_visible": _masked_mean(err, ~mask)}


def chamfer_l2(pred: jax.Array, target: jax.Array, group_mask: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
    """Point-MAE's Chamfer-L2 (Pang et al. 2022) between point groups.

    pred [B, G, Kp, 3] and target [B, G, Kt, 3] (Kp may differ from Kt);
    group_mask bool [B, G], True for the groups to score (the masked ones),
    or None for all groups (e.g. when the model already gathered them).
    Per group: mean over pred points of the squared distance to the nearest
    target point, plus the same from target to pred (squared distances, not
    distances, as Point-MAE's ChamferDistanceL2). The loss averages that over
    the scored groups, which equals Point-MAE's mean(dist1) + mean(dist2) over
    its flattened [B*M, K, 3] masked groups, since every group has K points.
    """
    if pred.shape[:2] != target.shape[:2] or pred.shape[-1] != 3 or target.shape[-1] != 3:
        raise ValueError(f"chamfer_l2 wants [B, G, K, 3] groups, got {pred.shape} and {target.shape}")
    pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
    # Differences rather than |a|^2 - 2ab + |b|^2: the expanded form cancels
    # for near points, which is exactly the regime a good reconstruction is in.
    d = jnp.sum(jnp.square(pred[..., :, None, :] - target[..., None, :, :]), axis=-1)  # [B, G, Kp, Kt]
    to_target = d.min(axis=-1).mean(axis=-1)  # [B, G]
    to_pred = d.min(axis=-2).mean(axis=-1)
    scored = jnp.ones(pred.shape[:2], bool) if group_mask is None else group_mask.astype(bool)
    p2t, t2p = _masked_mean(to_target, scored), _masked_mean(to_pred, scored)
    return p2t + t2p, {"chamfer_pred_to_target": p2t, "chamfer_target_to_pred": t2p}


def normalize_features(x: jax.Array, kind: str) -> jax.Array:
    """Target normalisation for feature regression, x [B, N, D], no affine.

    "layer": per token over D (torch layer_norm); "instance": per channel over
    the N tokens of an example (torch instance_norm on [B, D, N], data2vec's
    per-layer target norm); "none": unchanged. Biased variance, eps 1e-5.
    Instance norm averages over all N tokens, padding included.
    """
    if kind not in FEATURE_NORMS:
        raise ValueError(f"unknown feature normalisation {kind!r}; valid: {list(FEATURE_NORMS)}")
    if kind == "none":
        return x
    axis = -1 if kind == "layer" else -2
    mean = x.mean(axis=axis, keepdims=True)
    var = x.var(axis=axis, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + FEATURE_NORM_EPS)


def feature_regression_loss(
    pred: jax.Array, teacher: jax.Array, mask: jax.Array | None = None, kind: str = "l2",
    normalize_targets: str = "none", beta: float = 1.0, scale: float | None = None,
) -> tuple[jax.Array, Metrics]:
    """Regress teacher features at masked tokens (data2vec, EVA).

    pred, teacher: [B, N, D]; the teacher is a target (stop_gradient inside).
    mask: bool [B, N], True at the tokens to score; None scores all.
    normalize_targets: a `normalize_features` kind applied to the teacher.
    kind, per scored token, averaged over the scored tokens:
      "l2":        scale * sum_D (pred - t)^2
      "smooth_l1": scale * sum_D smooth_l1_beta(pred - t), torch's
                   smooth_l1_loss: 0.5 d^2 / beta if |d| < beta else |d| - beta/2
      "cosine":    1 - cos(pred, t) (EVA; the same gradient as its -cos)
    scale defaults to 1/sqrt(D) as data2vec's loss_scale; pass 1/D for a
    plain per-element MSE.
    metrics: pred_std, target_std (mean over D of the std across scored
    tokens; data2vec logs these to catch collapse) and cosine.
    """
    _check_same(pred, teacher, "feature_regression_loss")
    if kind not in REGRESSION_KINDS:
        raise ValueError(f"unknown regression loss {kind!r}; valid: {list(REGRESSION_KINDS)}")
    pred = pred.astype(jnp.float32)
    target = normalize_features(jax.lax.stop_gradient(teacher).astype(jnp.float32), normalize_targets)
    mask = jnp.ones(pred.shape[:2], bool) if mask is None else mask.astype(bool)
    scale = pred.shape[-1] ** -0.5 if scale is None else scale
    unit = lambda v: v * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(v), -1, keepdims=True), 1e-16))
    cosine = jnp.sum(unit(pred) * unit(target), axis=-1)  # [B, N]
    if kind == "cosine":
        per_token = 1.0 - cosine
    elif kind == "l2":
        per_token = scale * jnp.sum(jnp.square(pred - target), axis=-1)
    else:
        if beta <= 0:
            raise ValueError(f"smooth_l1 needs beta > 0 (beta=0 is kind='l2'), got {beta}")
        # optax's Huber with delta=beta is beta times torch's smooth L1.
        per_token = scale * jnp.sum(optax.huber_loss(pred, target, delta=beta), axis=-1) / beta

    metrics = {"cosine": _masked_mean(cosine, mask), "pred_std": _token_std(jax.lax.stop_gradient(pred), mask),
               "target_std": _token_std(target, mask)}
    return _masked_mean(per_token, mask), metrics


def _token_std(v: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over D of the per-channel std of v [B, N, D] across the tokens where mask [B, N]."""
    w = mask[..., None]
    count = jnp.maximum(jnp.sum(mask), 1)
    mean = jnp.sum(jnp.where(w, v, 0.0), axis=(0, 1)) / count
    var = jnp.sum(jnp.where(w, jnp.square(v - mean), 0.0), axis=(0, 1)) / count
    return jnp.mean(jnp.sqrt(var))


@OBJECTIVES.register("mae")
def mae_objective(outputs: Mapping[str, Any], batch: Mapping[str, Any], cfg) -> tuple[jax.Array, Metrics]:
    """Objective "mae": each modality's reconstruction loss in outputs["masked"], summed.

    outputs["masked"][m] = {"pred", "target", "mask": bool [B, N]} (see
    mmjax.models.mae): patches [B, N, P] are scored by `mae_loss` (cfg.norm_pix
    as in MAE), point groups [B, G, K, 3] by `chamfer_l2` (Point-MAE).
    cfg.weights {m: w} (default 1).
    """
    del batch  # the model already folded presence and padding into each mask

    def loss_fn(out):
        if out["pred"].ndim == 4:  # point groups
            return chamfer_l2(out["pred"], out["target"], out["mask"])
        return mae_loss(out["pred"], out["target"], out["mask"], norm_pix=cfg.get("norm_pix", False))

    return _sum_over_modalities(outputs, cfg, loss_fn, "recon_loss")


@OBJECTIVES.register("simmim")
def simmim_objective(outputs: Mapping[str, Any], batch: Mapping[str, Any], cfg) -> tuple[jax.Array, Metrics]:
    """Objective "simmim": `simmim_loss` (L1 on masked pixels) per modality, summed.

    outputs["masked"][m] = {"pred", "target": images [B, H, W, C], "mask":
    bool [B, H, W] masked pixels} (see mmjax.models.simmim); cfg.loss "l1"
    (default, SimMIM's) | "l2"; cfg.weights {m: w}.
    """
    del batch
    kind = cfg.get("loss", "l1")
    loss_fn = lambda out: simmim_loss(out["pred"], out["target"], out["mask"], loss=kind)
    return _sum_over_modalities(outputs, cfg, loss_fn, f"recon_{kind}")


@OBJECTIVES.register("masked_feature")
def masked_feature_objective(outputs: Mapping[str, Any], batch: Mapping[str, Any], cfg) -> tuple[jax.Array, Metrics]:
    """Objective "masked_feature": regress teacher features at masked tokens (data2vec, EVA).

    outputs["masked"][m] = {"pred": [B, N, D], "target": the teacher's
    features [B, N, D] (filled in by mmjax.teacher), "mask": bool [B, N]}.
    cfg: loss ("l2" | "smooth_l1" | "cosine"), beta, weights; the targets
    arrive normalised (mmjax.teacher.average_layer_targets), so none is applied here.
    """
    del batch
    loss_fn = lambda out: feature_regression_loss(out["pred"], out["target"], out["mask"],
                                                  kind=cfg.get("loss", "l2"), beta=cfg.get("beta", 1.0))
    return _sum_over_modalities(outputs, cfg, loss_fn, "feature_loss")


def _sum_over_modalities(outputs, cfg, loss_fn, name: str) -> tuple[jax.Array, Metrics]:
    """sum_m cfg.weights[m] * loss_fn(outputs["masked"][m]), metrics "<m>/<name>" and "<m>/<extra>".

    Multimodal models (MultiMAE) also return outputs["kept"][m], the int [B]
    visible tokens per example, logged as its mean "<m>/kept".
    """
    weights = dict(cfg.get("weights", {}) or {})
    total, metrics = jnp.zeros((), jnp.float32), {}
    for m, out in outputs["masked"].items():
        loss, extra = loss_fn(out)
        total = total + weights.get(m, 1.0) * loss
        metrics |= {f"{m}/{name}": loss, **{f"{m}/{k}": v for k, v in extra.items()}}
    for m, kept in outputs.get("kept", {}).items():
        metrics[f"{m}/kept"] = jnp.mean(kept.astype(jnp.float32))
    return total, metrics

