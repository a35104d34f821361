"""Token masking for masked modelling (MAE, SimMIM, AudioMAE, Point-MAE, MultiMAE).

Every strategy has the same two steps: give each token a *keep score*, then
keep the `num_keep` highest-scoring tokens of every example with one top-k
(`mask_from_scores`). The kept count is therefore a static Python int, so the
encoder's input [B, K, D] has a static shape and everything runs under
`jax.jit`; a strategy is only a way of writing scores:

  random_mask        i.i.d. uniform scores (MAE's shuffle by argsort of noise)
  block_mask         rectangles get low scores, BEiT-style blocks
  cell_mask          fixed aligned cells share one score, SimMIM's generator
  band_mask          whole time steps / frequency bins get low scores (AudioMAE)
  dirichlet_budgets  per-modality quotas from a Dirichlet sample (MultiMAE),
                     apportioned by `share_mask`
  sample_mask        random / block / cell by name, as a config gives it

Token order is the towers' order: raster (row-major) for image patches,
time-major (t * F + f) for spectrogram patches, FPS order for point groups.
A caller with its own constraints (say, padding that must never be kept) can
lower those scores and call `mask_from_scores` directly.
"""
from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class MaskInfo(NamedTuple):
    """Which tokens an example keeps; a pytree, so it passes through jit and vmap.

    keep_idx:    int32 [B, K], kept (visible) tokens in ascending token order,
                 so the encoder sees its tokens in their natural order.
    mask_idx:    int32 [B, N-K], masked (hidden) tokens, ascending.
    restore_idx: int32 [B, N], the inverse of the permutation
                 concat([keep_idx, mask_idx]) (MAE's ids_restore): gathering
                 concat([visible, masked]) [B, N, ...] with it restores token order.
    mask:        bool [B, N], True where the token is masked (hidden).
    """

    keep_idx: jax.Array
    mask_idx: jax.Array
    restore_idx: jax.Array
    mask: jax.Array


