"""Zero-shot and retrieval metrics on inputs whose answers are known exactly; evaluators built from
config entries; the runner (features once per modality and split, shared by every evaluator) on a
stand-in model whose tower calls are counted."""
import collections
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax import parallel
from mmjax.evals import EVAL, EVALUATORS, TRAIN, Evaluator, Needs, build_evaluators, runner as runner_lib
from mmjax.evals.runner import EvalRunner
from mmjax.evals.retrieval import bidirectional_retrieval, retrieval_recall, topk_hits
from mmjax.evals.zeroshot import (fused_zeroshot_metrics, prompt_ensemble, tokenwise_class_scores, zeroshot_metrics,
                                  zeroshot_metrics_from_scores)
from mmjax.similarity import filip_similarities


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _random_unit(seed, *shape):
    return _unit(np.random.default_rng(seed).normal(size=shape))


def _argsort_recall(scores, positives, ks):
    """Straightforward reference: full sort per row, position of the positive."""
    order = np.argsort(-scores, axis=1)
    rank = np.argmax(order == np.asarray(positives)[:, None], axis=1)
    return [np.mean(rank < k) for k in ks]


# ---------------------------------------------------------------------------
# Tie rule
# ---------------------------------------------------------------------------
def test_tie_rule_is_expected_hit_under_random_tie_break():
    # One key strictly higher (3), the positive tied with two others (2): the
    # positive's rank is uniform over {1, 2, 3}, so P(rank < k) = 0, 1/3, 2/3, 1, 1.
    scores = np.array([[3.0, 2.0, 2.0, 2.0, 1.0]])
    np.testing.assert_allclose(topk_hits(scores, np.array([2.0]), (1, 2, 3, 4, 5)),
                               [[0.0, 1 / 3, 2 / 3, 1.0, 1.0]])


# ---------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------
def test_retrieval_identical_pairs_are_perfect():
    z = _random_unit(0, 40, 32)
    assert retrieval_recall(z, z, chunk_size=7) == {"r1": 1.0, "r5": 1.0, "r10": 1.0}


def test_retrieval_constant_embeddings_are_chance():
    # One-hot rows: every dot product is exactly 1.0, so all N keys tie.
    n = 20
    z = np.zeros((n, 8), np.float32)
    z[:, 0] = 1.0
    recall = retrieval_recall(z, z, chunk_size=7)
    assert recall == pytest.approx({"r1": 1 / n, "r5": 5 / n, "r10": 10 / n}, abs=1e-12)


def _tied_pair(seed, n):
    """Small-integer embeddings: dot products are exact and ties are frequent."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3, size=(2, n, 3)).astype(np.float32)


@pytest.mark.parametrize("chunk_size", [1, 7, 50])
def test_retrieval_chunked_equals_unchunked(chunk_size):
    n = 50
    for queries, keys in (_tied_pair(1, n), _random_unit(2, 2, n, 16)):
        full = retrieval_recall(queries, keys, ks=(1, 5, 10), chunk_size=n)
        chunked = retrieval_recall(queries, keys, ks=(1, 5, 10), chunk_size=chunk_size)
        assert chunked == pytest.approx(full, abs=1e-12)


def test_retrieval_random_matches_argsort_reference():
    queries, keys = _random_unit(3, 2, 60, 8)
    ks = (1, 5, 10)
    want = _argsort_recall(np.float64(queries) @ np.float64(keys).T, np.arange(60), ks)
    got = retrieval_recall(queries, keys, ks=ks, chunk_size=7)
    assert [got[f"r{k}"] for k in ks] == pytest.approx(want, abs=1e-12)


def test_retrieval_mask_drops_padding_queries_and_keys():
    z = _random_unit(4, 30, 16)
    keys = z.copy()
    keys[20:] = z[:10]  # padding that duplicates real keys would steal top-1 ...
    queries = z.copy()
    queries[25:] = np.nan  # ... and padding may hold garbage
    mask = np.arange(30) < 20
    assert retrieval_recall(queries, keys, mask=mask)["r1"] == 1.0
    assert retrieval_recall(queries[:20], keys[:20]) == retrieval_recall(queries, keys, mask=mask)
    with pytest.raises(ValueError, match="non-finite"):
        retrieval_recall(queries, keys)


def test_bidirectional_retrieval_keys_and_directions():
    za, zb = _random_unit(5, 2, 40, 4)
    out = bidirectional_retrieval(za, zb, chunk_size=9)
    assert list(out) == ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"]
    assert out["i2t_r5"] == retrieval_recall(za, zb)["r5"]
    assert out["t2i_r5"] == retrieval_recall(zb, za)["r5"]
    assert set(bidirectional_retrieval(za, zb, names=("a", "t"), ks=(1,))) == {"a2t_r1", "t2a_r1"}


# ---------------------------------------------------------------------------
# Zero-shot
# ---------------------------------------------------------------------------
def test_prompt_ensemble_is_normalised_mean():
    text = _random_unit(6, 10, 4, 8)  # [C, T, D]
    mean = np.float64(text).mean(axis=1)
    want = mean / np.linalg.norm(mean, axis=-1, keepdims=True)
    got = prompt_ensemble(text)
    assert got.shape == (10, 8)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def _separable(seed, n=50, c=10, d=16):
    """Class c's examples sit near the one-hot axis e_c: perfectly separable."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, size=n)
    embeddings = _unit(np.eye(d)[labels] + 0.1 * rng.normal(size=(n, d)))
    return embeddings, labels, np.eye(d, dtype=np.float32)[:c]


