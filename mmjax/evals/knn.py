"""Weighted kNN on frozen features (as DINO's evaluation): knn_top1_<m>."""
from __future__ import annotations

import dataclasses

from mmjax.evals.base import EVALUATORS
from mmjax.evals.probe import ProbeEvaluator, knn_accuracy


@EVALUATORS.register("knn")
@dataclasses.dataclass
class KNN(ProbeEvaluator):
    def score(self, modality, train_x, train_y, test_x, test_y):
        return {f"knn_top1_{modality}": knn_accuracy(train_x, train_y, test_x, test_y)}
