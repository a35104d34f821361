"""Closed-form ridge linear probe on frozen features, regulariser chosen on held-out train
examples: linear_top1_<m>."""
from __future__ import annotations

import dataclasses

from mmjax.evals.base import EVALUATORS
from mmjax.evals.probe import ProbeEvaluator, ridge_probe_accuracy


@EVALUATORS.register("linear")
@dataclasses.dataclass
class Linear(ProbeEvaluator):
    def score(self, modality, train_x, train_y, test_x, test_y):
        return {f"linear_top1_{modality}": ridge_probe_accuracy(train_x, train_y, test_x, test_y)[0]}
