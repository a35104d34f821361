"""Zero-shot classification: class embeddings from prompt text, nearest by dot product.

Flow: the dataset's class prompts ([C][T] strings, `Dataset.zeroshot_prompts`) -> text tower
-> reshape to [C, T, D] -> `prompt_ensemble` -> `zeroshot_metrics` against the (normalised)
embeddings of the eval examples; the `zeroshot` evaluator at the bottom does this per modality.
`fused_zeroshot_metrics` does the same for the late fusion of a subset of each
example's modalities (missing modalities at test time). FILIP's token-wise
zero-shot has no class embedding: `tokenwise_class_scores` averages the
example-to-prompt late-interaction scores over each class's templates and
`zeroshot_metrics_from_scores` ranks them.
Ranking and its tie rule are those of `mmjax.evals.retrieval.topk_hits`: a class
tied with the true one shares the top-k credit, so a collapsed model scores
exactly chance (k / C), never a flattering 1.0.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from mmjax.evals.base import EVAL, EVALUATORS, Evaluator, Features, Needs, names
from mmjax.evals.retrieval import as_embedding_matrix, select_rows, topk_hits

TOPK = (1, 5)  # the cut-offs of every zero-shot evaluator


def prompt_ensemble(text_embeddings) -> np.ndarray:
    """CLIP prompt ensembling: [C, T, D] normalised embeddings -> [C, D].

    Averages each class's template embeddings and re-normalises, so every class
    competes on direction only, whatever the templates' agreement.
    """
    x = np.asarray(text_embeddings, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"text_embeddings must be [C, T, D], got shape {x.shape}")
    mean = x.mean(axis=1)  # [C, D]
    norm = np.linalg.norm(mean, axis=-1, keepdims=True)
    # The floor only matters for templates that cancel out exactly.
    return mean / np.maximum(norm, 1e-12)


def zeroshot_metrics(
    embeddings,
    labels,
    class_embeddings,
    mask=None,
    topk: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Top-k zero-shot accuracy of `labels` under dot-product class scores.

    Args:
      embeddings: [N, D] example embeddings (e.g. images), normalised.
      labels: [N] int class ids in [0, C).
      class_embeddings: [C, D], e.g. from `prompt_ensemble`.
      mask: optional [N] bool; False rows (eval padding) are ignored.
      topk: cut-offs; one "zeroshot_top{k}" entry per k.

    Returns:
      {"zeroshot_top1": ..., "zeroshot_top5": ...} as Python floats in [0, 1].
    """
    embeddings, labels = _checked_rows(embeddings, labels, mask)
    embeddings = as_embedding_matrix(embeddings, "embeddings")
    class_embeddings = as_embedding_matrix(class_embeddings, "class_embeddings")
    return _topk_accuracy(embeddings @ class_embeddings.T, labels, topk)  # scores [N, C]


