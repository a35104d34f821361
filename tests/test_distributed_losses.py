"""shard_map contrastive losses equal the global-batch losses, value and gradient.

The global losses are themselves checked against float64 references in
test_objectives.py, so here the single-device global version is the reference:
on 8 simulated devices (a 1-D "data" mesh, and data=4 x fsdp=2 with the batch
over both), loss, metrics and the gradients w.r.t. za, zb, scale (and bias)
must match within 1e-5. Masks are traced arguments, so one compile per shape
serves every mask pattern.
"""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from mmjax import objectives, parallel
from mmjax.objectives import contrastive, distributed

TOL = dict(rtol=1e-5, atol=1e-5)
SCALE, BIAS = 10.0, -10.0  # SigLIP's init; a large scale stresses the logits
MESHES = {
    # name: (mesh factory, axis argument, the batch axes it resolves to)
    "data8": (lambda: jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,)), "data", ("data",)),
    # parallel.make_mesh adds a size-1 "tensor" axis; axis=None picks ("data", "fsdp").
    "data4_fsdp2": (lambda: parallel.make_mesh({"data": 4, "fsdp": 2, "tensor": 1}), None, ("data", "fsdp")),
}
KINDS = {  # kind: (global loss, distributed loss, scalar args)
    "sigmoid": (contrastive.sigmoid_contrastive_loss, distributed.sigmoid_loss_ring, (SCALE, BIAS)),
    "softmax": (contrastive.softmax_contrastive_loss, distributed.softmax_loss_gathered, (SCALE,)),
}


@functools.cache
def _mesh(name):
    return MESHES[name][0]()


def _value_and_grad(loss, n_scalars, masked):
    """jit(value_and_grad) w.r.t. (za, zb, *scalars); masks, when used, are traced arguments."""
    def fn(za, zb, *rest):
        scalars, masks = rest[:n_scalars], rest[n_scalars:]
        return loss(za, zb, *scalars, **(dict(zip(("valid_a", "valid_b"), masks)) if masked else {}))
    return jax.jit(jax.value_and_grad(fn, argnums=tuple(range(2 + n_scalars)), has_aux=True))


@functools.cache
def _global_fn(kind, masked):
    global_loss, _, scalars = KINDS[kind]
    return _value_and_grad(global_loss, len(scalars), masked)


@functools.cache
def _distributed_fn(kind, mesh_name, masked):
    _, dist_loss, scalars = KINDS[kind]
    axis = MESHES[mesh_name][1]
    return _value_and_grad(functools.partial(dist_loss, mesh=_mesh(mesh_name), axis=axis), len(scalars), masked)


def _pairs(seed, b, d=16):
    """Correlated unit-norm [B, D] pairs, so the in-batch accuracies are neither 0 nor 1."""
    rng = np.random.default_rng(seed)
    za = rng.normal(size=(b, d))
    zb = za + 1.2 * rng.normal(size=(b, d))
    za /= np.linalg.norm(za, axis=-1, keepdims=True)
    zb /= np.linalg.norm(zb, axis=-1, keepdims=True)
    return za.astype(np.float32), zb.astype(np.float32)


def _masks(seed, b, pattern):
    rng = np.random.default_rng(seed + 100)
    if pattern == "random":  # independent per side: covers one-sided absence
        return rng.random(b) > 0.3, rng.random(b) > 0.3
    return np.zeros(b, bool), np.zeros(b, bool)  # "none present": loss 0, finite grads


def _assert_match(got, want):
    (loss, metrics), grads = got
    (want_loss, want_metrics), want_grads = want
    np.testing.assert_allclose(loss, want_loss, **TOL)
    assert set(metrics) == set(want_metrics)
    for key in want_metrics:
        np.testing.assert_allclose(metrics[key], want_metrics[key], **TOL, err_msg=key)
    for i, (g, w) in enumerate(zip(grads, want_grads)):
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, w, **TOL, err_msg=f"gradient {i}")


