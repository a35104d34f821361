"""Audio: int16 / float PCM waveforms, or encoded bytes (WAV / FLAC / OGG: real corpora, decoded
in the pipeline's workers, downmixed and resampled to logmel.sample_rate by mmjax.data.decode)
-> standardised log-mel [num_frames, n_mels] + valid-frame mask, gain and SpecAugment
augmentation, the spectrogram transformer by default."""
from __future__ import annotations

import numpy as np

from mmjax.data import audio as audio_lib
from mmjax.data import decode
from mmjax.data.modalities.base import MODALITIES, Modality
from mmjax.data.transforms import BadInput


@MODALITIES.register("audio")
class Audio(Modality):
    name = "audio"
    encoder = "audio"

    @classmethod
    def default_config(cls):
        return {
            # 8 kHz speech: 32 ms windows, 10 ms hop, 64 Slaney mels up to Nyquist.
            "logmel": {"sample_rate": 8000, "n_fft": 256, "win_length": 256, "hop_length": 80,
                       "n_mels": 64, "fmin": 0.0, "log_offset": 1e-6},
            "num_frames": 96,  # ~0.96 s: longer than 98% of FSDD clips; pad/crop + mask
            # Log-mel mean and std over every 10th FSDD clip with the settings above.
            "norm_mean": -9.6, "norm_std": 3.5,
            "gain_db": 6.0,
            "time_masks": 2, "time_width": 10, "freq_masks": 2, "freq_width": 8,
        }

    def __init__(self, data_cfg, tokenizer=None, *, train: bool = False):
        super().__init__(data_cfg, tokenizer, train=train)
        self.logmel = audio_lib.from_config(self.cfg.logmel)
        self.num_frames = int(self.cfg.num_frames)

    def specs(self):
        return {"audio": ((self.num_frames, self.logmel.n_mels), np.float32),
                "audio_mask": ((self.num_frames,), np.bool_)}

    def _standardise(self, spec):
        # Dataset statistics (as AST/AudioMAE do): the patch embedding sees unit-scale inputs
        # instead of log values around -10.
        return (spec - self.cfg.norm_mean) / self.cfg.norm_std

    def validate(self, value):
        if (data := decode.to_bytes(value)) is not None:  # decoded in __call__, in the workers
            if not data:
                raise BadInput("is empty (0 bytes), expected encoded audio")
            return data
        return value  # a waveform: checked where it is used (__call__)

    def __call__(self, value, rng, flags):
        c = self.cfg
        if (data := decode.to_bytes(value)) is not None:
            wave = audio_lib.validate_waveform(decode.decode_audio(data, self.logmel.sample_rate), "decoded audio")
        else:
            wave = audio_lib.pcm_to_float32(audio_lib.validate_waveform(value, "waveform"))
        if self.augmenting and c.gain_db:
            wave = audio_lib.random_gain(wave, rng, c.gain_db)
        spec = audio_lib.log_mel_spectrogram(wave, self.logmel)
        spec, valid = audio_lib.fix_frames(spec, self.num_frames, rng if self.augmenting else None,
                                           pad_value=self.logmel.silence)
        if self.augmenting:
            spec = audio_lib.spec_augment(spec, valid, rng, c.time_masks, c.time_width, c.freq_masks, c.freq_width)
        return {"audio": self._standardise(spec).astype(np.float32), "audio_mask": valid}

    def placeholder(self):
        out = super().placeholder()
        out["audio"][:] = self._standardise(self.logmel.silence)
        return out

    def fake(self, rng, flags, class_names=()):
        # A random valid prefix of at least half the frames, standard normal inside, zero outside.
        valid = np.arange(self.num_frames) < rng.integers((self.num_frames + 1) // 2, self.num_frames + 1)
        spec = rng.standard_normal((self.num_frames, self.logmel.n_mels)).astype(np.float32)
        return {"audio": np.where(valid[:, None], spec, 0.0).astype(np.float32), "audio_mask": valid}
