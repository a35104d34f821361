"""Gradient accumulation (mmjax.accumulate) against big-batch references.

GradCache must reproduce the global batch's contrastive loss and parameter
update; plain accumulation must be the mean of micro-batch gradients, which for
a per-example-mean loss (MAE) is the global batch's gradient.
"""
import pathlib
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from mmjax import accumulate, parallel, train
from mmjax.data.tokenizer import ByteTokenizer
from mmjax.models import build_model
from mmjax.objectives import get_objective
from mmjax.optim import make_optimizer

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import clip_digits, mae_digits  # noqa: E402

B, K = 32, 4
RNG = jax.random.key(7)


def _forward(model):
    def forward(params, batch, rng):
        return model.apply({"params": params}, batch, rngs={"masking": jax.random.fold_in(rng, 1)})
    return forward


def _loss(name, cfg):
    objective = get_objective(name)
    return lambda outputs, batch, rng: objective(outputs, {**batch, "rng": rng}, cfg)


def _accumulated(forward, loss, steps, mode):
    return jax.jit(lambda p, b: accumulate.value_and_grad(forward, loss, p, b, RNG, {"steps": steps, "mode": mode}))


def _assert_trees_close(a, b, rtol=1e-5, atol=None):
    """allclose leaf by leaf; atol defaults to rtol x the leaf's largest entry (at least 1e-7, for
    leaves whose true gradient is 0, such as attention key biases): sharded or accumulated sums add
    in another order, which moves entries near 0 by ~1e-7 of the leaf's scale."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        tol = max(rtol * float(np.max(np.abs(y))), 1e-7) if atol is None else atol
        np.testing.assert_allclose(x, y, rtol=rtol, atol=tol)


# Params after a step: Adam's first update is lr * g / (|g| + eps), so round-off in a gradient entry
# near 0 is scaled by up to lr / eps = 2e3 (the attention key biases' true gradient is 0, their
# computed one ~1e-9 of noise); 1e-5 is still 1/200 of a step (lr 2e-3).
PARAMS_ATOL = 1e-5


def _rel_diff(a, b) -> float:
    """|a - b| / |b| over whole trees (global L2 norms)."""
    num = sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    return (num / sum(float(jnp.sum(y ** 2)) for y in jax.tree.leaves(b))) ** 0.5


@pytest.fixture(scope="module")
def clip():
    """A tiny image-text model, its params, a batch (B = 32, some modalities absent), and a
    cache of big-batch references: plain jax.value_and_grad on the whole batch, per loss."""
    config = clip_digits.get_config("model=tiny")
    with config.unlocked():
        config.optim.warmup_steps = 0  # the first step at full learning rate
    tok = ByteTokenizer(config.data.text.max_len)
    model = build_model(config.model, tok)
    rng = np.random.default_rng(0)
    captions = [f"a handwritten {w}" for w in rng.choice(["one", "two", "seven", "nine"], B)]
    batch = {"image": rng.uniform(-1, 1, (B, 28, 28, 1)).astype(np.float32), "text": tok.encode_batch(captions),
             "present": {"image": rng.random(B) > 0.1, "text": rng.random(B) > 0.1}}
    params = jax.jit(model.init)(jax.random.key(0), batch)["params"]
    tx, _ = make_optimizer(config.optim, 10)
    # One step of the config's optimiser (AdamW + clipping) from fresh optimiser state.
    update = jax.jit(lambda p, g: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0]))
    references = {}

    def reference(loss_name):
        if loss_name not in references:
            forward, loss = _forward(model), _loss(loss_name, config.objective)
            references[loss_name] = jax.jit(jax.value_and_grad(
                lambda p: loss(forward(p, batch, RNG), batch, RNG), has_aux=True))(params)
        return references[loss_name]
    return SimpleNamespace(config=config, model=model, params=params, batch=batch, update=update,
                           reference=reference)


@pytest.mark.parametrize("loss_name", ["softmax", "sigmoid"])
def test_gradcache_step_equals_big_batch_step(clip, loss_name):
    forward, loss = _forward(clip.model), _loss(loss_name, clip.config.objective)
    (value, metrics), grads = _accumulated(forward, loss, K, "gradcache")(clip.params, clip.batch)
    (want, want_metrics), want_grads = clip.reference(loss_name)
    np.testing.assert_allclose(value, want, rtol=1e-6)
    _assert_trees_close(metrics, want_metrics)
    _assert_trees_close(grads, want_grads)
    assert float(jnp.abs(grads["log_logit_scale"])) > 1e-4  # the temperature gets its (single) gradient
    new, want_new = clip.update(clip.params, grads), clip.update(clip.params, want_grads)
    _assert_trees_close(new, want_new, atol=PARAMS_ATOL)
    assert _rel_diff(want_new, clip.params) > 1e-3  # the step did move the params
    if loss_name == "softmax":
        # Averaging micro-batch losses shrinks every row's negatives to B/K: another gradient.
        _, plain = _accumulated(forward, loss, K, "plain")(clip.params, clip.batch)
        assert _rel_diff(plain, want_grads) > 1e-2


def test_one_step_is_plain_value_and_grad_bitwise(clip):
    forward, loss = _forward(clip.model), _loss("softmax", clip.config.objective)
    got = _accumulated(forward, loss, 1, "gradcache")(clip.params, clip.batch)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(clip.reference("softmax")), strict=True):
        np.testing.assert_array_equal(x, y)


def test_gradcache_on_8_device_mesh(clip):
    """data=4 x fsdp=2: every micro-batch spans all 8 devices; params FSDP-sharded."""
    forward, loss = _forward(clip.model), _loss("softmax", clip.config.objective)
    mesh = parallel.make_mesh({"data": 4, "fsdp": 2, "tensor": 1}, jax.devices()[:8])
    shardings = parallel.tree_shardings(clip.params, mesh, fsdp_min_size=0)
    assert any(s.spec != P() for s in jax.tree.leaves(shardings))  # FSDP does shard some params
    with jax.set_mesh(mesh):
        (value, _), grads = _accumulated(forward, loss, K, "gradcache")(
            jax.device_put(clip.params, shardings), parallel.host_to_global(clip.batch, mesh))
    (want, _), want_grads = clip.reference("softmax")
    np.testing.assert_allclose(value, want, rtol=1e-6)
    _assert_trees_close(grads, want_grads)
    _assert_trees_close(clip.update(clip.params, jax.device_get(grads)), clip.update(clip.params, want_grads),
                        atol=PARAMS_ATOL)


def test_gradcache_rejects_token_objectives(clip):
    loss = _loss("filip", clip.config.objective)
    with pytest.raises(ValueError, match="reads 'tokens'"):
        jax.eval_shape(lambda p: accumulate.value_and_grad(_forward(clip.model), loss, p, clip.batch, RNG,
                                                           {"steps": K, "mode": "gradcache"}), clip.params)


@pytest.fixture(scope="module")
def mae():
    config = mae_digits.get_config("model=tiny")
    model = build_model(config.model)
    images = np.random.default_rng(1).uniform(-1, 1, (B, 28, 28, 1)).astype(np.float32)
    params = jax.jit(model.init)({"params": jax.random.key(0), "masking": jax.random.key(0)},
                                 {"image": images})["params"]
    return config, model, params, {"image": images}


def test_plain_is_mean_of_micro_batches_and_exact_for_mae(mae):
    config, model, params, batch = mae
    forward, loss = _forward(model), _loss("mae", config.objective)
    (value, metrics), grads = _accumulated(forward, loss, K, "plain")(params, batch)

    # Micro-batch j is rows [j*B/K, (j+1)*B/K) (one device) with key split(RNG, K)[j]; vmap runs
    # them side by side with exactly those keys, so both references see the accumulation's masks.
    keys = jax.random.split(RNG, K)

    def references(p):
        outs = jax.vmap(lambda x, key: forward(p, {"image": x}, key))(
            batch["image"].reshape(K, B // K, *batch["image"].shape[1:]), keys)
        # 1: the mean of the micro-batches' losses (its gradient is the mean of their gradients);
        micro = jax.vmap(lambda o, key: loss(o, {}, key)[0])(outs, keys)
        # 2: one loss over the whole batch: MAE's loss is a single mean over every hidden patch of
        # the batch, equal to the mean of micro-batch means since every example hides as many.
        whole = loss(jax.tree.map(lambda x: x.reshape(B, *x.shape[2:]), outs), batch, RNG)[0]
        return jnp.mean(micro), whole

    @jax.jit
    def with_grads(p):
        values, pullback = jax.vjp(references, p)
        one, zero = jnp.ones(()), jnp.zeros(())
        return values, pullback((one, zero))[0], pullback((zero, one))[0]

    (mean, whole), mean_grads, whole_grads = with_grads(params)
    np.testing.assert_allclose(value, mean, rtol=1e-6)
    np.testing.assert_allclose(value, whole, rtol=1e-6)
    _assert_trees_close(grads, mean_grads)
    _assert_trees_close(grads, whole_grads)
    assert "image/mse_visible" in metrics


def test_bad_accumulation_configs_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"multiple of 4 x 8 = 32"):
        accumulate.validate({"steps": 4, "mode": "gradcache"}, 48, 8)
    with pytest.raises(ValueError, match="accumulation.mode='sum'; valid"):
        accumulate.validate({"steps": 2, "mode": "sum"}, 32, 1)
    with pytest.raises(ValueError, match="integer >= 1"):
        accumulate.validate({"steps": 0, "mode": "plain"}, 32, 1)
    accumulate.validate({"steps": 4, "mode": "plain"}, 64, 8)
    # ... and the trainer checks it at start-up, before building any data.
    config = clip_digits.get_config("model=tiny")
    with config.unlocked():
        config.accumulation.steps = 3
    with pytest.raises(ValueError, match="batch_size=32 does not split into accumulation.steps=3"):
        train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:2])
