"""Frozen-feature classifiers: kNN and a closed-form ridge linear probe.

Both take features of a labelled train set and score a test set; the
features are what a frozen encoder produced (mmjax.evals.runner extracts them
once per evaluation and shares them). `ProbeEvaluator` is the base of the
`knn`, `linear` and `fewshot` evaluators (their own modules): train split
features fit the classifier, eval split features are scored.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mmjax.evals.base import EVAL, TRAIN, Evaluator, Features, Needs, names


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_accuracy(train_x, train_y, test_x, test_y, *, k: int = 20, temperature: float = 0.07,
                 num_classes: int | None = None, chunk_size: int = 1024) -> float:
    """Weighted kNN on cosine similarity (as DINO's evaluation): each of the k
    nearest train examples votes for its class with weight exp(sim / T)."""
    train_x, test_x = _normalize(np.asarray(train_x, np.float32)), _normalize(np.asarray(test_x, np.float32))
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    c = int(num_classes or max(train_y.max(), test_y.max()) + 1)
    k = min(k, len(train_x))
    correct = 0
    for start in range(0, len(test_x), chunk_size):
        sim = test_x[start:start + chunk_size] @ train_x.T  # [q, N]
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # [q, k], unordered
        weights = np.exp(np.take_along_axis(sim, top, axis=1) / temperature)
        votes = np.zeros((len(sim), c))
        np.add.at(votes, (np.arange(len(sim))[:, None], train_y[top]), weights)
        correct += int(np.sum(votes.argmax(axis=1) == test_y[start:start + chunk_size]))
    return correct / len(test_x)


def _ridge_fit(x: np.ndarray, targets: np.ndarray, lam: float) -> np.ndarray:
    return np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ targets)


def ridge_probe_accuracy(train_x, train_y, test_x, test_y, *, lambdas: Sequence[float] = tuple(np.logspace(-2, 4, 7)),
                         val_fraction: float = 0.2, seed: int = 0) -> tuple[float, float]:
    """Linear probe by closed-form ridge regression onto one-hot labels.

    Features are standardised with train statistics (plus a bias column); the
    regulariser is chosen on a held-out `val_fraction` of the train set, then
    the probe is refit on all of it. Returns (test accuracy, chosen lambda).
    """
    train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    prep = lambda x: np.concatenate([(x - mean) / std, np.ones((len(x), 1))], axis=1)  # noqa: E731
    xtr, xte = prep(train_x), prep(test_x)
    onehot = np.eye(int(max(train_y.max(), test_y.max()) + 1))[train_y]
    order = np.random.default_rng(seed).permutation(len(xtr))
    n_val = max(1, int(len(xtr) * val_fraction))
    val, fit = order[:n_val], order[n_val:]
    scores = [np.mean((xtr[val] @ _ridge_fit(xtr[fit], onehot[fit], lam)).argmax(1) == train_y[val])
              for lam in lambdas]
    best = float(lambdas[int(np.argmax(scores))])
    w = _ridge_fit(xtr, onehot, best)
    return float(np.mean((xte @ w).argmax(1) == test_y)), best


def few_shot_accuracy(train_x, train_y, test_x, test_y, *, ways: int = 5, shots: int = 5, episodes: int = 20,
                      queries_per_class: int = 15, lam: float = 1.0, seed: int = 0) -> tuple[float, float]:
    """n-way k-shot classification on frozen features, as (mean, std) accuracy over episodes.

    Each episode draws `ways` classes, `shots` support examples of each from
    the train features and `queries_per_class` queries of each from the test
    features, and fits closed-form ridge least squares onto one-hot targets
    (L2-normalised features, bias column, regulariser `lam`), as big_vision's
    few-shot evaluator does.
    """
    train_x, test_x = _normalize(np.asarray(train_x, np.float64)), _normalize(np.asarray(test_x, np.float64))
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    classes = np.intersect1d(np.unique(train_y), np.unique(test_y))
    if len(classes) < ways:
        raise ValueError(f"{ways}-way episodes need {ways} classes present in both splits, have {len(classes)}")
    rng = np.random.default_rng(seed)
    bias = lambda x: np.concatenate([x, np.ones((len(x), 1))], axis=1)  # noqa: E731
    accuracies = []
    for _ in range(episodes):
        chosen = rng.choice(classes, ways, replace=False)
        support = np.concatenate([rng.choice(np.flatnonzero(train_y == c), shots, replace=False) for c in chosen])
        query = np.concatenate([rng.choice(np.flatnonzero(test_y == c), min(queries_per_class, np.sum(test_y == c)),
                                           replace=False) for c in chosen])
        targets = np.eye(ways)[np.searchsorted(np.sort(chosen), train_y[support])]
        w = _ridge_fit(bias(train_x[support]), targets, lam)
        predicted = np.sort(chosen)[(bias(test_x[query]) @ w).argmax(1)]
        accuracies.append(np.mean(predicted == test_y[query]))
    return float(np.mean(accuracies)), float(np.std(accuracies))


@dataclasses.dataclass
class ProbeEvaluator(Evaluator):
    """Per modality m: a classifier fit on the train split's frozen features, scored on the eval
    split's. Subclasses implement `score`."""
    modalities: tuple[str, ...]

    def __post_init__(self):
        self.modalities = names(self.modalities, "modalities")

    def needs(self) -> Needs:
        return Needs(embeddings=tuple((m, split) for m in self.modalities for split in (TRAIN, EVAL)))

    def __call__(self, features: Features) -> dict[str, float]:
        out = {}
        for m in self.modalities:
            out |= self.score(m, features.embeddings[m, TRAIN], features.labels[TRAIN],
                              features.embeddings[m, EVAL], features.labels[EVAL])
        return out

    def score(self, modality: str, train_x, train_y, test_x, test_y) -> dict[str, float]:
        raise NotImplementedError
