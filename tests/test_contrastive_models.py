"""The contrastive family's model side: token embeddings and masks (FILIP), a frozen
reference tower restored from a run (CWCL), second views (SimCLR / TCL), learned
missing embeddings (Symile), and every contrastive config training two steps."""
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax import checkpoint as ckpt_lib
from mmjax import parallel, train
from mmjax.data import pipeline
from mmjax.data.modalities import ExampleTransform
from mmjax.data.tokenizer import get_tokenizer
from mmjax.evals.suite import EvalSuite
from mmjax.models import build_model
from mmjax.models.towers import ContrastiveModel, restore_reference
from mmjax.objectives import get_objective
from mmjax.objectives.contrastive_variants import symile_loss
from mmjax.optim import make_optimizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs import clip_digits, cwcl_digits, filip_digits, symile_avdigits, tcl_digits  # noqa: E402

B = 8
TINY = dict(width=32, depth=1, num_heads=2, mlp_dim=64)


def _tokenizer(config):
    return get_tokenizer(config.data.tokenizer, config.data.text_len)


def _train_batches(config, n=2, seed=0):
    """The first n real training batches of B examples (what the trainer's step sees)."""
    it = pipeline.make_train_iterator(config.data, global_batch_size=B, seed=seed, tokenizer=_tokenizer(config),
                                      shard_index=0, shard_count=1)
    return [train.model_inputs(next(it)) for _ in range(n)]


def _train(config, batches):
    """The trainer's step (model, objective, optimiser from `config`; the first step's lr is 0,
    as in the trainer) over `batches` on one device, with one rng for every step (Symile's
    shuffles stay put). Returns (losses, first step's grads, params before, params after)."""
    model = build_model(config.model, _tokenizer(config))
    objective = get_objective(config.objective.name)
    tx, _ = make_optimizer(config.optim, config.total_steps)
    params = restore_reference(config.model, jax.jit(model.init)(jax.random.key(0), batches[0])["params"])

    @jax.jit
    def step(params, opt_state, batch):
        def loss_fn(p):
            outputs = model.apply({"params": p}, batch)
            return objective(outputs, {**batch, "rng": jax.random.key(0)}, config.objective)[0]
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    state, opt_state, losses, grads = params, tx.init(params), [], []
    with jax.set_mesh(parallel.make_mesh(config.mesh, jax.devices()[:1])):  # distributed losses read it
        for batch in batches:
            state, opt_state, loss, g = step(state, opt_state, batch)
            losses.append(float(loss))
            grads.append(g)
    return losses, grads[0], params, state


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ---------------------------------------------------------------------------- FILIP: tokens and masks
@pytest.fixture(scope="module")
def token_model():
    """Tiny text (eot id 2), audio (6 x 4 patches of 16 x 16) and image (4 x 4 patches) towers."""
    towers = {"text": dict(encoder="text", vocab_size=16, max_len=10, eot_id=2, **TINY),
              "audio": dict(encoder="audio", patch_time=16, patch_freq=16, **TINY),
              "image": dict(encoder="vit", patch_size=7, **TINY)}
    rng = np.random.default_rng(0)
    text = rng.integers(3, 16, size=(4, 10)).astype(np.int32)
    for row, (eot, tail) in enumerate([(0, 0), (3, 2), (9, 0), (5, 7)]):  # a second eot or pad ids after it
        text[row, eot], text[row, eot + 1:] = 2, tail
    frames = np.array([96, 1, 40, 17])  # valid frames per clip
    batch = {"text": text, "image": rng.normal(size=(4, 28, 28, 1)).astype(np.float32),
             "audio": rng.normal(size=(4, 96, 64)).astype(np.float32),
             "audio_mask": np.arange(96)[None, :] < frames[:, None]}
    models = {p: ContrastiveModel(towers=towers, embed_dim=24, project_tokens=p) for p in (False, True)}
    params = jax.jit(models[True].init)(jax.random.key(0), batch)["params"]
    outputs = {p: jax.jit(m.apply)({"params": params}, batch) for p, m in models.items()}
    return batch, params, outputs


