"""The contrastive family's model side: token embeddings and masks (FILIP), a frozen
reference tower restored from a run (CWCL), second views (SimCLR / TCL), learned
missing embeddings (Symile), and the contrastive configs training end to end.

Compiles dominate the cost: each test jits one function once, training runs
three steps of one compiled step, and losses that need no model (the CLIP
variants) are checked on fixed embeddings."""
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax import checkpoint as ckpt_lib
from mmjax import parallel
from mmjax.batch_keys import VIEW2_SUFFIX, model_inputs
from mmjax.data import pipeline
from mmjax.data.tokenizer import from_data_config
from mmjax.data.datasets import get_dataset
from mmjax.evals import Needs, build_evaluators
from mmjax.evals.runner import EvalRunner
from mmjax.models import build_model
from mmjax.checkpoint import restore_reference
from mmjax.models.towers import ContrastiveModel
from mmjax.objectives.contrastive import softmax_contrastive_loss
from mmjax.objectives import contrastive, get_objective
from mmjax.objectives import contrastive_variants as cv
from mmjax.optim import make_optimizer
from mmjax.similarity import l2_normalize

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs import clip_digits, cwcl_digits, filip_digits, symile_avdigits, tcl_digits  # noqa: E402

B = 8
TINY = dict(width=32, depth=1, num_heads=2, mlp_dim=64)
CPU0 = jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _tokenizer(config):
    return from_data_config(config.data)


def _train_iterator(config, seed=0):
    return pipeline.make_train_iterator(config.data, global_batch_size=B, seed=seed, tokenizer=_tokenizer(config),
                                        shard_index=0, shard_count=1)


def _train_batches(config, n=1):
    """The first n real training batches of B examples, as the trainer's step sees them."""
    it = _train_iterator(config)
    return [model_inputs(next(it)) for _ in range(n)]


def _one_view(batch):
    """The batch without second views: what evaluation (and the trainer's init) sees."""
    return {k: v for k, v in batch.items() if VIEW2_SUFFIX not in k}


