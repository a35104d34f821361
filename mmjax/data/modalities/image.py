"""Images: uint8 [H, W, C] records -> float32 [H, W, C] in [-1, 1], shift / random-resized-crop
augmentation, a ViT by default."""
from __future__ import annotations

import numpy as np

from mmjax.data.modalities.base import MODALITIES, Modality, expect_array
from mmjax.data.transforms import BadInput, random_resized_crop, random_shift


@MODALITIES.register("image")
class Image(Modality):
    name = "image"
    encoder = "vit"

    @classmethod
    def default_config(cls):
        return {
            "shape": (28, 28, 1),  # [H, W, C] the model sees; records must have it
            "max_shift": 2,  # pixels of random translation; digits fill a centred 20x20 box, so 2 rarely clips
            # Random resized crop of an area fraction in crop_scale, before the shift; (1, 1) = off.
            "crop_scale": (1.0, 1.0),
        }

    def __init__(self, data_cfg, tokenizer=None, *, train: bool = False):
        super().__init__(data_cfg, tokenizer, train=train)
        self.shape = tuple(int(d) for d in self.cfg.shape)
        self.crop_scale = tuple(float(x) for x in self.cfg.crop_scale)
        if len(self.crop_scale) != 2 or not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ValueError(f"data.image.crop_scale={tuple(self.cfg.crop_scale)}: expected (min, max) with "
                             f"0 < min <= max <= 1")
        if self.cfg.max_shift < 0:
            raise ValueError(f"data.image.max_shift={self.cfg.max_shift}: expected >= 0")

    def specs(self):
        return {"image": (self.shape, np.float32)}

    def validate(self, value):
        value = expect_array(value, np.uint8)
        if value.shape != self.shape:
            raise BadInput(f"has shape {value.shape}, expected {self.shape}")
        return value

    def __call__(self, value, rng, flags):
        image = value.astype(np.float32) / 127.5 - 1.0
        if self.augmenting and self.crop_scale != (1.0, 1.0):
            image = random_resized_crop(image, rng, self.crop_scale)
        if self.augmenting and self.cfg.max_shift:
            image = random_shift(image, rng, self.cfg.max_shift, background=-1.0)
        return {"image": image}

    def fake(self, rng, flags, class_names=()):
        return {"image": rng.uniform(-1.0, 1.0, self.shape).astype(np.float32)}
