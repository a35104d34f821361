"""Point clouds: FPS/kNN/grouping against NumPy loops, the point tower's
contract and invariances, digit clouds, synthetic shapes, augmentations and
bad-input errors."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.data.datasets import mnist
from mmjax.data import points as P
from mmjax.models import layers, point

# ---------------------------------------------------------------- helpers ----


def fps_reference(cloud, num_samples, start):
    """The textbook loop, one example at a time, in the same float32 arithmetic."""
    cloud = cloud.astype(np.float32)
    chosen = [start]
    min_dist = ((cloud - cloud[start]) ** 2).sum(axis=1)
    for _ in range(1, num_samples):
        chosen.append(int(np.argmax(min_dist)))
        min_dist = np.minimum(min_dist, ((cloud - cloud[chosen[-1]]) ** 2).sum(axis=1))
    return np.array(chosen)


def clouds_with_duplicates(seed=0, b=3, n=48):
    """Random clouds where a third of the points repeat others (exact distance ties)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(b, n - n // 3, 3)).astype(np.float32)
    dup = base[:, rng.integers(0, base.shape[1], size=n // 3)]
    return np.concatenate([base, dup], axis=1)[:, rng.permutation(n)]


fps = jax.jit(point.farthest_point_sample, static_argnums=1)
knn = jax.jit(point.knn, static_argnums=2)
group = jax.jit(point.group_points, static_argnums=(1, 2))

# ------------------------------------------------------------ FPS and kNN ----


@pytest.mark.parametrize("start", [0, (5, 0, 17)])
def test_fps_matches_reference_loop(start):
    clouds = clouds_with_duplicates()
    starts = np.broadcast_to(start, (3,))
    got = np.asarray(fps(clouds, 16, jnp.asarray(starts)))
    want = np.stack([fps_reference(c, 16, s) for c, s in zip(clouds, starts)])
    np.testing.assert_array_equal(got, want)
    assert all(len(set(row)) == 16 for row in got)  # 32 distinct points: no repeats


def test_fps_more_samples_than_distinct_points():
    cloud = np.tile(np.eye(3, dtype=np.float32), (4, 1))[None]  # 3 distinct points, 12 rows
    got = np.asarray(point.farthest_point_sample(cloud, 6))[0]
    np.testing.assert_array_equal(got, fps_reference(cloud[0], 6, 0))
    assert set(got[:3]) == {0, 1, 2} and (got[3:] == 0).all()  # exhausted: index 0 repeats


def test_knn_matches_bruteforce():
    clouds = clouds_with_duplicates(seed=1)
    queries = clouds[:, :10] + np.float32(0.01)
    idx = np.asarray(knn(queries, clouds, 5))
    d = ((queries[:, :, None] - clouds[:, None]) ** 2).sum(-1)  # [B, G, N]
    got = np.take_along_axis(d, idx, axis=-1)
    # Distances, not indices: duplicate points make the index sets ambiguous.
    np.testing.assert_allclose(got, np.sort(d, axis=-1)[..., :5], rtol=1e-6)
    assert all(len(set(row)) == 5 for row in idx.reshape(-1, 5))


def test_group_points_centres_and_relative_neighbourhoods():
    clouds = clouds_with_duplicates(seed=2)
    nbhd, centres = map(np.asarray, group(clouds, 8, 6))
    chex.assert_shape((nbhd, centres), ((3, 8, 6, 3), (3, 8, 3)))
    idx = np.asarray(fps(clouds, 8, 0))
    np.testing.assert_array_equal(centres, np.take_along_axis(clouds, idx[..., None], axis=1))
    np.testing.assert_array_equal(nbhd[:, :, 0], 0)  # each centre is its own nearest point
    absolute = (nbhd + centres[:, :, None]).reshape(3, -1, 3)
    # Every neighbour is a cloud point (up to the float round trip through "relative").
    gap = np.abs(absolute[:, :, None] - clouds[:, None]).max(-1).min(-1)
    assert gap.max() < 1e-5


# ------------------------------------------------------------- the tower ----

TINY = dict(num_groups=8, group_size=4, width=32, depth=1, num_heads=2, mlp_dim=64, pointnet_dim=16)


def cloud_batch(seed=0):
    return np.random.default_rng(seed).normal(size=(6, 32, 3)).astype(np.float32)


@functools.cache
def tok_params():
    """One jitted init, of the "tok" tower; the others share its params minus
    the class token (init compiles the random initialisers: the slow part)."""
    model = point.PointTransformer(pool="tok", **TINY)
    return jax.jit(model.init)(jax.random.key(0), cloud_batch())


@functools.cache
def forward(pool):
    """Jitted apply of the tiny tower with `pool`: compiled once, shared."""
    params = tok_params()
    if pool != "tok":
        params = {"params": {k: v for k, v in params["params"].items() if k != "cls"}}
    apply = jax.jit(point.PointTransformer(pool=pool, **TINY).apply)
    return lambda x: apply(params, x)


@pytest.mark.parametrize("pool", layers.POOLS)
def test_tower_output_contract(pool):
    x = cloud_batch()
    x[5] = 0  # the pipeline's all-zero placeholder for an absent cloud must stay finite
    out = forward(pool)(x)
    chex.assert_shape((out["pooled"], out["tokens"]), ((6, 32), (6, 8, 32)))
    chex.assert_tree_all_finite(out)
    assert np.abs(np.diff(out["pooled"][:5], axis=0)).max() > 1e-3  # examples differ


def test_tower_invariant_to_permutations_that_keep_the_start_point():
    x = cloud_batch()[:2]
    keep_start = np.concatenate([[0], 1 + np.random.default_rng(1).permutation(31)])
    move_start = np.roll(np.arange(32), 1)
    out = forward("mean")(np.concatenate([x, x[:, keep_start], x[:, move_start]]))  # one call, same shape
    # Same FPS centres in the same order and the same patches (max-pooled, so
    # the order inside a patch is irrelevant): tokens and pooled are unchanged.
    np.testing.assert_allclose(out["tokens"][2:4], out["tokens"][:2], atol=1e-5)
    np.testing.assert_allclose(out["pooled"][2:4], out["pooled"][:2], atol=1e-5)
    # Moving another point to index 0 changes the FPS start, hence the tokens.
    assert np.abs(out["tokens"][4:] - out["tokens"][:2]).max() > 1e-3


def test_tower_rejects_bad_input():
    model = point.PointTransformer(**TINY)
    x = jnp.zeros((1, 32, 3))
    with pytest.raises(ValueError, match="mask"):
        model.init(jax.random.key(0), x, mask=jnp.ones((1, 8), bool))
    with pytest.raises(ValueError, match="valid"):
        point.PointTransformer(pool="cls", **TINY).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"\[B, N, 3\]"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 2)))
    with pytest.raises(ValueError, match="num_samples"):
        model.init(jax.random.key(0), jnp.zeros((1, 6, 3)))  # 8 groups from 6 points


