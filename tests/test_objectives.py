"""Contrastive losses against float64 NumPy references of the published formulas.

The references carry hand-derived gradients (checked once against central finite
differences), so the JAX values and `jax.grad` are each compared with an
independent derivation rather than with JAX itself.
"""
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from mmjax import objectives
from mmjax.objectives import contrastive

TOL = dict(rtol=1e-5, atol=1e-5)
# (seed, B, D, logit_scale, logit_bias): unit scale; SigLIP's init (10, -10);
# CLIP's scale cap (100) with a moderate bias.
CASES = [(0, 8, 4, 1.0, 0.0), (1, 16, 32, 10.0, -10.0), (2, 12, 16, 100.0, -3.0)]

# Jitted once per module: each case shape compiles once and is reused by tests.
_softmax_vg = jax.jit(jax.value_and_grad(
    contrastive.softmax_contrastive_loss, argnums=(0, 1, 2), has_aux=True))
_sigmoid_vg = jax.jit(jax.value_and_grad(
    contrastive.sigmoid_contrastive_loss, argnums=(0, 1, 2, 3), has_aux=True))


def _pair(seed, b, d):
    """Two [B, D] float32 unit-norm embedding matrices."""
    z = np.random.default_rng(seed).normal(size=(2, b, d))
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    return z.astype(np.float32)


# ---------------------------------------------------------------------------
# float64 references: loss and analytic gradients
# ---------------------------------------------------------------------------
def _logsumexp(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return np.squeeze(m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True)), axis)


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_softmax_loss(za, zb, scale):
    """CLIP loss; returns (loss, (d/dza, d/dzb, d/dscale))."""
    za, zb = np.float64(za), np.float64(zb)
    b = len(za)
    sim = za @ zb.T
    logits = scale * sim
    diag = np.diag(logits)
    loss = 0.5 * (np.mean(_logsumexp(logits, 1) - diag) + np.mean(_logsumexp(logits, 0) - diag))
    # d/dlogits: each CE direction gives (softmax - onehot) / B along its own axis.
    eye = np.eye(b)
    g = 0.5 / b * ((_softmax(logits, 1) - eye) + (_softmax(logits, 0) - eye))
    return loss, (scale * g @ zb, scale * g.T @ za, np.sum(g * sim))


def np_sigmoid_loss(za, zb, scale, bias):
    """SigLIP loss; returns (loss, (d/dza, d/dzb, d/dscale, d/dbias))."""
    za, zb = np.float64(za), np.float64(zb)
    b = len(za)
    sim = za @ zb.T
    logits = scale * sim + bias
    y = 2.0 * np.eye(b) - 1.0
    # -log_sigmoid(x) = log(1 + exp(-x)), stably as logaddexp(0, -x).
    loss = np.sum(np.logaddexp(0.0, -y * logits)) / b
    # d/dx log(1 + exp(-y x)) = -y * sigmoid(-y x); sigmoid(u) = exp(-log(1 + e^-u)).
    g = -y * np.exp(-np.logaddexp(0.0, y * logits)) / b
    return loss, (scale * g @ zb, scale * g.T @ za, np.sum(g * sim), np.sum(g))


def _central_differences(fn, args, h=1e-6):
    """Numerical gradient of fn(*args)[0] w.r.t. every argument, in float64."""
    args = [np.array(a, dtype=np.float64) for a in args]
    grads = []
    for i, arg in enumerate(args):
        grad = np.zeros_like(arg)
        for idx in np.ndindex(arg.shape):
            shifted = []
            for sign in (1.0, -1.0):
                moved = [a.copy() for a in args]
                moved[i][idx] += sign * h
                shifted.append(fn(*moved)[0])
            grad[idx] = (shifted[0] - shifted[1]) / (2 * h)
        grads.append(grad)
    return grads