class _Steps:
    """The trainer's step for `config` (its model, objective and optimiser; the first step at lr 0,
    as in the trainer), compiled once, on one device. One rng for all steps: Symile's shuffles stay
    put. The model is initialised, as in the trainer, on a batch without second views."""

    def __init__(self, config, batch):
        model = build_model(config.model, _tokenizer(config))
        objective = get_objective(config.objective.name)
        self.tx, _ = make_optimizer(config.optim, config.total_steps)
        self.mesh = parallel.make_mesh(config.mesh, jax.devices()[:1])
        # The step's outputs come back laid out on the mesh: its inputs start there too (one compile).
        self.place = lambda tree: jax.device_put(tree, NamedSharding(self.mesh, P()))
        # As the trainer's fresh start: init, then the towers that come from other runs.
        self.params = self.place(ckpt_lib.warm_start(config.init_from, restore_reference(
            config.model, jax.jit(model.init)(jax.random.key(0), _one_view(batch))["params"])))

        def step(params, opt_state, batch):
            def loss_fn(p):
                outputs = model.apply({"params": p}, batch)
                return objective(outputs, {**batch, "rng": jax.random.key(0)}, config.objective)[0], outputs
            (loss, outputs), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss, grads, outputs
        self.step = jax.jit(step)

    def __call__(self, batch, params=None, opt_state=None):
        """One step from `params` (default: the initial ones) -> (params, opt_state, loss, grads, outputs)."""
        params = self.params if params is None else params
        with jax.set_mesh(self.mesh):  # the distributed losses read it, as in the trainer
            return self.step(params, self.place(self.tx.init(params)) if opt_state is None else opt_state, batch)

    def run(self, batches):
        """Steps over `batches` -> (losses, the first step's grads and outputs, final params)."""
        params, opt_state, losses, first = self.params, None, [], ()
        for batch in batches:
            params, opt_state, loss, grads, outputs = self(batch, params, opt_state)
            losses.append(float(loss))
            first = first or (grads, outputs)
        return losses, *first, params


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _random_params(model, batch, seed):
    """Params of `model`'s shapes, drawn without compiling its init."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), batch)["params"]
    return jax.tree.map(lambda s: jax.device_put(rng.normal(size=s.shape).astype(s.dtype), CPU0), shapes)


# ---------------------------------------------------------------------------- FILIP: tokens and masks
@pytest.fixture(scope="module")
def token_model():
    """Tiny text (eot id 2), audio (6 x 4 patches of 16 x 16) and image (4 x 4 patches) towers,
    applied with and without token projection (one compile)."""
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
    second = {"image_view2": rng.normal(size=(4, 28, 28, 1)).astype(np.float32),
              "audio_view2": rng.normal(size=(4, 96, 64)).astype(np.float32),
              "audio_view2_mask": np.arange(96)[None, :] < frames[::-1, None]}
    models = {p: ContrastiveModel(towers=towers, embed_dim=24, project_tokens=p) for p in (False, True)}
    params = _random_params(models[True], batch, seed=0)
    alone = dict(batch, image=second["image_view2"], audio=second["audio_view2"], audio_mask=second["audio_view2_mask"])
    outputs = jax.jit(lambda p: {"raw": models[False].apply({"params": p}, batch),
                                 "projected": models[True].apply({"params": p}, batch | second),
                                 "second views alone": models[True].apply({"params": p}, alone)})(params)
    return batch, params, outputs


def test_token_masks_mark_the_tokens_that_hold_input(token_model):
    batch, _, outputs = token_model
    masks = outputs["projected"]["token_masks"]
    # text: up to and including the first eot; later eots and pad ids are padding
    expect_text = np.array([np.arange(10) <= list(row).index(2) for row in batch["text"]])
    np.testing.assert_array_equal(masks["text"], expect_text)
    # audio: token k is time patch k // 4 (time-major), valid if any of its 16 frames is
    expect_audio = np.array([[batch["audio_mask"][i, (k // 4) * 16:(k // 4 + 1) * 16].any() for k in range(24)]
                             for i in range(4)])
    np.testing.assert_array_equal(masks["audio"], expect_audio)
    assert expect_audio.sum(1).tolist() == [24, 4, 12, 8]  # 6, 1, 3 (40 frames), 2 (17 frames) time patches
    np.testing.assert_array_equal(masks["image"], np.ones((4, 16), bool))  # every patch, no class token
    assert {m: outputs["raw"]["tokens"][m].shape[1] for m in ("text", "audio", "image")} == {
        "text": 10, "audio": 24, "image": 16}


def test_projected_tokens_are_unit_vectors_of_the_shared_projection(token_model):
    _, params, outputs = token_model
    for m in ("text", "audio", "image"):
        raw, projected = (np.asarray(outputs[k]["tokens"][m], np.float64) for k in ("raw", "projected"))
        assert raw.shape[-1] == 32 and projected.shape[-1] == 24  # tower width -> embed_dim
        ref = raw @ np.asarray(params[f"{m}_proj"]["kernel"], np.float64)  # the pooled embedding's projection
        ref /= np.linalg.norm(ref, axis=-1, keepdims=True)
        np.testing.assert_allclose(projected, ref, atol=1e-5)
        # the global embedding is unchanged by the option
        np.testing.assert_allclose(outputs["raw"]["embeddings"][m], outputs["projected"]["embeddings"][m], atol=1e-6)


def test_second_views_go_through_the_same_tower(token_model):
    _, _, outputs = token_model
    both, alone = outputs["projected"], outputs["second views alone"]
    assert set(both["embeddings"]) == {"text", "image", "audio", "image_view2", "audio_view2"}
    for m in ("image", "audio"):
        for key in ("embeddings", "tokens", "token_masks"):
            np.testing.assert_allclose(both[key][m + "_view2"], alone[key][m], atol=1e-5)  # batch of 8 vs 4
        assert not np.allclose(both["embeddings"][m + "_view2"], both["embeddings"][m], atol=1e-3)


def _eval_setup(config, num_batches=2):
    """(tokenizer, model, one-device mesh, the first eval batches of 32, initial params) for an EvalRunner."""
    tokenizer = _tokenizer(config)
    model = build_model(config.model, tokenizer)
    batches = pipeline.make_eval_batches(config.data, split=config.data.eval_split, batch_size=32,
                                         tokenizer=tokenizer)[:num_batches]
    inputs = {k: v for k, v in batches[0].items() if k in config.data.modalities or k.endswith("_mask")}
    params = jax.jit(model.init)(jax.random.key(3), inputs)["params"]
    return tokenizer, model, parallel.make_mesh(config.mesh, jax.devices()[:1]), batches, params


def _eval_runner(config, model, tokenizer, mesh, batches):
    """The runner of config.evals over `batches` (the train split is read by no evaluator here)."""
    return EvalRunner(build_evaluators(config.evals), model, tokenizer, mesh, batches,
                      dataset=get_dataset(config.data), aliases=config.eval.aliases)


def _prompt_ids(config, tokenizer):
    """The dataset's class prompts, class-major ([C * T] rows), tokenized."""
    return tokenizer.encode_batch([p for per_class in get_dataset(config.data).zeroshot_prompts() for p in per_class])


