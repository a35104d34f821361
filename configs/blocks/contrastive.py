"""Contrastive model and loss blocks (mmjax.models.towers.ContrastiveModel, mmjax.objectives).

    c.model = contrastive.model(embed_dim=128, towers={"image": towers.vit(...), "text": towers.text(...)},
                                logit_init=contrastive.LOGIT_INIT[loss])
    c.objective = contrastive.objective(loss, ("image", "text"))
"""
from __future__ import annotations

import ml_collections

# (logit scale, logit bias) at init: SigLIP's t' = log 10, b = -10; CLIP's t = 1/0.07 (and so CLIP's variants').
CLIP_INIT, SIGLIP_INIT = (1 / 0.07, 0.0), (10.0, -10.0)
# The pairwise image-text losses a recipe's `loss=` variant may name, with their logit init.
LOGIT_INIT = {"softmax": CLIP_INIT, "sigmoid": SIGLIP_INIT, "dcl": CLIP_INIT, "hard_negative": CLIP_INIT,
              "sigmoid_chunked": SIGLIP_INIT, "softmax_gathered": CLIP_INIT}
# The losses' own knobs, at their papers' defaults, so that `--config.objective.<knob>` can set them.
LOSS_FIELDS = {"dcl": {"vmf_sigma": None}, "hard_negative": {"beta": 1.0, "tau_plus": 0.1}}


def model(*, embed_dim: int, towers: dict, logit_init: tuple[float, float] = CLIP_INIT, project_tokens: bool = False,
          reference: str = "", missing_embeddings: tuple[str, ...] = (),
          dtype: str = "float32") -> ml_collections.ConfigDict:
    """`config.model` of a contrastive model: one tower per modality, projected to embed_dim.

    The family's options: project_tokens (FILIP: per-token projections); reference (CWCL: a frozen
    tower of that modality, params["reference"], restored from model.reference.init_from when set);
    missing_embeddings (Symile: learned stand-ins for absent modalities). dtype: compute dtype
    (params stay float32).
    """
    return ml_collections.ConfigDict({
        "embed_dim": embed_dim,
        "logit_scale_init": logit_init[0], "logit_bias_init": logit_init[1],
        "dtype": dtype, "param_dtype": "float32",
        "project_tokens": project_tokens,
        "reference": {"modality": reference, "init_from": ""},
        "missing_embeddings": tuple(missing_embeddings),
        "towers": towers,
    })


def objective(loss: str, modalities: tuple[str, ...] = ("image", "text"), **fields) -> ml_collections.ConfigDict:
    """`config.objective` of a pairwise loss between `modalities`, with its knobs (LOSS_FIELDS)."""
    return ml_collections.ConfigDict({"name": loss, "modalities": tuple(modalities), **LOSS_FIELDS.get(loss, {}),
                                      **fields})


def weighted_sum(*terms: dict) -> ml_collections.ConfigDict:
    """The `sum` objective: each term an objective's fields plus its `weight`."""
    return ml_collections.ConfigDict({"name": "sum", "terms": tuple(terms)})