def _run(kind, mesh_name, b, masks, seed):
    """(distributed, global) value_and_grad results on the same inputs, the former sharded."""
    za, zb = _pairs(seed, b)
    scalars = tuple(jnp.float32(s) for s in KINDS[kind][2])
    mesh = _mesh(mesh_name)
    rows = NamedSharding(mesh, P(MESHES[mesh_name][2]))
    sharded = [jax.device_put(x, rows) for x in (za, zb, *masks)]
    got = _distributed_fn(kind, mesh_name, bool(masks))(*sharded[:2], *scalars, *sharded[2:])
    want = _global_fn(kind, bool(masks))(za, zb, *scalars, *masks)
    return got, want


@pytest.mark.parametrize("mesh_name", list(MESHES))
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("b", [16, 64])
def test_equals_global_loss_and_grads(kind, mesh_name, b):
    got, want = _run(kind, mesh_name, b, (), seed=b)
    _assert_match(got, want)
    accuracy = float(got[0][1]["a2b_acc"])
    assert 0.0 < accuracy < 1.0, "test data should make the accuracy metric informative"


@pytest.mark.parametrize("mesh_name", list(MESHES))
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("b", [16, 64])
def test_equals_global_with_presence_masks(kind, mesh_name, b):
    for pattern in ("random", "none"):
        got, want = _run(kind, mesh_name, b, _masks(b, b, pattern), seed=b)
        _assert_match(got, want)
        if pattern == "none":
            assert float(got[0][0]) == 0.0


def test_bf16_embeddings_get_bf16_gradients():
    za, zb = (jnp.asarray(z, jnp.bfloat16) for z in _pairs(0, 16))
    for kind in KINDS:
        (loss, _), grads = _distributed_fn(kind, "data8", False)(za, zb, *KINDS[kind][2])
        assert loss.dtype == jnp.float32
        assert grads[0].dtype == grads[1].dtype == jnp.bfloat16


def test_bad_arguments_are_rejected():
    mesh = _mesh("data8")
    za, zb = _pairs(1, 12)  # 12 rows do not split over 8 devices
    with pytest.raises(ValueError, match="does not split"):
        distributed.softmax_loss_gathered(za, zb, SCALE, mesh=mesh)
    with pytest.raises(ValueError, match=r"\['fsdp'\] not in mesh"):
        distributed.sigmoid_loss_ring(za, zb, SCALE, BIAS, mesh=mesh, axis=("data", "fsdp"))
    with pytest.raises(ValueError, match="equal shape"):
        distributed.sigmoid_loss_ring(za, zb[:8], SCALE, BIAS, mesh=mesh)


# ---------------------------------------------------------------------------
# Objective wrappers: same cfg and metrics as "sigmoid" / "softmax", mesh from context
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,reference", [("sigmoid_chunked", "sigmoid"), ("softmax_gathered", "softmax")])
def test_objective_matches_global_objective_under_set_mesh(name, reference):
    za, zb = _pairs(5, 16)
    outputs = {"embeddings": {"image": za, "text": zb},
               "logit_scale": jnp.float32(SCALE), "logit_bias": jnp.float32(BIAS)}
    batch = {"present": {"text": _masks(5, 16, "random")[1]}}
    cfg = ml_collections.ConfigDict({"name": name, "modalities": ("image", "text")})
    mesh = _mesh("data4_fsdp2")
    with jax.set_mesh(mesh):
        loss, metrics = jax.jit(lambda o, b: objectives.get_objective(name)(o, b, cfg))(outputs, batch)
    want, want_metrics = jax.jit(lambda o, b: objectives.get_objective(reference)(o, b, cfg))(outputs, batch)
    np.testing.assert_allclose(loss, want, **TOL)
    assert set(metrics) == set(want_metrics) and "image_text/a2b_acc" in metrics
    with pytest.raises(ValueError, match="jax.set_mesh"):
        objectives.get_objective(name)(outputs, batch, cfg)
