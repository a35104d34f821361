"""Masked autoencoder (He et al., 2022) over one modality's patch tokens.

The encoder (any tower with a `keep_idx` argument: ViT, audio) sees only the
visible patches; a lightweight decoder puts mask tokens back at the hidden
positions, adds its own position embedding, and predicts every patch's
pixels (or log-mel values: AudioMAE). The loss (mmjax.objectives.masked,
objective "mae") is taken on the hidden patches only.

Masking randomness comes from the "masking" rng stream, which the trainer
derives from fold_in(seed, step), so a resumed run masks identically.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models.layers import Encoder, posemb_sincos_2d
from mmjax.models.towers import build_encoder, to_dtype
from mmjax.objectives import masked, masking

PATCH_FIELDS = {"vit": ("patch_size", "patch_size"), "audio": ("patch_time", "patch_freq")}


class MaskedAutoencoder(nn.Module):
    modality: str
    encoder: Mapping[str, Any]  # tower config entry, e.g. {"encoder": "vit", "patch_size": 7, ...}
    mask_ratio: float = 0.75
    decoder_width: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    decoder_mlp_dim: int = 256
    dtype: str = "float32"
    param_dtype: str = "float32"

    def setup(self):
        kind = self.encoder.get("encoder")
        if kind not in PATCH_FIELDS:
            raise ValueError(f"MAE needs a patch tower; model.encoder.encoder={kind!r}; valid: {sorted(PATCH_FIELDS)}")
        self.patch = tuple(self.encoder[f] for f in PATCH_FIELDS[kind])
        self.tower = build_encoder(self.modality, self.encoder, self.dtype, self.param_dtype)
        kw = dict(dtype=to_dtype(self.dtype), param_dtype=to_dtype(self.param_dtype))
        self.decoder_embed = nn.Dense(self.decoder_width, **kw, name="decoder_embed")
        self.mask_token = self.param("mask_token", nn.initializers.normal(0.02), (self.decoder_width,),
                                     to_dtype(self.param_dtype))
        self.decoder = Encoder(self.decoder_depth, self.decoder_heads, self.decoder_mlp_dim, **kw, name="decoder")
        self.decoder_pred = nn.Dense(self.patch[0] * self.patch[1] * self._channels(), **kw, name="decoder_pred")

    def _channels(self) -> int:
        return 1 if self.encoder["encoder"] == "audio" else self.encoder.get("channels", 1)

    def _patches(self, x):
        """The reconstruction target [B, N, P] and the patch grid."""
        if x.ndim == 3:  # spectrogram [B, T, F]
            x = x[..., None]
        grid = (x.shape[1] // self.patch[0], x.shape[2] // self.patch[1])
        return masked.patchify(x.astype(jnp.float32), self.patch), grid

    def embed(self, x, modality: str, mask=None):
        """Frozen-encoder features for probes: mean of all patch tokens (no masking)."""
        out = self.tower(x, mask)
        return out["pooled"].astype(jnp.float32), out["tokens"]

    def __call__(self, batch: Mapping[str, Any]):
        m = self.modality
        x, frame_mask = batch[m], batch.get(f"{m}_mask")
        target, grid = self._patches(x)
        b, n = target.shape[:2]
        info = masking.random_mask(self.make_rng("masking"), b, n, masking.num_keep_for(n, self.mask_ratio))
        visible = self.tower(x, frame_mask, keep_idx=info.keep_idx)["tokens"]  # [B, K, D]
        y = masking.unshuffle_with_mask_tokens(self.decoder_embed(visible), self.mask_token, info.restore_idx)
        # The decoder's own fixed 2-D sincos position embedding (as MAE's decoder).
        y = y + jnp.asarray(posemb_sincos_2d(*grid, self.decoder_width), y.dtype)[None]
        pred = self.decoder_pred(self.decoder(y))  # [B, N, P]
        loss_mask = info.mask
        if frame_mask is not None:  # padding patches of short clips are not reconstructed
            valid = frame_mask.reshape(b, grid[0], -1).any(axis=-1)
            loss_mask = loss_mask & jnp.repeat(valid, grid[1], axis=1)
        present = batch.get("present", {}).get(m)
        if present is not None:
            loss_mask = loss_mask & present[:, None]
        return {"masked": {m: {"pred": pred, "target": target, "mask": loss_mask}}}


def build_mae(model_cfg, tokenizer=None) -> MaskedAutoencoder:
    del tokenizer  # no text tower
    return MaskedAutoencoder(
        modality=model_cfg.modality, encoder=dict(model_cfg.encoder), mask_ratio=model_cfg.mask_ratio,
        decoder_width=model_cfg.decoder.width, decoder_depth=model_cfg.decoder.depth,
        decoder_heads=model_cfg.decoder.num_heads, decoder_mlp_dim=model_cfg.decoder.mlp_dim,
        dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype)
