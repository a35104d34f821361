"""What a modality is to the input pipeline: one class per modality owns all of it.

A `Modality` subclass declares
  name            the registry key, the batch key of its input and the `data.<name>` config block
  encoder         the encoder (mmjax.models ENCODERS name) a config's tower uses by default
  default_config  its `data.<name>` block (shapes, augmentation options)
and, bound to a run's `data` config, tokenizer and train/eval mode, it
  specs()         {batch key: (shape, dtype)} of one example's model inputs (placeholders,
                  sizing a model without data: tools/plan.py, the state layout)
  validate(v)     host-side check of a stored value before any shuffle; raises BadInput
  __call__(v, rng, flags)  decode + augment one stored value -> {batch key: array}; raises
                  BadInput on bad content (the pipeline names the example and field, or drops
                  and counts it with data.on_bad_input="drop")
  placeholder()   the inputs of an absent example (static shapes: the model sees a full batch)
  fake(rng, flags)  generated inputs of the right shapes (the `fake` dataset)
The validity mask of positions, where a modality has one, is the batch key `<name>_mask`
(mmjax.batch_keys.mask_key). Adding a modality = a module with a subclass registered in
`MODALITIES`, a config, and an encoder in mmjax.models if none fits.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from mmjax.data.transforms import BadInput
from mmjax.registry import Registry

MODALITIES = Registry("modality")
Inputs = dict[str, np.ndarray]


class Modality:
    name: ClassVar[str]
    encoder: ClassVar[str]

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """The `data.<name>` block: every option this modality reads, with its default."""
        return {}

    def __init__(self, data_cfg, tokenizer=None, *, train: bool = False):
        self.data_cfg = data_cfg
        self.cfg = data_cfg.get(self.name) if self.name in data_cfg else None
        self.tokenizer = tokenizer
        self.train = train
        self.augmenting = train and bool(data_cfg.get("augment", False))

    def specs(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        raise NotImplementedError

    def validate(self, value) -> Any:
        """The stored value, checked (and normalised, e.g. bytes -> str); BadInput if unusable."""
        return value

    def __call__(self, value, rng: np.random.Generator, flags: dict) -> Inputs:
        raise NotImplementedError

    def placeholder(self) -> Inputs:
        return {k: np.zeros(shape, dtype) for k, (shape, dtype) in self.specs().items()}

    def fake(self, rng: np.random.Generator, flags: dict) -> Inputs:
        raise NotImplementedError


def get_modality(name: str) -> type[Modality]:
    return MODALITIES.get(name, "data.modalities entry")


def expect_array(value, dtype=None, ndim: int | None = None) -> np.ndarray:
    """`value` as an array of `dtype` / rank `ndim`, or BadInput saying what it is instead."""
    if not isinstance(value, np.ndarray):
        raise BadInput(f"has type {type(value).__name__}, expected an array")
    if dtype is not None and value.dtype != dtype:
        raise BadInput(f"has dtype {value.dtype}, expected {np.dtype(dtype).name}")
    if ndim is not None and value.ndim != ndim:
        raise BadInput(f"has shape {value.shape}, expected {ndim} dimensions")
    return value
