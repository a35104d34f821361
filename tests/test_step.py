"""mmjax.step: the one train step and set-up that training, evaluation, tools/plan.py and the
benchmarks share (the trainer's trajectories, exact resume and 1-vs-8 devices: test_train.py)."""
import pathlib
import sys

import jax
import numpy as np
import pytest

from mmjax import parallel, step
from mmjax.batch_keys import model_inputs
from mmjax.data import pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import plan  # noqa: E402
from configs import clip_digits, data2vec_digits  # noqa: E402


def _batch(specs, rows: int, seed: int = 0) -> dict:
    """Random inputs of `specs` ({key: (shape, dtype)}), `rows` examples, every modality present."""
    rng = np.random.default_rng(seed)

    def make(spec):
        shape, dtype = (rows, *spec[0]), np.dtype(spec[1])
        if dtype == np.bool_:
            return np.ones(shape, bool)
        if np.issubdtype(dtype, np.integer):
            return rng.integers(1, 10, shape).astype(dtype)
        return rng.uniform(-1, 1, shape).astype(dtype)
    return jax.tree.map(make, specs, is_leaf=lambda x: isinstance(x, tuple) and isinstance(x[0], tuple))


@pytest.fixture(scope="module")
def data2vec():
    """A tiny data2vec (EMA teacher) set-up, its layout on a 1-device mesh, the jitted init and step, a batch."""
    config = data2vec_digits.get_config("model=tiny")
    setup = step.build(config)
    mesh = parallel.make_mesh(config.mesh, jax.devices()[:1])
    init_rng, train_rng = step.run_rngs(config.seed)
    layout = step.state_layout(setup, mesh, init_rng)
    batch = _batch(pipeline.input_specs(config.data, setup.tokenizer), 8)
    init = jax.jit(layout.init, out_shardings=layout.shardings)
    return config, setup, layout, init, step.jit_train_step(setup, train_rng, mesh, layout.shardings), batch


def test_teacher_step_updates_the_teacher_by_ema(data2vec):
    config, setup, _, init, train_step, batch = data2vec
    state = init()
    teacher0 = jax.device_get(state["teacher"])
    assert jax.tree.structure(teacher0) == jax.tree.structure(setup.model.teacher_params(state["params"]))
    new, metrics = jax.device_get(train_step(state, batch))  # state is donated
    assert new["step"] == 1
    assert {"loss", "grad_norm", "lr", "ema_decay"} <= set(metrics) and np.isfinite(metrics["loss"])
    d = float(metrics["ema_decay"])
    assert d == pytest.approx(config.model.teacher.ema_start)
    want = jax.tree.map(lambda t, p: d * t + (1 - d) * p, teacher0, setup.model.teacher_params(new["params"]))
    for got, w in zip(jax.tree.leaves(new["teacher"]), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-7)


def test_step_randomness_is_a_function_of_the_step_number(data2vec):
    """fold_in(train_rng, step): the same state and batch give the same bits; another step number
    draws other masks (exact resume relies on the first, every step's fresh masks on the second)."""
    _, _, layout, init, train_step, batch = data2vec
    a, ma = jax.device_get(train_step(init(), batch))
    b, mb = jax.device_get(train_step(init(), batch))
    for x, y in zip(jax.tree.leaves((a, ma)), jax.tree.leaves((b, mb)), strict=True):
        np.testing.assert_array_equal(x, y)
    later = init()
    later["step"] = jax.device_put(later["step"] + 5, layout.shardings["step"])
    _, mc = jax.device_get(train_step(later, batch))
    assert mc["loss"] != ma["loss"]


def test_state_layout_from_specs_matches_a_real_batch():
    """The layout taken from input_specs (no data read) is the one a pipeline batch initialises."""
    config = clip_digits.get_config("model=tiny")
    setup = step.build(config)
    mesh = parallel.make_mesh(config.mesh, jax.devices()[:2])
    layout = step.state_layout(setup, mesh, jax.random.key(0))
    real = pipeline.make_eval_batches(config.data, split=config.data.eval_split, batch_size=8,
                                      tokenizer=setup.tokenizer)[0]
    from_batch = jax.eval_shape(lambda: step.init_state(setup, model_inputs(real), jax.random.key(0)))
    assert jax.tree.map(lambda s: (s.shape, s.dtype), layout.abstract) == \
        jax.tree.map(lambda s: (s.shape, s.dtype), from_batch)
    assert "teacher" not in layout.abstract and not setup.has_teacher


def test_plan_sizes_teacher_models():
    """tools/plan.py traces the step's forward with the EMA teacher's targets: activations included."""
    config = data2vec_digits.get_config("model=tiny")
    p = plan.make_plan(config, plan.parse_mesh("data=2"))
    assert p.activation_bytes > 0
    teacher = sum(leaf.total_bytes for leaf in p.leaves if leaf.path.startswith("teacher/"))
    encoder = sum(leaf.total_bytes for leaf in p.leaves if leaf.path.startswith("params/image_encoder/"))
    assert teacher == encoder > 0  # the teacher mirrors the student's encoder
    assert "not traced" not in plan.format_plan(p, config, plan.parse_mesh("data=2"))


def test_non_finite_step_leaves_params_optimiser_and_teacher_untouched(data2vec):
    """The guard: a NaN in the input makes the loss NaN; that update (params, Adam moments, EMA
    teacher) is dropped and counted with its step number; the next finite step applies as usual."""
    _, setup, _, init, train_step, batch = data2vec

    def host(tree):  # copies: on CPU, fetched arrays may share buffers that later steps reuse
        return jax.tree.map(np.copy, jax.device_get(tree))
    before = host(init())
    poisoned = {k: (np.full_like(v, np.nan) if np.issubdtype(np.asarray(v).dtype, np.floating) else v)
                for k, v in batch.items()}
    after, metrics = host(train_step(init(), poisoned))
    assert not np.isfinite(metrics["loss"])
    for key in ("params", "opt_state", "teacher"):
        for path, a, b in zip(jax.tree.leaves_with_path(before[key]), jax.tree.leaves(before[key]),
                              jax.tree.leaves(after[key]), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{key}{jax.tree_util.keystr(path[0])}")
    assert after["step"] == 1 and metrics["skipped_steps"] == 1
    assert {k: int(v) for k, v in after["guard"].items()} == {"skipped": 1, "consecutive": 1, "last_bad_step": 1}
    again, metrics = host(train_step(jax.device_put(host(after)), batch))
    assert np.isfinite(metrics["loss"]) and again["step"] == 2
    assert {k: int(v) for k, v in again["guard"].items()} == {"skipped": 1, "consecutive": 0, "last_bad_step": 1}
    # optax's schedule counted no update at the skipped step: this one runs at the schedule's step 0 (lr 0)
    assert metrics["lr"] == setup.schedule(0) == 0
    third, metrics = host(train_step(jax.device_put(host(again)), batch))
    assert metrics["lr"] == pytest.approx(float(setup.schedule(1))) and metrics["lr"] > 0
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(again["params"]), jax.tree.leaves(third["params"])))