def test_token_masks_mark_the_tokens_that_hold_input(token_model):
    batch, _, outputs = token_model
    masks = outputs[True]["token_masks"]
    # text: up to and including the first eot; later eots and pad ids are padding
    expect_text = np.array([np.arange(10) <= list(row).index(2) for row in batch["text"]])
    np.testing.assert_array_equal(masks["text"], expect_text)
    # audio: token k is time patch k // 4 (time-major), valid if any of its 16 frames is
    expect_audio = np.array([[batch["audio_mask"][i, (k // 4) * 16:(k // 4 + 1) * 16].any() for k in range(24)]
                             for i in range(4)])
    np.testing.assert_array_equal(masks["audio"], expect_audio)
    assert expect_audio.sum(1).tolist() == [24, 4, 12, 8]  # 6, 1, 3 (40 frames), 2 (17 frames) time patches
    np.testing.assert_array_equal(masks["image"], np.ones((4, 16), bool))  # every patch, no class token
    assert {m: outputs[False]["tokens"][m].shape[1] for m in masks} == {"text": 10, "audio": 24, "image": 16}


def test_projected_tokens_are_unit_vectors_of_the_shared_projection(token_model):
    _, params, outputs = token_model
    for m in ("text", "audio", "image"):
        raw, projected = (np.asarray(outputs[p]["tokens"][m], np.float64) for p in (False, True))
        assert raw.shape[-1] == 32 and projected.shape[-1] == 24  # tower width -> embed_dim
        ref = raw @ np.asarray(params[f"{m}_proj"]["kernel"], np.float64)  # the pooled embedding's projection
        ref /= np.linalg.norm(ref, axis=-1, keepdims=True)
        np.testing.assert_allclose(projected, ref, atol=1e-5)
        # the global embedding is unchanged by the option
        np.testing.assert_array_equal(outputs[False]["embeddings"][m], outputs[True]["embeddings"][m])


# ---------------------------------------------------------------------------- CWCL: the frozen reference
def _save_run(directory, config, params, data_iter):
    """A finished run's checkpoint, as the trainer writes it."""
    ckpt = ckpt_lib.Checkpointer(str(directory / "checkpoints"), every_steps=1, keep=1, async_save=False)
    ckpt.save(7, {"step": jnp.int32(7), "params": params, "opt_state": {}}, data_iter, force=True)
    ckpt.wait()
    ckpt.close()


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    """(directory, params) of a CLIP tiny "run": its params saved where init_from finds them."""
    config = clip_digits.get_config("model=tiny")
    batches = _train_batches(config, n=1)
    params = jax.jit(build_model(config.model, _tokenizer(config)).init)(jax.random.key(1), batches[0])["params"]
    directory = tmp_path_factory.mktemp("clip_run")
    it = pipeline.make_train_iterator(config.data, global_batch_size=B, seed=0, tokenizer=_tokenizer(config),
                                      shard_index=0, shard_count=1)
    _save_run(directory, config, params, it)
    return directory, params


def _cwcl_config(init_from):
    config = cwcl_digits.get_config("model=tiny")
    with config.unlocked():
        config.model.reference.init_from = str(init_from)
    return config


def test_reference_tower_is_restored_from_a_run_and_never_trains(clip_run):
    directory, source = clip_run
    config = _cwcl_config(directory)
    losses, grads, before, after = _train(config, _train_batches(config))
    expected = {"image_encoder": source["image_encoder"], "image_proj": source["image_proj"]}
    assert _leaves_equal(before["reference"], expected)  # restored exactly
    assert set(before) - {"reference"} == set(source)  # ... and nothing else from the run
    assert not _leaves_equal(before["image_encoder"], source["image_encoder"])
    assert all(not np.any(g) for g in jax.tree.leaves(grads["reference"]))  # stop_gradient
    assert all(np.any(g) for g in jax.tree.leaves(grads["image_encoder"]))
    assert _leaves_equal(after["reference"], expected)  # frozen: no update, no weight decay
    assert not _leaves_equal(after["image_encoder"], before["image_encoder"])
    assert np.all(np.isfinite(losses))


def test_reference_restore_names_what_is_missing(clip_run, tmp_path):
    directory, source = clip_run
    config = _cwcl_config(tmp_path / "nowhere")
    model = build_model(config.model, _tokenizer(config))
    batch = _train_batches(config, n=1)[0]
    params = jax.jit(model.init)(jax.random.key(0), batch)["params"]
    with pytest.raises(FileNotFoundError, match="no committed checkpoint"):
        restore_reference(config.model, params)
    # a run without an image tower (text only) cannot provide one
    it = pipeline.make_train_iterator(config.data, global_batch_size=B, seed=0, tokenizer=_tokenizer(config),
                                      shard_index=0, shard_count=1)
    _save_run(tmp_path / "text_run", config, {k: v for k, v in source.items() if k.startswith("text")}, it)
    config = _cwcl_config(tmp_path / "text_run")
    with pytest.raises(ValueError, match=r"has no param.*'image_encoder'.*same architecture"):
        restore_reference(config.model, params)


# ---------------------------------------------------------------------------- SimCLR / TCL: second views
@pytest.fixture(scope="module")
def digits_record():
    config = tcl_digits.get_config("model=tiny")
    return config, pipeline.open_split(config.data, "test")[3]


def _shifts_matching(view, image, max_shift=2):
    """(dy, dx) with view = image translated by (dy, dx), background -1 (a NumPy reference)."""
    base = image.astype(np.float32) / 127.5 - 1.0
    padded = np.pad(base, ((max_shift,) * 2, (max_shift,) * 2, (0, 0)), constant_values=-1.0)
    h, w = base.shape[:2]
    return {(dy, dx) for dy in range(-max_shift, max_shift + 1) for dx in range(-max_shift, max_shift + 1)
            if np.array_equal(view, padded[max_shift - dy:max_shift - dy + h, max_shift - dx:max_shift - dx + w])}


def _views(config, record, seed, train=True, **data):
    cfg = config.data.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.update(data)
    transform = ExampleTransform.from_config(cfg, _tokenizer(config), train=train, where="test")
    return transform(record, np.random.default_rng(seed))


def test_second_view_is_another_augmentation_of_the_same_example(digits_record):
    config, record = digits_record
    differ = 0
    for seed in range(8):
        out = _views(config, record, seed)
        s1, s2 = _shifts_matching(out["image"], record["image"]), _shifts_matching(out["image_view2"], record["image"])
        assert len(s1) == len(s2) == 1, (seed, s1, s2)  # each a shift of this example's image
        differ += s1 != s2
        again = _views(config, record, seed)  # a pure function of the example's generator
        np.testing.assert_array_equal(again["image_view2"], out["image_view2"])
        np.testing.assert_array_equal(again["image"], out["image"])
    assert differ >= 6  # independent draws: equal shifts have probability 1/25
    plain = _views(config, record, 0, augment=False)
    np.testing.assert_array_equal(plain["image_view2"], plain["image"])
    assert _shifts_matching(plain["image"], record["image"]) == {(0, 0)}
    dropped = _views(config, record, 0, drop_prob={"image": 1.0, "audio": 0.0, "points": 0.0, "text": 0.0})
    assert not dropped["present"]["image"] and not np.any(dropped["image_view2"])
    assert "image_view2" not in _views(config, record, 0, train=False)  # evaluation: one view
    with pytest.raises(ValueError, match="second_view"):
        _views(config, record, 0, second_view=("audio",))


def test_second_views_resume_exactly():
    config = tcl_digits.get_config("model=tiny")
    make = lambda: pipeline.make_train_iterator(config.data, global_batch_size=B, seed=3,
                                                tokenizer=_tokenizer(config), shard_index=0, shard_count=1)
    straight = make()
    next(straight)
    state, expected = straight.get_state(), next(straight)
    resumed = make()
    resumed.set_state(state)
    got = next(resumed)
    for key in ("image", "image_view2", "text", "label"):
        np.testing.assert_array_equal(got[key], expected[key])
    assert not np.array_equal(got["image"], got["image_view2"])


def test_eval_suite_needs_no_second_view(digits_record):
    config, _ = digits_record
    tok = _tokenizer(config)
    model = build_model(config.model, tok)
    train_batch = _train_batches(config, n=1)[0]
    assert "image_view2" in train_batch
    params = jax.jit(model.init)(jax.random.key(0), train_batch)["params"]
    eval_batches = pipeline.make_eval_batches(config.data, split="test", batch_size=64, tokenizer=tok)[:1]
    assert not any("view2" in key for key in eval_batches[0])
    results = EvalSuite(config.eval, model, tok, parallel.make_mesh(config.mesh, jax.devices()[:1]),
                        eval_batches)(params)
    assert 0.0 <= results["zeroshot_top1"] <= 1.0 and "r1_image_text" in results


# ---------------------------------------------------------------------------- Symile: missing embeddings
def test_symile_missing_embeddings_stand_in_for_absent_modalities():
    config = symile_avdigits.get_config("model=tiny,drop=0.5")
    assert tuple(config.model.missing_embeddings) == ("audio", "text")
    model = build_model(config.model, _tokenizer(config))
    batch = _train_batches(config, n=1)[0]
    absent = np.arange(B) % 3 == 1
    batch["present"] = {"image": np.ones(B, bool), "audio": ~absent, "text": ~absent}
    garbage = dict(batch, audio=np.where(absent[:, None, None], 1e3, batch["audio"]).astype(np.float32))
    params = jax.jit(model.init)(jax.random.key(0), batch)["params"]
    objective = get_objective("symile")

    @jax.jit
    def loss_and_grads(params, batch):
        def loss_fn(p):
            outputs = model.apply({"params": p}, batch)
            return objective(outputs, {**batch, "rng": jax.random.key(0)}, config.objective)[0], outputs
        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss, outputs), grads = loss_and_grads(params, batch)
    missing = outputs["missing_embeddings"]
    assert set(missing) == {"audio", "text"}
    for m in missing:
        np.testing.assert_allclose(np.linalg.norm(missing[m]), 1.0, rtol=1e-6)
        assert np.any(grads[f"{m}_missing_embedding"])  # it stands in for the absent rows
    # the absent rows take the missing embedding (not dropped): Symile on filled rows, no flags
    filled = [np.where(absent[:, None], missing[m], outputs["embeddings"][m]) if m in missing
              else outputs["embeddings"][m] for m in config.objective.modalities]
    expected, _ = symile_loss(filled, outputs["logit_scale"], "n", jax.random.key(0))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    (loss_garbage, _), _ = loss_and_grads(params, garbage)
    assert float(loss_garbage) == float(loss)  # what an absent row's input holds never matters
    batch["present"] = {m: np.ones(B, bool) for m in batch["present"]}
    _, grads = loss_and_grads(params, batch)
    assert not np.any(grads["audio_missing_embedding"]) and not np.any(grads["text_missing_embedding"])


# ---------------------------------------------------------------------------- every config, two steps
CONFIGS = {
    "filip": (filip_digits, "model=tiny"),
    "filip+clip": (filip_digits, "model=tiny,global_weight=0.5"),
    "tcl": (tcl_digits, "model=tiny"),
    "symile_n_squared": (symile_avdigits, "model=tiny,negatives=n_squared,drop=0.5"),
    "symile": (symile_avdigits, "model=tiny"),
    "dcl": (clip_digits, "model=tiny,loss=dcl"),
    "hard_negative": (clip_digits, "model=tiny,loss=hard_negative"),
    "sigmoid_chunked": (clip_digits, "model=tiny,loss=sigmoid_chunked"),
}  # cwcl: test_reference_tower_is_restored_from_a_run_and_never_trains


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_trains(name):
    """Three steps on one real batch (the first at lr 0): the loss goes down, every tower moves."""
    module, variant = CONFIGS[name]
    config = module.get_config(variant)
    losses, grads, before, after = _train(config, _train_batches(config, n=1) * 3)
    assert np.all(np.isfinite(losses)) and losses[2] < losses[0], losses
    assert np.isfinite(float(optax.tree.norm(grads)))
    for m in config.data.modalities:
        assert not _leaves_equal(before[f"{m}_encoder"], after[f"{m}_encoder"]), m
