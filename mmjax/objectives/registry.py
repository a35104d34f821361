"""The objective registry: name (config.objective.name) -> `(outputs, batch, cfg) -> (loss, metrics)`.

Each family module (contrastive, contrastive_variants, distributed, masked) registers its own
objectives; `mmjax.objectives` imports every family, so the table is full once anything under
mmjax.objectives is imported. It lives in its own module so that an objective built from
others ("sum") can look them up without importing the package that imports it.
"""
from mmjax.registry import Registry

OBJECTIVES = Registry("objective")


def get_objective(name: str):
    """The objective registered as `name`; an unknown name fails listing the valid ones."""
    return OBJECTIVES.get(name)
