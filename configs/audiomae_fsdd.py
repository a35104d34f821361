"""AudioMAE (Huang et al., 2022) on the embedded Free Spoken Digit recordings.

    python -m mmjax.main --config configs/audiomae_fsdd.py --workdir workdirs/audiomae

The MAE of configs/mae_digits.py with the spectrogram transformer as encoder:
96 log-mel frames x 64 bands in 8x16 patches (12 x 4 = 48 tokens), 80% masked
(AudioMAE's ratio), the loss on hidden patches of real frames only (padding of
short clips is never a target). The data is AV-digits' audio (FSDD's
customary split: takes 0-4 test); probes classify the spoken digit.

Variants as configs/mae_digits.py (`mask`, `model`, `steps`); default mask 0.8.
"""
import ml_collections

from configs import mae_digits
from mmjax.config_utils import with_default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = mae_digits.get_config(with_default(arg, "mask", 0.8))
    with c.unlocked():
        c.data.name, c.data.modalities = "av_digits", ("audio",)
        encoder = dict(c.model.encoder)
        for field in ("patch_size", "posemb"):
            encoder.pop(field)
        c.model.modality = "audio"
        c.model.encoder = dict(encoder, encoder="audio", patch_time=8, patch_freq=16, posemb="factorized")
        c.eval.probe_modalities = ("audio",)
    c.lock()
    return c
