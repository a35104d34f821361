"""Point-cloud tower in the style of Point-MAE (Pang et al., 2022) / Point-BERT.

A cloud [B, N, 3] becomes G tokens: farthest point sampling (FPS) picks G
centres, each centre's K nearest points form a local patch expressed relative
to the centre, and a mini-PointNet embeds each patch into one token. A small
MLP on the centre's xyz gives the position embedding, and the shared
`layers.Encoder` does the rest, exactly as for image patches.

Everything has static shapes, so it runs under `jax.jit` with no host-side
grouping step.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models.encoders import ENCODERS, TokenEncoder
from mmjax.models.layers import Dtype, encode_and_pool


def _check_cloud(points, name: str = "points") -> None:
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"{name} must be [B, N, 3], got shape {points.shape}")


def _gather(points, idx):
    """points [B, N, C], idx [B, ...] int -> [B, ..., C] (per-example indexing)."""
    return jax.vmap(lambda p, i: p[i])(points, idx)


def _sq_dists(a, b):
    """Squared Euclidean distances a [B, M, 3], b [B, N, 3] -> [B, M, N].

    Computed as sum((a - b)^2) rather than |a|^2 - 2ab + |b|^2: the expanded
    form cancels catastrophically for nearby points, which would reorder near
    neighbours and break exact ties between duplicate points.
    """
    return jnp.sum(jnp.square(a[:, :, None, :] - b[:, None, :, :]), axis=-1)


def farthest_point_sample(points, num_samples: int, start=0):
    """Indices [B, G] of `num_samples` points picked by farthest point sampling.

    Starts at index `start` (an int, or an int array [B] for a different start
    per example) and then repeatedly takes the point whose squared distance to
    the chosen set is largest; ties go to the lowest index (argmax). Once every
    distinct point is chosen (G > number of distinct points) all distances are
    0 and index 0 repeats, so the output shape stays static.
    """
    _check_cloud(points)
    b, n, _ = points.shape
    if not 1 <= num_samples <= n:
        raise ValueError(f"num_samples must be in [1, {n}] for {n} points, got {num_samples}")
    points = points.astype(jnp.float32)  # low-precision distances would create false ties

    def dists_to(idx):  # idx [B] -> squared distance of every point to it, [B, N]
        return _sq_dists(_gather(points, idx[:, None]), points)[:, 0]

    first = jnp.broadcast_to(jnp.asarray(start, jnp.int32), (b,))
    chosen = jnp.zeros((b, num_samples), jnp.int32).at[:, 0].set(first)

    def step(i, carry):
        chosen, min_dist = carry
        nxt = jnp.argmax(min_dist, axis=1).astype(jnp.int32)
        return chosen.at[:, i].set(nxt), jnp.minimum(min_dist, dists_to(nxt))

    chosen, _ = jax.lax.fori_loop(1, num_samples, step, (chosen, dists_to(first)))
    return chosen


def knn(queries, points, k: int):
    """Indices [B, G, k] of the k points nearest each query, nearest first.

    Equal distances keep the lower point index first (lax.top_k is stable).
    """
    _check_cloud(queries, "queries")
    _check_cloud(points)
    if not 1 <= k <= points.shape[1]:
        raise ValueError(f"k must be in [1, {points.shape[1]}] for {points.shape[1]} points, got {k}")
    d = _sq_dists(queries.astype(jnp.float32), points.astype(jnp.float32))
    _, idx = jax.lax.top_k(-d, k)
    return idx.astype(jnp.int32)


def group_points(points, num_groups: int, group_size: int):
    """Point-MAE grouping: (neighbourhoods [B, G, K, 3], centres [B, G, 3]).

    Centres are FPS picks (starting at index 0); each neighbourhood holds the
    K nearest points *minus their centre*, so a patch encodes local shape and
    the centre alone carries position. A centre is its own nearest neighbour,
    so neighbourhoods[:, :, 0] is the origin.
    """
    centres = _gather(points, farthest_point_sample(points, num_groups))
    neighbours = _gather(points, knn(centres, points, group_size))
    return neighbours - centres[:, :, None, :], centres


class MiniPointNet(nn.Module):
    """Patch [..., K, 3] -> token [..., out_dim], Point-MAE's group encoder.

    A shared per-point MLP (3 -> dim/2 -> dim), a max-pool over the patch,
    the pooled feature concatenated back onto every point (so each point sees
    its patch's context), a second per-point MLP (2*dim -> 2*dim -> out_dim)
    and a final max-pool; dim=256 is Point-MAE's layout. Point-MAE uses
    BatchNorm; LayerNorm is used here because batch statistics would need a
    train flag and mutable state the common tower signature does not carry,
    and would let examples in a contrastive batch see each other.
    """

    dim: int
    out_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _mlp(self, x, hidden: int, out: int, name: str):
        dense = lambda f, n: nn.Dense(f, dtype=self.dtype, param_dtype=self.param_dtype, name=f"{name}_{n}")
        x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=f"{name}_ln")(dense(hidden, "fc1")(x))
        return dense(out, "fc2")(nn.relu(x))

    @nn.compact
    def __call__(self, patches):
        x = self._mlp(patches.astype(self.dtype), self.dim // 2, self.dim, "first")  # [..., K, dim]
        context = jnp.broadcast_to(x.max(axis=-2, keepdims=True), x.shape)
        x = jnp.concatenate([context, x], axis=-1)  # [..., K, 2*dim]
        x = self._mlp(x, 2 * self.dim, self.out_dim, "second")
        return x.max(axis=-2)


@ENCODERS.register("points")
class PointTransformer(TokenEncoder):
    """Point cloud [B, N, 3] -> {"pooled": [B, D], "tokens": [B, G, D]}.

    Defaults are Point-MAE's (64 groups of 32, width 384, 12 layers, 6 heads,
    mini-PointNet dim 256). The mini-PointNet runs on every grouped point
    (B*G*K of them), so on CPU its `pointnet_dim` dominates the cost of small
    towers. The centre position embedding is added once, before the encoder;
    Point-MAE re-adds it before every block, which the shared `Encoder` does
    not do.

    Invariance: for a fixed FPS start point (index 0 of the cloud) and no
    distance ties, permuting the other points leaves centres, patches and hence
    the output unchanged. Moving a different point to index 0 changes the FPS
    centres and so the output; shuffle the cloud in the input pipeline if the
    start point should be random.

    pool="mean"/"max" pool the G tokens; pool="tok" prepends a learned class
    token (without position embedding) and pools it; "tokens" are always the
    G group tokens, in FPS order.
    """

    num_groups: int = 64
    group_size: int = 32
    width: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_dim: int = 1536
    pointnet_dim: int = 256
    pool: str = "mean"
    scan: bool = False
    remat: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @property
    def group_shape(self) -> tuple[int, int]:
        return (self.num_groups, self.group_size)

    @nn.compact
    def __call__(self, points, mask=None, keep_idx=None):
        """points [B, N, 3]; `mask` is the towers' input-validity mask.

        Clouds have a fixed N and no padding, so a mask is not supported yet;
        a non-None one raises rather than being silently ignored.
        """
        if mask is not None:
            raise ValueError("PointTransformer does not support a mask yet; pass mask=None")
        _check_cloud(points)
        patches, centres = group_points(points, self.num_groups, self.group_size)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = MiniPointNet(self.pointnet_dim, self.width, **kw, name="group_embed")(patches)  # [B, G, D]
        # Point-MAE's position MLP: xyz -> 128 -> D with a GELU.
        pos = nn.Dense(128, **kw, name="posemb_fc1")(centres.astype(self.dtype))
        x = x + nn.Dense(self.width, **kw, name="posemb_fc2")(nn.gelu(pos))
        # The groups are the reconstruction targets and the centres the decoder's
        # positions in Point-MAE; returning them costs nothing when unused.
        return {**encode_and_pool(self, x, keep_idx=keep_idx), "centres": centres, "neighbourhoods": patches}
