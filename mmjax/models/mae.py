"""Masked autoencoders over one modality's tokens: MAE, AudioMAE, Point-MAE.

The encoder (a tower with a `keep_idx` argument) sees only the visible
tokens; a lightweight decoder puts mask tokens back at the hidden positions,
adds its own position embedding, and predicts every token's content: pixels
(MAE, He et al. 2022), log-mel values (AudioMAE, Huang et al. 2022), or the
K points of each group relative to its centre (Point-MAE, Pang et al. 2022,
scored with Chamfer-L2). The loss (objective "mae") is taken on the hidden
tokens only.

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
KINDS = (*PATCH_FIELDS, "points")


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
        if kind not in KINDS:
            raise ValueError(f"masked autoencoding needs one of the towers {list(KINDS)}; "
                             f"model.encoder.encoder={kind!r}")
        self.tower = build_encoder(self.modality, self.encoder, self.dtype, self.param_dtype)
        kw = dict(dtype=to_dtype(self.dtype), param_dtype=to_dtype(self.param_dtype))
        if kind == "points":
            out_dim = self.encoder["group_size"] * 3
            # Point-MAE's decoder position embedding: an MLP on the group centres.
            self.decoder_pos = nn.Sequential([nn.Dense(128, **kw), nn.gelu, nn.Dense(self.decoder_width, **kw)],
                                             name="decoder_pos")
        else:
            self.patch = tuple(self.encoder[f] for f in PATCH_FIELDS[kind])
            out_dim = self.patch[0] * self.patch[1] * self._channels()
        self.decoder_embed = nn.Dense(self.decoder_width, **kw, name="decoder_embed")
        self.mask_token = self.param("mask_token", nn.initializers.normal(0.02), (self.decoder_width,),
                                     to_dtype(self.param_dtype))
        self.decoder = Encoder(self.decoder_depth, self.decoder_heads, self.decoder_mlp_dim, **kw, name="decoder")
        self.decoder_pred = nn.Dense(out_dim, **kw, name="decoder_pred")

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
        points = self.encoder["encoder"] == "points"
        b = x.shape[0]
        if points:
            n = self.encoder["num_groups"]
        else:
            target, grid = self._patches(x)
            n = target.shape[1]
        info = masking.random_mask(self.make_rng("masking"), b, n, masking.num_keep_for(n, self.mask_ratio))
        out = self.tower(x, frame_mask, keep_idx=info.keep_idx)
        y = masking.unshuffle_with_mask_tokens(self.decoder_embed(out["tokens"]), self.mask_token, info.restore_idx)
        if points:
            y = y + self.decoder_pos(out["centres"].astype(y.dtype))
        else:  # the decoder's own fixed 2-D sincos position embedding, as MAE's
            y = y + jnp.asarray(posemb_sincos_2d(*grid, self.decoder_width), y.dtype)[None]
        pred = self.decoder_pred(self.decoder(y))  # [B, N, P]
        loss_mask = info.mask
        if frame_mask is not None:  # padding patches of short clips are not reconstructed
            valid = frame_mask.reshape(b, grid[0], -1).any(axis=-1)
            loss_mask = loss_mask & jnp.repeat(valid, grid[1], axis=1)
        present = batch.get("present", {}).get(m)
        if present is not None:
            loss_mask = loss_mask & present[:, None]
        if points:  # K points per group, relative to the group's centre, scored by Chamfer-L2
            target = out["neighbourhoods"].astype(jnp.float32)
            pred = pred.reshape(target.shape)
        return {"masked": {m: {"pred": pred, "target": target, "mask": loss_mask}}}


def build_mae(model_cfg, tokenizer=None) -> MaskedAutoencoder:
    del tokenizer  # no text tower
    return MaskedAutoencoder(
        modality=model_cfg.modality, encoder=dict(model_cfg.encoder), mask_ratio=model_cfg.mask_ratio,
        decoder_width=model_cfg.decoder.width, decoder_depth=model_cfg.decoder.depth,
        decoder_heads=model_cfg.decoder.num_heads, decoder_mlp_dim=model_cfg.decoder.mlp_dim,
        dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype)
