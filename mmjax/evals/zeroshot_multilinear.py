"""Symile's zero-shot (Saporta et al. 2024): the class whose prompt embedding t maximises the
multilinear inner product <a, b, ..., t> = sum_d a_d b_d ... t_d of an example's embeddings of
a group of modalities ("image+audio": the caption given the other two):
zeroshot_multilinear_top1_<a>_<b>, zeroshot_multilinear_top5_<a>_<b>.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mmjax.evals.base import EVAL, EVALUATORS, Evaluator, Features, Needs, names
from mmjax.evals.zeroshot import TOPK, renamed, zeroshot_metrics_from_scores


def parse_groups(groups) -> tuple[tuple[str, ...], ...]:
    """("image+audio",) -> (("image", "audio"),)."""
    parsed = tuple(tuple(entry.split("+")) for entry in names(groups, "groups"))
    if any(len(group) < 2 or not all(group) for group in parsed):
        raise ValueError(f"groups {tuple(groups)}: expected entries of two or more modalities joined by '+', "
                         f"e.g. 'image+audio'")
    return parsed


@EVALUATORS.register("zeroshot_multilinear")
@dataclasses.dataclass
class ZeroShotMultilinear(Evaluator):
    groups: tuple[str, ...] = ("image+audio",)

    def __post_init__(self):
        self._groups = parse_groups(self.groups)

    def needs(self) -> Needs:
        modalities = dict.fromkeys(m for group in self._groups for m in group)
        return Needs(embeddings=tuple((m, EVAL) for m in modalities), class_embeddings=True)

    def __call__(self, features: Features) -> dict[str, float]:
        out = {}
        for group in self._groups:
            scores = np.prod([features.embeddings[m, EVAL] for m in group], axis=0) @ features.class_embeddings.T
            metrics = zeroshot_metrics_from_scores(scores, features.labels[EVAL], topk=TOPK)
            out |= renamed(metrics, "multilinear", "_".join(group))
        return out
