"""MultiMAE (Bachmann et al., 2022) over the image and the spoken digit of AV-digits.

    python -m mmjax.main --config configs/multimae_avdigits.py --workdir workdirs/multimae

One shared encoder over 49 image tokens (4x4-pixel patches of the 28x28
digit) and 48 audio tokens (8x16 patches of the 96x64 log-mel spectrogram),
each with its own linear patch embedding, sincos grid position and learned
modality embedding. Per example a Dirichlet(alpha=1) sample splits the
`keep` visible tokens between the modalities (MultiMAE keeps 98 of 588; here
24 of 97 by default), the encoder sees only those, and one small decoder per
modality (cross-attention to all visible tokens, then self-attention)
reconstructs its hidden patches: MSE per modality, summed. Probes classify
the digit from the frozen encoder given one modality alone.

Variants (`configs/multimae_avdigits.py:keep=32,alpha=0.5,model=tiny`):
  keep   visible tokens over both modalities (default: 24, tiny 12)
  alpha  Dirichlet concentration (default 1.0, MultiMAE's)
  model  tiny (tests) | small (default)
  steps  total train steps
"""
import ml_collections

from configs.blocks import evals, masked, towers, trainer
from mmjax.config_utils import parse_variant
from mmjax.data.config import data_config

# Per `model=` variant (encoder: towers.CPU): decoder width, visible tokens, train steps, global batch.
SIZES = {
    "tiny": dict(decoder_width=32, keep=12, steps=10, batch=32),
    "small": dict(decoder_width=64, keep=24, steps=800, batch=128),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"keep": 0, "alpha": 1.0, "model": "small", "steps": 0}, choices={"model": tuple(SIZES)})
    size, tiny = SIZES[v.model], v.model == "tiny"

    c = trainer.cpu_run(tiny, total_steps=v.steps or size["steps"], batch_size=size["batch"])
    c.data = data_config("av_digits", ("image", "audio"))
    c.model = ml_collections.ConfigDict({
        "kind": "multimae", "num_keep": v.keep or size["keep"], "alpha": v.alpha,
        "dtype": "float32", "param_dtype": "float32",
        "modalities": {"image": {"patch": (4, 4), "channels": 1}, "audio": {"patch": (8, 16), "channels": 1}},
        "encoder": dict(towers.CPU[v.model], scan=False, remat="none"),
        "decoder": towers.decoder(size["decoder_width"]),
    })
    c.objective = masked.mae_objective(norm_pix=False)
    c.optim = trainer.adamw(**masked.MAE_ADAMW, warmup_steps=trainer.cpu_warmup(tiny),
                            no_decay_regex=trainer.no_decay("mask_token"))
    c.eval = evals.cpu_schedule(tiny, at_start=True)
    c.evals = evals.entries(evals.probes("image", "audio"))
    c.lock()
    return c
