"""Models by kind: `build_model(config.model, tokenizer)`.

"contrastive" (default): towers + projections into one embedding space
(mmjax.models.towers); "mae": a masked autoencoder over one modality
(mmjax.models.mae).
"""
from mmjax.models import mae, towers

MODELS = {"contrastive": towers.build_contrastive_model, "mae": mae.build_mae}


def build_model(model_cfg, tokenizer=None):
    kind = model_cfg.get("kind", "contrastive")
    if kind not in MODELS:
        raise ValueError(f"model.kind={kind!r}; valid: {sorted(MODELS)}")
    return MODELS[kind](model_cfg, tokenizer)