def num_keep_for(num_tokens: int, mask_ratio: float) -> int:
    """Kept tokens for a mask ratio, rounded down as MAE does: int(N * (1 - ratio))."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, int(num_tokens * (1.0 - mask_ratio)))


def _check_keep(num_tokens: int, num_keep: int) -> None:
    if not 1 <= num_keep <= num_tokens:
        raise ValueError(f"num_keep must be in [1, {num_tokens}] for {num_tokens} tokens, got {num_keep}")


def mask_from_scores(scores: jax.Array, num_keep: int) -> MaskInfo:
    """Keeps the `num_keep` highest scores of each row of `scores` [B, N].

    Ties go to the lower token index (lax.top_k is stable), so equal scores
    give a deterministic, raster-first choice.
    """
    b, n = scores.shape
    _check_keep(n, num_keep)
    _, top = jax.lax.top_k(scores, num_keep)  # [B, K], in score order
    mask = jnp.ones((b, n), bool).at[jnp.arange(b)[:, None], top].set(False)
    # A stable argsort of the mask lists kept tokens (False) before masked ones,
    # each group in ascending token order: the shuffle MAE gets from its noise.
    order = jnp.argsort(mask.astype(jnp.int8), axis=1, stable=True).astype(jnp.int32)
    restore = jnp.argsort(order, axis=1).astype(jnp.int32)
    return MaskInfo(order[:, :num_keep], order[:, num_keep:], restore, mask)


def random_mask(rng: jax.Array, batch: int, num_tokens: int, num_keep: int) -> MaskInfo:
    """Uniform random masking (MAE): every K-subset of the N tokens is equally likely."""
    return mask_from_scores(jax.random.uniform(rng, (batch, num_tokens)), num_keep)


def block_mask(
    rng: jax.Array, batch: int, grid: tuple[int, int], num_keep: int, *,
    num_blocks: int | None = None, min_area: int = 4, max_area: int | None = None, min_aspect: float = 0.3,
) -> MaskInfo:
    """Block-wise masking of an (H, W) patch grid (BEiT, Bao et al. 2022).

    `num_blocks` random rectangles are drawn per example: area uniform in
    [min_area, max_area] tokens (max_area defaults to the masking budget N-K,
    as BEiT caps a block at what is left to mask), aspect ratio log-uniform in
    [min_aspect, 1/min_aspect], position uniform. Masking fills block 0, then
    block 1, ... (a token belongs to the first block covering it); the block
    that crosses the budget is masked from its centre outwards, so it stays
    one blob. If the blocks cover fewer than N-K tokens, the rest of the budget
    is masked uniformly at random among the uncovered tokens. BEiT instead
    retries blocks until the count fits and may stop short; the top-k here
    always hides exactly N-K tokens.

    num_blocks defaults to four times the budget over the mean area, which
    covers the budget with room to spare for overlaps; unused blocks cost
    only a few comparisons.
    """
    h, w = grid
    n = h * w
    _check_keep(n, num_keep)
    budget = n - num_keep
    max_area = max(min_area, budget) if max_area is None else max_area
    if not 1 <= min_area <= max_area or not 0.0 < min_aspect <= 1.0:
        raise ValueError(f"need 1 <= min_area <= max_area and 0 < min_aspect <= 1, got "
                         f"min_area={min_area}, max_area={max_area}, min_aspect={min_aspect}")
    if num_blocks is None:
        num_blocks = max(1, math.ceil(4 * budget / ((min_area + max_area) / 2)))
    # Two draws, not five: every threefry call is its own slow-to-compile hash.
    k_blocks, k_fill = jax.random.split(rng)
    u = jax.random.uniform(k_blocks, (batch, num_blocks, 1, 1, 4))  # broadcasts against the (H, W) grid
    area = min_area + (max_area - min_area) * u[..., 0]
    log_aspect = math.log(min_aspect) * (1.0 - 2.0 * u[..., 1])  # uniform in [log a, -log a]
    bh = jnp.clip(jnp.round(jnp.sqrt(area * jnp.exp(log_aspect))), 1, h)
    bw = jnp.clip(jnp.round(jnp.sqrt(area / jnp.exp(log_aspect))), 1, w)
    top = jnp.floor(u[..., 2] * (h - bh + 1))
    left = jnp.floor(u[..., 3] * (w - bw + 1))
    y, x = np.mgrid[:h, :w]
    covered = (y >= top) & (y < top + bh) & (x >= left) & (x < left + bw)  # [B, nb, H, W]
    # Normalised squared distance to the block's centre, in [0, 0.5].
    radius = ((y - top - (bh - 1) / 2) / bh) ** 2 + ((x - left - (bw - 1) / 2) / bw) ** 2
    first = jnp.argmax(covered, axis=1)  # first covering block; 0 when none covers
    in_block = covered.any(axis=1)
    radius = jnp.take_along_axis(radius, first[:, None], axis=1)[:, 0]
    uncovered = num_blocks + jax.random.uniform(k_fill, (batch, h, w))
    # Low score = masked first: block 0 before block 1, centres before edges,
    # every uncovered token after every covered one.
    scores = jnp.where(in_block, first + radius, uncovered)
    return mask_from_scores(scores.reshape(batch, n), num_keep)


def cell_mask(rng: jax.Array, batch: int, grid: tuple[int, int], num_keep: int, cell: tuple[int, int]) -> MaskInfo:
    """SimMIM's mask generator: the grid is tiled by aligned (ch, cw) cells and
    whole cells are masked at random (SimMIM: 32-pixel mask patches over 16-
    or 4-pixel model patches, i.e. cells of 2x2 or 8x8 tokens).

    All tokens of a cell share one score, so when N-K is a multiple of ch*cw
    exactly (N-K)/(ch*cw) whole cells are masked; otherwise one cell is split,
    keeping its tokens in raster order (top-k's lower-index-first ties).
    """
    (h, w), (ch, cw) = grid, cell
    if h % ch or w % cw:
        raise ValueError(f"cell {cell} does not tile the grid {grid}")
    scores = jax.random.uniform(rng, (batch, h // ch, 1, w // cw, 1))
    scores = jnp.broadcast_to(scores, (batch, h // ch, ch, w // cw, cw))
    return mask_from_scores(scores.reshape(batch, h * w), num_keep)


def band_mask(
    rng: jax.Array, batch: int, grid: tuple[int, int], num_keep: int, *, time_bands: int, freq_bands: int,
) -> MaskInfo:
    """AudioMAE's time+frequency masking of a (T, F) spectrogram patch grid.

    `time_bands` whole time steps and `freq_bands` whole frequency bins (one
    patch wide each, chosen uniformly without replacement, as AudioMAE's
    `random_masking_2d`) are masked; the (T - time_bands) * (F - freq_bands)
    tokens outside them are the keep candidates. num_keep equal to that count
    is exactly AudioMAE's mask; a smaller num_keep additionally masks random
    candidates (structured plus unstructured); a larger one is an error, since
    it would have to unmask part of a band.
    """
    t, f = grid
    candidates = (t - time_bands) * (f - freq_bands)
    if not (0 <= time_bands < t and 0 <= freq_bands < f):
        raise ValueError(f"need 0 <= time_bands < {t} and 0 <= freq_bands < {f}, got {time_bands}, {freq_bands}")
    if num_keep > candidates:
        raise ValueError(f"num_keep={num_keep} exceeds the {candidates} tokens outside {time_bands} time "
                         f"and {freq_bands} frequency bands of a {grid} grid")
    # One draw for the step, bin and token scores (each threefry call compiles separately).
    u_time, u_freq, u_tok = jnp.split(jax.random.uniform(rng, (batch, t + f + t * f)), [t, t + f], axis=1)
    in_time = mask_from_scores(u_time, t - time_bands).mask  # [B, T], True = in a band
    in_freq = mask_from_scores(u_freq, f - freq_bands).mask  # [B, F]
    banded = in_time[:, :, None] | in_freq[:, None, :]  # [B, T, F]
    # Uniform scores in [0, 1) for candidates, [-2, -1) inside a band.
    scores = u_tok.reshape(batch, t, f) - 2.0 * banded
    return mask_from_scores(scores.reshape(batch, t * f), num_keep)


MASKINGS = ("random", "block", "cell")


def sample_mask(rng: jax.Array, kind: str, batch: int, grid: tuple[int, int], num_keep: int,
                cell: tuple[int, int] = (1, 1)) -> MaskInfo:
    """A mask over a (H, W) token grid by name: "random" (MAE), "block" (BEiT
    blocks) or "cell" (SimMIM's aligned cells of `cell` tokens)."""
    if kind == "random":
        return random_mask(rng, batch, grid[0] * grid[1], num_keep)
    if kind == "block":
        return block_mask(rng, batch, grid, num_keep)
    if kind == "cell":
        return cell_mask(rng, batch, grid, num_keep, tuple(cell))
    raise ValueError(f"unknown masking {kind!r}; valid: {list(MASKINGS)}")


def dirichlet_budgets(
    rng: jax.Array, batch: int, tokens_per_modality: Mapping[str, int], total_keep: int,
    alpha: float | Sequence[float] | Mapping[str, float] = 1.0, present: Mapping[str, jax.Array] | None = None,
) -> tuple[MaskInfo, dict[str, jax.Array]]:
    """MultiMAE's multimodal masking: a Dirichlet(alpha) split of `total_keep`.

    Per example, shares p ~ Dirichlet(alpha) over the modalities (in the
    mapping's order) are drawn and `share_mask` keeps total_keep tokens of
    the concatenated sequence split in proportion to p; see there for the
    exact apportionment, the caps and `present`.

    alpha: one concentration for all, or one per modality (a sequence in the
    mapping's order, or a mapping by name). Small alpha gives lopsided splits;
    MultiMAE uses 1.0.
    Returns (info, counts) with counts[m] the int32 [B] kept tokens of m.
    """
    names = list(tokens_per_modality)
    if isinstance(alpha, Mapping):
        missing = set(names) - set(alpha)
        if missing:
            raise ValueError(f"alpha has no entry for modalities {sorted(missing)}")
        alpha = [alpha[m] for m in names]
    alphas = np.asarray(alpha, np.float32)
    if alphas.ndim:
        if alphas.shape != (len(names),):
            raise ValueError(f"need one alpha per modality {names}, got {alphas.tolist()}")
    else:
        alphas = np.full((len(names),), alphas)
    if not (alphas > 0).all():
        raise ValueError(f"Dirichlet alphas must be > 0, got {alphas.tolist()}")
    k_share, k_mask = jax.random.split(rng)
    shares = jax.random.dirichlet(k_share, jnp.asarray(alphas), (batch,))  # [B, M]
    return share_mask(k_mask, shares, tokens_per_modality, total_keep, present)


def share_mask(
    rng: jax.Array, shares: jax.Array, tokens_per_modality: Mapping[str, int], total_keep: int,
    present: Mapping[str, jax.Array] | None = None,
) -> tuple[MaskInfo, dict[str, jax.Array]]:
    """Keeps `total_keep` tokens of a multimodal sequence, split by `shares`.

    shares [B, M] >= 0 (rows summing to 1) give each example's split over the
    modalities, whose tokens are concatenated in the mapping's order. The kept
    tokens are apportioned by the Sainte-Lague (Webster) divisor method,
    written as scores: the token of random rank r = 0, 1, ... within modality
    m scores p_m / (r + 0.5), and one top-k keeps the total_keep highest. So:

      * exactly total_keep tokens are kept, whatever the rounding;
      * modality m keeps k_m tokens, a uniformly random subset of its own,
        with k_m the Webster rounding of p_m * total_keep (nearest integer
        up to the adjustment that makes the k_m sum to total_keep), so
        E[k_m / total_keep] ~ E[p_m] (alpha_m / sum(alpha) for a Dirichlet);
      * a modality's quota never exceeds its token count: once its tokens are
        used up, the overflow goes to the others in proportion to their
        shares (MultiMAE rounds and then patches the first modality instead).

    present: optional bool [B] per modality, False where an example lacks it.
    An absent modality gets share 0 and the others are renormalised (for a
    Dirichlet that is a Dirichlet over the present ones); its tokens score
    below every present token, so they are kept only if the present ones are
    fewer than total_keep.

    Returns (info, counts) with counts[m] the int32 [B] kept tokens of m.
    """
    names = list(tokens_per_modality)
    sizes = [int(tokens_per_modality[m]) for m in names]
    _check_keep(sum(sizes), total_keep)
    batch = shares.shape[0]
    if shares.shape != (batch, len(names)):
        raise ValueError(f"shares must be [B, {len(names)}] for modalities {names}, got {shares.shape}")
    shares = shares.astype(jnp.float32)
    if present is not None:
        avail = jnp.stack([jnp.broadcast_to(jnp.asarray(present.get(m, True), bool), (batch,)) for m in names], 1)
        shares = jnp.where(avail, shares, 0.0)
        shares = shares / jnp.maximum(shares.sum(axis=1, keepdims=True), 1e-30)
    scores = []
    noise = split_modalities(jax.random.uniform(rng, (batch, sum(sizes))), tokens_per_modality)
    for i, u in enumerate(noise.values()):
        rank = jnp.argsort(u, axis=1).argsort(axis=1)  # a random permutation of 0..N_m-1
        score = shares[:, i:i + 1] / (rank + 0.5)
        if present is not None:
            score = jnp.where(avail[:, i:i + 1], score, -1.0)  # below every present token (>= 0)
        scores.append(score)
    info = mask_from_scores(jnp.concatenate(scores, axis=1), total_keep)
    kept = split_modalities(~info.mask, tokens_per_modality)
    return info, {m: v.sum(axis=1, dtype=jnp.int32) for m, v in kept.items()}


def split_modalities(x: jax.Array, tokens_per_modality: Mapping[str, int]) -> dict[str, jax.Array]:
    """Cuts a concatenated sequence x [B, N, ...] back into {modality: [B, N_m, ...]}."""
    sizes = [int(s) for s in tokens_per_modality.values()]
    if x.shape[1] != sum(sizes):
        raise ValueError(f"sequence of {x.shape[1]} tokens does not match the modality sizes "
                         f"{dict(tokens_per_modality)}")
    parts = jnp.split(x, np.cumsum(sizes)[:-1], axis=1)
    return dict(zip(tokens_per_modality, parts))


def gather_tokens(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x [B, N, ...], idx int [B, K] -> x[b, idx[b]] of shape [B, K, ...].

    Works for any trailing shape, e.g. point groups [B, G, K, 3].
    """
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def unshuffle_with_mask_tokens(visible: jax.Array, mask_token: jax.Array, restore_idx: jax.Array) -> jax.Array:
    """The MAE decoder's input: visible [B, K, D] tokens (in keep_idx order)
    back at their positions, and `mask_token` [D] at the N-K masked ones -> [B, N, D]."""
    b, k, d = visible.shape
    n = restore_idx.shape[1]
    filler = jnp.broadcast_to(jnp.asarray(mask_token, visible.dtype), (b, n - k, d))
    return gather_tokens(jnp.concatenate([visible, filler], axis=1), restore_idx)
