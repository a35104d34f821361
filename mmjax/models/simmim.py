"""SimMIM (Xie et al. 2022): masked image modelling with the mask token inside the encoder.

Unlike MAE, every patch goes through the encoder: the embeddings of the
masked patches are replaced by one learned mask token (before the position
embedding, so the encoder still knows where each hidden patch is), and a
linear head on each output token predicts that patch's raw pixels (SimMIM's
1x1 conv + pixel shuffle is exactly this per-token linear map). The loss
(objective "simmim", `masked.simmim_loss`) is L1 on the masked pixels only.
SimMIM masks large aligned cells (32 px over 4 px patches); here
masking="random" | "block" | "cell" picks the generator (masking.sample_mask).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models import masking
from mmjax.models.encoders import build_encoder
from mmjax.models.layers import to_dtype
from mmjax.models.patches import mask_to_pixels, unpatchify
from mmjax.models.registry import MODELS


class SimMIM(nn.Module):
    modality: str
    encoder: Mapping[str, Any]  # a "vit" tower config entry
    mask_ratio: float = 0.6
    masking: str = "block"
    mask_cell: tuple[int, int] = (1, 1)  # tokens per cell for masking="cell"
    channels: int = 1
    dtype: str = "float32"
    param_dtype: str = "float32"

    def setup(self):
        if self.encoder.get("encoder") != "vit":
            raise ValueError(f"SimMIM needs the 'vit' tower (it replaces patch embeddings by a mask token); "
                             f"model.encoder.encoder={self.encoder.get('encoder')!r}")
        self.tower = build_encoder(self.modality, self.encoder, self.dtype, self.param_dtype)
        self.patch = self.tower.patch_shape
        self.head = nn.Dense(self.patch[0] * self.patch[1] * self.channels, dtype=to_dtype(self.dtype),
                             param_dtype=to_dtype(self.param_dtype), name="head")

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities `embed` accepts: the one this model reconstructs."""
        return (self.modality,)

    def embed(self, x, modality: str, mask=None):
        """Frozen-encoder features for probes: the pooled tokens of the unmasked image."""
        out = self.tower(x, mask)
        return out["pooled"].astype(jnp.float32), out["tokens"]

    def __call__(self, batch: Mapping[str, Any]):
        m = self.modality
        x = batch[m]  # [B, H, W, C]
        b, h, w, c = x.shape
        if c != self.channels:
            raise ValueError(f"SimMIM built for {self.channels} channel(s), got images {x.shape}")
        grid = (h // self.patch[0], w // self.patch[1])
        num_keep = masking.num_keep_for(grid[0] * grid[1], self.mask_ratio)
        info = masking.sample_mask(self.make_rng("masking"), self.masking, b, grid, num_keep, self.mask_cell)
        tokens = self.tower(x, token_mask=info.mask)["tokens"]  # [B, N, D], every token
        pred = unpatchify(self.head(tokens).astype(jnp.float32), self.patch, grid)  # [B, H, W, C]
        token_mask = info.mask
        present = batch.get("present", {}).get(m)
        if present is not None:
            token_mask = token_mask & present[:, None]
        return {"masked": {m: {"pred": pred, "target": x.astype(jnp.float32),
                               "mask": mask_to_pixels(token_mask, grid, self.patch)}}}


@MODELS.register("simmim")
def build_simmim(model_cfg, tokenizer=None) -> SimMIM:
    del tokenizer  # no text tower
    return SimMIM(modality=model_cfg.modality, encoder=dict(model_cfg.encoder), mask_ratio=model_cfg.mask_ratio,
                  masking=model_cfg.masking, mask_cell=tuple(model_cfg.mask_cell),
                  channels=model_cfg.get("channels", 1), dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype)
