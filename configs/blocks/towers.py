"""Transformer sizes and the encoder (tower) blocks built from them.

A tower block is the dict mmjax.models reads for one encoder: `encoder` names the registered
encoder, the rest are its fields. Sizes are (width, depth, num_heads, mlp_dim); a recipe picks
one and adds the input side (patches, groups, pooling, positions).
"""
from __future__ import annotations

# The embedded-data recipes on a 2-core CPU, by variant name (`model=tiny|small|base`).
CPU = {
    "tiny": dict(width=32, depth=1, num_heads=2, mlp_dim=64),  # tests: seconds
    "small": dict(width=128, depth=3, num_heads=4, mlp_dim=256),  # a few minutes of training
    "base": dict(width=256, depth=6, num_heads=8, mlp_dim=1024),
}
# The pod recipes' `size=tiny`: the same code paths (scan, remat, FSDP) in seconds on a CPU;
# depth 2, so that the layer scan has more than one layer to scan.
POD_TINY = dict(width=32, depth=2, num_heads=2, mlp_dim=64)
# ViT-B (Dosovitskiy et al. 2021): MAE's, CLIP's and AudioMAE's encoder.
VIT_B = dict(width=768, depth=12, num_heads=12, mlp_dim=3072)


def _tower(encoder: str, size: dict, scan: bool, remat: str, **fields) -> dict:
    """scan: one compiled block scanned over the layers; remat: "none" | "full" | a policy name."""
    return dict(encoder=encoder, **size, scan=scan, remat=remat, **fields)


def vit(size: dict, *, patch_size: int, pool: str = "mean", posemb: str = "learn", scan: bool = False,
        remat: str = "none") -> dict:
    """Image ViT: patch_size x patch_size patches; pool "mean" | "tok" ([CLS]); posemb "learn" | "sincos"."""
    return _tower("vit", size, scan, remat, patch_size=patch_size, pool=pool, posemb=posemb)


def text(size: dict, *, max_len, pool: str = "eot", causal: bool = True, posemb: str = "learn", scan: bool = False,
         remat: str = "none") -> dict:
    """Text transformer; vocab_size and eot_id come from the tokenizer (config.data.text). Pass
    max_len as `c.data.text.get_ref("max_len")`, so the context follows the tokenizer's length."""
    return _tower("text", size, scan, remat, max_len=max_len, pool=pool, causal=causal, posemb=posemb)


def audio(size: dict, *, patch_time: int, patch_freq: int, pool: str = "mean", posemb: str = "factorized",
          scan: bool = False, remat: str = "none") -> dict:
    """Spectrogram transformer over patch_time x patch_freq patches of the log-mel frames."""
    return _tower("audio", size, scan, remat, patch_time=patch_time, patch_freq=patch_freq, pool=pool, posemb=posemb)


def points(size: dict, *, num_groups: int, group_size: int, pointnet_dim: int, pool: str = "mean",
           scan: bool = False, remat: str = "none") -> dict:
    """Point transformer: num_groups groups (farthest point sampling) of group_size neighbours (kNN),
    each embedded by a mini-PointNet of pointnet_dim."""
    return _tower("points", size, scan, remat, num_groups=num_groups, group_size=group_size,
                  pointnet_dim=pointnet_dim, pool=pool)


def decoder(width: int, depth: int = 1, num_heads: int = 2, mlp_dim: int | None = None) -> dict:
    """A masked model's decoder (MLP 2 x width unless given)."""
    return dict(width=width, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim or 2 * width)
