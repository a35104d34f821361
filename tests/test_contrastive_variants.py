"""Contrastive variants against float64 NumPy references of each paper's formula.

The references are written loop-by-loop from the papers (and, for Symile, the
authors' code), independently of the JAX vectorisation; their gradients are
central finite differences in float64, so `jax.grad` is checked against the
formula itself. Sizes are tiny and each JAX function is jitted once per shape.
"""
import functools
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax import objectives
from mmjax.objectives import contrastive
from mmjax.objectives import contrastive_variants as cv

TOL = dict(rtol=1e-5, atol=1e-5)
CASES = [(0, 1.0), (1, 10.0)]  # (seed, logit scale); B = 5, D = 4 throughout
B, D = 5, 4


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _emb(seed, k=2, b=B, d=D):
    """k unit-norm float32 [b, d] matrices."""
    return list(_unit(np.random.default_rng(seed).normal(size=(k, b, d))).astype(np.float32))


def _lse(x):
    x = np.asarray(x, np.float64)
    return x.max() + np.log(np.sum(np.exp(x - x.max())))


def _numeric_grads(fn, args, argnums, h=1e-6):
    """Central differences of the scalar fn(*args) w.r.t. args[i], i in argnums, in float64."""
    args = [np.array(a, np.float64) if not isinstance(a, (list, tuple)) else [np.array(x, np.float64) for x in a]
            for a in args]
    grads = []
    for i in argnums:
        leaves = args[i] if isinstance(args[i], list) else [args[i]]
        leaf_grads = []
        for leaf in leaves:
            grad = np.zeros_like(leaf)
            for idx in np.ndindex(leaf.shape):
                leaf[idx] += h
                up = fn(*args)
                leaf[idx] -= 2 * h
                down = fn(*args)
                leaf[idx] += h
                grad[idx] = (up - down) / (2 * h)
            leaf_grads.append(grad)
        grads.append(leaf_grads if isinstance(args[i], list) else leaf_grads[0])
    return grads


def _assert_matches(vg, ref, args, argnums, frozen=()):
    """JAX value and grads against the float64 reference and its finite-difference gradients.

    vg: value_and_grad with aux w.r.t. args[argnums + frozen], in that order; the
    gradients w.r.t. `frozen` (stop_gradient inputs) must be exactly zero.
    """
    (loss, _), grads = vg(*args)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, ref(*args), **TOL)
    for got, want in zip(grads[:len(argnums)], _numeric_grads(ref, args, argnums), strict=True):
        for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
            np.testing.assert_allclose(g, w, **TOL)
    for got in grads[len(argnums):]:
        np.testing.assert_array_equal(got, 0.0)


def _vg(fn, argnums=(0, 1, 2), **static):
    """Jitted value_and_grad; one compile per shape, reused across the tests of this module."""
    return jax.jit(jax.value_and_grad(functools.partial(fn, **static), argnums=argnums, has_aux=True))


_softmax_vg = _vg(contrastive.softmax_contrastive_loss)
_dcl_vg = {sigma: _vg(cv.dcl_loss, vmf_sigma=sigma) for sigma in (None, 0.5)}
# beta and tau_plus are traced arguments: every setting shares one compile.
_hard_negative_vg = _vg(cv.hard_negative_loss)
_filip_vg = _vg(cv.filip_loss)
_nt_xent_vg = _vg(cv.nt_xent_loss)


# ---------------------------------------------------------------------------
# float64 references, one per paper
# ---------------------------------------------------------------------------
def np_dcl(za, zb, scale, sigma=None):
    """Yeh et al.: -w_i s_ii / t + log sum_{j != i} exp(s_ij / t), w_i = 2 - B softmax_i(s_ii / sigma)."""
    sim = np.float64(za) @ np.float64(zb).T
    b = len(sim)
    w = np.ones(b) if sigma is None else 2 - b * np.exp(np.diag(sim) / sigma) / np.sum(np.exp(np.diag(sim) / sigma))
    def direction(s):
        return np.mean([-w[i] * scale * s[i, i] + _lse([scale * s[i, j] for j in range(b) if j != i])
                        for i in range(b)])
    return 0.5 * (direction(sim) + direction(sim.T))


