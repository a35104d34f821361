"""Audio for the input pipeline: WAV decoding, log-mel features, augmentations.

This runs per example in Grain workers, so it is vectorised NumPy with no JAX
and no audio library. The log-mel equals librosa's `feature.melspectrogram`
(same settings) followed by log(mel + log_offset). Augmentations are pure
functions of (array, rng, parameters): under a Grain `RandomMap`, whose
generator is seeded per element, they replay exactly on resume.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import struct
from typing import Any

import numpy as np

from mmjax.data.transforms import BadInput


class AudioDecodeError(BadInput):
    """Bytes that are not a readable WAV, or a waveform that cannot be used."""


# ---------------------------------------------------------------- decoding
# (format tag, bytes per sample) -> sample dtype; tag 1 is integer PCM, 3 IEEE float.
_SAMPLE_DTYPES = {(1, 1): "u1", (1, 2): "<i2", (1, 3): "24-bit", (1, 4): "<i4", (3, 4): "<f4", (3, 8): "<f8"}


def _riff_chunks(data: bytes, fail) -> tuple[bytes, bytes]:
    """(fmt body, data body) of a RIFF/WAVE file; `fail(reason)` raises."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        fail(f"not a RIFF/WAVE file (starts with {data[:12]!r})")
    chunks, pos = {}, 12
    while pos + 8 <= len(data) and not {b"fmt ", b"data"} <= chunks.keys():
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = data[pos + 8:pos + 8 + size]
        if len(body) < size:
            fail(f"truncated: chunk {cid!r} declares {size} bytes, file has {len(body)}")
        chunks[cid] = body
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    if b"fmt " not in chunks or b"data" not in chunks:
        fail(f"missing {'fmt' if b'fmt ' not in chunks else 'data'} chunk (truncated or corrupt header)")
    return chunks[b"fmt "], chunks[b"data"]


def read_wav(source: str | os.PathLike | bytes) -> tuple[np.ndarray, int]:
    """WAV file path or bytes -> (float32 waveform [T] in [-1, 1], sample rate).

    Reads PCM (8-bit unsigned, 16/24/32-bit signed) and IEEE float (32/64-bit),
    plain or WAVE_FORMAT_EXTENSIBLE, averaging channels. The header is parsed
    here because the stdlib `wave` (Python 3.11) rejects float and extensible
    files, and float files are the ones that can hold NaN/inf. A missing file
    raises OSError; bad content raises AudioDecodeError naming the source.
    """
    where = os.fspath(source) if not isinstance(source, bytes) else f"<{len(source)} bytes>"

    def fail(reason: str):
        raise AudioDecodeError(f"WAV {where}: {reason}")

    if not isinstance(source, bytes):
        with open(source, "rb") as f:
            source = f.read()
    fmt, data = _riff_chunks(source, fail)
    if len(fmt) < 16:
        fail(f"fmt chunk has {len(fmt)} bytes, expected >= 16 (corrupt header)")
    tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the tag opens the SubFormat GUID
        tag = struct.unpack_from("<H", fmt, 24)[0]
    if channels == 0 or rate == 0 or block_align == 0 or block_align % channels:
        fail(f"corrupt header ({channels=}, {rate=}, {block_align=})")
    width = block_align // channels  # container bytes per sample
    if (tag, width) not in _SAMPLE_DTYPES:
        fail(f"unsupported encoding (format tag {tag}, {bits} bits); expected PCM 8/16/24/32-bit or float 32/64-bit")
    if len(data) % block_align:
        fail(f"truncated: data chunk of {len(data)} bytes is not a whole number of {block_align}-byte frames")
    if width == 3:  # no 24-bit dtype: a zero low byte below each sample makes it a little-endian int32
        samples = np.pad(np.frombuffer(data, np.uint8).reshape(-1, 3), ((0, 0), (1, 0))).view("<i4")
    else:
        samples = np.frombuffer(data, _SAMPLE_DTYPES[tag, width])
    samples = pcm_to_float32(samples.reshape(-1, channels)).mean(axis=1, dtype=np.float32)  # downmix
    return validate_waveform(samples, where=f"WAV {where}"), int(rate)  # an empty data chunk fails here


