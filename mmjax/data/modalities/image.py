"""Images: uint8 [H, W, C] records or encoded bytes (JPEG / PNG / WebP / ...) -> float32 [H, W, C]
normalised with the configured per-channel mean / std; shift / random-resized-crop augmentation,
a ViT by default.

Two kinds of record:
  uint8 [H, W, C] arrays of exactly data.image.shape (the embedded digits): normalised, then in
      training a random resized crop back to the shape (bilinear) and a shift.
  encoded bytes (real corpora: TFDS image features, mmjax.ingest): decoded in the pipeline's
      workers (mmjax.data.decode). Training: a random resized crop of data.image.crop_scale of
      the ORIGINAL image resized to the shape (Pillow bicubic, one resampling; crop_scale (1, 1)
      resizes the whole image), then the shift; evaluation (or augment off): resize the shorter
      side to the shape and crop the centre (CLIP's eval). Undecodable bytes: BadInput.
"""
from __future__ import annotations

import numpy as np

from mmjax.data import decode
from mmjax.data.modalities.base import MODALITIES, Modality, expect_array
from mmjax.data.transforms import BadInput, random_resized_crop, random_resized_crop_box, random_shift


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
            # Per-channel normalisation in [0, 1] pixel units: (x / 255 - mean) / std; one value = every
            # channel. (0.5,) / (0.5,) maps [0, 255] to [-1, 1] (the digits). A CLIP recipe sets
            # mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711).
            "mean": (0.5,),
            "std": (0.5,),
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
        channels = self.shape[-1]
        mean, std = (np.asarray(self.cfg.get(k, (0.5,)), np.float64).reshape(-1) for k in ("mean", "std"))
        for key, v in (("mean", mean), ("std", std)):
            if v.size not in (1, channels) or not np.isfinite(v).all():
                raise ValueError(f"data.image.{key}={tuple(v.tolist())}: expected 1 or {channels} finite values "
                                 f"(data.image.shape={self.shape})")
        if (std <= 0).any():
            raise ValueError(f"data.image.std={tuple(std.tolist())}: expected > 0")
        # x / (255 std) - mean / std: for mean = std = 0.5 exactly x / 127.5 - 1 in float32 (the
        # digits' historical normalisation, bitwise).
        self._scale = np.broadcast_to(255.0 * std, (channels,)).astype(np.float32)
        self._offset = np.broadcast_to(mean / std, (channels,)).astype(np.float32)

    def specs(self):
        return {"image": (self.shape, np.float32)}

    def validate(self, value):
        if (data := decode.to_bytes(value)) is not None:  # decoded in __call__, in the workers
            if not data:
                raise BadInput("is empty (0 bytes), expected an encoded image")
            if self.shape[-1] not in (1, 3):
                raise BadInput(f"is an encoded image, which decodes to 1 or 3 channels, but data.image.shape="
                               f"{self.shape}")
            return data
        value = expect_array(value, np.uint8)
        if value.shape != self.shape:
            raise BadInput(f"has shape {value.shape}, expected {self.shape} (or encoded image bytes)")
        return value

    def _normalise(self, image: np.ndarray) -> np.ndarray:
        out = image.astype(np.float32)  # a copy: normalised in place (no temporaries)
        out /= self._scale
        out -= self._offset
        return out

    def __call__(self, value, rng, flags):
        if (data := decode.to_bytes(value)) is not None:
            return {"image": self._from_encoded(data, rng)}
        image = self._normalise(value)
        if self.augmenting and self.crop_scale != (1.0, 1.0):
            image = random_resized_crop(image, rng, self.crop_scale)
        if self.augmenting and self.cfg.max_shift:
            image = random_shift(image, rng, self.cfg.max_shift, background=-self._offset)  # black
        return {"image": image}

    def _from_encoded(self, data: bytes, rng) -> np.ndarray:
        out_h, out_w, channels = self.shape
        image = decode.decode_image(data, channels)
        if not self.augmenting:
            image = decode.resize_shorter_center_crop(image, out_h, out_w)
        else:
            h, w = image.shape[:2]
            box = None if self.crop_scale == (1.0, 1.0) else random_resized_crop_box(h, w, rng, self.crop_scale)
            image = decode.resize(image, box, out_h, out_w)
            if self.cfg.max_shift:
                image = random_shift(image, rng, self.cfg.max_shift, background=0)
        return self._normalise(image)

    def fake(self, rng, flags, class_names=()):
        return {"image": rng.uniform(-1.0, 1.0, self.shape).astype(np.float32)}
