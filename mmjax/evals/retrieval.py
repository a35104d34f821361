"""Instance-level cross-modal retrieval recall@k, computed in query chunks.

Query i's one positive is key i (paired rows, e.g. an image and its caption).
Scores are dot products, so pass L2-normalised embeddings for cosine retrieval.
Only a [chunk_size, N] slice of the score matrix exists at any time, so a 100k
test set costs 100k * chunk_size floats, not 100k^2.

Tie rule (shared with the zero-shot evaluator through `topk_hits`): with h keys
scoring strictly higher than the positive and t keys scoring exactly equal to it
(the positive included, t >= 1), the positive's rank under a uniformly random
tie-break is uniform over h .. h + t - 1, and the query contributes the exact
probability of landing in the top k, clip(k - h, 0, t) / t. With no ties this is
the usual 0/1 hit; with all scores equal it is k / N, i.e. chance, not the 1.0 an
optimistic "count strictly higher" rule would report for a collapsed model.

Inputs may be NumPy or fully addressable jax arrays; work is done in NumPy. The `retrieval`
evaluator at the bottom reports both recalls for configured query:key pairs of modalities.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mmjax.evals.base import EVAL, EVALUATORS, Evaluator, Features, Needs


def topk_hits(scores: np.ndarray, positive: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """Expected top-k hits under random tie-breaking (see module docstring).

    Args:
      scores: [M, K] candidate scores per query; each row contains its positive.
      positive: [M] the score of each query's positive (taken from `scores`).
      ks: cut-offs.

    Returns:
      [M, len(ks)] float64 in [0, 1].
    """
    positive = positive[:, None]
    higher = np.sum(scores > positive, axis=1, keepdims=True)  # [M, 1]
    tied = np.sum(scores == positive, axis=1, keepdims=True)  # [M, 1], >= 1
    ks = np.asarray(ks)[None, :]  # [1, len(ks)]
    return np.clip(ks - higher, 0, tied) / tied


def as_embedding_matrix(x, name: str) -> np.ndarray:
    """`x` as a float32 [N, D] NumPy array; rejects other ranks and NaN/inf."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [N, D], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        # A NaN never compares equal, so it would silently break the tie rule.
        raise ValueError(f"{name} has non-finite values in rows "
                         f"{np.flatnonzero(~np.isfinite(x).all(axis=1))[:10].tolist()}")
    return x