def test_zeroshot_separable_is_perfect():
    embeddings, labels, classes = _separable(7)
    assert zeroshot_metrics(embeddings, labels, classes) == {
        "zeroshot_top1": 1.0, "zeroshot_top5": 1.0}


def test_zeroshot_constant_embeddings_are_chance():
    c = 10
    embeddings = np.zeros((30, 8), np.float32)
    embeddings[:, 0] = 1.0
    classes = np.tile(embeddings[:1], (c, 1))  # all classes identical: all tie
    labels = np.arange(30) % c
    assert zeroshot_metrics(embeddings, labels, classes) == pytest.approx(
        {"zeroshot_top1": 1 / c, "zeroshot_top5": 5 / c}, abs=1e-12)


def test_zeroshot_random_matches_argsort_reference():
    embeddings = _random_unit(8, 80, 8)
    classes = _random_unit(9, 12, 8)
    labels = np.random.default_rng(10).integers(0, 12, size=80)
    want = _argsort_recall(np.float64(embeddings) @ np.float64(classes).T, labels, (1, 5))
    got = zeroshot_metrics(embeddings, labels, classes)
    assert [got["zeroshot_top1"], got["zeroshot_top5"]] == pytest.approx(want, abs=1e-12)


def test_zeroshot_mask_ignores_rows():
    embeddings, labels, classes = _separable(11)
    labels[40:] = (labels[40:] + 1) % 10  # wrong labels ...
    embeddings[45:] = np.nan  # ... and garbage, both in the padding
    labels[48:] = -1
    mask = np.arange(50) < 40
    assert zeroshot_metrics(embeddings, labels, classes, mask=mask)["zeroshot_top1"] == 1.0
    with pytest.raises(ValueError, match="no \\(unmasked\\) rows"):
        zeroshot_metrics(embeddings, labels, classes, mask=np.zeros(50, bool))
    with pytest.raises(ValueError, match="labels span"):
        zeroshot_metrics(embeddings[:45], labels[:45] + 10, classes)


# ---------------------------------------------------------------------------
# Fused zero-shot over a modality subset (missing modalities)
# ---------------------------------------------------------------------------
def _two_modality_case():
    """Three classes on the axes; two examples whose modalities disagree.

    Example 0 (class 0): audio leans to class 1 (wrong), points to class 0;
    the normalised mean (0.767, 0.384, 0.224) picks class 0. Example 1
    (class 2): audio on class 2, points on class 0; the mean (0.5, 0, 0.5)
    ties classes 0 and 2, which the tie rule credits 1/2.
    """
    audio = np.array([[1.0, 1.2, 0.0], [0.0, 0.0, 1.0]], np.float32)
    points = np.array([[1.0, 0.0, 0.5], [1.0, 0.0, 0.0]], np.float32)
    return {"audio": audio, "points": points}, np.array([0, 2]), np.eye(3, dtype=np.float32)


