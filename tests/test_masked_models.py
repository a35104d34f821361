"""SimMIM, MultiMAE and masked feature prediction with an EMA teacher: models, objectives, trainer.

References are NumPy formulas on the models' returned arrays; the EMA teacher is
checked on checkpoints of a real run (the EMA rule, the optimiser never touching
it, and an exact resume that includes it).
"""
import pathlib
import shutil
import sys

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mmjax import metrics, teacher, train
from mmjax.models import build_model
from mmjax.models.mae import MaskedAutoencoder
from mmjax.models.patches import mask_to_pixels
from mmjax.objectives import get_objective

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import data2vec_digits, multimae_avdigits, simmim_digits  # noqa: E402

IMAGES = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1), minval=-1, maxval=1)


def _init_and_apply(config):
    """(model, jitted init(batch), jitted apply(params, batch, masking key)) of a config's model."""
    model = build_model(config.model)
    init = jax.jit(lambda b: model.init({"params": jax.random.key(1), "masking": jax.random.key(2)}, b))
    apply = jax.jit(lambda p, b, key: model.apply({"params": p}, b, rngs={"masking": key}))
    return model, init, apply


def _overwrite(x, token_mask, patch):
    """x [B, H, W(, C)] with 5.0 in every patch where token_mask [B, N] is True."""
    grid = (x.shape[1] // patch[0], x.shape[2] // patch[1])
    hidden = np.asarray(mask_to_pixels(jnp.asarray(token_mask), grid, patch))
    return np.where(hidden.reshape(hidden.shape + (1,) * (x.ndim - 3)), 5.0, x).astype(np.float32)


# ---------------------------------------------------------------- SimMIM


@pytest.fixture(scope="module")
def simmim():
    config = simmim_digits.get_config("model=tiny,masking=block,loss=l1")  # the paper's loss, BEiT's blocks
    model, init, apply = _init_and_apply(config)
    return config, init({"image": IMAGES})["params"], apply


def test_simmim_mask_token_replaces_masked_patches_inside_the_encoder(simmim):
    config, params, apply = simmim
    key = jax.random.key(3)
    out = apply(params, {"image": IMAGES}, key)["masked"]["image"]
    pred, target, mask = (np.asarray(out[k]) for k in ("pred", "target", "mask"))
    assert pred.shape == target.shape == (4, 28, 28, 1) and mask.shape == (4, 28, 28)
    np.testing.assert_array_equal(target, IMAGES)
    # Whole 4x4 patches are masked, 60% of the 49 (int(49 * 0.4) = 19 kept).
    tokens = mask.reshape(4, 7, 4, 7, 4).transpose(0, 1, 3, 2, 4).reshape(4, 49, 16)
    assert (tokens.all(-1) | ~tokens.any(-1)).all()
    np.testing.assert_array_equal(tokens[..., 0].sum(1), [49 - 19] * 4)

    # The encoder never sees a masked patch's pixels: overwrite them, same mask, same output ...
    scribbled = _overwrite(target, tokens[..., 0], (4, 4))
    np.testing.assert_allclose(apply(params, {"image": scribbled}, key)["masked"]["image"]["pred"], pred, atol=1e-5)
    # ... it sees the mask token there instead, and every other token sees it through attention.
    # (a random change: a constant shift of every component would vanish in the LayerNorms)
    token = params["image_encoder"]["mask_token"] + jax.random.normal(jax.random.key(9), (32,))
    moved = {**params, "image_encoder": {**params["image_encoder"], "mask_token": token}}
    again = np.asarray(apply(moved, {"image": IMAGES}, key)["masked"]["image"]["pred"])
    assert not np.allclose(again[mask], pred[mask], atol=1e-3)
    assert not np.allclose(again[~mask], pred[~mask], atol=1e-3)

    # L1 on the masked pixels only, against NumPy.
    loss, m = get_objective("simmim")({"masked": {"image": out}}, {}, config.objective)
    np.testing.assert_allclose(loss, np.abs(pred - target)[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(m["image/l1_visible"], np.abs(pred - target)[~mask].mean(), rtol=1e-5)


def test_simmim_block_masking_is_clustered(simmim):
    """Block masking hides contiguous regions: more masked 4-neighbours than random masking would."""
    _, params, apply = simmim
    mask = np.asarray(apply(params, {"image": IMAGES}, jax.random.key(4))["masked"]["image"]["mask"])[:, ::4, ::4]
    same = (mask[:, 1:] == mask[:, :-1]).mean() + (mask[:, :, 1:] == mask[:, :, :-1]).mean()
    # Random masking at 30/49 gives P(neighbours agree) = 1 - 2 p (1 - p) ~ 0.53 per direction.
    assert same / 2 > 0.7


# ---------------------------------------------------------------- MultiMAE


@pytest.fixture(scope="module")
def multimae():
    config = multimae_avdigits.get_config("model=tiny")
    model, init, apply = _init_and_apply(config)
    rng = np.random.default_rng(0)
    b = 8
    batch = {"image": np.asarray(IMAGES[np.arange(b) % 4]), "audio": rng.normal(size=(b, 96, 64)).astype(np.float32),
             "audio_mask": np.arange(96)[None] < np.array([96, 40, 96, 96, 70, 96, 96, 96])[:, None],
             "present": {"image": np.ones(b, bool), "audio": np.arange(b) != 3}}  # example 3 has no audio
    return config, model, init(batch)["params"], apply, batch


def test_multimae_dirichlet_budgets_and_per_modality_losses(multimae):
    config, model, params, apply, batch = multimae
    key = jax.random.key(5)
    out = apply(params, batch, key)
    kept = {m: np.asarray(v) for m, v in out["kept"].items()}
    mask = {m: np.asarray(o["mask"]) for m, o in out["masked"].items()}
    num_keep = config.model.num_keep
    np.testing.assert_array_equal(kept["image"] + kept["audio"], [num_keep] * 8)  # a fixed total budget
    assert len(set(kept["image"].tolist())) > 2  # ... split differently per example
    # Every image token is valid: scored (masked) and kept partition the 49 tokens.
    np.testing.assert_array_equal(mask["image"].sum(1) + kept["image"], [49] * 8)
    # Without audio, the whole budget goes to the image and no audio token is scored.
    assert kept["audio"][3] == 0 and kept["image"][3] == num_keep and not mask["audio"][3].any()
    # Audio tokens of padding frames (8-frame rows past the clip's end) are never scored.
    valid_rows = np.ceil(np.array([96, 40, 96, 96, 70, 96, 96, 96]) / 8).astype(int)
    for i, rows in enumerate(valid_rows):
        assert not mask["audio"][i].reshape(12, 4)[rows:].any()
    assert (mask["audio"].sum(1) + kept["audio"] <= 48).all()

    # No token is both kept and masked: overwriting every scored patch leaves every prediction unchanged.
    scribbled = {**batch, "image": _overwrite(batch["image"], mask["image"], (4, 4)),
                 "audio": _overwrite(batch["audio"], mask["audio"], (8, 16))}
    again = apply(params, scribbled, key)
    for m in ("image", "audio"):
        np.testing.assert_allclose(again["masked"][m]["pred"], out["masked"][m]["pred"], atol=1e-5)

    # Per-modality MSE on scored patches, summed, against NumPy.
    loss, metrics_ = get_objective("mae")(out, batch, config.objective)
    want = {}
    for m, o in out["masked"].items():
        err = ((np.asarray(o["pred"]) - np.asarray(o["target"])) ** 2).mean(-1)
        want[m] = err[mask[m]].mean()
        np.testing.assert_allclose(metrics_[f"{m}/recon_loss"], want[m], rtol=1e-5)
        np.testing.assert_allclose(metrics_[f"{m}/kept"], kept[m].mean(), rtol=1e-6)
    np.testing.assert_allclose(loss, want["image"] + want["audio"], rtol=1e-5)


def test_multimae_embeds_one_modality_alone(multimae):
    _, model, params, _, batch = multimae
    embed = jax.jit(lambda p, x, m: model.apply({"params": p}, x, "audio", m, method="embed")[0])
    z = np.asarray(embed(params, batch["audio"], batch["audio_mask"]))
    assert z.shape == (8, 32) and np.isfinite(z).all()
    # Frames past a clip's end do not matter, as for the audio tower.
    noisy = np.where(batch["audio_mask"][..., None], batch["audio"], 7.0)
    np.testing.assert_allclose(embed(params, noisy, batch["audio_mask"]), z, atol=1e-5)


# ---------------------------------------------------------------- EMA teacher

def _layer_norm(x, p):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * np.asarray(p["scale"]) + np.asarray(p["bias"])


def test_teacher_targets_are_the_top_block_outputs():
    """Targets without normalisation: LN_final of the top block's output is the tower's
    output; the top-2 average adds block 0, whose LN_final is the output of a depth-1
    tower with the same first block; a scanned stack gives the same targets."""
    def model(depth, scan=False):
        encoder = dict(encoder="vit", patch_size=7, width=16, depth=depth, num_heads=2, mlp_dim=32, posemb="sincos",
                       pool="mean", scan=scan)
        return MaskedAutoencoder(modality="image", encoder=encoder, target="features")

    def targets(m, params, top_ks):
        cfg = lambda k: ml_collections.ConfigDict({"top_k": k, "layer_norm": "none", "final_norm": "none"})
        fn = lambda p: [teacher.targets(cfg(k), m, p, {"image": IMAGES})["image"] for k in top_ks]
        return [np.asarray(t) for t in jax.jit(fn)(params)]

    tokens = lambda m, params: np.asarray(jax.jit(m.teacher_encoder().apply)({"params": params}, IMAGES)["tokens"])
    deep, shallow = model(2), model(1)
    params = jax.jit(deep.teacher_encoder().init)(jax.random.key(0), IMAGES)["params"]
    ln_final = params["encoder"]["ln_final"]
    top, both = targets(deep, params, (1, 2))
    np.testing.assert_allclose(_layer_norm(top, ln_final), tokens(deep, params), atol=1e-4)
    first = {**params, "encoder": {k: v for k, v in params["encoder"].items() if k != "block_01"}}
    np.testing.assert_allclose(_layer_norm(2 * both - top, ln_final), tokens(shallow, first), atol=1e-4)

    blocks = [params["encoder"]["block_00"], params["encoder"]["block_01"]]
    stacked = {**params, "encoder": {"blocks": jax.tree.map(lambda *b: jnp.stack(b), *blocks), "ln_final": ln_final}}
    np.testing.assert_allclose(targets(model(2, scan=True), stacked, (2,))[0], both, atol=1e-5)


def _states(workdir):
    manager = ocp.CheckpointManager(pathlib.Path(workdir) / "checkpoints", item_names=("state",))
    restore = lambda s: manager.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    return {s: restore(s) for s in manager.all_steps()}


def _data2vec_config():
    config = data2vec_digits.get_config("model=tiny,steps=2")
    with config.unlocked():
        config.tensorboard, config.eval.probe_modalities, config.eval.at_start = False, (), False
        config.checkpoint.every_steps, config.checkpoint.keep = 1, 10
    return config


@pytest.fixture(scope="module")
def data2vec_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("data2vec")
    train.train_and_evaluate(_data2vec_config(), str(workdir), devices=jax.devices()[:2])
    return workdir


def test_data2vec_trains_and_its_teacher_follows_the_ema_rule(data2vec_run):
    rows = [r for r in metrics.read_metrics(str(data2vec_run)) if "train/loss" in r]
    assert len(rows) == 2 and all(np.isfinite(r["train/loss"]) for r in rows)
    assert {"train/image/feature_loss", "train/image/target_std", "train/ema_decay"} <= set(rows[0])
    states = _states(data2vec_run)
    s1, s2 = states[1], states[2]
    # Step 2 (state step 1 -> 2) used decay d(1) on the student after its optimiser update.
    d = 0.99 + (0.999 - 0.99) * 1 / 2  # linear from ema_start to ema_end over the 2 steps
    np.testing.assert_allclose(rows[1]["train/ema_decay"], d, rtol=1e-6)
    flat = lambda t: flax.traverse_util.flatten_dict(t)
    t1, t2, p2 = flat(s1["teacher"]), flat(s2["teacher"]), flat(s2["params"]["image_encoder"])
    assert t1.keys() == p2.keys()
    for k in t1:
        np.testing.assert_allclose(t2[k], d * t1[k] + (1 - d) * p2[k], rtol=1e-5, atol=1e-7, err_msg=str(k))
    assert max(np.abs(t2[k] - p2[k]).max() for k in t1) > 1e-4  # the teacher lags the student
    # The optimiser's moments cover exactly the student's params: the teacher is not optimised.
    paths = lambda tree: {tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
                          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}
    mu = {p[p.index("mu") + 1:] for p in paths(s2["opt_state"]) if "mu" in p}
    assert mu == paths(s2["params"])


def test_data2vec_resume_is_exact_including_the_teacher(data2vec_run, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(data2vec_run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "2")  # as if preempted after step 1's checkpoint
    train.train_and_evaluate(_data2vec_config(), str(resumed), devices=jax.devices()[:2])
    straight, again = _states(data2vec_run)[2], _states(resumed)[2]
    assert set(straight) == set(again) == {"step", "params", "opt_state", "teacher", "guard"}
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(straight)[0], jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_warm_started_student_is_copied_into_the_teacher(data2vec_run, tmp_path):
    """config.init_from: the encoder comes from another run and the EMA teacher starts as a copy of it."""
    config = _data2vec_config()
    with config.unlocked():
        config.init_from.workdir, config.init_from.params = str(data2vec_run), ("image_encoder",)
    train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:2])
    source, states = _states(data2vec_run)[2]["params"]["image_encoder"], _states(tmp_path)
    d0 = config.model.teacher.ema_start  # the decay of step 0: teacher_1 = d0 * teacher_0 + (1 - d0) * student_1
    flat = lambda t: flax.traverse_util.flatten_dict(t)
    src, t1, p1 = flat(source), flat(states[1]["teacher"]), flat(states[1]["params"]["image_encoder"])
    for k in src:
        np.testing.assert_allclose((t1[k] - (1 - d0) * p1[k]) / d0, src[k], rtol=1e-4, atol=1e-6, err_msg=str(k))
    p2 = flat(states[2]["params"]["image_encoder"])
    assert max(np.abs(p2[k] - src[k]).max() for k in src) > 1e-4  # the student trained on from there


# ---------------------------------------------------------------- the other configs train


@pytest.mark.parametrize("config_module", [simmim_digits, multimae_avdigits])
def test_masked_config_trains(tmp_path, config_module):
    """3 steps of the tiny config (the probes are MAE's, tested in test_mae.py; they cost most of a run)."""
    config = config_module.get_config("model=tiny,steps=3")
    with config.unlocked():
        config.tensorboard, config.eval.at_start, config.eval.probe_modalities = False, False, ()
    train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    rows = [r for r in metrics.read_metrics(str(tmp_path)) if "train/loss" in r]
    assert len(rows) == 3 and all(np.isfinite(r["train/loss"]) for r in rows)
    assert rows[-1]["train/loss"] < rows[0]["train/loss"]
