"""Objectives by name: each is a pure `(outputs, batch, cfg) -> (loss, metrics)`.

`get_objective(config.objective.name)` is what the trainer calls; every
family module contributes its entries to one flat registry here.
"""
from mmjax.objectives import contrastive, contrastive_variants, distributed, masked

# contrastive_variants' "sum" looks this registry up when called, not at import.
OBJECTIVES = {**contrastive.OBJECTIVES, **contrastive_variants.OBJECTIVES, **distributed.OBJECTIVES,
              **masked.OBJECTIVES}


def get_objective(name: str):
    """The objective registered as `name`; an unknown name fails listing the valid ones."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; valid names: {sorted(OBJECTIVES)}") from None
