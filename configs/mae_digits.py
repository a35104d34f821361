"""MAE (He et al., 2022) on the embedded MNIST digits, evaluated by frozen-feature probes.

    python -m mmjax.main --config configs/mae_digits.py --workdir workdirs/mae

A ViT encoder sees 25% of the 4x4-pixel patches (12 of 49); a 1-block decoder
reconstructs the hidden ones (MSE on hidden patches only). Every evaluation
reports a kNN and a ridge linear probe of the frozen encoder's mean-pooled
features (trained on the train split, scored on the test split); `at_start`
logs the same probes for the untrained encoder as the baseline.

Variants (`configs/mae_digits.py:mask=0.5,model=tiny`):
  mask   masking ratio (default 0.75, MAE's choice)
  model  tiny (tests) | small (default)
  steps  total train steps
"""
import ml_collections

from configs import clip_digits
from mmjax.config_utils import parse_variant

MODELS = {
    "tiny": dict(width=32, depth=1, heads=2, mlp=64, dec_width=32, steps=10, batch=32),
    "small": dict(width=128, depth=3, heads=4, mlp=256, dec_width=64, steps=800, batch=256),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"mask": 0.75, "model": "small", "steps": 0}, choices={"model": tuple(MODELS)})
    if not 0.0 < v.mask < 1.0:
        raise ValueError(f"config variant mask={v.mask}: expected a ratio in (0, 1)")
    size = MODELS[v.model]
    c = clip_digits.get_config(f"model={'tiny' if v.model == 'tiny' else 'small'}")
    with c.unlocked():
        c.total_steps = v.steps or size["steps"]
        c.batch_size = size["batch"]
        c.data.modalities = ("image",)
        c.model = ml_collections.ConfigDict({
            "kind": "mae", "modality": "image", "mask_ratio": v.mask, "dtype": "float32", "param_dtype": "float32",
            "encoder": dict(encoder="vit", patch_size=4, width=size["width"], depth=size["depth"],
                            num_heads=size["heads"], mlp_dim=size["mlp"], posemb="sincos", pool="mean",
                            scan=False, remat="none"),
            "decoder": dict(width=size["dec_width"], depth=1, num_heads=2, mlp_dim=2 * size["dec_width"]),
        })
        # Pixels in [-1, 1] with a flat background: per-patch normalisation
        # (norm_pix) would divide blank patches by ~0, so it is off here.
        c.objective = ml_collections.ConfigDict({"name": "mae", "norm_pix": False, "weights": {}})
        c.optim.lr, c.optim.weight_decay, c.optim.b2 = 1.5e-3, 0.05, 0.95  # MAE's AdamW betas
        c.eval.zeroshot_modalities, c.eval.retrieval_pairs, c.eval.aliases = (), (), {}
        c.eval.probe_modalities, c.eval.at_start = ("image",), True
    c.lock()
    return c