def select_rows(mask, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Keeps the rows where `mask` [N] is True (drops eval padding); None keeps all."""
    n = len(arrays[0])
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (n,):
            raise ValueError(f"mask must have shape ({n},), got {mask.shape}")
        arrays = tuple(a[mask] for a in arrays)
    if len(arrays[0]) == 0:
        raise ValueError("no (unmasked) rows to evaluate")
    return arrays


def retrieval_recall(
    queries,
    keys,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
    mask=None,
) -> dict[str, float]:
    """Recall@k of finding key i for query i among all keys, by dot product.

    Args:
      queries, keys: [N, D] paired embeddings.
      ks: cut-offs; the result has one "r{k}" entry per k.
      chunk_size: queries scored per step, which bounds memory to chunk_size * N.
      mask: optional [N] bool; False rows (eval padding) are dropped as both
        queries and keys, so they neither count nor compete.

    Returns:
      {"r1": ..., "r5": ..., "r10": ...} as Python floats in [0, 1].
    """
    queries, keys = np.asarray(queries), np.asarray(keys)
    if queries.shape != keys.shape:
        raise ValueError(f"queries {queries.shape} and keys {keys.shape} must be paired")
    # Mask first: padding rows may hold anything, NaN included.
    queries, keys = select_rows(mask, queries, keys)
    queries = as_embedding_matrix(queries, "queries")
    keys = as_embedding_matrix(keys, "keys")
    n = queries.shape[0]
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    hits = np.zeros(len(ks))
    for start in range(0, n, chunk_size):
        scores = queries[start:start + chunk_size] @ keys.T  # [c, N]
        rows = np.arange(scores.shape[0])
        # Reading the positive from the same matmul row keeps an exact tie exact.
        hits += topk_hits(scores, scores[rows, start + rows], ks).sum(axis=0)
    return {f"r{k}": float(h / n) for k, h in zip(ks, hits)}


def bidirectional_retrieval(
    za,
    zb,
    names: tuple[str, str] = ("i", "t"),
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
    mask=None,
) -> dict[str, float]:
    """Recall@k both ways, keyed e.g. "i2t_r1" (za queries zb) and "t2i_r1"."""
    a, b = names
    out = {}
    for direction, queries, keys in ((f"{a}2{b}", za, zb), (f"{b}2{a}", zb, za)):
        recall = retrieval_recall(queries, keys, ks=ks, chunk_size=chunk_size, mask=mask)
        out.update({f"{direction}_{key}": value for key, value in recall.items()})
    return out


def class_recall(
    queries,
    keys,
    query_labels,
    key_labels,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Class-level recall@k: a query hits when any of its k best keys has its label.

    Instance-level recall asks for the one paired key; when pairs are formed
    only by class (a spoken "seven" paired with some image of a 7) that is
    partly luck, and this is the figure that measures what was learned.
    Chance is about 1 - (1 - 1/C)^k for C balanced classes. Ties in score are
    broken by key order (a collapsed model scores near chance, not exactly).
    """
    queries = as_embedding_matrix(queries, "queries")
    keys = as_embedding_matrix(keys, "keys")
    query_labels, key_labels = np.asarray(query_labels), np.asarray(key_labels)
    if len(query_labels) != len(queries) or len(key_labels) != len(keys):
        raise ValueError("one label per query and per key is needed")
    kmax = min(max(ks), len(keys))
    hits = np.zeros(len(ks))
    for start in range(0, len(queries), chunk_size):
        scores = queries[start:start + chunk_size] @ keys.T  # [c, N]
        top = np.argsort(-scores, axis=1, kind="stable")[:, :kmax]  # [c, kmax]
        same = key_labels[top] == query_labels[start:start + chunk_size, None]  # [c, kmax]
        hits += [same[:, :k].any(axis=1).sum() for k in ks]
    return {f"r{k}": float(h / len(queries)) for k, h in zip(ks, hits)}


def parse_pairs(pairs) -> tuple[tuple[str, str], ...]:
    """("audio:image",) -> (("audio", "image"),): query modality, key modality."""
    if isinstance(pairs, str):
        raise ValueError(f"pairs={pairs!r}: expected a tuple of 'query:key' entries, e.g. ('audio:image',)")
    out = []
    for pair in pairs:
        a, sep, b = str(pair).partition(":")
        if not sep or not a or not b:
            raise ValueError(f"pairs entry {pair!r}: expected 'query:key', e.g. 'audio:image'")
        out.append((a, b))
    return tuple(out)


@EVALUATORS.register("retrieval")
@dataclasses.dataclass
class Retrieval(Evaluator):
    """Per directed pair "a:b", retrieval of b from a over the eval split: instance-level
    (r<k>_<a>_<b>: the paired example is the one right answer) and class-level
    (class_r<k>_<a>_<b>: any example of the query's class counts)."""
    pairs: tuple[str, ...] = ("image:text",)
    ks: tuple[int, ...] = (1, 5, 10)

    def __post_init__(self):
        self._pairs = parse_pairs(self.pairs)
        self.ks = tuple(int(k) for k in self.ks)

    def needs(self) -> Needs:
        modalities = dict.fromkeys(m for pair in self._pairs for m in pair)
        return Needs(embeddings=tuple((m, EVAL) for m in modalities))

    def __call__(self, features: Features) -> dict[str, float]:
        labels, out = features.labels[EVAL], {}
        for a, b in self._pairs:
            za, zb = features.embeddings[a, EVAL], features.embeddings[b, EVAL]
            out |= {f"{k}_{a}_{b}": v for k, v in retrieval_recall(za, zb, ks=self.ks).items()}
            if (labels >= 0).all():  # unlabelled corpora (label -1) have instance recall only
                out |= {f"class_{k}_{a}_{b}": v for k, v in class_recall(za, zb, labels, labels, ks=self.ks).items()}
        return out
