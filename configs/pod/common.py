"""What the pod-scale configs share: variants, the pod layout, fake data, the tiny size.

Variants (`configs/pod/<name>.py:data=fake,size=tiny`):
  data   real (default): the paper's dataset, by its TFDS name / ArrayRecord
         directory | fake: mmjax.data.fake at the same shapes, nothing to read
  size   full (default): the paper's model, batch and schedule | tiny: a
         width-32, 2-layer model, batch 16, 2 steps on a 2x2 (data x fsdp)
         mesh: the same code paths (scan, remat, bf16, FSDP, the data
         pipeline, checkpointing) in seconds on a CPU; tests run it
  steps  total train steps (default: the paper's schedule; 2 when tiny)

The pod layout: a ("data", "fsdp") mesh with params and optimiser state sharded
over "fsdp" (ZeRO-3 style, above sharding.fsdp_min_size elements), the batch
over both axes; every tower scans over its layers (one compiled block) with a
remat policy; bf16 compute on float32 params (losses and embeddings are cast
to float32 by the objectives). `python tools/plan.py --config <file> --mesh
data=64,fsdp=4` prints what this costs per device before a pod is booked.
"""
from __future__ import annotations

import ml_collections

from mmjax.config_utils import parse_variant
from mmjax.data import fake

VARIANT = {"data": "real", "size": "full", "steps": 0}
CHOICES = {"data": ("real", "fake"), "size": ("full", "tiny")}
# depth 2, so the layer scan has more than one layer to scan
TINY_TOWER = dict(width=32, depth=2, num_heads=2, mlp_dim=64)


def parse(arg: str | None) -> ml_collections.ConfigDict:
    return parse_variant(arg, VARIANT, choices=CHOICES)


def steps(epochs: float, examples: int, batch_size: int) -> int:
    """Optimiser steps of `epochs` passes over `examples` at `batch_size` (rounded down)."""
    return int(epochs * examples) // batch_size


def towers(c: ml_collections.ConfigDict) -> list:
    """The transformer tower configs: model.towers (contrastive) or model.encoder (masked)."""
    return list(c.model.towers.values()) if "towers" in c.model else [c.model.encoder]


def finish(c: ml_collections.ConfigDict, v: ml_collections.ConfigDict, *, fsdp: int, remat: str,
           image_shape=(224, 224, 3), fake_examples=(8192, 1024)) -> ml_collections.ConfigDict:
    """`c` with the pod layout, the fake-data option and, when v.size is tiny, the generic part of
    the tiny size (each config shrinks its own input shapes first); returns `c`, locked."""
    with c.unlocked():
        c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": fsdp, "tensor": 1})
        c.model.dtype, c.model.param_dtype = "bfloat16", "float32"
        for tower in towers(c):
            tower.scan, tower.remat = True, remat
        # Always present, so that `--config.data.name=fake` alone also gets the pod shapes.
        c.data.fake = fake.fake_config(image_shape=image_shape, train_examples=fake_examples[0],
                                       eval_examples=fake_examples[1])
        if v.data == "fake":
            c.data.name = fake.NAME
        c.log_every_steps, c.checkpoint.every_steps, c.checkpoint.keep = 100, 2000, 3
        if v.size == "tiny":
            for tower in towers(c):
                tower.update(TINY_TOWER)
            c.batch_size, c.total_steps, c.log_every_steps = 16, 2, 1
            c.mesh.fsdp, c.sharding.fsdp_min_size = 2, 0  # shard every divisible leaf: FSDP for real at tiny size
            c.eval.batch_size, c.eval.every_steps = 16, 0
            c.checkpoint.every_steps = 100  # only the final save
            c.data.fake.train_examples, c.data.fake.eval_examples = 64, 32
            c.data.num_threads, c.data.prefetch_buffer_size = 1, 2
        if v.steps:
            c.total_steps = v.steps
    c.lock()
    return c
