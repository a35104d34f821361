"""Models by kind: `build_model(config.model, tokenizer)`.

"contrastive" (default): towers + projections into one embedding space
(mmjax.models.towers); "mae": a masked autoencoder over one modality
(mmjax.models.mae); "data2vec": the same, regressing an EMA teacher's
features (mmjax.teacher); "simmim": mask tokens inside a ViT, L1 on pixels
(mmjax.models.simmim); "multimae": one encoder over several modalities'
patches with Dirichlet token budgets (mmjax.models.multimae).
"""
from mmjax.models import mae, multimae, simmim, towers

MODELS = {"contrastive": towers.build_contrastive_model, "mae": mae.build_mae, "data2vec": mae.build_data2vec,
          "simmim": simmim.build_simmim, "multimae": multimae.build_multimae}


def build_model(model_cfg, tokenizer=None):
    kind = model_cfg.get("kind", "contrastive")
    if kind not in MODELS:
        raise ValueError(f"model.kind={kind!r}; valid: {sorted(MODELS)}")
    return MODELS[kind](model_cfg, tokenizer)
