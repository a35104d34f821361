"""Evaluators as components: one module per evaluator type, one registry (`EVALUATORS`), and a
runner (mmjax.evals.runner.EvalRunner) that extracts features once and hands them to each.

A config lists its evaluations as `config.evals.<name> = {"type": ..., **fields}` (see base.py
for the interface and how a project adds its own). Built-in types, each in its module:
  zeroshot              modalities=("image",)      zeroshot_top{1,5}_<m>
  zeroshot_tokenwise    modalities                 zeroshot_tokenwise_top{1,5}_<m>
  zeroshot_multilinear  groups=("image+audio",)    zeroshot_multilinear_top{1,5}_<a>_<b>
  retrieval             pairs=("image:text",), ks=(1, 5, 10)   r<k>_<a>_<b>, class_r<k>_<a>_<b>
  knn                   modalities                 knn_top1_<m>
  linear                modalities                 linear_top1_<m>
  fewshot               modalities, ways=5, shots=(1, 5)   <w>way<s>shot_<m>, <w>way<s>shot_std_<m>
The metric math they share lives in zeroshot.py, retrieval.py and probe.py.
"""
from mmjax.evals.base import (EVAL, EVALUATORS, TRAIN, Evaluator, Features, Needs, build_evaluator,
                              build_evaluators)
# Importing the evaluator modules registers the built-in types.
from mmjax.evals import (fewshot, knn, linear, retrieval, zeroshot, zeroshot_multilinear,  # noqa: F401
                         zeroshot_tokenwise)

__all__ = ["EVAL", "EVALUATORS", "TRAIN", "Evaluator", "Features", "Needs", "build_evaluator", "build_evaluators"]
