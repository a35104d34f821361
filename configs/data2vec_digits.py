"""Masked feature prediction with an EMA teacher (data2vec 2.0 / MR-MAE style) on the digits.

    python -m mmjax.main --config configs/data2vec_digits.py --workdir workdirs/data2vec

The student is configs/mae_digits.py's MAE (the ViT encodes the 25%
visible patches, a 1-block decoder fills in mask tokens), but its decoder
predicts features, not pixels: the targets are an EMA teacher's (the same
encoder, on the whole unmasked digit) top-K block outputs, instance-normalised
per block and averaged (data2vec), regressed at the masked tokens with
data2vec's L2 (scaled by 1/sqrt(D)). The teacher lives in the train state
(mmjax.teacher); its decay goes linearly from ema_start to ema_end over the
run (data2vec anneals 0.999 -> 0.9999 over ~10^5 steps; this run is ~10^3).
Probes use the student's encoder, as MAE's.

Variants (`configs/data2vec_digits.py:mask=0.5,model=tiny`):
  mask   masking ratio (default 0.75)
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
    encoder = towers.vit(towers.CPU[v.model], patch_size=4, posemb="sincos")

    c = trainer.cpu_run(tiny, total_steps=v.steps or size["steps"], batch_size=size["batch"])
    c.data = data_config("digits_captions", ("image",))
    c.model = masked.model("data2vec", "image", mask_ratio=v.mask, encoder=encoder,
                           decoder=towers.decoder(size["decoder_width"]),
                           teacher={"ema_start": 0.99, "ema_end": 0.999, "ema_steps": c.get_ref("total_steps"),
                                    "ema_schedule": "linear", "top_k": min(2, encoder["depth"]),
                                    "layer_norm": "instance", "final_norm": "none"})
    c.objective = ml_collections.ConfigDict({"name": "masked_feature", "loss": "l2", "beta": 1.0, "weights": {}})
    c.optim = trainer.adamw(**masked.MAE_ADAMW, warmup_steps=trainer.cpu_warmup(tiny))
    c.eval = evals.cpu_schedule(tiny, at_start=True)
    c.evals = evals.entries(evals.probes("image"))
    c.lock()
    return c