def test_filip_config_reports_tokenwise_zeroshot_from_the_towers_tokens():
    """evals.zeroshot_tokenwise: each eval image's projected tokens against each prompt's valid text
    tokens (mean over image tokens of the best cosine), averaged over a class's prompts, top-1."""
    config = filip_digits.get_config("model=tiny")
    tokenizer, model, mesh, batches, params = _eval_setup(config)
    runner = _eval_runner(config, model, tokenizer, mesh, batches)
    results = runner(params)
    embed = lambda x, m: jax.tree.map(np.asarray, model.apply({"params": params}, x, m, method="embed_tokens"))
    text, text_valid = embed(_prompt_ids(config, tokenizer), "text")
    sims = []
    for b in batches:
        image, image_valid = embed(b["image"], "image")
        cos = np.einsum("ind,jmd->ijnm", np.float64(image), np.float64(text))  # tokens are unit vectors
        best = np.where(text_valid[None, :, None, :], cos, -np.inf).max(axis=3)  # [images, prompts, tokens]
        sims.append(np.where(image_valid[:, None, :], best, 0).sum(2) / image_valid.sum(1)[:, None])
    mask = np.concatenate([b["mask"] for b in batches])
    sims = np.concatenate(sims)[mask]
    features = runner.extract(params, Needs(token_similarities=("image",)))
    np.testing.assert_allclose(features.token_similarities["image"], sims, rtol=1e-4, atol=1e-5)
    labels = np.concatenate([b["label"] for b in batches])[mask]
    scores = sims.reshape(mask.sum(), 10, -1).mean(axis=2)
    top2 = np.sort(scores, axis=1)[:, -2:]
    assert np.all(top2[:, 1] - top2[:, 0] > 1e-5)  # no ties at the top, so top-1 is the argmax
    assert results["zeroshot_tokenwise_top1_image"] == pytest.approx(np.mean(scores.argmax(1) == labels))
    assert "zeroshot_top1_image" in results  # the global-embedding zero-shot stays
    clip = clip_digits.get_config("model=tiny")
    with clip.unlocked():
        clip.evals.zeroshot_tokenwise = {"type": "zeroshot_tokenwise", "modalities": ("image",)}
    with pytest.raises(ValueError, match="zeroshot_tokenwise: token-wise scores need model.project_tokens"):
        EvalRunner.from_config(clip, build_model(clip.model, _tokenizer(clip)), _tokenizer(clip),
                               parallel.make_mesh(clip.mesh, jax.devices()[:1]))


# ---------------------------------------------------------------------------- CWCL: the frozen reference
def test_symile_config_reports_multilinear_zeroshot():
    """evals.zeroshot_multilinear "image+audio": the caption class t maximising <image, audio, t>."""
    config = symile_avdigits.get_config("model=tiny")
    tokenizer, model, mesh, batches, params = _eval_setup(config)
    results = _eval_runner(config, model, tokenizer, mesh, batches)(params)
    embed = lambda x, m, mask=None: np.asarray(model.apply({"params": params}, x, m, mask, method="embed")[0])
    image = np.concatenate([embed(b["image"], "image") for b in batches])
    audio = np.concatenate([embed(b["audio"], "audio", b["audio_mask"]) for b in batches])
    prompts = embed(_prompt_ids(config, tokenizer), "text").reshape(10, -1, image.shape[1])
    classes = prompts.mean(1) / np.linalg.norm(prompts.mean(1), axis=1, keepdims=True)
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])[mask]
    scores = np.einsum("nd,nd,cd->nc", image[mask], audio[mask], classes)
    top2 = np.sort(scores, axis=1)[:, -2:]
    assert np.all(top2[:, 1] - top2[:, 0] > 1e-6)  # no ties at the top
    assert results["zeroshot_multilinear_top1_image_audio"] == pytest.approx(np.mean(scores.argmax(1) == labels))
    for entry, message in [("image", "two or more modalities"),
                           ("image+depth", r"\['depth'\] the model cannot embed")]:
        with config.unlocked():
            config.evals.zeroshot_multilinear.groups = (entry,)
        with pytest.raises(ValueError, match=message):
            _eval_runner(config, model, tokenizer, mesh, batches)