# ---------------------------------------------------------------- digits ----


@pytest.fixture(scope="module")
def digit():
    return mnist.load_raw()[0][0]  # a 7, uint8 [28, 28]


def test_digit_points_lie_on_strokes_within_the_band(digit):
    raw = P.digit_stroke_points(digit[..., None], 2000, np.random.default_rng(0), thickness=0.3)
    assert raw.shape == (2000, 3) and raw.dtype == np.float32
    assert np.abs(raw[:, :2]).max() <= 1 and np.abs(raw[:, 2]).max() <= 0.15
    # Back to pixel coordinates (y up -> row down); look either side of the
    # point by 1e-4 px so float32 rounding at a pixel edge cannot flake.
    col, row = (raw[:, 0] + 1) / 2 * 28, (1 - raw[:, 1]) / 2 * 28
    lit = np.zeros(len(raw), bool)
    for dc in (-1e-4, 1e-4):
        for dr in (-1e-4, 1e-4):
            r, c = np.clip(np.floor(row + dr), 0, 27).astype(int), np.clip(np.floor(col + dc), 0, 27).astype(int)
            lit |= digit[r, c] > 0
    assert lit.all()


def test_digit_points_weighted_by_intensity():
    image = np.zeros((28, 28), np.uint8)
    image[5, 5], image[20, 20] = 255, 85
    raw = P.digit_stroke_points(image, 4000, np.random.default_rng(0))
    bright = (raw[:, 0] < 0).mean()  # column 5 is on the left half
    assert abs(bright - 0.75) < 0.03