@pytest.mark.parametrize("seed,b,d,scale,bias", CASES[:2])
def test_reference_gradients_match_finite_differences(seed, b, d, scale, bias):
    za, zb = _pair(seed, b, d)
    for fn, args in ((np_softmax_loss, (za, zb, scale)),
                     (np_sigmoid_loss, (za, zb, scale, bias))):
        numeric = _central_differences(fn, args)
        for analytic, num in zip(fn(*args)[1], numeric):
            np.testing.assert_allclose(analytic, num, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------
# JAX losses against the references
# ---------------------------------------------------------------------------
def _assert_in_batch_accuracy(metrics, za, zb):
    sim = np.float64(za) @ np.float64(zb).T
    np.testing.assert_allclose(metrics["a2b_acc"], np.mean(sim.argmax(1) == np.arange(len(za))))
    np.testing.assert_allclose(metrics["b2a_acc"], np.mean(sim.argmax(0) == np.arange(len(za))))


@pytest.mark.parametrize("seed,b,d,scale,bias", CASES)
def test_softmax_loss_and_grads_match_reference(seed, b, d, scale, bias):
    del bias  # CLIP has none.
    za, zb = _pair(seed, b, d)
    (loss, metrics), grads = _softmax_vg(za, zb, jnp.float32(scale))
    ref_loss, ref_grads = np_softmax_loss(za, zb, scale)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, ref_loss, **TOL)
    for got, want in zip(grads, ref_grads):
        np.testing.assert_allclose(got, want, **TOL)
    _assert_in_batch_accuracy(metrics, za, zb)
    assert set(metrics) == {"a2b_acc", "b2a_acc", "logit_scale"}
    np.testing.assert_allclose(metrics["logit_scale"], scale)


@pytest.mark.parametrize("seed,b,d,scale,bias", CASES)
def test_sigmoid_loss_and_grads_match_reference(seed, b, d, scale, bias):
    za, zb = _pair(seed, b, d)
    (loss, metrics), grads = _sigmoid_vg(za, zb, jnp.float32(scale), jnp.float32(bias))
    ref_loss, ref_grads = np_sigmoid_loss(za, zb, scale, bias)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, ref_loss, **TOL)
    for got, want in zip(grads, ref_grads):
        np.testing.assert_allclose(got, want, **TOL)
    _assert_in_batch_accuracy(metrics, za, zb)
    assert set(metrics) == {"a2b_acc", "b2a_acc", "logit_scale", "logit_bias"}
    np.testing.assert_allclose([metrics["logit_scale"], metrics["logit_bias"]], [scale, bias])


def test_bf16_inputs_are_computed_in_float32():
    za, zb = _pair(0, 8, 4)
    za16, zb16 = jnp.asarray(za, jnp.bfloat16), jnp.asarray(zb, jnp.bfloat16)
    scale, bias = jnp.float32(10.0), jnp.float32(-10.0)
    for vg, extra in ((_softmax_vg, ()), (_sigmoid_vg, (bias,))):
        (loss16, _), _ = vg(za16, zb16, scale, *extra)
        # bf16 -> f32 is exact, so the result must equal the f32 run on the same values.
        (loss32, _), _ = vg(za16.astype(jnp.float32), zb16.astype(jnp.float32), scale, *extra)
        assert loss16.dtype == jnp.float32
        np.testing.assert_array_equal(loss16, loss32)


def test_mismatched_shapes_rejected():
    with pytest.raises(ValueError, match="equal shape"):
        contrastive.softmax_contrastive_loss(np.ones((4, 3)), np.ones((5, 3)), 1.0)


