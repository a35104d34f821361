"""Mesh construction, regex/FSDP sharding rules, the optax chain from config."""
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from mmjax import optim, parallel


def test_make_mesh_resolves_minus_one_and_rejects_bad_shapes():
    mesh = parallel.make_mesh({"data": -1, "fsdp": 2, "tensor": 1})
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert parallel.data_parallel_size(mesh) == 8
    assert dict(parallel.make_mesh({"data": -1}, jax.devices()[:1]).shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match="needs 6 devices, have 8"):
        parallel.make_mesh({"data": 3, "fsdp": 2})
    with pytest.raises(ValueError, match="unknown mesh axes"):
        parallel.make_mesh({"dp": -1})
    with pytest.raises(ValueError, match="at most one mesh axis"):
        parallel.make_mesh({"data": -1, "fsdp": -1})


def test_tree_shardings_rules_fsdp_and_divisibility():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    tree = {"params": {"enc": {"mlp": {"kernel": jnp.zeros((64, 256)), "bias": jnp.zeros((256,))},
                               "big": jnp.zeros((6, 1024))},
                       "tiny": jnp.zeros((3,))},
            "opt_state": {"mu": {"enc": {"mlp": {"kernel": jnp.zeros((64, 256))}}}}}
    rules = [(r"mlp/kernel$", (None, "tensor"))]
    sh = parallel.tree_shardings(tree, mesh, rules, fsdp_min_size=1000)
    assert sh["params"]["enc"]["mlp"]["kernel"].spec == P(None, "tensor")
    assert sh["opt_state"]["mu"]["enc"]["mlp"]["kernel"].spec == P(None, "tensor")  # moments follow params
    assert sh["params"]["enc"]["big"].spec == P(None, "fsdp")  # largest divisible dim
    assert sh["params"]["enc"]["mlp"]["bias"].spec == P()  # below threshold: replicated
    assert sh["params"]["tiny"].spec == P()
    with pytest.raises(ValueError, match=r"params/tiny dim 3 does not divide"):
        parallel.tree_shardings(tree, mesh, [(r"tiny", ("tensor",))])
    placed = jax.device_put(tree, sh)
    assert placed["params"]["enc"]["big"].addressable_shards[0].data.shape == (6, 512)


def test_tensor_parallel_rules_split_heads_and_mlp_in_scanned_and_unscanned_params():
    mesh = parallel.make_mesh({"data": 4, "tensor": 2})
    tree = {"blocks": {"attn": {"query": {"kernel": jnp.zeros((3, 8, 4, 2))},  # scanned: [L, D, H, hd]
                                "out": {"kernel": jnp.zeros((3, 4, 2, 8))}},
                       "mlp": {"fc1": {"kernel": jnp.zeros((3, 8, 16)), "bias": jnp.zeros((3, 16))}}},
            "block_00": {"mlp": {"fc2": {"kernel": jnp.zeros((16, 8))}}},
            "ln_final": {"scale": jnp.zeros((8,))}}
    sh = parallel.tree_shardings(tree, mesh, parallel.TENSOR_PARALLEL_RULES)
    assert sh["blocks"]["attn"]["query"]["kernel"].spec == P(None, None, "tensor", None)
    assert sh["blocks"]["attn"]["out"]["kernel"].spec == P(None, "tensor", None, None)
    assert sh["blocks"]["mlp"]["fc1"]["kernel"].spec == P(None, None, "tensor")
    assert sh["blocks"]["mlp"]["fc1"]["bias"].spec == P(None, "tensor")
    assert sh["block_00"]["mlp"]["fc2"]["kernel"].spec == P("tensor", None)
    assert sh["ln_final"]["scale"].spec == P()


def test_host_to_global_shards_batch_rows():
    mesh = parallel.make_mesh({"data": -1})
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    g = parallel.host_to_global({"x": x}, mesh)["x"]
    assert g.shape == (16, 3) and g.sharding.spec == P(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(g), x)
    assert {s.data.shape for s in g.addressable_shards} == {(2, 3)}


def _optim_cfg(**kw):
    base = dict(name="adamw", lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1, b1=0.9, b2=0.98,
                eps=1e-6, weight_decay=0.5, grad_clip_norm=0.0, no_decay_regex=r"bias$", freeze_regex="")
    return ml_collections.ConfigDict({**base, **kw})


def test_schedule_warmup_then_cosine_to_floor():
    sched = optim.make_schedule(_optim_cfg(), total_steps=110)
    np.testing.assert_allclose([sched(0), sched(5), sched(10)], [0.0, 0.5, 1.0], atol=1e-6)
    # halfway through the decay: alpha + (1 - alpha) * 0.5
    np.testing.assert_allclose(sched(60), 0.1 + 0.9 * 0.5, atol=1e-6)
    np.testing.assert_allclose(sched(110), 0.1, atol=1e-6)
    with pytest.raises(ValueError, match="valid: \\['cosine', 'linear', 'constant'\\]"):
        optim.make_schedule(_optim_cfg(schedule="step"), 10)


def test_weight_decay_mask_and_freezing():
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}, "head": {"kernel": jnp.ones((2,))}}
    zero_grads = jax.tree_util.tree_map(jnp.zeros_like, params)
    # With zero gradients only weight decay moves params: kernels shrink, biases don't.
    tx, sched = optim.make_optimizer(_optim_cfg(schedule="constant", warmup_steps=0), total_steps=5)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_allclose(updates["dense"]["bias"], 0.0)
    # Frozen params get exactly zero updates whatever the gradient.
    tx, _ = optim.make_optimizer(_optim_cfg(freeze_regex=r"^head/"), total_steps=5)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
    np.testing.assert_array_equal(updates["head"]["kernel"], 0.0)
    assert np.all(np.asarray(updates["dense"]["kernel"]) != 0)


def test_clipping_matches_optax_global_norm():
    tx, _ = optim.make_optimizer(_optim_cfg(name="sgd", b1=0.0, weight_decay=0.0, grad_clip_norm=1.0,
                                            schedule="constant", warmup_steps=0), total_steps=5)
    params = {"w": jnp.zeros((3,))}
    grads = {"w": jnp.array([3.0, 4.0, 0.0])}
    updates, _ = tx.update(grads, tx.init(params), params)
    chex.assert_trees_all_close(updates, {"w": -jnp.array([0.6, 0.8, 0.0])}, atol=1e-6)
    assert optax.tree.norm(updates) <= 1.0 + 1e-6
