"""Zero-shot and retrieval evaluators on inputs whose answers are known exactly."""
import numpy as np
import pytest

from mmjax.evals.retrieval import bidirectional_retrieval, retrieval_recall, topk_hits
from mmjax.evals.zeroshot import (build_prompts, fused_zeroshot_metrics, prompt_ensemble, tokenwise_class_scores,
                                  zeroshot_metrics, zeroshot_metrics_from_scores)
from mmjax.objectives.contrastive_variants import filip_similarities


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
def test_build_prompts_is_class_major():
    templates = ["a {name}", "digit {digit}", "{name}={digit}"]
    prompts = build_prompts(["zero", "one"], ["0", "1"], templates)
    assert prompts == ["a zero", "digit 0", "zero=0", "a one", "digit 1", "one=1"]
    with pytest.raises(ValueError, match="digits"):
        build_prompts(["zero", "one"], ["0"], ["{name}"])


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
