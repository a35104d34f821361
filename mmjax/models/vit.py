"""Vision Transformer image tower (Dosovitskiy et al., 2021)."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models.encoders import ENCODERS, TokenEncoder
from mmjax.models.layers import AddPositionEmbedding, Dtype, encode_and_pool


@ENCODERS.register("vit")
class ViT(TokenEncoder):
    """Image [B, H, W, C] -> {"pooled": [B, D], "tokens": [B, N, D]}.

    pool="mean" (global average) or "max" pools the patch tokens; pool="tok"
    prepends a learned class token and pools it (it is then dropped from
    "tokens", which are always the H/p * W/p patch tokens).
    """

    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    posemb: str = "learn"  # "learn" | "sincos"
    pool: str = "mean"  # "mean" | "max" | "tok"
    scan: bool = False
    remat: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def patch_shape(self) -> tuple[int, int]:
        return (self.patch_size, self.patch_size)

    @nn.compact
    def __call__(self, image, mask=None, keep_idx=None, token_mask=None):  # mask: unused, every patch is valid
        """keep_idx: optional [B, K] patch indices to encode (MAE-style masked modelling).

        token_mask: optional bool [B, N], True where a patch's embedding is
        replaced by a learned mask token before the position embedding, so
        every token still goes through the encoder (SimMIM, data2vec). The
        "mask_token" param exists only in models that pass token_mask.
        """
        del mask
        b, h, w, _ = image.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {(h, w)} is not divisible by patch size {p}")
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                    param_dtype=self.param_dtype, name="patch_embed")(image.astype(self.dtype))
        grid = (h // p, w // p)
        x = x.reshape(b, grid[0] * grid[1], self.width)
        if token_mask is not None:
            token = self.param("mask_token", nn.initializers.normal(0.02), (self.width,), self.param_dtype)
            x = jnp.where(token_mask[..., None], token.astype(x.dtype), x)
        x = AddPositionEmbedding(self.posemb, grid, self.param_dtype, name="posemb")(x)
        return encode_and_pool(self, x, keep_idx=keep_idx)
