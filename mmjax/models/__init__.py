"""Models by kind: `build_model(config.model, tokenizer)`.

Model kinds (MODELS, each registered by its family module): "contrastive"
(default): towers + projections into one embedding space
(mmjax.models.towers); "mae": a masked autoencoder over one modality
(mmjax.models.mae); "data2vec": the same, regressing an EMA teacher's
features (mmjax.teacher); "simmim": mask tokens inside a ViT, L1 on pixels
(mmjax.models.simmim); "multimae": one encoder over several modalities'
patches with Dirichlet token budgets (mmjax.models.multimae).

Every kind exposes `modalities` (the modalities it can embed) and
`embed(x, modality, mask=None) -> (embedding [B, E] float32, tokens)`.
Encoders (ENCODERS, each registered by its module) are in
mmjax.models.encoders; token masking in mmjax.models.masking, patches in
mmjax.models.patches.
"""
# Importing the encoder and family modules fills the registries.
from mmjax.models import audio, point, text, vit  # noqa: F401  (encoders)
from mmjax.models import mae, multimae, simmim, towers  # noqa: F401  (model kinds)
from mmjax.models.registry import ENCODERS, MODELS

__all__ = ["ENCODERS", "MODELS", "build_model"]


def build_model(model_cfg, tokenizer=None):
    """The model of config.model: kind `model.kind` (default "contrastive"), built from model_cfg."""
    kind = model_cfg.get("kind", "contrastive")
    if kind not in MODELS:
        raise ValueError(f"model.kind={kind!r}; valid: {MODELS.names()}")
    return MODELS.get(kind)(model_cfg, tokenizer)
