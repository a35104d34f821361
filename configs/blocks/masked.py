"""Masked-modelling model and loss blocks (mmjax.models: mae, simmim, multimae, data2vec).

    c.model = masked.model("mae", "image", mask_ratio=0.75, encoder=towers.vit(...), decoder=towers.decoder(64))
    c.objective = masked.mae_objective(norm_pix=False)
    c.optim = trainer.adamw(**masked.MAE_ADAMW, ...)
"""
from __future__ import annotations

import ml_collections

# The embedded-data masked recipes on a 2-core CPU, by `model=` variant: encoder size
# (configs/blocks/towers.CPU), decoder width, train steps, global batch.
CPU_SIZES = {
    "tiny": dict(decoder_width=32, steps=10, batch=32),
    "small": dict(decoder_width=64, steps=800, batch=256),
}
# The digits recipes' AdamW: MAE's b2 0.95 and weight decay 0.05 (He et al. 2022, Table 8), lr 1.5e-3.
MAE_ADAMW = dict(lr=1.5e-3, weight_decay=0.05, b2=0.95)
# MAE's ViT-B decoder (mae_vit_base_patch16_dec512d8b), AudioMAE's too.
DECODER_B = dict(width=512, depth=8, num_heads=16, mlp_dim=2048)


def check_mask_ratio(ratio: float) -> float:
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"config variant mask={ratio}: expected a ratio in (0, 1)")
    return ratio


def model(kind: str, modality: str, *, mask_ratio: float, encoder: dict, dtype: str = "float32",
          **fields) -> ml_collections.ConfigDict:
    """`config.model` of a single-modality masked model (kind "mae" | "data2vec" | "simmim"):
    the encoder tower of `modality` and the kind's own fields (decoder, masking, teacher)."""
    return ml_collections.ConfigDict({"kind": kind, "modality": modality, "mask_ratio": mask_ratio, "dtype": dtype,
                                      "param_dtype": "float32", "encoder": encoder, **fields})


def mae_objective(norm_pix: bool) -> ml_collections.ConfigDict:
    """Reconstruction of the hidden patches only (MSE; Chamfer-L2 for points); norm_pix: per-patch
    normalised targets (MAE's), which divide a flat patch by ~0, hence off on the digits."""
    return ml_collections.ConfigDict({"name": "mae", "norm_pix": norm_pix, "weights": {}})
