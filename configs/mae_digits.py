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

from configs.blocks import evals, masked, towers, trainer
from mmjax.config_utils import parse_variant
from mmjax.data.config import data_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"mask": 0.75, "model": "small", "steps": 0}, choices={"model": tuple(masked.CPU_SIZES)})
    masked.check_mask_ratio(v.mask)
    size, tiny = masked.CPU_SIZES[v.model], v.model == "tiny"

    c = trainer.cpu_run(tiny, total_steps=v.steps or size["steps"], batch_size=size["batch"])
    c.data = data_config("digits_captions", ("image",))
    c.model = masked.model("mae", "image", mask_ratio=v.mask,
                           encoder=towers.vit(towers.CPU[v.model], patch_size=4, posemb="sincos"),
                           decoder=towers.decoder(size["decoder_width"]))
    # Pixels in [-1, 1] with a flat background: per-patch normalisation (norm_pix) would divide
    # blank patches by ~0, so it is off here.
    c.objective = masked.mae_objective(norm_pix=False)
    c.optim = trainer.adamw(**masked.MAE_ADAMW, warmup_steps=trainer.cpu_warmup(tiny))
    c.eval = evals.cpu_schedule(tiny, at_start=True)
    c.evals = evals.entries(evals.probes("image"))
    c.lock()
    return c
