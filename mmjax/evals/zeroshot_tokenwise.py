"""FILIP's token-wise zero-shot (Yao et al. 2021): no class embedding, but a late-interaction score.

Each eval example's projected tokens are scored against every class prompt's valid text tokens
(mean over the example's tokens of the best cosine; `mmjax.similarity.filip_similarities`), the
scores averaged over each class's templates, and the classes ranked:
zeroshot_tokenwise_top1_<m>, zeroshot_tokenwise_top5_<m>. The runner computes the scores batch by
batch in the same tower pass as the embeddings, so the tokens of the whole split are never held.
Needs model.project_tokens (every modality's tokens in the shared space).
"""
from __future__ import annotations

import dataclasses

from mmjax.evals.base import EVAL, EVALUATORS, Evaluator, Features, Needs, names
from mmjax.evals.zeroshot import TOPK, renamed, tokenwise_class_scores, zeroshot_metrics_from_scores


@EVALUATORS.register("zeroshot_tokenwise")
@dataclasses.dataclass
class ZeroShotTokenwise(Evaluator):
    modalities: tuple[str, ...]

    def __post_init__(self):
        self.modalities = names(self.modalities, "modalities")

    def needs(self) -> Needs:
        return Needs(token_similarities=self.modalities)

    def __call__(self, features: Features) -> dict[str, float]:
        out = {}
        for m in self.modalities:
            scores = tokenwise_class_scores(features.token_similarities[m], features.num_classes)  # [N, C]
            out |= renamed(zeroshot_metrics_from_scores(scores, features.labels[EVAL], topk=TOPK), "tokenwise", m)
        return out