def zeroshot_metrics_from_scores(scores, labels, mask=None, topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """`zeroshot_metrics` for class scores computed otherwise ([N, C], higher = more likely), e.g.
    FILIP's token-wise similarity averaged over each class's prompts (`tokenwise_class_scores`)."""
    scores, labels = _checked_rows(scores, labels, mask)
    if scores.ndim != 2 or not np.all(np.isfinite(scores)):
        raise ValueError(f"scores must be a finite [N, C] matrix, got shape {scores.shape}")
    return _topk_accuracy(scores, labels, topk)


def tokenwise_class_scores(similarities, num_classes: int) -> np.ndarray:
    """[N, C * T] example-to-prompt similarities (class-major prompts, as `Dataset.zeroshot_prompts`) -> [N, C]:
    the mean over each class's T templates (a late-interaction score has no embedding to average)."""
    s = np.asarray(similarities, np.float32)
    if s.ndim != 2 or s.shape[1] % num_classes:
        raise ValueError(f"similarities {s.shape} are not [N, {num_classes} classes x templates]")
    return s.reshape(s.shape[0], num_classes, -1).mean(axis=2)


def _checked_rows(rows, labels, mask):
    rows, labels = np.asarray(rows), np.asarray(labels)
    if labels.shape != rows.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {rows.shape[:1]} integers, got {labels.shape} {labels.dtype}")
    # Mask first: padding rows may hold anything, NaN or label -1 included.
    return select_rows(mask, rows, labels)


def _topk_accuracy(scores: np.ndarray, labels: np.ndarray, topk: Sequence[int]) -> dict[str, float]:
    num_classes = scores.shape[1]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels span [{labels.min()}, {labels.max()}] but there are {num_classes} classes")
    positive = scores[np.arange(len(labels)), labels]
    hits = topk_hits(scores, positive, topk).mean(axis=0)
    return {f"zeroshot_top{k}": float(h) for k, h in zip(topk, hits)}


def fuse_embeddings(embeddings: Sequence) -> np.ndarray:
    """Late fusion of one example's modalities: [M] of [N, D] -> [N, D] normalised.

    Each modality is L2-normalised before the mean, so every available
    modality gets one equal vote on direction whatever its norm; the mean is
    re-normalised so fused and single-modality embeddings score on one scale.
    """
    if not embeddings:
        raise ValueError("fuse_embeddings needs at least one modality's embeddings")
    z = np.stack([as_embedding_matrix(e, "embeddings") for e in embeddings])  # [M, N, D]
    z = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    mean = z.mean(axis=0)
    return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def fused_zeroshot_metrics(
    embeddings: Mapping[str, np.ndarray],
    modalities: Sequence[str],
    labels,
    class_embeddings,
    mask=None,
    topk: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Zero-shot accuracy when only `modalities` of each example are available.

    The example is represented by `fuse_embeddings` of its available
    modalities' embeddings (e.g. image + audio, or audio alone) and classified
    against `class_embeddings` as in `zeroshot_metrics`; this is the test-time
    task for missing modalities.

    Args:
      embeddings: {modality: [N, D]} embeddings of the same N examples.
      modalities: the available subset (non-empty, each a key of `embeddings`).
      labels, class_embeddings, mask, topk: as in `zeroshot_metrics`.
    """
    unknown = [m for m in modalities if m not in embeddings]
    if unknown:
        raise ValueError(f"modalities {unknown} have no embeddings; available: {sorted(embeddings)}")
    fused = fuse_embeddings([embeddings[m] for m in modalities])
    return zeroshot_metrics(fused, labels, class_embeddings, mask=mask, topk=topk)


def renamed(metrics: Mapping[str, float], kind: str, suffix: str) -> dict[str, float]:
    """{"zeroshot_top1": v} -> {"zeroshot_<kind>_top1_<suffix>": v} (kind "" keeps "zeroshot_")."""
    prefix = f"zeroshot_{kind}_" if kind else "zeroshot_"
    return {f"{prefix}{key.removeprefix('zeroshot_')}_{suffix}": value for key, value in metrics.items()}


@EVALUATORS.register("zeroshot")
@dataclasses.dataclass
class ZeroShot(Evaluator):
    """Per modality m, the class whose prompt-ensembled text embedding is nearest to the example's
    embedding: zeroshot_top1_<m>, zeroshot_top5_<m>."""
    modalities: tuple[str, ...] = ("image",)

    def __post_init__(self):
        self.modalities = names(self.modalities, "modalities")

    def needs(self) -> Needs:
        return Needs(embeddings=tuple((m, EVAL) for m in self.modalities), class_embeddings=True)

    def __call__(self, features: Features) -> dict[str, float]:
        out = {}
        for m in self.modalities:
            metrics = zeroshot_metrics(features.embeddings[m, EVAL], features.labels[EVAL],
                                       features.class_embeddings, topk=TOPK)
            out |= renamed(metrics, "", m)
        return out
