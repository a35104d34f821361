"""Token masking: the MaskInfo contract for every strategy, structure, budgets."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models import masking


def assert_mask_contract(info: masking.MaskInfo, num_tokens: int, num_keep: int) -> None:
    keep, drop, restore, mask = (np.asarray(a) for a in info)
    b = mask.shape[0]
    assert keep.shape == (b, num_keep) and drop.shape == (b, num_tokens - num_keep)
    assert restore.shape == mask.shape == (b, num_tokens)
    assert keep.dtype == drop.dtype == restore.dtype == np.int32 and mask.dtype == bool
    np.testing.assert_array_equal(mask.sum(axis=1), num_tokens - num_keep)  # exact count per example
    for i in range(b):
        assert list(keep[i]) == sorted(keep[i]) and list(drop[i]) == sorted(drop[i])  # documented order
        assert not set(keep[i]) & set(drop[i])
        assert set(keep[i]) | set(drop[i]) == set(range(num_tokens))
        assert not mask[i, keep[i]].any() and mask[i, drop[i]].all()
        shuffle = np.concatenate([keep[i], drop[i]])
        np.testing.assert_array_equal(shuffle[restore[i]], np.arange(num_tokens))  # restore undoes the shuffle


# One compiled function per strategy and shape, reused by every test.
random_mask = jax.jit(masking.random_mask, static_argnums=(1, 2, 3))


def test_random_mask_contract_and_reproducible():
    info = random_mask(jax.random.key(0), 6, 20, 7)
    assert_mask_contract(info, 20, 7)
    again = random_mask(jax.random.key(0), 6, 20, 7)
    for a, b in zip(info, again):
        np.testing.assert_array_equal(a, b)
    other = random_mask(jax.random.key(1), 6, 20, 7)
    assert not np.array_equal(info.mask, other.mask)
    assert len({tuple(row) for row in np.asarray(info.keep_idx)}) > 1  # examples differ


def test_random_mask_is_uniform():
    info = random_mask(jax.random.key(2), 4000, 8, 2)
    kept_freq = 1 - np.asarray(info.mask).mean(axis=0)
    np.testing.assert_allclose(kept_freq, 2 / 8, atol=0.03)


@pytest.mark.parametrize("num_keep", [1, 16])
def test_random_mask_edges(num_keep):
    assert_mask_contract(masking.random_mask(jax.random.key(0), 2, 16, num_keep), 16, num_keep)


@pytest.mark.parametrize("num_keep", [0, 17])
def test_bad_num_keep_raises(num_keep):
    with pytest.raises(ValueError, match="num_keep"):
        masking.random_mask(jax.random.key(0), 2, 16, num_keep)


def test_num_keep_for_matches_mae():
    assert masking.num_keep_for(196, 0.75) == 49
    assert masking.num_keep_for(64, 0.6) == int(64 * 0.4)


def test_mask_from_scores_keeps_highest():
    scores = jnp.array([[0.1, 0.9, 0.5, 0.7], [3.0, 2.0, 1.0, 0.0]])
    info = masking.mask_from_scores(scores, 2)
    np.testing.assert_array_equal(info.keep_idx, [[1, 3], [0, 1]])
    np.testing.assert_array_equal(info.mask, [[True, False, True, False], [False, False, True, True]])


def test_gather_and_unshuffle_with_mask_tokens():
    b, n, k, d = 6, 20, 7, 5  # the shape of the contract test: its compiled mask is reused
    x = jax.random.normal(jax.random.key(3), (b, n, d))
    info = random_mask(jax.random.key(4), b, n, k)
    visible = masking.gather_tokens(x, info.keep_idx)
    assert visible.shape == (b, k, d)
    np.testing.assert_array_equal(visible, np.take_along_axis(np.asarray(x), np.asarray(info.keep_idx)[..., None], 1))
    token = jnp.arange(d, dtype=x.dtype) + 100.0
    full = masking.unshuffle_with_mask_tokens(visible, token, info.restore_idx)
    mask = np.asarray(info.mask)
    np.testing.assert_array_equal(np.asarray(full)[~mask], np.asarray(x)[~mask])
    np.testing.assert_array_equal(np.asarray(full)[mask], np.broadcast_to(token, (mask.sum(), d)))
    groups = jnp.arange(b * n * 2 * 3.0).reshape(b, n, 2, 3)  # trailing dims, like point groups
    np.testing.assert_array_equal(masking.gather_tokens(groups, info.mask_idx)[1, 0], groups[1, info.mask_idx[1, 0]])


block_mask = jax.jit(masking.block_mask, static_argnums=(1, 2, 3),
                     static_argnames=("num_blocks", "min_area", "max_area", "min_aspect"))
one_square = functools.partial(block_mask, num_blocks=1, min_area=9, max_area=9, min_aspect=1.0)


def test_block_mask_masks_one_whole_block():
    info = one_square(jax.random.key(5), 8, (6, 7), 42 - 9)
    assert_mask_contract(info, 42, 33)
    for m in np.asarray(info.mask).reshape(8, 6, 7):
        rows, cols = np.nonzero(m)
        assert rows.max() - rows.min() == 2 and cols.max() - cols.min() == 2  # a full 3x3 square


def test_block_mask_partial_block_stays_inside_it():
    info = one_square(jax.random.key(6), 8, (6, 7), 42 - 5)
    assert_mask_contract(info, 42, 37)
    for m in np.asarray(info.mask).reshape(8, 6, 7):
        rows, cols = np.nonzero(m)
        assert rows.max() - rows.min() <= 2 and cols.max() - cols.min() <= 2


def test_block_mask_default_is_clustered():
    # Masked tokens have many more masked 4-neighbours than under random masking,
    # where each of the 112 neighbour pairs of an 8x8 grid is masked with
    # probability 26/64 * 25/63.
    blocks = block_mask(jax.random.key(7), 16, (8, 8), 38)
    assert_mask_contract(blocks, 64, 38)
    m = np.asarray(blocks.mask).reshape(-1, 8, 8)
    pairs = (m[:, 1:] & m[:, :-1]).sum() + (m[:, :, 1:] & m[:, :, :-1]).sum()
    random_rate = 112 * (26 / 64) * (25 / 63) / 26
    assert pairs / m.sum() > 1.5 * random_rate


def test_cell_mask_masks_whole_cells():
    info = masking.cell_mask(jax.random.key(8), 5, (4, 6), 24 - 8, cell=(2, 2))
    assert_mask_contract(info, 24, 16)
    cells = np.asarray(info.mask).reshape(5, 2, 2, 3, 2).transpose(0, 1, 3, 2, 4).reshape(5, 6, 4)
    assert (cells.all(axis=-1) | ~cells.any(axis=-1)).all()  # each cell all-masked or all-kept
    np.testing.assert_array_equal(cells.all(axis=-1).sum(axis=1), 2)
    with pytest.raises(ValueError, match="tile"):
        masking.cell_mask(jax.random.key(8), 1, (4, 5), 10, cell=(2, 2))


band_mask = jax.jit(masking.band_mask, static_argnums=(1, 2, 3), static_argnames=("time_bands", "freq_bands"))


@pytest.mark.parametrize("num_keep", [5 * 3, 9])
def test_band_mask_masks_whole_time_steps_and_bins(num_keep):
    t, f = 8, 4
    info = band_mask(jax.random.key(9), 6, (t, f), num_keep, time_bands=3, freq_bands=1)
    assert_mask_contract(info, t * f, num_keep)
    grid = np.asarray(info.mask).reshape(6, t, f)  # time-major tokens
    full_steps, full_bins = grid.all(axis=2).sum(axis=1), grid.all(axis=1).sum(axis=1)
    assert (full_steps >= 3).all() and (full_bins >= 1).all()
    if num_keep == 15:  # exactly AudioMAE: 3 steps, 1 bin, and the kept tokens are their cross product
        np.testing.assert_array_equal(full_steps, 3)
        np.testing.assert_array_equal(full_bins, 1)
        kept = ~grid
        rows, cols = kept.any(axis=2), kept.any(axis=1)
        np.testing.assert_array_equal(kept, rows[:, :, None] & cols[:, None, :])
    assert len({m.tobytes() for m in grid}) > 1


def test_band_mask_rejects_unreachable_keep():
    with pytest.raises(ValueError, match="exceeds"):
        masking.band_mask(jax.random.key(0), 1, (8, 4), 16, time_bands=3, freq_bands=1)


SIZES = {"image": 16, "audio": 12, "points": 8}
share_mask = jax.jit(lambda key, shares, present=None: masking.share_mask(key, shares, SIZES, 10, present))


def test_share_mask_contract_and_exact_quotas():
    shares = jnp.array([[0.5, 0.3, 0.2], [0.05, 0.1, 0.85], [0.34, 0.33, 0.33], [0.1, 0.85, 0.05]])
    info, counts = share_mask(jax.random.key(10), shares)
    assert_mask_contract(info, 36, 10)
    got = np.stack([np.asarray(counts[m]) for m in SIZES], 1)
    # Webster rounding of 10 * shares; row 1's points are capped at their 8 tokens
    # and the other two split the overflow.
    np.testing.assert_array_equal(got, [[5, 3, 2], [1, 1, 8], [4, 3, 3], [1, 9, 0]])
    parts = masking.split_modalities(info.mask, SIZES)
    for name in SIZES:
        assert counts[name].dtype == jnp.int32
        np.testing.assert_array_equal(counts[name], (~np.asarray(parts[name])).sum(axis=1))


def test_share_mask_picks_random_tokens_within_a_modality():
    shares = jnp.broadcast_to(jnp.array([0.5, 0.3, 0.2]), (4, 3))
    info, _ = share_mask(jax.random.key(11), shares)
    assert len({m.tobytes() for m in np.asarray(info.mask)}) == 4


def test_share_mask_skips_absent_modalities():
    shares = jnp.broadcast_to(jnp.array([0.2, 0.6, 0.2]), (4, 3))
    info, counts = share_mask(jax.random.key(12), shares, {"audio": jnp.array([True, False, True, False])})
    assert_mask_contract(info, 36, 10)
    np.testing.assert_array_equal(counts["audio"], [6, 0, 6, 0])
    np.testing.assert_array_equal(counts["image"], [2, 5, 2, 5])


def test_dirichlet_budgets_mean_share_follows_alpha():
    alpha = (1.0, 2.0, 3.0)
    info, counts = masking.dirichlet_budgets(jax.random.key(13), 3000, SIZES, 8, alpha=alpha)
    assert_mask_contract(masking.MaskInfo(*(a[:16] for a in info)), 36, 8)
    counts = np.stack([np.asarray(counts[m]) for m in SIZES], 1)
    np.testing.assert_array_equal(counts.sum(axis=1), 8)
    assert (counts <= list(SIZES.values())).all()
    assert len({tuple(c) for c in counts}) > 10  # budgets vary per example
    np.testing.assert_allclose((counts / 8).mean(axis=0), np.array(alpha) / sum(alpha), atol=0.02)


def test_dirichlet_budgets_validates_alpha():
    with pytest.raises(ValueError, match="one alpha per modality"):
        masking.dirichlet_budgets(jax.random.key(0), 2, SIZES, 4, alpha=(1.0, 2.0))
    with pytest.raises(ValueError, match="no entry"):
        masking.dirichlet_budgets(jax.random.key(0), 2, SIZES, 4, alpha={"image": 1.0})
    with pytest.raises(ValueError, match="> 0"):
        masking.dirichlet_budgets(jax.random.key(0), 2, SIZES, 4, alpha=0.0)
