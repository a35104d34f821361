"""The pod layout the paper-scale recipes (configs/pod/) share, and their `data`/`size` variants.

Variants (`configs/pod/<name>.py:data=fake,size=tiny`):
  data   real (default): the paper's dataset, prepared as TFDS ArrayRecord under
         data.data_dir ($MMJAX_DATA_DIR; `--config.data.tfds.dir=` for any other folder),
         read by Grain worker processes | fake: the `fake` dataset at the same shapes
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

A recipe reads: `v = pod.parse(arg)`, then `pod.run`, `pod.data`, towers sized by
`pod.tower_size` with `scan=True` (decoders: `pod.decoder`), a model at `pod.DTYPE`, and `pod.eval_schedule`; each
states its paper's numbers and, under `if v.size == "tiny"`, how it shrinks its inputs.
"""
from __future__ import annotations

import ml_collections

from configs.blocks import evals, towers, trainer
from mmjax.config_utils import parse_variant
from mmjax.data.config import data_config

VARIANT = {"data": "real", "size": "full", "steps": 0}
CHOICES = {"data": ("real", "fake"), "size": ("full", "tiny")}
DTYPE = "bfloat16"  # compute; params stay float32
# size=tiny: batch, steps, mesh.fsdp; fake examples (train, eval) at full size and tiny.
TINY_BATCH, TINY_STEPS, TINY_FSDP = 16, 2, 2
FAKE_EXAMPLES, TINY_FAKE_EXAMPLES = (8192, 1024), (64, 32)


def parse(arg: str | None) -> ml_collections.ConfigDict:
    return parse_variant(arg, VARIANT, choices=CHOICES)


def steps(epochs: float, examples: int, batch_size: int) -> int:
    """Optimiser steps of `epochs` passes over `examples` at `batch_size` (rounded down)."""
    return int(epochs * examples) // batch_size


def run(v: ml_collections.ConfigDict, *, total_steps: int, batch_size: int, fsdp: int,
        accumulation: str = "gradcache") -> ml_collections.ConfigDict:
    """trainer.run on the pod mesh (data x fsdp), logging every 100 steps, checkpoints every 2000.
    size=tiny: batch 16, 2 steps, fsdp 2 with every divisible leaf sharded (FSDP for real at tiny
    size), every step logged, only the final save. v.steps overrides either schedule."""
    tiny = v.size == "tiny"
    return trainer.run(total_steps=v.steps or (TINY_STEPS if tiny else total_steps),
                       batch_size=TINY_BATCH if tiny else batch_size,
                       log_every_steps=1 if tiny else 100, checkpoint_every_steps=100 if tiny else 2000,
                       accumulation=accumulation, fsdp=TINY_FSDP if tiny else fsdp,
                       fsdp_min_size=0 if tiny else 2**18)


def tower_size(v: ml_collections.ConfigDict, size: dict) -> dict:
    """`size` (width, depth, heads, MLP), or towers.POD_TINY at size=tiny."""
    return towers.POD_TINY if v.size == "tiny" else size


def decoder(v: ml_collections.ConfigDict, full: dict) -> dict:
    """A masked model's decoder `full`, or a 1-block width-32 one at size=tiny."""
    return towers.decoder(width=32) if v.size == "tiny" else full


def data(v: ml_collections.ConfigDict, name: str, modalities: tuple[str, ...], *,
         image_shape=(224, 224, 3), label_field: str = "label", tfds_fields: dict | None = None,
         **fields) -> ml_collections.ConfigDict:
    """data_config of the prepared TFDS dataset `name` under data.data_dir (data=fake: the `fake`
    dataset, same splits and shapes).

    data=real reads `name` with the `tfds` dataset (mmjax.data.datasets.tfds_dataset): a TFDS
    build (`tfds build imagenet2012 --file_format=array_record --data_dir=$DATA`) or mmjax's
    converter's output (`python -m mmjax.ingest webdataset ... --out $DATA/laion400m/1.0.0`), with
    one worker process per CPU core but one decoding (data.num_workers=-1). label_field: the class
    label feature ("" for unlabelled corpora); tfds_fields: {modality: stored feature} where the
    names differ. image_shape: data.image.shape, which fake images take too."""
    tiny = v.size == "tiny"
    c = data_config("tfds" if v.data == "real" else "fake", modalities, **fields)
    c.tfds.update(name=name, label_field=label_field, fields=dict(tfds_fields or {}))
    if v.data == "real":
        c.num_workers = -1
    c.image.shape = tuple(image_shape)
    # Always set, so that `--config.data.name=fake` alone also gets the pod's split sizes.
    c.fake.train_examples, c.fake.eval_examples = TINY_FAKE_EXAMPLES if tiny else FAKE_EXAMPLES
    if tiny:
        c.num_threads, c.prefetch_buffer_size = 1, 2
    return c


def eval_schedule(v: ml_collections.ConfigDict, *, every_steps: int, batch_size: int) -> ml_collections.ConfigDict:
    """The eval schedule at full size; size=tiny: batch 16, the final evaluation only."""
    tiny = v.size == "tiny"
    return evals.schedule(every_steps=0 if tiny else every_steps, batch_size=TINY_BATCH if tiny else batch_size)