def _save_run(directory, params, data_iter):
    """A finished run's checkpoint, as the trainer writes it."""
    ckpt = ckpt_lib.Checkpointer(str(directory / "checkpoints"), every_steps=1, keep=1, async_save=False)
    ckpt.save(7, {"step": jnp.int32(7), "params": params, "opt_state": {}}, data_iter, force=True)
    ckpt.wait()
    ckpt.close()


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    """(workdir, params) of a CLIP tiny "run" whose checkpoint init_from can name."""
    config = clip_digits.get_config("model=tiny")
    batch = _train_batches(config)[0]
    params = _random_params(build_model(config.model, _tokenizer(config)), batch, seed=1)
    directory = tmp_path_factory.mktemp("clip_run")
    _save_run(directory, params, _train_iterator(config))
    return directory, params


def _cwcl_config(init_from):
    config = cwcl_digits.get_config("setup=reference,model=tiny")
    with config.unlocked():
        config.model.reference.init_from = str(init_from)
    return config


def test_reference_tower_is_restored_from_a_run_and_never_trains(clip_run):
    directory, source = clip_run
    config = _cwcl_config(directory)
    steps = _Steps(config, _train_batches(config)[0])
    before = steps.params
    losses, grads, _, after = steps.run(_train_batches(config, n=2))
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
    params = _random_params(model, _train_batches(config)[0], seed=0)
    assert restore_reference(_cwcl_config("").model, params) is params  # nothing to restore
    with pytest.raises(FileNotFoundError, match="no directory"):
        restore_reference(config.model, params)
    (tmp_path / "nowhere" / "checkpoints").mkdir(parents=True)  # a run that never committed a step
    with pytest.raises(FileNotFoundError, match="no committed checkpoint"):
        restore_reference(config.model, params)
    # a run without an image tower (text only) cannot provide one
    _save_run(tmp_path / "text_run", {k: v for k, v in source.items() if k.startswith("text")},
              _train_iterator(config))
    with pytest.raises(ValueError, match=r"does not hold params of this architecture.*\['image_encoder'\].* missing"):
        restore_reference(_cwcl_config(tmp_path / "text_run").model, params)
    # ... nor can one whose image projection has another width
    wider = dict(source, image_proj={"kernel": np.zeros((48, 32), np.float32)})
    _save_run(tmp_path / "wide_run", wider, _train_iterator(config))
    with pytest.raises(ValueError, match=r"\['image_proj'\]\['kernel'\] has shape \(48, 32\), want \(32, 32\)"):
        restore_reference(_cwcl_config(tmp_path / "wide_run").model, params)


def _locked_config(workdir, loss="cwcl"):
    config = cwcl_digits.get_config(f"model=tiny,loss={loss}")
    with config.unlocked():
        config.init_from.workdir = str(workdir)
    return config


def test_locked_image_tower_comes_from_a_run_never_moves_and_gives_the_cwcl_targets(clip_run):
    """The paper's (and LiT's) setup: image tower + projection restored from a CLIP run and frozen,
    the text tower trains, the targets are the locked image embeddings' similarities."""
    directory, source = clip_run
    config = _locked_config(directory)
    batches = _train_batches(config, n=2)
    steps = _Steps(config, batches[0])
    before = steps.params
    assert "reference" not in before  # no third tower: the locked one is the reference
    for name in ("image_encoder", "image_proj"):
        assert _leaves_equal(before[name], source[name]), name  # restored exactly ...
    assert not _leaves_equal(before["text_encoder"], source["text_encoder"])  # ... and nothing else
    losses, _, outputs, after = steps.run(batches)
    for name in ("image_encoder", "image_proj"):
        assert _leaves_equal(after[name], source[name]), name  # frozen: no update, no weight decay
    assert not _leaves_equal(after["text_encoder"], before["text_encoder"])
    emb = outputs["embeddings"]
    expected = cv.cwcl_loss(emb["image"], emb["text"], outputs["logit_scale"], ref_a=emb["image"])[0]
    np.testing.assert_allclose(losses[0], expected, rtol=1e-6)
    onehot = softmax_contrastive_loss(emb["image"], emb["text"], outputs["logit_scale"])[0]
    assert abs(float(onehot) - losses[0]) > 1e-3  # CLIP's one-hot targets: not what ran


