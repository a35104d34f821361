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
(`masked.average_layer_targets`). config.model.teacher holds
  ema_start, ema_end, ema_steps, ema_schedule   the decay schedule
  top_k, layer_norm, final_norm                the targets
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mmjax.models.layers import EncoderBlock
from mmjax.objectives import masked


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
    return masked.ema_schedule(step, cfg.ema_start, cfg.ema_end, cfg.ema_steps, cfg.ema_schedule)


def update(cfg, model, teacher, params, step):
    """(new teacher, decay): one EMA step towards the updated student `params`."""
    d = decay(cfg, step)
    return masked.ema_update(teacher, model.teacher_params(params), d), d


def targets(cfg, model, teacher, batch) -> dict[str, jax.Array]:
    """{modality: [B, N, D]} data2vec targets of the teacher on the unmasked batch."""
    m = model.modality
    out, captured = model.teacher_encoder().apply(
        {"params": teacher}, batch[m], batch.get(f"{m}_mask"), mutable=["intermediates"],
        capture_intermediates=lambda module, method: isinstance(module, EncoderBlock) and method == "__call__")
    # One [B, N', D] output per block, in block order (names block_00, block_01, ...),
    # or one stacked [L, B, N', D] from an nn.scan stack.
    blocks = [a if a.ndim == 4 else a[None] for a in jax.tree.leaves(captured["intermediates"])]
    layers = jnp.concatenate(blocks)[-cfg.top_k:, :, -out["tokens"].shape[1]:]  # the top K; no class token
    return {m: jax.lax.stop_gradient(masked.average_layer_targets(layers, cfg.layer_norm, cfg.final_norm))}


def add_targets(cfg, model, teacher, batch, outputs):
    """outputs with the teacher's targets as outputs["masked"][m]["target"]."""
    t = targets(cfg, model, teacher, batch)
    return {**outputs, "masked": {m: {**out, "target": t[m]} for m, out in outputs["masked"].items()}}
