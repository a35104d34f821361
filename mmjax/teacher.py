"""The EMA teacher of masked feature prediction (data2vec, EVA/MR-MAE style).

A model that regresses teacher features declares `needs_teacher`, which part
of its params the teacher mirrors (`teacher_params(params)`: its encoder's,
not the decoder's) and the module the teacher runs with them on the whole,
unmasked `batch[model.modality]` (`teacher_encoder()`, the same encoder).
The trainer keeps that copy as state["teacher"]: initialised from the
student, never differentiated or seen by the optimiser, checkpointed with
the rest of the state (so a resume is exact), and after every optimiser step
moved towards the new student:

    teacher <- d * teacher + (1 - d) * student,   d = ema_schedule(step)

The targets are data2vec's: the outputs of the teacher's top-K transformer
blocks (captured as flax intermediates, so no tower needs a special output),
each instance- or layer-normalised, averaged, optionally normalised again
(`average_layer_targets`). config.model.teacher holds
  ema_start, ema_end, ema_steps, ema_schedule   the decay schedule
  top_k, layer_norm, final_norm                the targets

Why not an optax GradientTransformation: one maps gradients to updates and
sees the *pre-update* params, while a teacher is a second param tree updated
from the *post-update* student and read by the forward pass. Wrapping it as
one would hide the teacher in opt_state and lag it a step, so the trainer
keeps the teacher next to `params` and calls `update` after
`optax.apply_updates`; that is all the machinery it needs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mmjax.batch_keys import mask_key
from mmjax.models.layers import EncoderBlock
from mmjax.objectives.masked import normalize_features


def ema_update(teacher_params, student_params, decay):
    """teacher <- decay * teacher + (1 - decay) * student, leaf by leaf.

    decay may be a traced scalar (e.g. `ema_schedule` of the step). Each leaf
    keeps the teacher's dtype; keep the teacher in float32, since a bf16 leaf
    would round away steps of (1 - decay) ~ 1e-4 of the difference.
    """
    decay = jnp.asarray(decay, jnp.float32)
    return jax.tree.map(lambda t, s: (t + (1.0 - decay) * (s - t)).astype(t.dtype), teacher_params, student_params)


def ema_schedule(step, start: float, end: float, total: int, kind: str = "linear") -> jax.Array:
    """EMA decay at `step`: from `start` to `end` over `total` steps, then `end`.

    kind="linear" is data2vec's anneal (ema_decay -> ema_end_decay by
    ema_anneal_end_step, e.g. 0.999 -> 0.9999); kind="cosine" is BYOL's
    end - (end - start) * (cos(pi * step / total) + 1) / 2.
    """
    if kind not in ("linear", "cosine"):
        raise ValueError(f"unknown EMA schedule {kind!r}; valid: ['linear', 'cosine']")
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(total, 1), 0.0, 1.0)
    if kind == "cosine":
        frac = (1.0 - jnp.cos(jnp.pi * frac)) / 2.0
    return start + (end - start) * frac


def average_layer_targets(layers: jax.Array, layer_norm: str = "instance", final_norm: str = "none") -> jax.Array:
    """data2vec targets: normalise each teacher layer, average, normalise again.

    layers [L, B, N, D]: the teacher's outputs of the layers to average (data2vec
    v1 uses the top 8 for speech/text, 6 for vision). data2vec v1 is
    layer_norm="instance", final_norm="none"; data2vec 2.0 adds
    final_norm="layer" (IN -> AVG -> LN). The normalisations are the loss's
    (mmjax.objectives.masked.normalize_features), so targets and loss agree.
    """
    normed = jax.vmap(lambda x: normalize_features(x.astype(jnp.float32), layer_norm))(layers)
    return normalize_features(normed.mean(axis=0), final_norm)


def enabled(config, model) -> bool:
    """Whether the run keeps a teacher; the model and config.model.teacher must agree."""
    needs, configured = bool(getattr(model, "needs_teacher", False)), "teacher" in config.model
    if needs != configured:
        raise ValueError(f"model.kind={config.model.get('kind', 'contrastive')!r} "
                         f"{'needs' if needs else 'has no use for'} config.model.teacher")
    return needs


def init(model, params):
    """The teacher starts as a copy of the student's mirrored params."""
    return jax.tree.map(jnp.copy, model.teacher_params(params))


def decay(cfg, step) -> jax.Array:
    return ema_schedule(step, cfg.ema_start, cfg.ema_end, cfg.ema_steps, cfg.ema_schedule)


def update(cfg, model, teacher, params, step):
    """(new teacher, decay): one EMA step towards the updated student `params`."""
    d = decay(cfg, step)
    return ema_update(teacher, model.teacher_params(params), d), d


def targets(cfg, model, teacher, batch) -> dict[str, jax.Array]:
    """{modality: [B, N, D]} data2vec targets of the teacher on the unmasked batch."""
    m = model.modality
    out, captured = model.teacher_encoder().apply(
        {"params": teacher}, batch[m], batch.get(mask_key(m)), mutable=["intermediates"],
        capture_intermediates=lambda module, method: isinstance(module, EncoderBlock) and method == "__call__")
    # One [B, N', D] output per block, in block order (names block_00, block_01, ...),
    # or one stacked [L, B, N', D] from an nn.scan stack.
    blocks = [a if a.ndim == 4 else a[None] for a in jax.tree.leaves(captured["intermediates"])]
    layers = jnp.concatenate(blocks)[-cfg.top_k:, :, -out["tokens"].shape[1]:]  # the top K; no class token
    return {m: jax.lax.stop_gradient(average_layer_targets(layers, cfg.layer_norm, cfg.final_norm))}


def add_targets(cfg, model, teacher, batch, outputs):
    """outputs with the teacher's targets as outputs["masked"][m]["target"]."""
    t = targets(cfg, model, teacher, batch)
    return {**outputs, "masked": {m: {**out, "target": t[m]} for m, out in outputs["masked"].items()}}
