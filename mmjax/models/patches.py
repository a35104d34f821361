"""Patches of grid inputs (images [B, H, W, C], log-mel spectrograms [B, T, F]).

Beside the models that cut their inputs into patches (MAE, SimMIM, MultiMAE, the audio
tower): the losses take what these return, already patchified.

  patchify / unpatchify        images [B, H, W, C] <-> patches [B, N, ph*pw*C]
  patchify_spectrogram / ...   log-mel [B, T, F]   <-> patches [B, N, pt*pf]
  patches_of                   either of the two    ->  (patches float32, grid)
  patch_validity               valid frames [B, T]  ->  valid spectrogram patches [B, N]
  mask_to_pixels               token mask [B, N]    ->  pixel mask [B, H, W]

Patch order is the towers' token order: raster for images, time-major (t * F/pf + f) for
spectrograms.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _pair(p: int | tuple[int, int]) -> tuple[int, int]:
    return (p, p) if isinstance(p, int) else tuple(p)


def patchify(images: jax.Array, patch: int | tuple[int, int]) -> jax.Array:
    """[B, H, W, C] -> [B, (H/ph)*(W/pw), ph*pw*C].

    Patches in raster order (the ViT's token order); each patch flattened as
    (row, column, channel), MAE's 'nhwpqc' layout.
    """
    b, h, w, c = images.shape
    ph, pw = _pair(patch)
    if h % ph or w % pw:
        raise ValueError(f"image size {(h, w)} is not divisible by patch {(ph, pw)}")
    x = images.reshape(b, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // ph) * (w // pw), ph * pw * c)


def unpatchify(patches: jax.Array, patch: int | tuple[int, int], grid: tuple[int, int]) -> jax.Array:
    """Inverse of `patchify`: [B, gh*gw, ph*pw*C] -> [B, gh*ph, gw*pw, C]."""
    b, n, dim = patches.shape
    (ph, pw), (gh, gw) = _pair(patch), grid
    if n != gh * gw or dim % (ph * pw):
        raise ValueError(f"patches {patches.shape} do not fit grid {grid} of {(ph, pw)} patches")
    c = dim // (ph * pw)
    x = patches.reshape(b, gh, gw, ph, pw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * ph, gw * pw, c)


def patchify_spectrogram(spec: jax.Array, patch: tuple[int, int]) -> jax.Array:
    """[B, T, F] -> [B, (T/pt)*(F/pf), pt*pf], time-major like the audio tower."""
    return patchify(spec[..., None], patch)


def unpatchify_spectrogram(patches: jax.Array, patch: tuple[int, int], grid: tuple[int, int]) -> jax.Array:
    """Inverse of `patchify_spectrogram`: -> [B, T, F]."""
    return unpatchify(patches, patch, grid)[..., 0]


def patches_of(x: jax.Array, patch: tuple[int, int]) -> tuple[jax.Array, tuple[int, int]]:
    """An image [B, H, W, C] or spectrogram [B, T, F] as patches [B, N, P] (float32) and its grid."""
    if x.ndim == 3:  # spectrogram: one channel
        x = x[..., None]
    grid = (x.shape[1] // patch[0], x.shape[2] // patch[1])
    return patchify(x.astype(jnp.float32), patch), grid


def patch_validity(frame_mask: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """Valid frames [B, T] -> valid spectrogram patches [B, Tp*Fp], time-major: a patch is valid
    if any of its frames is, and every frequency patch of a time step shares that validity."""
    valid = frame_mask.reshape(frame_mask.shape[0], grid[0], -1).any(axis=-1)  # [B, Tp]
    return jnp.repeat(valid, grid[1], axis=1)


def mask_to_pixels(mask: jax.Array, grid: tuple[int, int], patch: int | tuple[int, int]) -> jax.Array:
    """Token mask [B, gh*gw] -> pixel mask [B, gh*ph, gw*pw] (SimMIM's repeat_interleave)."""
    (gh, gw), (ph, pw) = grid, _pair(patch)
    m = mask.reshape(mask.shape[0], gh, 1, gw, 1)
    return jnp.broadcast_to(m, (mask.shape[0], gh, ph, gw, pw)).reshape(mask.shape[0], gh * ph, gw * pw)