def test_fused_zeroshot_known_answer():
    z, labels, classes = _two_modality_case()
    top1 = {subset: fused_zeroshot_metrics(z, subset, labels, classes, topk=(1,))["zeroshot_top1"]
            for subset in (("audio",), ("points",), ("audio", "points"))}
    assert top1 == {("audio",): 0.5, ("points",): 0.5, ("audio", "points"): 0.75}
    # One modality alone is plain zero-shot on that modality.
    assert fused_zeroshot_metrics(z, ("audio",), labels, classes) == zeroshot_metrics(z["audio"], labels, classes)


def test_fused_zeroshot_gives_each_modality_an_equal_vote():
    # Scaled up 100x, un-normalised audio would outvote points on example 0.
    z, labels, classes = _two_modality_case()
    loud = {**z, "audio": 100 * z["audio"]}
    assert fused_zeroshot_metrics(loud, ("audio", "points"), labels, classes, topk=(1,)) == {"zeroshot_top1": 0.75}
    assert fused_zeroshot_metrics(loud, ("points", "audio"), labels, classes, topk=(1,)) == {"zeroshot_top1": 0.75}


def test_fused_zeroshot_rejects_unknown_or_empty_subsets():
    z, labels, classes = _two_modality_case()
    with pytest.raises(ValueError, match="image"):
        fused_zeroshot_metrics(z, ("image", "audio"), labels, classes)
    with pytest.raises(ValueError, match="at least one"):
        fused_zeroshot_metrics(z, (), labels, classes)


# ---------------------------------------------------------------- FILIP token-wise zero-shot
def np_late_interaction(ta, va, tb, vb):
    """[A, B]: mean over a_i's valid tokens of the best cosine among b_j's valid tokens (brute force)."""
    unit = lambda t: t / np.linalg.norm(t, axis=-1, keepdims=True)
    out = np.zeros((len(ta), len(tb)))
    for i in range(len(ta)):
        for j in range(len(tb)):
            out[i, j] = (unit(ta[i][va[i]]) @ unit(tb[j][vb[j]]).T).max(axis=1).mean()
    return out


def test_tokenwise_zeroshot_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    n, classes, templates = 12, 3, 2
    ta, tb = rng.normal(size=(n, 5, 8)), rng.normal(size=(classes * templates, 4, 8))
    va = np.arange(5)[None] < rng.integers(1, 6, size=(n, 1))  # examples with 1-5 valid tokens
    vb = np.arange(4)[None] < rng.integers(1, 5, size=(classes * templates, 1))
    sims = np.asarray(filip_similarities(ta.astype(np.float32), tb.astype(np.float32), va, vb)[0])
    want = np_late_interaction(ta, va, tb, vb)
    np.testing.assert_allclose(sims, want, rtol=1e-5, atol=1e-6)  # rectangular: examples x prompts
    scores = tokenwise_class_scores(sims, classes)
    np.testing.assert_allclose(scores, want.reshape(n, classes, templates).mean(-1), rtol=1e-5, atol=1e-6)
    labels = rng.integers(0, classes, size=n)
    got = zeroshot_metrics_from_scores(scores, labels, topk=(1, 2))
    top2 = np.argsort(-scores, axis=1)[:, :2]
    assert got["zeroshot_top1"] == pytest.approx(np.mean(top2[:, 0] == labels))
    assert got["zeroshot_top2"] == pytest.approx(np.mean((top2 == labels[:, None]).any(1)))
    # dot-product scores through the same door give zeroshot_metrics
    emb, cls = rng.normal(size=(n, 8)), rng.normal(size=(classes, 8))
    assert zeroshot_metrics_from_scores(emb @ cls.T, labels) == zeroshot_metrics(emb, labels, cls)
    with pytest.raises(ValueError, match=r"not \[N, 4 classes x templates\]"):
        tokenwise_class_scores(sims, 4)
    with pytest.raises(ValueError, match="finite"):
        zeroshot_metrics_from_scores(np.where(scores > 0, np.nan, scores), labels)


# ---------------------------------------------------------------- evaluators from config, and the runner
C, T, D = 4, 3, 4  # classes, prompt templates per class, embedding width


class FakeDataset:
    """What the runner reads of a dataset: class names and [C][T] class-major prompts."""
    class_names = tuple(str(c) for c in range(C))

    def zeroshot_prompts(self):
        return [[str(c) * (t + 1) for t in range(T)] for c in range(C)]  # class 2: "2", "22", "222"


class FakeTokenizer:
    """A prompt's digits as token ids, padded with -1 to length T."""
    def encode_batch(self, texts):
        return np.array([[int(ch) for ch in s] + [-1] * (T - len(s)) for s in texts], np.int32)


