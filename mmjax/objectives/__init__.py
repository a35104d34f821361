"""Objectives by name: each is a pure `(outputs, batch, cfg) -> (loss, metrics)`.

`get_objective(config.objective.name)` is what the trainer calls; every
family module registers its entries in one flat registry
(mmjax.objectives.registry.OBJECTIVES), filled by the imports below.
"""
from mmjax.objectives import contrastive, contrastive_variants, distributed, masked  # noqa: F401  (register)
from mmjax.objectives.registry import OBJECTIVES, get_objective

__all__ = ["OBJECTIVES", "get_objective"]