def pcm_to_float32(x: np.ndarray) -> np.ndarray:
    """Integer PCM (uint8 offset-binary, or signed int) -> float32 in [-1, 1); floats pass through."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return (x.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(x.dtype, np.signedinteger):
        return x.astype(np.float32) / np.float32(2.0 ** (8 * x.dtype.itemsize - 1))
    return x.astype(np.float32, copy=False)


def validate_waveform(x: np.ndarray, where: str = "waveform") -> np.ndarray:
    """Returns `x` unchanged if it is a non-empty, finite 1-D waveform; else AudioDecodeError."""
    x = np.asarray(x)
    if x.ndim != 1:
        raise AudioDecodeError(f"{where}: expected a 1-D waveform, got shape {x.shape}")
    if x.size == 0:
        raise AudioDecodeError(f"{where}: zero-length audio")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x))
        raise AudioDecodeError(f"{where}: {bad.size} non-finite (NaN/inf) samples, first at index {bad[0]}")
    return x


# ---------------------------------------------------------------- log-mel
_LOG_STEP = math.log(6.4) / 27.0  # Slaney scale: 1 kHz is mel 15, then 27 mels per factor 6.4 in Hz


@dataclasses.dataclass(frozen=True)
class LogMelConfig:
    """Log-mel analysis settings; defaults suit 8 kHz speech (FSDD).

    n_fft = win_length = 256 is a 32 ms window (31 Hz bins), the usual speech
    frame; hop 80 is the customary 10 ms, so 1 s is 101 frames. 64 mel bands
    from 0 Hz to Nyquist (fmax=None): the lowest Slaney bands are ~72 Hz wide,
    so each covers >= 2 FFT bins. `mel_norm="slaney"` scales each triangle to
    unit area (librosa's default, for either `mel_scale`); "none" gives peak-1
    triangles (HTK, torchaudio). Frames are centred (padded by n_fft//2 each
    side) with `pad_mode` "reflect" (librosa < 0.10, torchaudio) or "constant"
    (zeros; librosa >= 0.10). The window is a periodic Hann.
    """

    sample_rate: int = 8000
    n_fft: int = 256
    win_length: int = 256
    hop_length: int = 80
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float | None = None
    log_offset: float = 1e-6
    power: float = 2.0
    mel_scale: str = "slaney"
    mel_norm: str = "slaney"
    center: bool = True
    pad_mode: str = "reflect"

    def __post_init__(self):
        for name in ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"LogMelConfig.{name} must be a positive integer, got {value!r}")
        for name, valid in (("mel_scale", ("slaney", "htk")), ("mel_norm", ("slaney", "none")),
                            ("pad_mode", ("reflect", "constant"))):
            if getattr(self, name) not in valid:
                raise ValueError(f"LogMelConfig.{name}={getattr(self, name)!r}; valid: {list(valid)}")
        if self.win_length > self.n_fft:
            raise ValueError(f"LogMelConfig.win_length={self.win_length} exceeds n_fft={self.n_fft}")
        if not 0.0 <= self.fmin < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"LogMelConfig needs 0 <= fmin < fmax <= sample_rate/2, got "
                             f"fmin={self.fmin}, fmax={self.f_max}, sample_rate={self.sample_rate}")
        if not (self.log_offset > 0 and self.power > 0):
            raise ValueError(f"LogMelConfig needs log_offset, power > 0, got {self.log_offset}, {self.power}")

    @property
    def f_max(self) -> float:
        return self.sample_rate / 2 if self.fmax is None else self.fmax

    @property
    def silence(self) -> float:
        """The log-mel of digital silence, log(log_offset): the padding value."""
        return math.log(self.log_offset)

    def num_frames(self, num_samples: int) -> int:
        """Frames that `log_mel_spectrogram` returns for a clip of `num_samples`."""
        if self.center:
            return 1 + num_samples // self.hop_length
        return 1 + (num_samples - self.n_fft) // self.hop_length


def from_config(cfg: Any) -> LogMelConfig:
    """LogMelConfig from a Mapping or ml_collections ConfigDict; unknown fields fail listing the valid ones."""
    if isinstance(cfg, LogMelConfig):
        return cfg
    fields, valid = dict(cfg.items()), [f.name for f in dataclasses.fields(LogMelConfig)]
    if unknown := sorted(set(fields) - set(valid)):
        raise ValueError(f"unknown log-mel config field(s) {unknown}; valid: {valid}")
    return LogMelConfig(**fields)


def hz_to_mel(hz, scale: str = "slaney") -> np.ndarray:
    """Hz -> mel. "htk": 2595 log10(1 + f/700). "slaney": linear below 1 kHz, log above (Auditory Toolbox)."""
    hz = np.asarray(hz, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    return np.where(hz < 1000.0, hz * 3.0 / 200.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / _LOG_STEP)


def mel_to_hz(mel, scale: str = "slaney") -> np.ndarray:
    """Inverse of `hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    return np.where(mel < 15.0, mel * 200.0 / 3.0, 1000.0 * np.exp(_LOG_STEP * (mel - 15.0)))


@functools.lru_cache(maxsize=16)
def _analysis(cfg: LogMelConfig) -> tuple[np.ndarray, np.ndarray]:
    """(window [n_fft] float32, mel filterbank [n_bins, n_mels] float32), read-only and cached per config."""
    n = np.arange(cfg.win_length)
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / cfg.win_length)  # periodic: the DFT-even Hann
    left = (cfg.n_fft - cfg.win_length) // 2
    window = np.pad(window, (left, cfg.n_fft - cfg.win_length - left))
    freqs = np.linspace(0.0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)  # [n_bins]
    mels = np.linspace(hz_to_mel(cfg.fmin, cfg.mel_scale), hz_to_mel(cfg.f_max, cfg.mel_scale), cfg.n_mels + 2)
    edges = mel_to_hz(mels, cfg.mel_scale)  # [n_mels + 2]: lower edge, centre, upper edge of each band
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising, falling = (freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)
    weights = np.maximum(0.0, np.minimum(rising, falling))  # [n_mels, n_bins] triangles
    if cfg.mel_norm == "slaney":
        weights *= 2.0 / (hi - lo)  # unit area, so a band's energy does not grow with its width
    window, filters = window.astype(np.float32), np.ascontiguousarray(weights.T, dtype=np.float32)
    window.flags.writeable = filters.flags.writeable = False  # shared by every caller
    return window, filters


def mel_filterbank(cfg: LogMelConfig = LogMelConfig()) -> np.ndarray:
    """Triangular mel filters [n_fft//2 + 1, n_mels] (read-only): power spectrum @ filters = mel power."""
    return _analysis(cfg)[1]


def log_mel_spectrogram(waveform: np.ndarray, cfg: LogMelConfig = LogMelConfig()) -> np.ndarray:
    """Waveform [T] -> log(mel power + log_offset), float32 [cfg.num_frames(T), n_mels]."""
    x = np.asarray(waveform, dtype=np.float32)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"expected a non-empty 1-D waveform, got shape {x.shape}")
    window, filters = _analysis(cfg)
    if cfg.center:
        x = np.pad(x, cfg.n_fft // 2, mode=cfg.pad_mode)
    if x.size < cfg.n_fft:
        raise ValueError(f"waveform of {x.size} samples is shorter than n_fft={cfg.n_fft} (center=False)")
    # A strided view, one row per frame: no copy until the window multiply.
    frames = np.lib.stride_tricks.sliding_window_view(x, cfg.n_fft)[::cfg.hop_length]  # [frames, n_fft]
    spectrum = np.fft.rfft(frames * window, axis=-1)  # [frames, n_bins], complex64
    power = spectrum.real ** 2 + spectrum.imag ** 2
    if cfg.power != 2.0:
        power **= cfg.power / 2.0
    return np.log(power @ filters + np.float32(cfg.log_offset))


# ---------------------------------------------------------------- fixed length and augmentation
def fix_frames(spec: np.ndarray, num_frames: int, rng: np.random.Generator | None = None,
               pad_value: float = LogMelConfig().silence) -> tuple[np.ndarray, np.ndarray]:
    """spec [T, F] -> (spec [num_frames, F], valid bool [num_frames]): a static shape for the model.

    Longer clips are cropped at a random offset when `rng` is given (random
    crop augmentation), else from the start; shorter ones are padded at the
    end with `pad_value` (silence), so `valid` marks the leading frames.
    """
    t = spec.shape[0]
    if t >= num_frames:
        start = int(rng.integers(0, t - num_frames + 1)) if rng is not None else 0
        return spec[start:start + num_frames].copy(), np.ones(num_frames, dtype=bool)
    out = np.full((num_frames, *spec.shape[1:]), pad_value, dtype=spec.dtype)
    out[:t] = spec
    return out, np.arange(num_frames) < t


def random_gain(waveform: np.ndarray, rng: np.random.Generator, max_db: float) -> np.ndarray:
    """Scales the waveform by a gain drawn uniformly in [-max_db, +max_db] dB; no clipping.

    Not a shift of the log-mel, because the log_offset floor is absolute: a
    gain changes how far speech stands above it, which a shift would not.
    """
    gain = 10.0 ** (rng.uniform(-max_db, max_db) / 20.0)
    return np.asarray(waveform, dtype=np.float32) * np.float32(gain)


def spec_augment(spec: np.ndarray, valid: np.ndarray, rng: np.random.Generator, time_masks: int = 2,
                 time_width: int = 10, freq_masks: int = 2, freq_width: int = 8) -> np.ndarray:
    """SpecAugment masking (Park et al., 2019) of a [T, F] log-mel; returns a new array.

    `time_masks` spans of U{0..time_width} valid frames and `freq_masks` spans
    of U{0..freq_width} bands (over the valid frames) are blanked; padding is
    left alone, and `valid` must mark the leading frames, as `fix_frames` does.
    Blanked bins get the mean of the valid spectrogram: the paper masks to 0
    after mean normalisation, i.e. to the mean; silence would mimic padding.
    """
    out = np.array(spec, copy=True)
    n, f = int(np.count_nonzero(valid)), spec.shape[1]
    if n == 0:
        return out
    fill = out[:n].mean()
    for span in _random_spans(rng, time_masks, time_width, n):
        out[span] = fill
    for span in _random_spans(rng, freq_masks, freq_width, f):
        out[:n, span] = fill
    return out


def _random_spans(rng: np.random.Generator, count: int, max_width: int, length: int):
    """`count` slices [s, s + w) of [0, length), w ~ U{0..max_width}, s uniform where it fits."""
    for _ in range(count):
        width = int(rng.integers(0, min(max_width, length) + 1))
        start = int(rng.integers(0, length - width + 1))
        yield slice(start, start + width)
