"""The trainer-level blocks every recipe shares: the run, the optimiser, mesh and sharding, checkpoints.

`run(...)` is the top level of a config (seed, schedule length, global batch, logging, mesh,
sharding, accumulation, checkpoints, warm start, test hooks); `adamw(...)` is `config.optim`.
Only the fields a recipe names differ from the defaults here, so a recipe lists what makes it
that recipe.
"""
from __future__ import annotations

import ml_collections

# No weight decay for biases, norms, embeddings, the class token and the temperature.
NO_DECAY = ("bias", "scale", "embedding", "pos_embedding", "cls", "log_logit_scale")

ADAMW = dict(name="adamw", lr=2e-3, warmup_steps=100, schedule="cosine", min_lr_ratio=0.0,
             b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.05, grad_clip_norm=1.0, freeze_regex="")


def no_decay(*extra: str) -> str:
    """The no-decay regex on parameter names: NO_DECAY plus `extra` (e.g. "mask_token")."""
    return rf"({'|'.join(NO_DECAY + extra)})$"


def adamw(**fields) -> ml_collections.ConfigDict:
    """`config.optim`: AdamW with a warm-up and cosine decay (mmjax.optim); `fields` override ADAMW.

    freeze_regex: parameters whose path matches get no update (LiT, CWCL's locked tower).
    """
    unknown = set(fields) - set(ADAMW) - {"no_decay_regex"}
    if unknown:
        raise ValueError(f"adamw: unknown fields {sorted(unknown)}; valid: {sorted(ADAMW) + ['no_decay_regex']}")
    return ml_collections.ConfigDict({**ADAMW, "no_decay_regex": no_decay(), **fields})


def mesh(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
    """`config.mesh`: devices per axis; -1 takes the devices the other axes leave."""
    return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


def sharding(fsdp_min_size: int = 2**18) -> ml_collections.ConfigDict:
    """`config.sharding`: (regex on the param path, PartitionSpec) rules, first match wins, the rest
    replicated or, with mesh.fsdp > 1, sharded over 'fsdp' above fsdp_min_size elements;
    tensor_parallel adds parallel.TENSOR_PARALLEL_RULES (heads and MLP units over 'tensor')."""
    return ml_collections.ConfigDict({"rules": (), "fsdp_min_size": fsdp_min_size, "tensor_parallel": False})


def run(*, total_steps: int, batch_size: int, log_every_steps: int, checkpoint_every_steps: int,
        accumulation: str = "gradcache", fsdp: int = 1, fsdp_min_size: int = 2**18,
        seed: int = 0) -> ml_collections.ConfigDict:
    """The top level of a config: everything but data, model, objective, optim, eval and evals.

    accumulation: how `--config.accumulation.steps=k` micro-batches a step (mmjax.accumulate):
    "gradcache" is exact for contrastive losses, "plain" averages micro-batch gradients (exact
    for losses that are means over examples: masked modelling). fsdp, fsdp_min_size: `mesh` and
    `sharding` (1: data parallel only, as on a CPU).
    """
    return ml_collections.ConfigDict({
        "seed": seed,
        "total_steps": total_steps,
        "batch_size": batch_size,
        "log_every_steps": log_every_steps,
        "tensorboard": True,
        # Warm start (mmjax.checkpoint.warm_start): on a fresh start, the top-level params named
        # here (e.g. ("image_encoder", "image_proj")) come from the latest checkpoint of `workdir`.
        "init_from": {"workdir": "", "params": ()},
        "mesh": mesh(fsdp=fsdp),
        "sharding": sharding(fsdp_min_size),
        "accumulation": {"steps": 1, "mode": accumulation},  # steps: micro-batches per step, 1 = off
        "checkpoint": {"every_steps": checkpoint_every_steps, "keep": 3, "async_save": True},
        # A non-finite loss or gradient norm never reaches the params (mmjax.step): "skip" drops that
        # update and counts it (the run stops after max_consecutive_skips in a row), "stop" ends the run
        # at the first one, naming the step. Checkpoints are finite either way.
        "guard": {"non_finite": "skip", "max_consecutive_skips": 20},
        # Resuming with other values of the fields that change what a run computes is refused
        # (mmjax.run_identity); batch_size may change only with this flag, which converts the data
        # position exactly (in examples).
        "resume": {"allow_batch_size_change": False},
        # A jax.profiler trace of steps [start_step, start_step + num_steps) into <workdir>/profile
        # (TensorBoard's profile plugin reads it); start_step -1: off.
        "profile": {"start_step": -1, "num_steps": 3},
        # Optional Weights & Biases sink (pip install 'mmjax[wandb]'); off while project is "".
        "wandb": {"project": "", "entity": "", "name": "", "mode": "online"},
        # Test hooks: SIGKILL the process (with a save in flight) / SIGTERM it right after step N.
        "debug": {"sigkill_after_step": -1, "sigterm_after_step": -1},
    })


# The embedded-data recipes on a 2-core CPU: "tiny" (tests: seconds, every step logged, no periodic
# evaluation, the final save only) or a real run of a few minutes.
def cpu_run(tiny: bool, *, total_steps: int, batch_size: int,
            accumulation: str = "gradcache") -> ml_collections.ConfigDict:
    return run(total_steps=total_steps, batch_size=batch_size, log_every_steps=1 if tiny else 50,
               checkpoint_every_steps=5 if tiny else 200, accumulation=accumulation)


def cpu_warmup(tiny: bool) -> int:
    """Warm-up steps of the CPU recipes (100 of a few hundred steps; 2 of a tiny run's ~10)."""
    return 2 if tiny else 100