# ---------------------------------------------------------------------------
# Sharded: GSPMD over a global batch gives the single-device value
# ---------------------------------------------------------------------------
def test_sharded_loss_equals_unsharded():
    assert jax.device_count() == 8, "conftest should provide 8 CPU devices"
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    rows = NamedSharding(mesh, P("data", None))
    _, b, d, scale, bias = CASES[1]  # B = 16: two rows per device
    za, zb = _pair(7, b, d)
    za_s, zb_s = jax.device_put(za, rows), jax.device_put(zb, rows)
    assert len(za_s.sharding.device_set) == 8
    scale, bias = jnp.float32(scale), jnp.float32(bias)
    for vg, extra in ((_softmax_vg, ()), (_sigmoid_vg, (bias,))):
        (loss, metrics), grads = vg(za, zb, scale, *extra)
        (loss_s, metrics_s), grads_s = vg(za_s, zb_s, scale, *extra)
        np.testing.assert_allclose(loss_s, loss, rtol=1e-6, atol=1e-6)
        for key in metrics:
            np.testing.assert_allclose(metrics_s[key], metrics[key], rtol=1e-6, atol=1e-6)
        for got, want in zip(grads_s, grads):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# Objective wrappers and registry
# ---------------------------------------------------------------------------
def _outputs():
    za, zb = _pair(3, 8, 4)
    audio = _pair(4, 8, 4)[0]
    return {"embeddings": {"image": za, "text": zb, "audio": audio},
            "logit_scale": jnp.float32(10.0), "logit_bias": jnp.float32(-10.0)}


@pytest.mark.parametrize("name", ["softmax", "sigmoid"])
def test_objective_wraps_loss_with_prefixed_metrics(name):
    outputs = _outputs()
    cfg = ml_collections.ConfigDict({"name": name, "modalities": ("audio", "text")})
    objective = objectives.get_objective(name)
    loss, metrics = jax.jit(lambda o: objective(o, {}, cfg))(outputs)
    emb = outputs["embeddings"]
    args = (emb["audio"], emb["text"], outputs["logit_scale"])
    if name == "softmax":
        (want, want_metrics), _ = _softmax_vg(*args)
    else:
        (want, want_metrics), _ = _sigmoid_vg(*args, outputs["logit_bias"])
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert set(metrics) == {f"audio_text/{k}" for k in want_metrics}


def test_objective_defaults_to_image_text():
    cfg = ml_collections.ConfigDict({"name": "softmax"})
    _, metrics = jax.jit(lambda o: contrastive.softmax_objective(o, {}, cfg))(_outputs())
    assert "image_text/a2b_acc" in metrics


def test_objective_config_errors():
    # the message lists the whole registry, whatever families it holds
    with pytest.raises(ValueError, match=re.escape(f"valid names: {sorted(objectives.OBJECTIVES)}")):
        objectives.get_objective("infonce")
    cfg = ml_collections.ConfigDict({"name": "softmax", "modalities": ("image", "points")})
    with pytest.raises(ValueError, match="points"):
        contrastive.softmax_objective(_outputs(), {}, cfg)
    cfg.modalities = ("image",)
    with pytest.raises(ValueError, match="exactly two"):
        contrastive.softmax_objective(_outputs(), {}, cfg)
    assert {name: objectives.get_objective(name) for name in ("softmax", "sigmoid", "bind")} == {
        "softmax": contrastive.softmax_objective, "sigmoid": contrastive.sigmoid_objective,
        "bind": contrastive.binding_objective}


# ---------------------------------------------------------------------------
# Missing modalities: presence masks
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_absent_examples_are_dropped_exactly(kind):
    """Examples lacking both modalities leave the loss of the rest unchanged, and get no gradient."""
    za, zb = _pair(11, 12, 8)
    keep = np.array([1, 1, 0, 1, 0, 1, 1, 1, 0, 1, 1, 0], bool)
    loss_fn = contrastive.PAIR_LOSSES[kind].fn
    extra = (jnp.float32(-5.0),) if kind == "sigmoid" else ()
    masked = jax.jit(jax.value_and_grad(lambda a, b: loss_fn(a, b, 10.0, *extra, valid_a=keep, valid_b=keep)[0],
                                        argnums=(0, 1)))
    loss, (ga, gb) = masked(za, zb)
    want = loss_fn(za[keep], zb[keep], 10.0, *extra)[0]
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    np.testing.assert_array_equal(ga[~keep], 0.0)
    np.testing.assert_array_equal(gb[~keep], 0.0)
    assert np.isfinite(ga).all() and np.isfinite(gb).all()


