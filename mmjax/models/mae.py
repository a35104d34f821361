"""Masked autoencoders over one modality's tokens: MAE, AudioMAE, Point-MAE,
and masked feature prediction against an EMA teacher (data2vec 2.0 style).

The encoder (a tower with a `keep_idx` argument) sees only the visible
tokens; a lightweight decoder puts mask tokens back at the hidden positions,
adds its own position embedding, and predicts every token's content: pixels
(MAE, He et al. 2022), log-mel values (AudioMAE, Huang et al. 2022), or the
K points of each group relative to its centre (Point-MAE, Pang et al. 2022,
scored with Chamfer-L2). The loss (objective "mae") is taken on the hidden
tokens only.

With target="features" (model kind "data2vec") the decoder instead predicts
the D-dim features that an EMA copy of the encoder (the teacher, see
mmjax.teacher) computes from the *unmasked* input; the model then returns no
"target" and the trainer fills it in from the teacher before the objective
("masked_feature") runs.

Masking randomness comes from the "masking" rng stream, which the trainer
derives from fold_in(seed, step), so a resumed run masks identically.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from mmjax.batch_keys import mask_key
from mmjax.models import masking
from mmjax.models.encoders import build_encoder
from mmjax.models.layers import Encoder, posemb_sincos_2d, to_dtype
from mmjax.models.patches import patches_of
from mmjax.models.registry import MODELS

TARGETS = ("pixels", "features")


class MaskedAutoencoder(nn.Module):
    modality: str
    # A tower config entry, e.g. {"encoder": "vit", "patch_size": 7, ...}: any encoder whose tokens are
    # patches of a grid (`patch_shape`: pixels, log-mel values) or groups of points (`group_shape`).
    encoder: Mapping[str, Any]
    mask_ratio: float = 0.75
    decoder_width: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    decoder_mlp_dim: int = 256
    target: str = "pixels"  # "pixels" (the input's patches / point groups) | "features" (an EMA teacher's)
    channels: int = 1  # image channels the pixel head predicts per patch position (3 for RGB)
    dtype: str = "float32"
    param_dtype: str = "float32"

    def setup(self):
        if self.target not in TARGETS:
            raise ValueError(f"unknown masked-model target {self.target!r}; valid: {list(TARGETS)}")
        self.tower = build_encoder(self.modality, self.encoder, self.dtype, self.param_dtype)
        self.patch, self.groups = self.tower.patch_shape, self.tower.group_shape
        if self.patch is None and self.groups is None:
            raise ValueError(f"masked autoencoding needs an encoder whose tokens are grid patches or point "
                             f"groups; model.encoder.encoder={self.encoder.get('encoder')!r} has neither")
        kw = dict(dtype=to_dtype(self.dtype), param_dtype=to_dtype(self.param_dtype))
        if self.groups:
            out_dim = self.groups[1] * 3  # K points of 3 coordinates
            # Point-MAE's decoder position embedding: an MLP on the group centres.
            self.decoder_pos = nn.Sequential([nn.Dense(128, **kw), nn.gelu, nn.Dense(self.decoder_width, **kw)],
                                             name="decoder_pos")
        else:
            out_dim = self.patch[0] * self.patch[1] * (self.tower.patch_channels or self.channels)
        if self.needs_teacher:
            out_dim = self.encoder["width"]  # the teacher's feature width
        self.decoder_embed = nn.Dense(self.decoder_width, **kw, name="decoder_embed")
        self.mask_token = self.param("mask_token", nn.initializers.normal(0.02), (self.decoder_width,),
                                     to_dtype(self.param_dtype))
        self.decoder = Encoder(self.decoder_depth, self.decoder_heads, self.decoder_mlp_dim, **kw, name="decoder")
        self.decoder_pred = nn.Dense(out_dim, **kw, name="decoder_pred")

    @property
    def needs_teacher(self) -> bool:
        """Whether the trainer must keep an EMA teacher (state["teacher"]) for this model."""
        return self.target == "features"

    @nn.nowrap  # plain Python on the unbound model, outside any apply
    def teacher_params(self, params):
        """The part of `params` the teacher mirrors: the encoder's (not the decoder's)."""
        return params[f"{self.modality}_encoder"]  # as build_encoder names the tower

    @nn.nowrap
    def teacher_encoder(self) -> nn.Module:
        """The teacher's forward, applied with teacher_params: the student's encoder as a
        standalone module, called on the whole unmasked input (batch[modality], its mask)."""
        return build_encoder(self.modality, self.encoder, self.dtype, self.param_dtype)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities `embed` accepts: the one this model reconstructs."""
        return (self.modality,)

    def embed(self, x, modality: str, mask=None):
        """Frozen-encoder features for probes: mean of all patch tokens (no masking)."""
        out = self.tower(x, mask)
        return out["pooled"].astype(jnp.float32), out["tokens"]

    def __call__(self, batch: Mapping[str, Any]):
        m = self.modality
        x, frame_mask = batch[m], batch.get(mask_key(m))
        b = x.shape[0]
        if self.groups:
            n = self.groups[0]
        else:
            target, grid = patches_of(x, self.patch)
            n = target.shape[1]
        info = masking.random_mask(self.make_rng("masking"), b, n, masking.num_keep_for(n, self.mask_ratio))
        out = self.tower(x, frame_mask, keep_idx=info.keep_idx)
        y = masking.unshuffle_with_mask_tokens(self.decoder_embed(out["tokens"]), self.mask_token, info.restore_idx)
        if self.groups:
            y = y + self.decoder_pos(out["centres"].astype(y.dtype))
        else:  # the decoder's own fixed 2-D sincos position embedding, as MAE's
            y = y + jnp.asarray(posemb_sincos_2d(*grid, self.decoder_width), y.dtype)[None]
        pred = self.decoder_pred(self.decoder(y))  # [B, N, P] (or [B, N, D] features)
        loss_mask = info.mask
        if frame_mask is not None:  # padding patches of short clips are not reconstructed
            loss_mask = loss_mask & self.tower.token_validity(x, frame_mask, n)
        present = batch.get("present", {}).get(m)
        if present is not None:
            loss_mask = loss_mask & present[:, None]
        if self.needs_teacher:  # the trainer adds "target" from the teacher
            return {"masked": {m: {"pred": pred, "mask": loss_mask}}}
        if self.groups:  # K points per group, relative to the group's centre, scored by Chamfer-L2
            target = out["neighbourhoods"].astype(jnp.float32)
            pred = pred.reshape(target.shape)
        return {"masked": {m: {"pred": pred, "target": target, "mask": loss_mask}}}


@MODELS.register("mae")
def build_mae(model_cfg, tokenizer=None, target: str = "pixels") -> MaskedAutoencoder:
    del tokenizer  # no text tower
    return MaskedAutoencoder(
        modality=model_cfg.modality, encoder=dict(model_cfg.encoder), mask_ratio=model_cfg.mask_ratio,
        decoder_width=model_cfg.decoder.width, decoder_depth=model_cfg.decoder.depth,
        decoder_heads=model_cfg.decoder.num_heads, decoder_mlp_dim=model_cfg.decoder.mlp_dim,
        target=target, channels=model_cfg.get("channels", 1), dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype)


@MODELS.register("data2vec")
def build_data2vec(model_cfg, tokenizer=None) -> MaskedAutoencoder:
    """Masked feature prediction: the MAE above regressing its EMA teacher's features."""
    return build_mae(model_cfg, tokenizer, target="features")
