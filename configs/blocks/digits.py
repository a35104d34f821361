"""The embedded datasets' contrastive blocks at CPU sizes: digits with captions and AV-digits.

AV-digits pairs each MNIST digit with a spoken digit (FSDD), a point cloud of its strokes and a
caption. The sizes fit a 2-core CPU; at `small`, fwd+bwd at B=128 measured 0.08 s image, 0.12 s
audio, 0.08 s text (16 BPE tokens), 0.18 s points (128 points, 16 groups of 16).
"""
from __future__ import annotations

import ml_collections

from configs.blocks import towers
from mmjax.data.config import data_config

# Digits with captions, per `model=` variant: image patch size (28x28 digits), embedding width,
# default train steps (the transformer sizes are towers.CPU).
SIZES = {
    "tiny": dict(patch=7, embed=32, steps=20),
    "small": dict(patch=7, embed=128, steps=600),  # ~5 min on a 2-core CPU
    "base": dict(patch=4, embed=256, steps=3000),
}
# AV-digits, per `model=` variant: embedding width, default train steps, global batch, points
# per cloud and its groups x neighbours.
AV_SIZES = {
    "tiny": dict(embed=32, steps=10, batch=32, points=64, groups=8, k=8),
    "small": dict(embed=128, steps=800, batch=128, points=128, groups=16, k=16),
}


def av_data(model: str, modalities: tuple[str, ...]) -> ml_collections.ConfigDict:
    """`config.data` of AV-digits at the `model` size."""
    c = data_config("av_digits", modalities)
    # BPE learnt on the captions: every caption is <= 8 tokens, so 16 holds it at half the cost of 32 bytes.
    c.text.tokenizer, c.text.max_len = "bpe", 16
    c.points.num_points = AV_SIZES[model]["points"]
    return c


def tower_blocks(model: str, data_cfg: ml_collections.ConfigDict, modalities: tuple[str, ...]) -> dict:
    """{modality: tower} for `modalities` at the `model` size; the text context follows
    data_cfg.text.max_len (a field reference, so `--config.data.text.max_len` moves both)."""
    tower = towers.CPU[model]
    out = {}
    for m in modalities:
        if m == "image":
            out[m] = towers.vit(tower, patch_size=SIZES[model]["patch"])
        elif m == "text":
            out[m] = towers.text(tower, max_len=data_cfg.text.get_ref("max_len"))
        elif m == "audio":  # 96 frames x 64 mels in 16x16 patches: 6 x 4 = 24 tokens
            out[m] = towers.audio(tower, patch_time=16, patch_freq=16)
        elif m == "points":  # pointnet_dim 32: the per-point MLP runs on B*G*K points and dominates the CPU cost
            out[m] = towers.points(tower, num_groups=AV_SIZES[model]["groups"], group_size=AV_SIZES[model]["k"],
                                   pointnet_dim=32)
        else:
            raise ValueError(f"digits.tower_blocks: no CPU tower for {m!r}; valid: image, text, audio, points")
    return out