def np_hard_negative(za, zb, scale, beta, tau_plus):
    """Robinson et al. (reference code's `criterion`, estimator='hard'), cross-modal negatives."""
    logits = scale * np.float64(za) @ np.float64(zb).T
    b = len(logits)
    def direction(l):
        out = []
        for i in range(b):
            pos, neg = np.exp(l[i, i]), np.exp(np.array([l[i, j] for j in range(b) if j != i]))
            imp = np.exp(beta * np.log(neg))
            reweight = np.sum(imp * neg) / np.mean(imp)
            n = b - 1
            ng = max((-tau_plus * n * pos + reweight) / (1 - tau_plus), n * np.exp(-scale))
            out.append(-np.log(pos / (pos + ng)))
        return np.mean(out)
    return 0.5 * (direction(logits) + direction(logits.T))


def np_cwcl(za, zb, scale, ref_a, ref_b=None):
    """Srinivasa et al.: -1/N sum_i 1/sum_j w_ij sum_j w_ij log softmax_j(<p_i, q_j> / t), w = <r_i, r_j>/2 + 0.5."""
    def weights(r):
        r = _unit(np.float64(r))
        return (r @ r.T) / 2 + 0.5
    w_b = weights(ref_b if ref_b is not None else ref_a)
    w_a = weights(ref_a)
    logits = scale * np.float64(za) @ np.float64(zb).T
    def direction(l, w):
        b = len(l)
        return np.mean([-sum(w[i, j] * (l[i, j] - _lse(l[i])) for j in range(b)) / np.sum(w[i]) for i in range(b)])
    return 0.5 * (direction(logits, w_b) + direction(logits.T, w_a))


def np_filip(ta, tb, scale, ma=None, mb=None):
    """Yao et al.: s^I_ij = mean_k max_r <x_ik, y_jr>, s^T_ij = mean_r max_k, over valid (unpadded) tokens."""
    ta, tb = _unit(np.float64(ta)), _unit(np.float64(tb))
    b = len(ta)
    ma = np.ones(ta.shape[:2], bool) if ma is None else ma
    mb = np.ones(tb.shape[:2], bool) if mb is None else mb
    s_ab, s_ba = np.zeros((b, b)), np.zeros((b, b))
    for i, j in itertools.product(range(b), range(b)):
        cos = ta[i][ma[i]] @ tb[j][mb[j]].T
        s_ab[i, j], s_ba[i, j] = cos.max(axis=1).mean(), cos.max(axis=0).mean()
    l_ab, l_ba = scale * s_ab, scale * s_ba
    return 0.5 * (np.mean([_lse(l_ab[i]) - l_ab[i, i] for i in range(b)])
                  + np.mean([_lse(l_ba[:, j]) - l_ba[j, j] for j in range(b)]))


def np_nt_xent(z1, z2, temperature):
    """Chen et al.: l(i, j) = -log exp(s_ij / t) / sum_{k != i} exp(s_ik / t), mean over all 2B views."""
    z = np.concatenate([np.float64(z1), np.float64(z2)])
    n = len(z1)
    s = z @ z.T / temperature
    return np.mean([_lse([s[i, k] for k in range(2 * n) if k != i]) - s[i, (i + n) % (2 * n)] for i in range(2 * n)])


def np_symile(reps, scale, negatives, perms=None, keep=None):
    """Saporta et al. / rajesh-lab/symile `Symile.forward`: mean over anchors of CE(scale * MIP logits).

    "n": row i's candidates are the positive and, for j != i, the other modalities'
    rows perms[anchor][k][j]; "n_squared": every tuple of the others' rows. With
    `keep`, only kept examples are anchors and candidates use kept rows only.
    """
    reps = [np.float64(r) for r in reps]
    m, b = len(reps), len(reps[0])
    keep = np.ones(b, bool) if keep is None else keep
    mip = lambda x, ys: np.sum(x * np.prod(ys, axis=0))
    losses = []
    for a in range(m):
        others = [r for k, r in enumerate(reps) if k != a]
        rows = []
        for i in np.flatnonzero(keep):
            pos = mip(reps[a][i], [o[i] for o in others])
            if negatives == "n":
                tuples = [[perms[a][k][j] for k in range(m - 1)] for j in range(b) if j != i]
            else:
                tuples = [t for t in itertools.product(range(b), repeat=m - 1) if t != (i,) * (m - 1)]
            cands = [mip(reps[a][i], [o[t] for o, t in zip(others, tup)]) for tup in tuples if keep[list(tup)].all()]
            rows.append(_lse(scale * np.array([pos] + cands)) - scale * pos)
        losses.append(np.mean(rows))
    return np.mean(losses)