def test_warm_start_names_what_it_cannot_do(clip_run, tmp_path):
    directory, _ = clip_run
    config = _locked_config(directory)
    params = _random_params(build_model(config.model, _tokenizer(config)), _train_batches(config)[0], seed=0)
    with config.unlocked():
        config.init_from.workdir = ""
    assert ckpt_lib.warm_start(config.init_from, params) is params  # nothing to restore
    with config.unlocked():
        config.init_from.workdir, config.init_from.params = str(directory), ("image_encoder", "audio_encoder")
    with pytest.raises(ValueError, match=r"init_from.params names \['audio_encoder'\].*'image_encoder', 'image_proj'"):
        ckpt_lib.warm_start(config.init_from, params)
    with config.unlocked():
        config.init_from.workdir, config.init_from.params = str(tmp_path), ("image_encoder",)
    with pytest.raises(FileNotFoundError, match=r"init_from.workdir=.*no committed checkpoint|no directory"):
        ckpt_lib.warm_start(config.init_from, params)
    with pytest.raises(ValueError, match="setup=reference trains both towers"):
        cwcl_digits.get_config("setup=reference,loss=softmax")


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
    transform = get_dataset(cfg).example_transform(_tokenizer(config), train=train, where="test")
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
    straight = _train_iterator(config, seed=3)
    next(straight)
    state, expected = straight.get_state(), next(straight)
    resumed = _train_iterator(config, seed=3)
    resumed.set_state(state)
    got = next(resumed)
    for key in ("image", "image_view2", "text", "label"):
        np.testing.assert_array_equal(got[key], expected[key])
    assert not np.array_equal(got["image"], got["image_view2"])


# ---------------------------------------------------------------------------- the configs, end to end
def _trains(config, batch):
    """Three steps on one real batch (the first at lr 0): the loss goes down, every tower moves.
    Returns the steps and (losses, the first step's grads and outputs, final params)."""
    steps = _Steps(config, batch)
    run = losses, grads, _, after = steps.run([batch] * 3)
    assert np.all(np.isfinite(losses)) and losses[2] < losses[0], losses
    assert np.isfinite(float(optax.tree.norm(grads)))
    for m in config.data.modalities:
        assert not _leaves_equal(steps.params[f"{m}_encoder"], after[f"{m}_encoder"]), m
    return steps, run


@pytest.mark.parametrize("module, variant", [(filip_digits, "model=tiny,global_weight=0.5"),
                                             (tcl_digits, "model=tiny")])  # cwcl, symile: below
def test_config_trains(module, variant):
    config = module.get_config(variant)
    _trains(config, _train_batches(config)[0])


