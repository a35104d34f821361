"""MAE model, its objective, the frozen-feature probes, and a short training run."""
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import evaluate, metrics, train
from mmjax.evals import probe
from mmjax.models import build_model, masking
from mmjax.models.patches import patchify, unpatchify
from mmjax.objectives import get_objective, masked

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import audiomae_fsdd, mae_digits, pointmae_digits  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return mae_digits.get_config("model=tiny")


def test_mae_encoder_never_sees_masked_patches(tiny):
    model = build_model(tiny.model)
    images = jax.random.uniform(jax.random.key(0), (2, 28, 28, 1), minval=-1, maxval=1)
    rngs = {"params": jax.random.key(1), "masking": jax.random.key(2)}
    params = jax.jit(model.init)(rngs, {"image": images})["params"]
    apply = jax.jit(lambda p, x: model.apply({"params": p}, {"image": x}, rngs={"masking": jax.random.key(3)}))
    out = apply(params, images)["masked"]["image"]
    n, keep = 49, 12  # 4x4 patches of 28x28; 75% masked
    assert out["pred"].shape == out["target"].shape == (2, n, 16)
    assert (out["mask"].sum(axis=1) == n - keep).all()
    np.testing.assert_array_equal(out["target"], patchify(images, 4))
    # Overwrite every masked patch's pixels: the encoder only ever saw the
    # visible ones, so the reconstruction is unchanged (same masking key).
    noise = unpatchify(jnp.where(out["mask"][..., None], 5.0, out["target"]), 4, (7, 7))
    again = apply(params, noise)["masked"]["image"]
    np.testing.assert_array_equal(again["mask"], out["mask"])
    np.testing.assert_allclose(again["pred"], out["pred"], atol=1e-6)
    # ... while changing a visible patch does change it
    visible = int(np.flatnonzero(~np.asarray(out["mask"][0]))[0])
    touched = unpatchify(out["target"].at[0, visible].set(5.0), 4, (7, 7))
    assert not np.allclose(apply(params, touched)["masked"]["image"]["pred"][0], out["pred"][0])
    loss, metrics_ = get_objective("mae")({"masked": {"image": out}}, {}, tiny.objective)
    want, _ = masked.mae_loss(out["pred"], out["target"], out["mask"])
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert "image/mse_visible" in metrics_


def _clusters(seed, n, c=4, d=8, spread=0.05):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(c, d)) * 3
    y = rng.integers(0, c, n)
    return centres[y] + spread * rng.normal(size=(n, d)), y


def test_probes_known_answers():
    (xtr, ytr), (xte, yte) = _clusters(0, 400), _clusters(0, 100)
    assert probe.knn_accuracy(xtr, ytr, xte, yte, k=5) == 1.0
    assert probe.ridge_probe_accuracy(xtr, ytr, xte, yte)[0] == 1.0
    # features that carry no information: the probe can do no better than the majority class
    constant = np.ones((400, 8))
    acc, _ = probe.ridge_probe_accuracy(constant, ytr, np.ones((100, 8)), yte)
    assert acc <= np.bincount(yte).max() / len(yte) + 1e-9
    mean, std = probe.few_shot_accuracy(xtr, ytr, xte, yte, ways=3, shots=2, episodes=10)
    assert mean == 1.0 and std == 0.0
    mean, _ = probe.few_shot_accuracy(constant, ytr, np.ones((100, 8)), yte, ways=4, shots=3, episodes=50)
    assert mean == pytest.approx(0.25, abs=0.08)  # identical features: chance (ties go to one class)
    with pytest.raises(ValueError, match="5-way episodes need 5 classes"):
        probe.few_shot_accuracy(xtr, ytr, xte, yte, ways=5)
    # random labels: kNN near chance (1/4) on held-out points
    rng = np.random.default_rng(1)
    acc = probe.knn_accuracy(xtr, rng.integers(0, 4, 400), xte, rng.integers(0, 4, 100), k=5)
    assert acc < 0.45


def test_point_mae_reconstructs_hidden_groups_with_chamfer():
    config = pointmae_digits.get_config("model=tiny")
    model = build_model(config.model)
    clouds = jax.random.normal(jax.random.key(0), (2, 64, 3))
    rngs = {"params": jax.random.key(1), "masking": jax.random.key(2)}
    params = jax.jit(model.init)(rngs, {"points": clouds})["params"]
    out = jax.jit(lambda p, x: model.apply({"params": p}, {"points": x}, rngs={"masking": jax.random.key(3)}))(
        params, clouds)["masked"]["points"]
    g, k = config.model.encoder.num_groups, config.model.encoder.group_size
    assert out["pred"].shape == out["target"].shape == (2, g, k, 3)
    assert (out["mask"].sum(axis=1) == g - masking.num_keep_for(g, 0.6)).all()
    loss, _ = get_objective("mae")({"masked": {"points": out}}, {}, config.objective)
    want, _ = masked.chamfer_l2(out["pred"], out["target"], out["mask"])
    np.testing.assert_allclose(loss, want, rtol=1e-6)


@pytest.mark.parametrize("config_module, modality", [(mae_digits, "image"), (audiomae_fsdd, "audio"),
                                                     (pointmae_digits, "points")])
def test_masked_configs_train_and_probe_from_step_zero(tmp_path, config_module, modality):
    config = config_module.get_config("model=tiny,steps=8")
    with config.unlocked():
        config.tensorboard = False
    final = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:2])
    assert {f"knn_top1_{modality}", f"linear_top1_{modality}", f"5way1shot_{modality}"} <= set(final)
    rows = metrics.read_metrics(str(tmp_path))
    assert rows[0]["step"] == 0 and f"eval/linear_top1_{modality}" in rows[0]  # the untrained baseline
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 8 and losses[-1] < losses[0]
    if modality != "image":
        return
    # the standalone evaluator restores the final checkpoint and reproduces the final numbers
    again = evaluate.evaluate_checkpoint(config, str(tmp_path), devices=jax.devices()[:2])
    assert again["step"] == 8
    for key in ("knn_top1_image", "linear_top1_image"):
        assert again[key] == pytest.approx(final[key], abs=1e-9)
    assert (tmp_path / "eval" / "step_8.json").exists()
