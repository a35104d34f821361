"""n-way k-shot episodes on frozen features (support from the train split, queries from the
eval split), as big_vision's few-shot evaluator: <n>way<k>shot_<m> and <n>way<k>shot_std_<m>,
the mean and std of accuracy over episodes, per entry of `shots`."""
from __future__ import annotations

import dataclasses

from mmjax.evals.base import EVALUATORS
from mmjax.evals.probe import ProbeEvaluator, few_shot_accuracy


@EVALUATORS.register("fewshot")
@dataclasses.dataclass
class FewShot(ProbeEvaluator):
    ways: int = 5
    shots: tuple[int, ...] = (1, 5)

    def __post_init__(self):
        super().__post_init__()
        self.ways, self.shots = int(self.ways), tuple(int(s) for s in self.shots)

    def score(self, modality, train_x, train_y, test_x, test_y):
        out = {}
        for shots in self.shots:
            mean, std = few_shot_accuracy(train_x, train_y, test_x, test_y, ways=self.ways, shots=shots)
            out[f"{self.ways}way{shots}shot_{modality}"] = mean
            out[f"{self.ways}way{shots}shot_std_{modality}"] = std
        return out
