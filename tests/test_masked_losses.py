"""Masked-modelling losses against independent float64 NumPy references.

Gradients are checked against central differences of the NumPy reference;
"masked only" means neither the value nor the gradient sees predictions at
positions the loss does not score.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.models.patches import mask_to_pixels, patchify, patchify_spectrogram, unpatchify, unpatchify_spectrogram
from mmjax.objectives import masked
from mmjax.teacher import average_layer_targets, ema_schedule, ema_update

RNG = np.random.default_rng(0)


def numeric_grad(f, x, eps=1e-6):
    """Central differences of a float64 NumPy function f at x."""
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        hi, lo = x.copy(), x.copy()
        hi[i] += eps
        lo[i] -= eps
        grad[i] = (f(hi) - f(lo)) / (2 * eps)
    return grad


def check_value_and_grad(jax_fn, ref_fn, x, rtol=2e-5):
    """jax_fn(x) -> (loss, aux); ref_fn(x float64) -> loss. Returns the JAX gradient."""
    (loss, _), grad = jax_fn(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(loss, ref_fn(x), rtol=rtol, atol=1e-7)
    np.testing.assert_allclose(grad, numeric_grad(ref_fn, x), rtol=1e-3, atol=2e-6)
    return np.asarray(grad)


# ---------------------------------------------------------------- patchify


def test_patchify_matches_mae_layout_and_round_trips():
    images = RNG.normal(size=(2, 8, 12, 3)).astype(np.float32)
    p = 4
    # MAE: 'nchpwq->nhwpqc' on NCHW images.
    ref = images.transpose(0, 3, 1, 2).reshape(2, 3, 2, p, 3, p)
    ref = np.einsum("nchpwq->nhwpqc", ref).reshape(2, 6, p * p * 3)
    patches = patchify(jnp.asarray(images), p)
    np.testing.assert_array_equal(patches, ref)
    np.testing.assert_array_equal(unpatchify(patches, p, (2, 3)), images)
    rect = patchify(jnp.asarray(images), (2, 4))
    assert rect.shape == (2, 12, 24)
    np.testing.assert_array_equal(unpatchify(rect, (2, 4), (4, 3)), images)
    with pytest.raises(ValueError, match="divisible"):
        patchify(jnp.asarray(images), 5)


def test_patchify_spectrogram_is_time_major_and_round_trips():
    spec = RNG.normal(size=(2, 8, 6)).astype(np.float32)  # [B, T, F]
    pt, pf = 4, 2
    patches = np.asarray(patchify_spectrogram(jnp.asarray(spec), (pt, pf)))
    assert patches.shape == (2, 2 * 3, pt * pf)
    for t in range(2):
        for f in range(3):  # token t * Fp + f, as in the audio tower
            block = spec[:, t * pt:(t + 1) * pt, f * pf:(f + 1) * pf]
            np.testing.assert_array_equal(patches[:, t * 3 + f], block.reshape(2, -1))
    np.testing.assert_array_equal(unpatchify_spectrogram(jnp.asarray(patches), (pt, pf), (2, 3)), spec)


def test_mask_to_pixels_repeats_each_token():
    mask = RNG.random((2, 6)) < 0.5
    pixels = mask_to_pixels(jnp.asarray(mask), (2, 3), 4)
    ref = mask.reshape(2, 2, 3).repeat(4, axis=1).repeat(4, axis=2)  # SimMIM's repeat_interleave
    np.testing.assert_array_equal(pixels, ref)


# ---------------------------------------------------------------- MAE

B, N, P = 2, 6, 8
MASK = np.array([[True, False, True, True, False, False], [False, True, True, False, True, True]])
TARGET = RNG.normal(size=(B, N, P))
PRED = RNG.normal(size=(B, N, P))


def mae_ref(pred, target, mask, norm_pix):
    if norm_pix:
        target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
    per_patch = ((pred - target) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum()


mae_grad = jax.jit(jax.value_and_grad(lambda p, t, m, n: masked.mae_loss(p, t, m, n), has_aux=True), static_argnums=3)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_mae_loss_matches_reference(norm_pix):
    grad = check_value_and_grad(lambda x: mae_grad(x, TARGET, MASK, norm_pix),
                                lambda x: mae_ref(x, TARGET, MASK, norm_pix), PRED)
    assert (grad[~MASK] == 0).all()
    (_, metrics), _ = mae_grad(PRED, TARGET, MASK, norm_pix)
    np.testing.assert_allclose(metrics["mse_visible"], mae_ref(PRED, TARGET, ~MASK, norm_pix), rtol=1e-5)


def test_mae_loss_ignores_visible_predictions():
    changed = PRED.copy()
    changed[~MASK] = 1e3
    (loss, _), grad = mae_grad(changed, TARGET, MASK, False)
    (ref, _), ref_grad = mae_grad(PRED, TARGET, MASK, False)
    assert loss == ref
    np.testing.assert_array_equal(grad, ref_grad)
    (empty, _), _ = mae_grad(PRED, TARGET, np.zeros_like(MASK), False)
    assert empty == 0.0


# ---------------------------------------------------------------- SimMIM

IMG = RNG.normal(size=(2, 4, 6, 3))
IMG_PRED = RNG.normal(size=(2, 4, 6, 3))
PIX_MASK = np.asarray(mask_to_pixels(jnp.asarray(MASK), (2, 3), 2))


def simmim_ref(pred, target, mask_pixels, loss="l1"):
    # SimMIM: mask [B, 1, H, W]; (|x - x_rec| * mask).sum() / (mask.sum() + 1e-5) / in_chans (l2: squared error)
    mask = mask_pixels[:, None].astype(np.float64)
    err = (np.abs(pred - target) if loss == "l1" else (pred - target) ** 2).transpose(0, 3, 1, 2)
    return (err * mask).sum() / (mask.sum() + 1e-5) / pred.shape[-1]


simmim_grad = jax.jit(jax.value_and_grad(masked.simmim_loss, has_aux=True), static_argnames="loss")


@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_simmim_loss_matches_reference_and_ignores_visible_pixels(loss):
    grad = check_value_and_grad(lambda x: simmim_grad(x, IMG, PIX_MASK, loss=loss),
                                lambda x: simmim_ref(x, IMG, PIX_MASK, loss), IMG_PRED)
    assert (grad[~PIX_MASK] == 0).all()
    changed = IMG_PRED.copy()
    changed[~PIX_MASK] += 10.0
    assert simmim_grad(changed, IMG, PIX_MASK, loss=loss)[0][0] == simmim_grad(IMG_PRED, IMG, PIX_MASK, loss=loss)[0][0]
    with pytest.raises(ValueError, match="loss='l3'; valid: 'l1', 'l2'"):
        masked.simmim_loss(IMG_PRED, IMG, PIX_MASK, loss="l3")


# ---------------------------------------------------------------- Point-MAE Chamfer

PTS_TARGET = RNG.normal(size=(2, 3, 5, 3))
PTS_PRED = RNG.normal(size=(2, 3, 4, 3))  # fewer predicted points than target points
GROUPS = np.array([[True, False, True], [False, True, True]])


def chamfer_ref(pred, target, group_mask):
    """Brute force over every point pair of every scored group (Point-MAE's
    ChamferDistanceL2 on the flattened masked groups: mean(dist1) + mean(dist2))."""
    dist1, dist2 = [], []
    for b, g in zip(*np.nonzero(group_mask)):
        for p in pred[b, g]:
            dist1.append(min(((p - t) ** 2).sum() for t in target[b, g]))
        for t in target[b, g]:
            dist2.append(min(((p - t) ** 2).sum() for p in pred[b, g]))
    return np.mean(dist1) + np.mean(dist2)


chamfer_grad = jax.jit(jax.value_and_grad(masked.chamfer_l2, has_aux=True))


def test_chamfer_l2_matches_brute_force():
    grad = check_value_and_grad(lambda x: chamfer_grad(x, PTS_TARGET, GROUPS),
                                lambda x: chamfer_ref(x, PTS_TARGET, GROUPS), PTS_PRED)
    assert (grad[~GROUPS] == 0).all()
    loss_all, metrics = masked.chamfer_l2(jnp.asarray(PTS_PRED), jnp.asarray(PTS_TARGET))
    np.testing.assert_allclose(loss_all, chamfer_ref(PTS_PRED, PTS_TARGET, np.ones((2, 3), bool)), rtol=1e-5)
    halves = metrics["chamfer_pred_to_target"] + metrics["chamfer_target_to_pred"]
    np.testing.assert_allclose(halves, loss_all, rtol=1e-6)


def test_chamfer_l2_ignores_unscored_groups_and_is_zero_on_a_permuted_copy():
    changed = PTS_PRED.copy()
    changed[~GROUPS] = 1e3
    assert chamfer_grad(changed, PTS_TARGET, GROUPS)[0][0] == chamfer_grad(PTS_PRED, PTS_TARGET, GROUPS)[0][0]
    shuffled = PTS_TARGET[:, :, ::-1]
    loss, _ = masked.chamfer_l2(jnp.asarray(shuffled), jnp.asarray(PTS_TARGET))
    assert float(loss) == 0.0


# ---------------------------------------------------------------- feature regression

D = 6
FEAT_PRED = RNG.normal(size=(B, N, D))
TEACHER = RNG.normal(size=(B, N, D)) * 3 + 1


def norm_ref(x, kind):
    if kind == "layer":
        return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    if kind == "instance":
        return (x - x.mean(-2, keepdims=True)) / np.sqrt(x.var(-2, keepdims=True) + 1e-5)
    return x


def regression_ref(pred, teacher, mask, kind, norm, beta=1.0):
    t = norm_ref(teacher, norm)
    d = pred - t
    if kind == "l2":
        per = (d ** 2).sum(-1) / np.sqrt(D)
    elif kind == "smooth_l1":  # torch smooth_l1_loss(beta), summed over D, data2vec's 1/sqrt(D)
        per = np.where(np.abs(d) < beta, 0.5 * d ** 2 / beta, np.abs(d) - 0.5 * beta).sum(-1) / np.sqrt(D)
    else:
        per = 1 - (pred * t).sum(-1) / (np.linalg.norm(pred, axis=-1) * np.linalg.norm(t, axis=-1))
    return per[mask].mean()


regression_grad = jax.jit(
    jax.value_and_grad(lambda p, t, m, kind, norm: masked.feature_regression_loss(
        p, t, m, kind=kind, normalize_targets=norm, beta=0.5), argnums=(0, 1), has_aux=True),
    static_argnums=(3, 4))


@pytest.mark.parametrize("kind,norm", [("l2", "layer"), ("smooth_l1", "instance"), ("cosine", "none")])
def test_feature_regression_matches_reference(kind, norm):
    ref = lambda x: regression_ref(x, TEACHER, MASK, kind, norm, beta=0.5)
    def pred_grad(x):  # drop the teacher's gradient
        value, (grad, _) = regression_grad(x, TEACHER, MASK, kind, norm)
        return value, grad
    grad = check_value_and_grad(pred_grad, ref, FEAT_PRED)
    assert (grad[~MASK] == 0).all()
    (_, metrics), (_, teacher_grad) = regression_grad(FEAT_PRED, TEACHER, MASK, kind, norm)
    assert not np.asarray(teacher_grad).any()  # targets are constants
    t = norm_ref(TEACHER, norm)[MASK]
    np.testing.assert_allclose(metrics["target_std"], t.std(0).mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["pred_std"], FEAT_PRED[MASK].std(0).mean(), rtol=1e-5)
    cosine = 1 - regression_ref(FEAT_PRED, TEACHER, MASK, "cosine", norm)
    np.testing.assert_allclose(metrics["cosine"], cosine, rtol=1e-5)


def test_feature_regression_masked_only_and_all_tokens_by_default():
    changed = FEAT_PRED.copy()
    changed[~MASK] = 1e3
    (a, _), _ = regression_grad(changed, TEACHER, MASK, "l2", "none")
    (b, _), _ = regression_grad(FEAT_PRED, TEACHER, MASK, "l2", "none")
    assert a == b
    loss, _ = masked.feature_regression_loss(jnp.asarray(FEAT_PRED), jnp.asarray(TEACHER), scale=1 / D)
    np.testing.assert_allclose(loss, ((FEAT_PRED - TEACHER) ** 2).mean(), rtol=1e-5)  # scale=1/D is plain MSE
    with pytest.raises(ValueError, match="valid"):
        masked.feature_regression_loss(jnp.asarray(FEAT_PRED), jnp.asarray(TEACHER), kind="l3")


def test_average_layer_targets_matches_reference():
    layers = RNG.normal(size=(3, B, N, D)) * 2
    ref = norm_ref(np.mean([norm_ref(x, "instance") for x in layers], axis=0), "layer")
    got = average_layer_targets(jnp.asarray(layers), layer_norm="instance", final_norm="layer")
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- EMA


def test_ema_update_formula_and_dtypes():
    teacher = {"w": jnp.array([1.0, 2.0]), "b": {"c": jnp.array(4.0)}}
    student = {"w": jnp.array([3.0, 0.0]), "b": {"c": jnp.array(0.0)}}
    new = ema_update(teacher, student, 0.75)
    np.testing.assert_allclose(new["w"], [1.5, 1.5])
    np.testing.assert_allclose(new["b"]["c"], 3.0)
    assert jax.tree.map(lambda x: x.dtype, new) == jax.tree.map(lambda x: x.dtype, teacher)
    same = ema_update(teacher, student, 1.0)
    np.testing.assert_array_equal(same["w"], teacher["w"])


def test_ema_schedule():
    linear = jax.jit(lambda s: ema_schedule(s, 0.999, 0.9999, 100))
    np.testing.assert_allclose([linear(0), linear(50), linear(100), linear(1000)],
                               [0.999, 0.99945, 0.9999, 0.9999], rtol=1e-7)
    cosine = [ema_schedule(s, 0.99, 1.0, 10, kind="cosine") for s in (0, 5, 10)]
    np.testing.assert_allclose(cosine, [0.99, 0.995, 1.0], rtol=1e-7)
    with pytest.raises(ValueError, match="valid"):
        ema_schedule(0, 0.9, 1.0, 10, kind="step")
