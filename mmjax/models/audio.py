"""Audio Spectrogram Transformer tower (AST, Gong et al., 2021; AudioMAE, Huang et al., 2022)."""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mmjax.models.encoders import ENCODERS, TokenEncoder
from mmjax.models.layers import AddPositionEmbedding, Dtype, encode_and_pool
from mmjax.models.patches import patch_validity


@ENCODERS.register("audio")
class AudioTransformer(TokenEncoder):
    """Log-mel [B, T, F] (+ valid frames [B, T]) -> {"pooled": [B, D], "tokens": [B, N, D]}.

    The spectrogram is cut into non-overlapping (patch_time, patch_freq)
    patches, N = T/patch_time * F/patch_freq, ordered time-major (token
    t * F/patch_freq + f). Positions are either "factorized" (a learned time
    table [Tp, D] plus a learned frequency table [Fp, D], AudioMAE's "separate"
    embedding: Tp + Fp vectors to learn instead of Tp * Fp, and every patch of
    a time step shares its time vector) or fixed 2-D "sincos". Learned tables
    are sized by the input: a model initialised on T frames applies to T
    frames only, which the pipeline guarantees by padding or cropping.

    `mask` marks valid (non-padding) frames. Invalid frames are zeroed before
    patching, so a patch straddling the end of a clip does not see what the
    padding holds; patches with no valid frame are masked out as attention
    keys and left out of the mean pool. The output therefore depends only on
    the valid frames. pool="tok" prepends a learned class token (dropped from
    "tokens") and pools it.
    """

    patch_time: int = 16
    patch_freq: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    posemb: str = "factorized"  # "factorized" | "sincos"
    pool: str = "mean"  # "mean" | "tok"
    scan: bool = False
    remat: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def patch_shape(self) -> tuple[int, int]:
        return (self.patch_time, self.patch_freq)

    @property
    def patch_channels(self) -> int:
        return 1  # a log-mel has one value per (frame, band)

    @nn.nowrap
    def token_validity(self, spec, mask, num_tokens: int):
        """bool [B, N]: patches with at least one valid frame of `mask`, time-major; all without one."""
        if mask is None:
            return super().token_validity(spec, mask, num_tokens)
        time_patches = mask.shape[1] // self.patch_time
        return patch_validity(mask, (time_patches, num_tokens // time_patches))

    @nn.compact
    def __call__(self, spec, mask=None, keep_idx=None):  # spec: [B, T, F]; mask: [B, T] bool or None
        """keep_idx: optional [B, K] patch indices (time-major) to encode (masked modelling)."""
        if spec.ndim != 3:
            raise ValueError(f"spectrogram must be [B, T, F], got shape {spec.shape}")
        b, t, f = spec.shape
        pt, pf = self.patch_time, self.patch_freq
        if t % pt or f % pf:
            raise ValueError(f"spectrogram of {t} frames x {f} bands is not divisible by the "
                             f"({pt}, {pf}) patch; pad or crop the frames, or change the patch")
        if mask is not None and mask.shape != (b, t):
            raise ValueError(f"mask must be [B, T] = {(b, t)}, got shape {mask.shape}")
        grid = (t // pt, f // pf)
        x = spec.astype(self.dtype)
        if mask is not None:
            x = jnp.where(mask[..., None], x, 0)
        x = nn.Conv(self.width, (pt, pf), strides=(pt, pf), padding="VALID", dtype=self.dtype,
                    param_dtype=self.param_dtype, name="patch_embed")(x[..., None])  # [B, Tp, Fp, D]
        x = self._add_posemb(x)
        x = x.reshape(b, grid[0] * grid[1], self.width)

        # A patch is valid if any of its frames is; every frequency row of a
        # time step shares that validity.
        valid = None if mask is None else self.token_validity(spec, mask, grid[0] * grid[1])  # [B, N]
        return encode_and_pool(self, x, valid, keep_idx=keep_idx)

    def _add_posemb(self, x):  # x: [B, Tp, Fp, D]
        _, tp, fp, d = x.shape
        if self.posemb == "factorized":
            init = nn.initializers.normal(stddev=0.02)
            time = self.param("posemb_time", init, (tp, 1, d), self.param_dtype)
            freq = self.param("posemb_freq", init, (1, fp, d), self.param_dtype)
            return x + (time + freq).astype(x.dtype)[None]
        if self.posemb == "sincos":
            flat = AddPositionEmbedding("sincos", (tp, fp), self.param_dtype, name="posemb")(x.reshape(-1, tp * fp, d))
            return flat.reshape(x.shape)
        raise ValueError(f"unknown audio posemb {self.posemb!r}; valid: 'factorized', 'sincos'")