# ---------------------------------------------------------------------------
# Losses against the references (value and gradients)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("seed,scale", CASES)
@pytest.mark.parametrize("sigma", [None, 0.5])
def test_dcl_matches_reference(seed, scale, sigma):
    _assert_matches(_dcl_vg[sigma], lambda a, b, s: np_dcl(a, b, s, sigma), (*_emb(seed), np.float32(scale)),
                    (0, 1, 2))


def test_dcl_is_clip_without_the_positive_in_the_denominator():
    """Closed form: CE_dcl,i = CE_clip,i + log(1 - p_ii), p the softmax of each direction."""
    za, zb = _emb(2)
    (dcl, _), _ = _dcl_vg[None](za, zb, jnp.float32(10.0))
    (clip, _), _ = _softmax_vg(za, zb, jnp.float32(10.0))
    logits = 10.0 * np.float64(za) @ np.float64(zb).T
    p_a2b = np.diag(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    p_b2a = np.diag(np.exp(logits) / np.exp(logits).sum(0, keepdims=True))
    np.testing.assert_allclose(dcl, clip + 0.5 * (np.mean(np.log1p(-p_a2b)) + np.mean(np.log1p(-p_b2a))), **TOL)


@pytest.mark.parametrize("seed,scale", CASES)
@pytest.mark.parametrize("beta,tau_plus", [(1.0, 0.1), (0.5, 0.6)])  # (0.5, 0.6) at scale 1: the floor binds
def test_hard_negative_matches_reference(seed, scale, beta, tau_plus):
    vg = lambda a, b, s: _hard_negative_vg(a, b, s, jnp.float32(beta), jnp.float32(tau_plus))
    _assert_matches(vg, lambda a, b, s: np_hard_negative(a, b, s, beta, tau_plus), (*_emb(seed), np.float32(scale)),
                    (0, 1, 2))


@pytest.mark.parametrize("scale", [10.0, 100.0])
def test_hard_negative_with_beta_0_and_tau_plus_0_is_clip(scale):
    za, zb = _emb(3)
    (loss, metrics), grads = _hard_negative_vg(za, zb, jnp.float32(scale), jnp.float32(0.0), jnp.float32(0.0))
    (want, want_metrics), want_grads = _softmax_vg(za, zb, jnp.float32(scale))
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    for got, ref in zip(grads, want_grads):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert metrics.keys() == want_metrics.keys()


@pytest.mark.parametrize("two_refs", [False, True])
def test_cwcl_matches_reference(two_refs):
    za, zb, ra, rb = _emb(4, k=4)
    ref_b = rb if two_refs else None
    vg = _vg(lambda a, b, s, r: cv.cwcl_loss(a, b, s, ref_a=r, ref_b=ref_b), argnums=(0, 1, 2, 3))
    _assert_matches(vg, lambda a, b, s, r: np_cwcl(a, b, s, r, ref_b), (za, zb, np.float32(10.0), ra), (0, 1, 2),
                    frozen=(3,))  # the reference tower is frozen


def _tokens(seed, na=3, nb=2):
    rng = np.random.default_rng(seed)
    ta, tb = rng.normal(size=(B, na, D)), rng.normal(size=(B, nb, D))
    ma, mb = rng.random((B, na)) < 0.7, rng.random((B, nb)) < 0.7
    ma[:, 0] = mb[:, 0] = True  # every example keeps at least one token
    return ta.astype(np.float32), tb.astype(np.float32), ma, mb


@pytest.mark.parametrize("seed,scale", CASES)
def test_filip_matches_reference(seed, scale):
    ta, tb, ma, mb = _tokens(seed)
    _assert_matches(lambda a, b, s: _filip_vg(a, b, s, ma, mb), lambda a, b, s: np_filip(a, b, s, ma, mb),
                    (ta, tb, np.float32(scale)), (0, 1, 2))


def test_filip_with_one_token_is_clip():
    za, zb = _emb(5)
    (loss, _), grads = _filip_vg(za[:, None] * 3.0, zb[:, None], jnp.float32(10.0))
    (want, _), want_grads = _softmax_vg(za, zb, jnp.float32(10.0))
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    # FILIP normalises its tokens, so its gradient is CLIP's with the radial part projected out.
    tangent = want_grads[1] - np.sum(want_grads[1] * zb, axis=1, keepdims=True) * zb
    np.testing.assert_allclose(grads[1][:, 0], tangent, rtol=1e-5, atol=1e-5)


def test_filip_padding_tokens_have_no_effect():
    ta, tb, ma, mb = _tokens(6)
    garbage_a = np.where(ma[..., None], ta, 1e3 * np.random.default_rng(0).normal(size=ta.shape)).astype(np.float32)
    garbage_b = np.where(mb[..., None], tb, 0.0).astype(np.float32)  # zero padding: no NaN from normalising it
    (loss, _), grads = _filip_vg(ta, tb, jnp.float32(10.0), ma, mb)
    (loss_g, _), grads_g = _filip_vg(garbage_a, garbage_b, jnp.float32(10.0), ma, mb)
    np.testing.assert_allclose(loss_g, loss, rtol=1e-6)
    np.testing.assert_array_equal(grads_g[0][~ma], 0.0)
    np.testing.assert_array_equal(grads_g[1][~mb], 0.0)
    np.testing.assert_allclose(grads_g[1][mb], grads[1][mb], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed,temperature", [(0, 1.0), (1, 0.1)])
def test_nt_xent_matches_reference(seed, temperature):
    _assert_matches(_nt_xent_vg, np_nt_xent, (*_emb(seed), np.float32(temperature)), (0, 1, 2))


_symile_vg = {neg: _vg(cv.symile_loss, argnums=(0, 1), negatives=neg) for neg in cv.SYMILE_NEGATIVES}
# The O(N) scheme with example-level presence for the first modality (all True: plain Symile).
_symile_n = jax.jit(lambda reps, key, keep: cv.symile_loss(reps, 10.0, "n", key, valid=[keep, None, None])[0])


@pytest.mark.parametrize("negatives", cv.SYMILE_NEGATIVES)
def test_symile_matches_reference(negatives):
    reps = _emb(7, k=3, b=4, d=3)  # B = 4, D = 3, M = 3
    key = jax.random.key(0)
    perms = np.asarray(cv.symile_shuffles(key, 3, 4))
    vg = lambda r, s: _symile_vg[negatives](r, s, rng=key)
    _assert_matches(vg, lambda r, s: np_symile(r, s, negatives, perms), (reps, np.float32(5.0)), (0, 1))


def test_symile_with_two_modalities_and_all_negatives_is_clip():
    za, zb = _emb(8)
    (loss, _), _ = _symile_vg["n_squared"]([za, zb], jnp.float32(10.0))
    np.testing.assert_allclose(loss, _softmax_vg(za, zb, jnp.float32(10.0))[0][0], rtol=1e-6)


def test_symile_shuffles_are_fixed_by_the_key():
    reps, everyone = _emb(9, k=3), np.ones(B, bool)
    loss = [_symile_n(reps, jax.random.key(s), everyone) for s in (0, 0, 1)]
    assert loss[0] == loss[1] and loss[0] != loss[2]
    with pytest.raises(ValueError, match="rng"):
        cv.symile_loss(reps, 10.0, "n")


def test_symile_drops_examples_without_missing_embedding_in_the_n_scheme():
    reps, keep, key = _emb(11, k=3), np.array([1, 1, 0, 1, 1], bool), jax.random.key(3)
    perms = np.asarray(cv.symile_shuffles(key, 3, B))
    np.testing.assert_allclose(_symile_n(reps, key, keep), np_symile(reps, 10.0, "n", perms, keep), **TOL)


def test_symile_missing_embeddings_fill_absent_rows():
    """The paper's handling: absent examples stay in, represented by a learned 'missing' vector."""
    reps = _emb(10, k=3)
    missing = _unit(np.ones(D)).astype(np.float32)
    present = np.array([1, 0, 1, 1, 0], bool)
    fn = lambda r, miss: cv.symile_loss(r, 10.0, "n_squared", valid=[None, present, None],
                                        missing=[None, miss, None])[0]
    loss, (grad_reps, grad_missing) = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(reps, missing)
    filled = [reps[0], np.where(present[:, None], reps[1], missing), reps[2]]
    np.testing.assert_allclose(loss, np_symile(filled, 10.0, "n_squared"), **TOL)
    np.testing.assert_array_equal(grad_reps[1][~present], 0.0)
    assert np.abs(grad_missing).sum() > 0


# ---------------------------------------------------------------------------
# Presence masks: absent examples are dropped exactly
# ---------------------------------------------------------------------------
DROPPING = {
    "dcl": lambda a, b, v: cv.dcl_loss(a, b, 10.0, valid_a=v, valid_b=v),
    "dclw": lambda a, b, v: cv.dcl_loss(a, b, 10.0, valid_a=v, valid_b=v, vmf_sigma=0.5),
    "hard_negative": lambda a, b, v: cv.hard_negative_loss(a, b, 10.0, 1.0, 0.1, valid_a=v, valid_b=v),
    "cwcl": lambda a, b, v: cv.cwcl_loss(a, b, 10.0, ref_a=a[:, ::-1] + 0.5, valid_a=v, valid_b=v),
    "filip": lambda a, b, v: cv.filip_loss(a[:, None], jnp.stack([b, a], 1), 10.0, valid_a=v, valid_b=v),
    "nt_xent": lambda a, b, v: cv.nt_xent_loss(a, b, 0.2, valid=v),
    "symile": lambda a, b, v: cv.symile_loss([a, b, a * b], 10.0, "n_squared", valid=[v, v, None]),
}
# All losses in one compile each: masked (value and grads) and on the kept subset.
_masked_all = jax.jit(lambda a, b, v: {k: jax.value_and_grad(lambda a, b: fn(a, b, v)[0], argnums=(0, 1))(a, b)
                                       for k, fn in DROPPING.items()})
_subset_all = jax.jit(lambda a, b: {k: fn(a, b, None)[0] for k, fn in DROPPING.items()})


@pytest.mark.parametrize("name", sorted(DROPPING))
def test_absent_examples_are_dropped_exactly(name):
    za, zb = _emb(12, b=7)
    keep = np.array([1, 0, 1, 1, 0, 1, 1], bool)
    loss, (ga, gb) = _masked_all(za, zb, keep)[name]
    np.testing.assert_allclose(loss, _subset_all(za[keep], zb[keep])[name], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ga[~keep], 0.0)
    np.testing.assert_array_equal(gb[~keep], 0.0)
    none, grads = _masked_all(za, zb, np.zeros(7, bool))[name]  # no example present: zero, not NaN
    assert none == 0.0 and all(np.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------------------
# Objective wrappers, registry, weighted sum
# ---------------------------------------------------------------------------
def _outputs():
    image, text, audio, view2, ref = _emb(13, k=5)
    tokens = _tokens(14, na=2, nb=2)
    return {"embeddings": {"image": image, "text": text, "audio": audio, "image_view2": view2},
            "tokens": {"image": tokens[0], "text": tokens[1]}, "token_masks": {"text": tokens[3]},
            "reference": {"image": ref}, "logit_scale": jnp.float32(10.0), "logit_bias": jnp.float32(0.0)}


def _cfg(**fields):
    return ml_collections.ConfigDict(fields)


# name -> (cfg, the loss called directly on the same inputs, metric prefix)
WRAPPED = {
    "dcl": (_cfg(vmf_sigma=0.5), lambda o, e, v, key: cv.dcl_loss(e["image"], e["text"], 10.0, valid_b=v,
                                                                   vmf_sigma=0.5), "image_text"),
    "hard_negative": (_cfg(beta=0.5), lambda o, e, v, key: cv.hard_negative_loss(
        e["image"], e["text"], 10.0, 0.5, 0.1, valid_b=v), "image_text"),
    "cwcl": (_cfg(), lambda o, e, v, key: cv.cwcl_loss(e["image"], e["text"], 10.0, ref_a=o["reference"]["image"],
                                                       valid_b=v), "image_text"),
    "filip": (_cfg(), lambda o, e, v, key: cv.filip_loss(o["tokens"]["image"], o["tokens"]["text"], 10.0,
                                                         token_valid_b=o["token_masks"]["text"], valid_b=v),
              "image_text"),
    "simclr": (_cfg(temperature=0.2), lambda o, e, v, key: cv.nt_xent_loss(e["image"], e["image_view2"], 0.2),
               "image_image_view2"),
    "symile": (_cfg(modalities=("image", "text", "audio"), negatives="n"),
               lambda o, e, v, key: cv.symile_loss([e["image"], e["text"], e["audio"]], 10.0, "n", key,
                                                   valid=[None, v, None], names=("image", "text", "audio")),
               "image_text_audio"),
}


def test_objectives_wrap_their_losses():
    @jax.jit
    def run(out, batch):
        return {name: (objectives.get_objective(name)(out, batch, cfg),
                       direct(out, out["embeddings"], batch["present"]["text"], batch["rng"]))
                for name, (cfg, direct, _) in WRAPPED.items()}
    batch = {"present": {"text": np.array([1, 1, 0, 1, 1], bool)}, "rng": jax.random.key(5)}
    for name, ((loss, metrics), (want, want_metrics)) in run(_outputs(), batch).items():
        np.testing.assert_allclose(loss, want, rtol=1e-6, err_msg=name)
        assert set(metrics) == {f"{WRAPPED[name][2]}/{k}" for k in want_metrics}, name
    assert "image_text_audio/audio_acc" in metrics


def test_weighted_sum_is_the_weighted_sum_of_its_terms():
    out = _outputs()
    terms = ({"name": "softmax", "weight": 0.5, "modalities": ("image", "text")},
             {"name": "simclr", "weight": 2.0, "temperature": 0.2},
             {"name": "softmax", "label": "audio_clip", "modalities": ("audio", "text")})
    loss, metrics = jax.jit(lambda o: cv.weighted_sum_objective(o, {}, _cfg(name="sum", terms=terms)))(out)
    emb, ten = out["embeddings"], jnp.float32(10.0)
    parts = [_softmax_vg(emb["image"], emb["text"], ten)[0][0],
             _nt_xent_vg(emb["image"], emb["image_view2"], jnp.float32(0.2))[0][0],
             _softmax_vg(emb["audio"], emb["text"], ten)[0][0]]
    np.testing.assert_allclose(loss, 0.5 * parts[0] + 2.0 * parts[1] + parts[2], rtol=1e-6)
    np.testing.assert_allclose(metrics["simclr/loss"], parts[1], rtol=1e-6)
    assert {"softmax/image_text/a2b_acc", "simclr/image_image_view2/acc",
            "audio_clip/audio_text/b2a_acc"} <= set(metrics)
    assert objectives.get_objective("sum") is cv.weighted_sum_objective


def test_config_errors_name_the_valid_choices():
    out = _outputs()
    with pytest.raises(ValueError, match=r"\['tau_plu'\]; valid: \['beta', 'modalities', 'tau_plus'\]"):
        cv.hard_negative_objective(out, {}, _cfg(tau_plu=0.1))
    with pytest.raises(ValueError, match=r"tau_plus=1.0.*\[0, 1\)"):
        cv.hard_negative_objective(out, {}, _cfg(tau_plus=1.0))
    with pytest.raises(ValueError, match="reference"):
        cv.cwcl_objective(out, {}, _cfg(modalities=("audio", "text")))
    with pytest.raises(ValueError, match="points"):
        cv.filip_objective(out, {}, _cfg(modalities=("image", "points")))
    with pytest.raises(ValueError, match="two or more"):
        cv.symile_objective(out, {}, _cfg(modalities=("image",)))
    with pytest.raises(ValueError, match=r"\['n', 'n_squared'\]"):
        cv.symile_objective(out, {}, _cfg(modalities=("image", "text"), negatives="all"))
    with pytest.raises(ValueError, match="distinct 'label'"):  # traced only: eval_shape compiles nothing
        twice = _cfg(terms=({"name": "dcl"}, {"name": "dcl"}))
        jax.eval_shape(lambda o: cv.weighted_sum_objective(o, {}, twice), out)
    with pytest.raises(ValueError, match="unknown objective 'nope'"):
        cv.weighted_sum_objective(out, {}, _cfg(terms=({"name": "nope"},)))