def test_digit_to_points_is_normalised_stroke_sample(digit):
    pts = P.digit_to_points(digit, 256, np.random.default_rng(3))
    raw = P.digit_stroke_points(digit, 256, np.random.default_rng(3))
    np.testing.assert_allclose(pts, P.normalize_unit_sphere(raw))
    np.testing.assert_allclose(np.linalg.norm(pts, axis=1).max(), 1, rtol=1e-6)
    np.testing.assert_allclose(pts.mean(axis=0), 0, atol=1e-6)


# ------------------------------------------------------- synthetic shapes ----


@pytest.mark.parametrize("kind", P.SHAPES)
def test_shapes_fill_the_unit_sphere(kind):
    pts = P.synthetic_shape(kind, 512, np.random.default_rng(0))
    assert pts.shape == (512, 3) and pts.dtype == np.float32
    norms = np.linalg.norm(pts, axis=1)
    assert norms.max() <= 1 + 1e-6 and norms.max() > 0.9


def test_shape_surface_properties():
    def sample(kind):  # back in the construction frame, before the bounding-sphere scaling
        centre_z, radius = P._BOUNDING_SPHERES[kind]
        return P.synthetic_shape(kind, 3000, np.random.default_rng(1)) * radius + [0, 0, centre_z]

    close = lambda a, b: np.abs(a - b) < 1e-5
    np.testing.assert_allclose(np.linalg.norm(sample("sphere"), axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.abs(sample("cube")).max(axis=1), 1, atol=1e-5)
    big_r, r = P._TORUS_RADII
    tor = sample("torus")
    np.testing.assert_allclose(np.hypot(np.hypot(tor[:, 0], tor[:, 1]) - big_r, tor[:, 2]), r, atol=1e-5)
    # Solids with flat parts: every point is on the lateral surface or a flat
    # part, in proportion to their areas.
    radial = lambda p: np.hypot(p[:, 0], p[:, 1])
    square = lambda p: np.abs(p[:, :2]).max(axis=1)
    base = lambda p: close(p[:, 2], -1)
    for kind, on_side, on_flat, side_fraction in [
        ("cylinder", lambda p: close(radial(p), 1), lambda p: close(np.abs(p[:, 2]), 1), 4 / 6),
        ("cone", lambda p: close(radial(p), (1 - p[:, 2]) / 2), base, np.sqrt(5) / (np.sqrt(5) + 1)),
        ("pyramid", lambda p: close(square(p), (1 - p[:, 2]) / 2), base, np.sqrt(5) / (np.sqrt(5) + 1)),
    ]:
        p = sample(kind)
        flat = on_flat(p)
        assert (on_side(p) | flat).all(), kind
        assert abs((~flat).mean() - side_fraction) < 0.04, kind


def test_shape_dataset_balanced_and_deterministic():
    pts, labels = P.make_shape_dataset(4, 64, seed=0)
    assert pts.shape == (24, 64, 3) and pts.dtype == np.float32 and labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(labels), [4] * len(P.SHAPES))
    again = P.make_shape_dataset(4, 64, seed=0)
    np.testing.assert_array_equal(pts, again[0])
    np.testing.assert_array_equal(labels, again[1])


# ---------------------------------------------------------- augmentations ----


@pytest.mark.parametrize("mode", P.ROTATION_MODES)
def test_rotation_preserves_norms(mode):
    pts = P.synthetic_shape("cube", 100, np.random.default_rng(0))
    rot = P.random_rotation(pts, np.random.default_rng(1), mode)
    np.testing.assert_allclose(np.linalg.norm(rot, axis=1), np.linalg.norm(pts, axis=1), rtol=1e-5)
    assert np.abs(rot - pts).max() > 1e-2
    if mode != "so3":
        axis = "xyz".index(mode)
        np.testing.assert_allclose(rot[:, axis], pts[:, axis], atol=1e-6)


