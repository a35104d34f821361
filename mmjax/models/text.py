"""Text transformer tower (CLIP-style)."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models.layers import AddPositionEmbedding, Dtype, Encoder


class TextTransformer(nn.Module):
    """Token ids [B, L] -> {"pooled": [B, D], "tokens": [B, L, D]}.

    Padding (id `pad_id`) is right-aligned and masked out as attention keys.
    pool="eot" takes the last non-pad token (the end-of-text token, which under
    a causal mask is the only one that has seen the whole caption, as in CLIP);
    pool="mean" averages the non-pad tokens.
    """

    vocab_size: int
    max_len: int = 77
    width: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_dim: int = 2048
    causal: bool = True
    pool: str = "eot"  # "eot" | "mean"
    pad_id: int = 0
    posemb: str = "learn"
    scan: bool = False
    remat: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, text):
        if text.ndim != 2 or text.shape[1] > self.max_len:
            raise ValueError(f"text must be [B, L<={self.max_len}] token ids, got shape {text.shape}")
        valid = text != self.pad_id  # [B, L]
        x = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                     dtype=self.dtype, param_dtype=self.param_dtype, name="token_embed")(text)
        x = AddPositionEmbedding(self.posemb, (text.shape[1],), self.param_dtype, name="posemb")(x)
        mask = nn.make_attention_mask(valid, valid)  # [B, 1, L, L]
        if self.causal:
            mask = nn.combine_masks(mask, nn.make_causal_mask(text))
        x = Encoder(self.depth, self.num_heads, self.mlp_dim, self.scan, self.remat, self.dtype,
                    self.param_dtype, name="encoder")(x, mask)
        if self.pool == "eot":
            last = jnp.maximum(valid.sum(axis=1) - 1, 0)  # [B]
            pooled = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
        elif self.pool == "mean":
            w = valid[..., None].astype(x.dtype)
            pooled = (x * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1.0)
        else:
            raise ValueError(f"unknown text pool {self.pool!r}; valid: 'eot', 'mean'")
        return {"pooled": pooled, "tokens": x}
