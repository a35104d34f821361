"""AudioMAE (Huang et al., 2022) on the embedded Free Spoken Digit recordings.

    python -m mmjax.main --config configs/audiomae_fsdd.py --workdir workdirs/audiomae

configs/mae_digits.py's recipe with the spectrogram transformer as encoder:
96 log-mel frames x 64 bands in 8x16 patches (12 x 4 = 48 tokens), 80% masked
(AudioMAE's ratio), the loss on hidden patches of real frames only (padding of
short clips is never a target). The data is AV-digits' audio (FSDD's
customary split: takes 0-4 test); probes classify the spoken digit.

Variants (`configs/audiomae_fsdd.py:mask=0.5,model=tiny`):
  mask   masking ratio (default 0.8, AudioMAE's)
  model  tiny (tests) | small (default)
  steps  total train steps
"""
import ml_collections

from configs.blocks import evals, masked, towers, trainer
from mmjax.config_utils import parse_variant
from mmjax.data.config import data_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = parse_variant(arg, {"mask": 0.8, "model": "small", "steps": 0}, choices={"model": tuple(masked.CPU_SIZES)})
    masked.check_mask_ratio(v.mask)
    size, tiny = masked.CPU_SIZES[v.model], v.model == "tiny"

    c = trainer.cpu_run(tiny, total_steps=v.steps or size["steps"], batch_size=size["batch"])
    c.data = data_config("av_digits", ("audio",))
    c.model = masked.model("mae", "audio", mask_ratio=v.mask,
                           encoder=towers.audio(towers.CPU[v.model], patch_time=8, patch_freq=16),
                           decoder=towers.decoder(size["decoder_width"]))
    c.objective = masked.mae_objective(norm_pix=False)
    c.optim = trainer.adamw(**masked.MAE_ADAMW, warmup_steps=trainer.cpu_warmup(tiny))
    c.eval = evals.cpu_schedule(tiny, at_start=True)
    c.evals = evals.entries(evals.probes("audio"))
    c.lock()
    return c