def test_augmentations_deterministic_and_well_formed():
    pts = P.synthetic_shape("torus", 200, np.random.default_rng(0))
    augs = {
        "rotate": lambda p, rng: P.random_rotation(p, rng, "so3"),
        "scale": lambda p, rng: P.random_anisotropic_scale(p, rng, 0.8, 1.25),
        "jitter": lambda p, rng: P.jitter(p, rng, sigma=0.02, clip=0.03),
        "dropout": lambda p, rng: P.point_dropout(p, rng, 0.875),
    }
    for name, aug in augs.items():
        a, b = aug(pts, np.random.default_rng(7)), aug(pts, np.random.default_rng(7))
        np.testing.assert_array_equal(a, b, err_msg=name)
        assert a.shape == pts.shape and a.dtype == np.float32, name
    assert np.abs(augs["jitter"](pts, np.random.default_rng(0)) - pts).max() <= 0.03 + 1e-6
    ratio = augs["scale"](pts, np.random.default_rng(0))[pts != 0] / pts[pts != 0]
    assert ratio.min() >= 0.8 - 1e-6 and ratio.max() <= 1.25 + 1e-6
    dropped = P.point_dropout(pts, np.random.default_rng(3), 0.875)
    changed = (dropped != pts).any(axis=1)
    assert changed.any() and (dropped[changed] == pts[0]).all()


# ----------------------------------------------------------------- errors ----


@pytest.mark.parametrize("cloud, message", [
    (np.zeros((0, 3)), "empty"),
    (np.ones((10, 3)), "identical"),
    (np.array([[0, 0, 0], [1, np.nan, 0], [0, 1, 0]]), "non-finite point.*row 1"),
    (np.zeros((10, 2)), r"shape \[N, 3\]"),
])
def test_validate_points_errors(cloud, message):
    with pytest.raises(P.PointCloudError, match=f"example 3: points.*{message}"):
        P.validate_points(cloud, name="example 3: points")


def test_blank_or_malformed_digit_raises():
    with pytest.raises(P.PointCloudError, match="blank"):
        P.digit_to_points(np.zeros((28, 28, 1), np.uint8), 64, np.random.default_rng(0))
    with pytest.raises(P.PointCloudError, match="shape"):
        P.digit_to_points(np.ones((28, 28, 3), np.uint8), 64, np.random.default_rng(0))


def test_point_tower_learns_shape_classification():
    """Sanity task: the tower + a linear head separates the synthetic primitives
    (randomly rotated in 3-D) on held-out clouds after a short training run."""
    import flax.linen as nn
    import optax

    class Classifier(nn.Module):
        @nn.compact
        def __call__(self, x):
            tower = point.PointTransformer(num_groups=16, group_size=16, width=64, depth=2, num_heads=4,
                                           mlp_dim=128, pointnet_dim=32)
            return nn.Dense(len(P.SHAPES))(tower(x)["pooled"])

    train_x, train_y = P.make_shape_dataset(num_per_class=48, num_points=128, seed=0)
    test_x, test_y = P.make_shape_dataset(num_per_class=16, num_points=128, seed=1)
    model, tx = Classifier(), optax.adam(3e-3)
    params = jax.jit(model.init)(jax.random.key(0), train_x[:2])
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, x, y):
        loss, grads = jax.value_and_grad(
            lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean())(params)
        updates, opt = tx.update(grads, opt)
        return optax.apply_updates(params, updates), opt, loss

    rng = np.random.default_rng(0)
    for _ in range(200):
        idx = rng.choice(len(train_x), 32, replace=False)
        params, opt, _ = step(params, opt, train_x[idx], train_y[idx])
    accuracy = np.mean(np.argmax(jax.jit(model.apply)(params, test_x), axis=1) == test_y)
    assert accuracy >= 0.9, accuracy