def test_symile_config_trains_with_missing_embeddings_for_absent_modalities():
    config = symile_avdigits.get_config("model=tiny,negatives=n_squared,drop=0.5")
    modalities = tuple(config.objective.modalities)
    assert tuple(config.model.missing_embeddings) == ("audio", "text")
    batch = _train_batches(config)[0]
    absent = {m: ~batch["present"][m] for m in modalities}
    assert absent["audio"].any() and absent["text"].any() and not absent["image"].any()  # data.drop_prob
    steps, (losses, grads, outputs, _) = _trains(config, batch)
    missing = outputs["missing_embeddings"]
    assert set(missing) == {"audio", "text"}
    for m in missing:
        np.testing.assert_allclose(np.linalg.norm(missing[m]), 1.0, rtol=1e-6)
        assert np.any(grads[f"{m}_missing_embedding"])  # trained by the examples that lack m
    # absent rows take the missing embedding (they are not dropped): Symile on the filled rows, no flags
    filled = [np.where(absent[m][:, None], missing[m], outputs["embeddings"][m]) if m in missing
              else outputs["embeddings"][m] for m in modalities]
    np.testing.assert_allclose(losses[0], cv.symile_loss(filled, outputs["logit_scale"], "n_squared")[0], rtol=1e-6)
    dropped = cv.symile_loss([outputs["embeddings"][m] for m in modalities], outputs["logit_scale"], "n_squared",
                             valid=[~absent[m] for m in modalities])[0]
    assert abs(float(dropped) - losses[0]) > 1e-3  # ... which dropping them would not give
    garbage = dict(batch, audio=np.where(absent["audio"][:, None, None], 1e3, batch["audio"]).astype(np.float32))
    assert float(steps(garbage)[2]) == losses[0]  # what an absent row's input holds never matters
    all_present = dict(batch, present={m: np.ones(B, bool) for m in modalities})
    grads = steps(all_present)[3]
    assert not np.any(grads["audio_missing_embedding"]) and not np.any(grads["text_missing_embedding"])


def test_filip_config_alone_and_with_the_global_loss():
    za, zb = jnp.asarray(np.random.default_rng(0).normal(size=(2, B, 6, 16)), jnp.float32)
    token_masks = {"text": jnp.arange(6)[None, :] < jnp.arange(1, B + 1)[:, None] % 6 + 1}
    outputs = {"tokens": {"image": za, "text": zb}, "token_masks": token_masks,
               "embeddings": {"image": l2_normalize(za[:, 0]), "text": l2_normalize(zb[:, 0])},
               "logit_scale": jnp.float32(10.0), "logit_bias": jnp.float32(0.0)}
    filip, _ = cv.filip_loss(za, zb, 10.0, token_valid_b=token_masks["text"])
    clip, _ = contrastive.softmax_contrastive_loss(outputs["embeddings"]["image"], outputs["embeddings"]["text"], 10.0)
    for variant, expected in (("", filip), ("global_weight=0.5", filip + 0.5 * clip)):
        config = filip_digits.get_config(variant)
        assert config.model.project_tokens
        loss, _ = get_objective(config.objective.name)(outputs, {}, config.objective)
        np.testing.assert_allclose(loss, expected, rtol=1e-6)


CLIP_INIT, SIGLIP_INIT = (1 / 0.07, 0.0), (10.0, -10.0)


@pytest.mark.parametrize("loss, reference, logit_init", [  # reference(za, zb, valid_b) at scale 10, bias -2
    ("dcl", lambda za, zb, v: cv.dcl_loss(za, zb, 10.0, valid_b=v), CLIP_INIT),
    ("hard_negative", lambda za, zb, v: cv.hard_negative_loss(za, zb, 10.0, valid_b=v, beta=1.0, tau_plus=0.1),
     CLIP_INIT),
    ("sigmoid_chunked", lambda za, zb, v: contrastive.sigmoid_contrastive_loss(za, zb, 10.0, -2.0, valid_b=v),
     SIGLIP_INIT),
    ("softmax_gathered", lambda za, zb, v: contrastive.softmax_contrastive_loss(za, zb, 10.0, valid_b=v), CLIP_INIT),
])
def test_clip_config_loss_variants(loss, reference, logit_init):
    """`clip_digits.py:loss=<name>` runs the named loss with its paper's knobs and its logit init."""
    config = clip_digits.get_config(f"model=tiny,loss={loss}")
    assert (config.model.logit_scale_init, config.model.logit_bias_init) == pytest.approx(logit_init)
    za, zb = (l2_normalize(z) for z in np.random.default_rng(1).normal(size=(2, B, 16)).astype(np.float32))
    outputs = {"embeddings": {"image": za, "text": zb}, "logit_scale": jnp.float32(10.0),
               "logit_bias": jnp.float32(-2.0)}
    present = {"image": np.ones(B, bool), "text": np.arange(B) != 3}
    objective = get_objective(config.objective.name)
    with jax.set_mesh(parallel.make_mesh(config.mesh, jax.devices()[:2])):  # a 2-device ring for the chunked loss
        got, _ = jax.jit(lambda o, p: objective(o, {"present": p}, config.objective))(outputs, present)
    np.testing.assert_allclose(got, reference(za, zb, present["text"])[0], rtol=1e-5)