def test_one_sided_absence_matches_numpy_reference():
    """a_i present, b_i absent: a_i is no query but still a negative for b's queries."""
    za, zb = _pair(12, 6, 4)
    va = np.array([1, 1, 1, 1, 1, 0], bool)
    vb = np.array([1, 0, 1, 1, 1, 1], bool)
    logits = 5.0 * np.float64(za) @ np.float64(zb).T
    pair = va & vb
    ce_a2b = [_logsumexp(logits[i, vb], 0) - logits[i, i] for i in np.flatnonzero(pair)]
    ce_b2a = [_logsumexp(logits[va, j], 0) - logits[j, j] for j in np.flatnonzero(pair)]
    want = 0.5 * (np.mean(ce_a2b) + np.mean(ce_b2a))
    got, _ = contrastive.softmax_contrastive_loss(za, zb, 5.0, valid_a=va, valid_b=vb)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    counted = va[:, None] & vb[None, :]
    y = 2.0 * np.eye(6) - 1.0
    want_sig = np.sum(np.logaddexp(0.0, -y * (logits - 2.0))[counted]) / pair.sum()
    got_sig, _ = contrastive.sigmoid_contrastive_loss(za, zb, 5.0, -2.0, valid_a=va, valid_b=vb)
    np.testing.assert_allclose(got_sig, want_sig, rtol=1e-5)


def test_no_present_pair_gives_zero_loss_and_finite_grads():
    za, zb = _pair(13, 4, 4)
    none = np.zeros(4, bool)
    loss, grads = jax.value_and_grad(lambda a: contrastive.softmax_contrastive_loss(
        a, zb, 10.0, valid_a=none, valid_b=none)[0])(za)
    assert loss == 0.0 and np.isfinite(grads).all()


def _bind_cfg(**kw):
    return ml_collections.ConfigDict({"name": "bind", "anchor": "image", "modalities": ("audio", "text"),
                                      "mode": "anchor", "pair_loss": "softmax", "weights": {}, **kw})


def test_binding_is_weighted_sum_of_pair_losses():
    outputs = _outputs()
    emb = outputs["embeddings"]
    present = {"audio": np.array([1, 1, 0, 1, 1, 1, 0, 1], bool)}
    cfg = _bind_cfg(weights={"image_audio": 0.5})
    loss, metrics = contrastive.binding_objective(outputs, {"present": present}, cfg)
    l_ia = contrastive.softmax_contrastive_loss(emb["image"], emb["audio"], 10.0, valid_b=present["audio"])[0]
    l_it = contrastive.softmax_contrastive_loss(emb["image"], emb["text"], 10.0)[0]
    np.testing.assert_allclose(loss, 0.5 * l_ia + l_it, rtol=1e-6)
    assert {"image_audio/loss", "image_text/loss", "image_text/a2b_acc"} <= set(metrics)
    # all pairs: three unordered pairs of three modalities
    assert contrastive.binding_pairs(_bind_cfg(mode="all_pairs")) == [
        ("image", "audio"), ("image", "text"), ("audio", "text")]
    # a modality missing from the whole batch is skipped, not an error
    del outputs["embeddings"]["audio"]
    loss_no_audio, _ = contrastive.binding_objective(outputs, {}, cfg)
    np.testing.assert_allclose(loss_no_audio, l_it, rtol=1e-6)
    with pytest.raises(ValueError, match=r"unknown pairs \['text_image'\]"):
        contrastive.binding_objective(outputs, {}, _bind_cfg(weights={"text_image": 1.0}))
    with pytest.raises(ValueError, match=r"valid: \['anchor', 'all_pairs'\]"):
        contrastive.binding_pairs(_bind_cfg(mode="star"))
