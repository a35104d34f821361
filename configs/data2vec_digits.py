"""Masked feature prediction with an EMA teacher (data2vec 2.0 / MR-MAE style) on the digits.

    python -m mmjax.main --config configs/data2vec_digits.py --workdir workdirs/data2vec

The student is the MAE of configs/mae_digits.py (the ViT encodes the 25%
visible patches, a 1-block decoder fills in mask tokens), but its decoder
predicts features, not pixels: the targets are an EMA teacher's (the same
encoder, on the whole unmasked digit) top-K block outputs, instance-normalised
per block and averaged (data2vec), regressed at the masked tokens with
data2vec's L2 (scaled by 1/sqrt(D)). The teacher lives in the train state
(mmjax.teacher); its decay goes linearly from ema_start to ema_end over the
run (data2vec anneals 0.999 -> 0.9999 over ~10^5 steps; this run is ~10^3).
Probes use the student's encoder, as MAE's.

Variants as configs/mae_digits.py (`mask`, `model`, `steps`).
"""
import ml_collections

from configs import mae_digits


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = mae_digits.get_config(arg)
    with c.unlocked():
        c.model.kind = "data2vec"
        depth = c.model.encoder["depth"]
        c.model.teacher = ml_collections.ConfigDict({
            "ema_start": 0.99, "ema_end": 0.999, "ema_steps": c.get_ref("total_steps"), "ema_schedule": "linear",
            "top_k": min(2, depth), "layer_norm": "instance", "final_norm": "none"})
        c.objective = ml_collections.ConfigDict({"name": "masked_feature", "loss": "l2", "beta": 1.0, "weights": {}})
    c.lock()
    return c
