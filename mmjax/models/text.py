"""Text transformer tower (CLIP-style)."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models.encoders import ENCODERS, TokenEncoder
from mmjax.models.layers import AddPositionEmbedding, Dtype, Encoder


@ENCODERS.register("text")
class TextTransformer(TokenEncoder):
    """Token ids [B, L] -> {"pooled": [B, D], "tokens": [B, L, D]}.

    Every sequence holds one end-of-text token (id `eot_id`); it and the
    tokens before it are valid, the rest is padding, masked out as attention
    keys. The end is found by the eot id, not by a pad id, because CLIP's
    vocabulary pads with id 0, which is also a real token ("!").
    pool="eot" takes the eot token (under a causal mask the only one that has
    seen the whole caption, as in CLIP); pool="mean" averages the valid tokens.
    """

    vocab_size: int
    max_len: int = 77
    width: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_dim: int = 2048
    causal: bool = True
    pool: str = "eot"  # "eot" | "mean"
    eot_id: int = 2
    posemb: str = "learn"
    scan: bool = False
    remat: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    takes_tokenizer = True  # vocab_size and eot_id are the run's tokenizer's

    @nn.nowrap
    def first_eot(self, text):
        """int [B]: where each sequence's first eot is."""
        return jnp.argmax(text == self.eot_id, axis=1)

    @nn.nowrap
    def token_validity(self, text, mask, num_tokens: int):
        """bool [B, L]: the tokens up to and including the first eot, those the tower attends to."""
        del mask, num_tokens
        return jnp.arange(text.shape[1])[None, :] <= self.first_eot(text)[:, None]

    @nn.compact
    def __call__(self, text, mask=None):  # mask: unused, validity comes from the eot position
        del mask
        if text.ndim != 2 or text.shape[1] > self.max_len:
            raise ValueError(f"text must be [B, L<={self.max_len}] token ids, got shape {text.shape}")
        eot = self.first_eot(text)  # [B]
        valid = self.token_validity(text, None, text.shape[1])  # [B, L]
        x = nn.Embed(self.vocab_size, self.width, embedding_init=nn.initializers.normal(0.02),
                     dtype=self.dtype, param_dtype=self.param_dtype, name="token_embed")(text)
        x = AddPositionEmbedding(self.posemb, (text.shape[1],), self.param_dtype, name="posemb")(x)
        # [B, 1, L, L]: padding is masked as a key only (as in encode_and_pool), so every
        # query keeps a valid key; a row with none has no well-defined softmax.
        mask = nn.make_attention_mask(jnp.ones_like(valid), valid)
        if self.causal:
            mask = nn.combine_masks(mask, nn.make_causal_mask(text))
        x = Encoder(self.depth, self.num_heads, self.mlp_dim, self.scan, self.remat, self.dtype,
                    self.param_dtype, name="encoder")(x, mask)
        if self.pool == "eot":
            pooled = jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]
        elif self.pool == "mean":
            w = valid[..., None].astype(x.dtype)
            pooled = (x * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1.0)
        else:
            raise ValueError(f"unknown text pool {self.pool!r}; valid: 'eot', 'mean'")
        return {"pooled": pooled, "tokens": x}