class FakeModel:
    """A stand-in contrastive model (no transformer to compile): image / audio inputs are [B, 2, D]
    tokens, text inputs token ids; the embedding is the normalised mean of the valid tokens. Every
    tower call is counted per modality, at run time (a jitted function traces once)."""
    modalities = ("audio", "image", "text")
    project_tokens = True

    def __init__(self):
        self.calls = collections.Counter()

    def apply(self, variables, x, modality, mask=None, method="embed"):
        jax.debug.callback(lambda: self.calls.update([modality]))
        if modality == "text":
            tokens, valid = jax.nn.one_hot(x, D), x >= 0  # id -1 is padding: a zero token
        else:
            tokens, valid = x, (jnp.ones(x.shape[:2], bool) if mask is None else mask)
        mean = jnp.sum(tokens * valid[..., None], 1) * variables["params"]["scale"]
        z = mean / jnp.linalg.norm(mean, axis=-1, keepdims=True)
        return (z, tokens) if method == "embed" else (z, tokens, valid)


def _split(rows, batch_size, seed):
    """Padded eval batches (as mmjax.data.pipeline.make_eval_batches) of `rows` examples whose
    image and audio tokens sit near their class's axis and whose caption is the class digit."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(rows) % C)
    axis = np.eye(D, dtype=np.float32)[labels][:, None]  # [rows, 1, D]
    data = {"image": axis + 0.2 * rng.normal(size=(rows, 2, D)).astype(np.float32),
            "audio": axis + 0.4 * rng.normal(size=(rows, 2, D)).astype(np.float32),
            "audio_mask": np.stack([np.ones(rows, bool), np.arange(rows) % 2 == 0], 1),
            "text": np.concatenate([labels[:, None], -np.ones((rows, T - 1))], 1).astype(np.int32),
            "label": labels.astype(np.int32)}
    batches = []
    for start in range(0, rows, batch_size):
        batch = {k: v[start:start + batch_size] for k, v in data.items()}
        n = len(batch["label"])
        batch = {k: np.concatenate([v, np.zeros((batch_size - n, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
        batches.append(batch | {"mask": np.arange(batch_size) < n})
    return batches


EVERYTHING = {  # every built-in type, several reading the same (modality, split)
    "zeroshot": {"type": "zeroshot", "modalities": ("image", "audio")},
    "zeroshot_tokenwise": {"type": "zeroshot_tokenwise", "modalities": ("image",)},
    "zeroshot_multilinear": {"type": "zeroshot_multilinear", "groups": ("image+audio",)},
    "retrieval": {"type": "retrieval", "pairs": ("image:text", "audio:image"), "ks": (1, 5)},
    "knn": {"type": "knn", "modalities": ("image",)},
    "linear": {"type": "linear", "modalities": ("image",)},
    "fewshot": {"type": "fewshot", "modalities": ("image",), "ways": 2, "shots": (1, 2)},
}


def _runner(evals=None, devices=1, model=None, batch_size=16, **kw):
    mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": -1}), jax.devices()[:devices])
    kw = {"train_batches": _split(70, batch_size, 1), "dataset": FakeDataset(), **kw}
    return EvalRunner(build_evaluators(EVERYTHING if evals is None else evals), model or FakeModel(),
                      FakeTokenizer(), mesh, _split(37, batch_size, 0), **kw)


PARAMS = {"scale": jnp.float32(1.0)}


def test_config_entries_fail_on_unknown_types_and_fields_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"config.evals.zs.type.*valid names: \['fewshot', 'knn', 'linear', "
                                         r"'retrieval', 'zeroshot', 'zeroshot_multilinear', 'zeroshot_tokenwise'\]"):
        build_evaluators({"zs": {"type": "zero_shot", "modalities": ("image",)}})
    with pytest.raises(ValueError, match=r"config.evals.zs \(ZeroShot\): unknown fields \['modality'\]; "
                                         r"valid fields: \['type'\] \+ \['modalities'\]"):
        build_evaluators({"zs": {"type": "zeroshot", "modality": ("image",)}})
    with pytest.raises(ValueError, match=r"config.evals.fs .*missing fields \['modalities'\].*'ways', 'shots'"):
        build_evaluators({"fs": {"type": "fewshot"}})
    with pytest.raises(ValueError, match="config.evals.x has no 'type'"):
        build_evaluators({"x": {"modalities": ("image",)}})
    # type "none" switches an entry off (--config.evals.<name>.type=none)
    assert list(build_evaluators({"zs": {"type": "none", "modalities": ("image",)},
                                  "knn": {"type": "knn", "modalities": ("image",)}})) == ["knn"]
    for entry, message in [({"type": "retrieval", "pairs": ("image",)}, "expected 'query:key'"),
                           ({"type": "zeroshot_multilinear", "groups": ("image",)}, "two or more modalities"),
                           ({"type": "knn", "modalities": "image"}, "tuple of non-empty strings")]:
        with pytest.raises(ValueError, match=f"config.evals.e: .*{message}"):
            build_evaluators({"e": entry})
    # The defaults of /tmp/mm/SPEC.md's table, and config values of any sequence type.
    built = build_evaluators(ml_collections.ConfigDict({"r": {"type": "retrieval"}, "z": {"type": "zeroshot"},
                                                        "f": {"type": "fewshot", "modalities": ["audio"]}}))
    assert (built["r"].pairs, built["r"].ks, built["z"].modalities) == (("image:text",), (1, 5, 10), ("image",))
    assert (built["f"].modalities, built["f"].ways, built["f"].shots) == (("audio",), 5, (1, 5))


def test_runner_checks_what_evaluators_read_against_the_model_and_inputs():
    with pytest.raises(ValueError, match=r"config.evals.knn names modalities \['depth'\] the model cannot embed"):
        _runner({"knn": {"type": "knn", "modalities": ("depth",)}})
    model = FakeModel()
    model.modalities = ("image", "audio")
    with pytest.raises(ValueError, match="config.evals.zeroshot scores against the class prompts, which needs a text"):
        _runner({"zeroshot": EVERYTHING["zeroshot"]}, model=model)
    model = FakeModel()
    model.project_tokens = False
    with pytest.raises(ValueError, match="zeroshot_tokenwise: token-wise scores need model.project_tokens"):
        _runner({"zeroshot_tokenwise": EVERYTHING["zeroshot_tokenwise"]}, model=model)
    with pytest.raises(ValueError, match="config.evals.linear reads the train split"):
        _runner({"linear": EVERYTHING["linear"]}, train_batches=())
    with pytest.raises(ValueError, match="config.evals.zeroshot reads the class prompts"):
        _runner({"zeroshot": EVERYTHING["zeroshot"]}, dataset=None)
    # Nothing that reads no prompts and no train split needs them.
    assert _runner({"retrieval": EVERYTHING["retrieval"]}, train_batches=(), dataset=None)(PARAMS)


def test_features_are_extracted_once_per_modality_and_split():
    runner = _runner()
    results = runner(PARAMS)
    eval_batches, train_batches = len(runner.batches), len(runner.split_batches[TRAIN])
    # image: one eval pass (embeddings and token scores together) + one train pass; audio: one eval
    # pass for zeroshot, multilinear and retrieval; text: the prompts + one eval pass (retrieval).
    assert runner.model.calls == {"image": eval_batches + train_batches, "audio": eval_batches,
                                  "text": 1 + eval_batches}
    assert list(results) == [  # evaluators in the order given (a ConfigDict sorts them), each in its own
        "zeroshot_top1_image", "zeroshot_top5_image", "zeroshot_top1_audio", "zeroshot_top5_audio",
        "zeroshot_tokenwise_top1_image", "zeroshot_tokenwise_top5_image",
        "zeroshot_multilinear_top1_image_audio", "zeroshot_multilinear_top5_image_audio",
        "r1_image_text", "r5_image_text", "class_r1_image_text", "class_r5_image_text",
        "r1_audio_image", "r5_audio_image", "class_r1_audio_image", "class_r5_audio_image",
        "knn_top1_image", "linear_top1_image",
        "2way1shot_image", "2way1shot_std_image", "2way2shot_image", "2way2shot_std_image"]
    # Separable classes: every classifier is right; captions name only the class (retrieval by class).
    for name in ("knn_top1_image", "linear_top1_image", "zeroshot_top1_image", "class_r1_image_text",
                 "zeroshot_multilinear_top1_image_audio", "zeroshot_tokenwise_top1_image", "2way2shot_image"):
        assert results[name] == 1.0, name
    assert results["zeroshot_top5_audio"] == 1.0  # 4 classes: top-5 is every class


def test_a_registered_evaluator_receives_the_shared_features():
    seen = []

    @dataclasses.dataclass
    class MeanCosine(Evaluator):
        """The mean cosine between each example's embeddings of two modalities."""
        a: str = "image"
        b: str = "audio"

        def needs(self):
            return Needs(embeddings=((self.a, EVAL), (self.b, EVAL)), class_embeddings=True)

        def __call__(self, features):
            seen.append(features)
            za, zb = features.embeddings[self.a, EVAL], features.embeddings[self.b, EVAL]
            return {f"mean_cosine_{self.a}_{self.b}": float(np.mean(np.sum(za * zb, 1)))}

    EVALUATORS.register("mean_cosine", MeanCosine)
    try:
        runner = _runner({"cos": {"type": "mean_cosine"}, "zeroshot": EVERYTHING["zeroshot"]},
                         aliases={"cos": "mean_cosine_image_audio"})
        results = runner(PARAMS)
    finally:
        EVALUATORS.unregister("mean_cosine")
    assert runner.model.calls == {"image": len(runner.batches), "audio": len(runner.batches), "text": 1}
    (features,) = seen
    mask = np.concatenate([b["mask"] for b in runner.batches])
    image = np.concatenate([b["image"] for b in runner.batches]).sum(1)[mask]
    np.testing.assert_allclose(features.embeddings["image", EVAL], _unit(image), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(features.labels[EVAL], np.concatenate([b["label"] for b in runner.batches])[mask])
    np.testing.assert_allclose(features.class_embeddings, np.eye(C, D), atol=1e-6)  # prompt "2", "22": axis 2
    assert features.num_classes == C and set(features.labels) == {EVAL}
    assert list(results)[0] == "cos" and results["cos"] == results["mean_cosine_image_audio"] > 0.5
    with pytest.raises(ValueError, match=r"config.eval.aliases \{'x': 'nope'\} name unknown metrics; valid: "
                                         r"\['zeroshot_top1_image', 'zeroshot_top5_image'\]"):
        _runner({"zeroshot": {"type": "zeroshot"}}, aliases={"x": "nope"})(PARAMS)


def test_runner_on_a_data_parallel_mesh_matches_one_device():
    # 8 devices: each eval batch of 16 is split 2 rows per device; 12 prompts are padded to 16.
    one = _runner(devices=1)(PARAMS)
    eight = _runner(devices=8)(PARAMS)
    assert eight == pytest.approx(one, abs=1e-6)


def test_from_config_reads_the_train_split_and_the_prompts_only_when_asked(monkeypatch):
    reads = []
    monkeypatch.setattr(runner_lib.pipeline, "EvalBatches",
                        lambda data_cfg, *, split, batch_size, tokenizer, shard_index, shard_count: reads.append(split) or
                        _split(37 if split == "test" else 70, batch_size, len(reads)))
    class CountingDataset(FakeDataset):
        def zeroshot_prompts(self):
            reads.append("prompts")
            return super().zeroshot_prompts()

    monkeypatch.setattr(runner_lib.datasets, "get_dataset", lambda data_cfg: CountingDataset())
    mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": -1}), jax.devices()[:1])
    config = ml_collections.ConfigDict({
        "data": {"train_split": "train", "eval_split": "test"},
        "eval": {"batch_size": 16, "aliases": {"i2t_r1": "r1_image_text"}},
        "evals": {"retrieval": EVERYTHING["retrieval"]}})
    runner = EvalRunner.from_config(config, FakeModel(), FakeTokenizer(), mesh)
    assert reads == ["test"] and len(runner.batches) == 3 and list(runner(PARAMS))[0] == "i2t_r1"
    reads.clear()
    with config.unlocked():
        config.evals = ml_collections.ConfigDict(EVERYTHING)
    EvalRunner.from_config(config, FakeModel(), FakeTokenizer(), mesh)
    assert sorted(reads) == ["prompts", "test", "train"]
    with config.unlocked():
        config.evals = ml_collections.ConfigDict({"knn": {"type": "knn", "modalities": ("depth",)}})
    reads.clear()
    with pytest.raises(ValueError, match="cannot embed"):  # before any data is read
        EvalRunner.from_config(config, FakeModel(), FakeTokenizer(), mesh)
    assert reads == []
