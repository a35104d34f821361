"""optax optimiser from config: schedule, weight-decay mask, clipping, freezing.

Params are matched by regex on their '/'-joined path (see parallel.tree_paths),
the same convention the sharding rules use.
"""
from __future__ import annotations

import re

import jax
import optax

from mmjax.parallel import tree_paths

SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZERS = ("adamw", "sgd")


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `lr`, then decay to `lr * min_lr_ratio` at `total_steps`."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule={cfg.schedule!r}; valid: {list(SCHEDULES)}")
    warmup = min(cfg.warmup_steps, total_steps)
    decay_steps = max(total_steps - warmup, 1)
    end = cfg.lr * cfg.min_lr_ratio
    decay = {
        "cosine": lambda: optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.min_lr_ratio),
        "linear": lambda: optax.linear_schedule(cfg.lr, end, decay_steps),
        "constant": lambda: optax.constant_schedule(cfg.lr),
    }[cfg.schedule]()
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


def path_mask(params, pattern: str, *, match: bool):
    """Bool pytree: True where re.search(pattern, path) is `match` (empty pattern matches nothing)."""
    rx = re.compile(pattern) if pattern else None
    flags = [(rx is not None and rx.search(p) is not None) == match for p in tree_paths(params)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), flags)


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"optim.name={cfg.name!r}; valid: {list(OPTIMIZERS)}")
    schedule = make_schedule(cfg, total_steps)
    chain = []
    if cfg.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    if cfg.name == "adamw":
        chain.append(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
    else:
        chain.append(optax.trace(decay=cfg.b1))  # SGD with momentum b1
    if cfg.weight_decay > 0:
        # Decoupled decay (AdamW), skipped for biases, norms, embeddings and the temperature.
        chain.append(optax.add_decayed_weights(
            cfg.weight_decay, mask=lambda p: path_mask(p, cfg.no_decay_regex, match=False)))
    chain.append(optax.scale_by_learning_rate(schedule))
    tx = optax.chain(*chain)
    if cfg.freeze_regex:
        tx = optax.multi_transform(
            {"train": tx, "frozen": optax.set_to_zero()},
            lambda p: jax.tree_util.tree_map(lambda f: "frozen" if f else "train",
                                             path_mask(p, cfg.freeze_regex, match=True)))
    return tx, schedule
