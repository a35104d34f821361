"""Audio: WAV decoding, log-mel parity with a textbook reference, fixed length,
augmentations, and the spectrogram transformer tower.

The log-mel reference below is written from the definitions (a framing loop,
DFT as explicit cosine/sine sums, Slaney's mel formula and normalisation),
not from the code under test; it agrees to |err| <= 1e-4 * (1 + |ref|).
"""
import dataclasses
import io
import math
import os
import struct
import wave

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax.data import audio
from mmjax.models.audio import AudioTransformer

CLIP = os.path.join(os.path.dirname(audio.__file__), "raw", "fsdd", "recordings", "7_jackson_32.wav")
TOL = dict(rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- WAV helpers
def pcm_wav(samples: np.ndarray, width: int, rate: int = 8000) -> bytes:
    """int samples [T, C] (signed, `width` bytes' range) -> PCM WAV bytes via the stdlib writer."""
    if width == 1:
        raw = (samples + 128).astype(np.uint8).tobytes()
    elif width == 3:
        raw = samples.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        raw = samples.astype(f"<i{width}").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return buf.getvalue()


def float_wav(samples: np.ndarray, rate: int = 8000, extensible: bool = False) -> bytes:
    """float32 mono samples -> IEEE-float WAV bytes (format 3, or EXTENSIBLE), which `wave` cannot write."""
    data = np.asarray(samples, "<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else 3, 1, rate, rate * 4, 4, 32)
    if extensible:  # cbSize, valid bits, channel mask, then the KSDATAFORMAT_SUBTYPE_IEEE_FLOAT GUID
        fmt += struct.pack("<HHI", 22, 32, 4) + bytes.fromhex("0300000000001000800000aa00389b71")
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_read_wav_fsdd_clip_matches_stdlib():
    x, rate = audio.read_wav(CLIP)
    with wave.open(CLIP) as w:
        n, ref = w.getnframes(), np.frombuffer(w.readframes(w.getnframes()), "<i2")
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
    assert rate == 8000 and x.dtype == np.float32 and x.shape == (n,)
    np.testing.assert_array_equal(x, ref / np.float32(32768))
    with open(CLIP, "rb") as f:
        np.testing.assert_array_equal(audio.read_wav(f.read())[0], x)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_read_wav_pcm_widths_and_downmix(width):
    scale = 2 ** (8 * width - 1)
    left = np.round(np.sin(np.linspace(0, 20, 300)) * (scale - 1)).astype(np.int64)
    right = -left // 2
    x, rate = audio.read_wav(pcm_wav(np.stack([left, right], axis=1), width, rate=16000))
    assert rate == 16000 and x.shape == (300,)
    np.testing.assert_allclose(x, (left + right) / 2 / scale, atol=1e-7)


@pytest.mark.parametrize("extensible", [False, True])
def test_read_wav_float(extensible):
    samples = np.float32([0.0, 0.5, -1.0, 0.25])
    x, _ = audio.read_wav(float_wav(samples, extensible=extensible))
    np.testing.assert_array_equal(x, samples)


GOOD = pcm_wav(np.zeros((800, 1), np.int64), 2)


@pytest.mark.parametrize("data, reason", [
    (b"this is not audio at all", "not a RIFF/WAVE file"),
    (GOOD[:30], "truncated: chunk b'fmt ' declares 16 bytes, file has 10"),
    (GOOD[:36], "missing data chunk"),
    (GOOD[:-100], "truncated: chunk b'data' declares 1600 bytes, file has 1500"),
    (GOOD[:40] + struct.pack("<I", 1599) + GOOD[44:-1], "not a whole number of 2-byte frames"),
    (pcm_wav(np.zeros((0, 1), np.int64), 2), "zero-length audio"),
    (float_wav([0.0, np.nan, 0.5, np.inf]), r"2 non-finite \(NaN/inf\) samples, first at index 1"),
    (GOOD[:20] + struct.pack("<H", 85) + GOOD[22:], "unsupported encoding"),  # format tag 85: MP3
])
def test_read_wav_rejects_bad_input_with_reason(data, reason):
    with pytest.raises(audio.AudioDecodeError, match=reason):
        audio.read_wav(data)


def test_validate_waveform():
    x = np.int16([1, -2, 3])
    assert audio.validate_waveform(x) is x
    with pytest.raises(audio.AudioDecodeError, match="clip 7: zero-length"):
        audio.validate_waveform(np.zeros(0, np.float32), where="clip 7")
    with pytest.raises(audio.AudioDecodeError, match="non-finite"):
        audio.validate_waveform(np.float32([0.0, np.nan]))
    with pytest.raises(audio.AudioDecodeError, match="1-D"):
        audio.validate_waveform(np.zeros((2, 3), np.float32))


# ---------------------------------------------------------------- log-mel
def textbook_log_mel(x: np.ndarray, cfg: audio.LogMelConfig) -> np.ndarray:
    """Slaney-scale log-mel from the definitions, in float64, with loops where they are clearer."""
    n_fft, hop, sr = cfg.n_fft, cfg.hop_length, cfg.sample_rate
    assert cfg.win_length == n_fft and cfg.center and cfg.mel_scale == "slaney"
    x, p = np.asarray(x, np.float64), n_fft // 2
    if cfg.pad_mode == "reflect":  # mirror about the end samples, which are not repeated
        x = np.concatenate([x[p:0:-1], x, x[-2:-p - 2:-1]])
    else:
        x = np.concatenate([np.zeros(p), x, np.zeros(p)])
    n, k = np.arange(n_fft), np.arange(n_fft // 2 + 1)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    cos, sin = np.cos(2 * np.pi * np.outer(n, k) / n_fft), np.sin(2 * np.pi * np.outer(n, k) / n_fft)
    power = []
    for start in range(0, len(x) - n_fft + 1, hop):
        frame = x[start:start + n_fft] * hann
        power.append((frame @ cos) ** 2 + (frame @ sin) ** 2)  # |sum_n x_n e^{-2 pi i n k / N}|^2
    power = np.array(power) ** (cfg.power / 2)

    def mel(f):  # 3 mels per 200 Hz below 1 kHz, then 27 mels per factor 6.4
        return 3 * f / 200 if f < 1000 else 15 + 27 * math.log(f / 1000) / math.log(6.4)

    def hz(m):
        return 200 * m / 3 if m < 15 else 1000 * 6.4 ** ((m - 15) / 27)

    edges = [hz(m) for m in np.linspace(mel(cfg.fmin), mel(cfg.f_max), cfg.n_mels + 2)]
    filters = np.zeros((len(k), cfg.n_mels))
    for j in range(cfg.n_mels):
        lo, centre, hi = edges[j:j + 3]
        for i, f in enumerate(k * sr / n_fft):
            if lo < f <= centre:
                filters[i, j] = (f - lo) / (centre - lo)
            elif centre < f < hi:
                filters[i, j] = (hi - f) / (hi - centre)
        filters[:, j] *= 2 / (hi - lo)  # Slaney: unit area
    return np.log(power @ filters + cfg.log_offset)


def chirp(seconds: float, rate: int = 8000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(0).normal(0, 0.01, t.size)
    return (0.5 * np.sin(2 * np.pi * (100 + 1500 * t) * t) + noise).astype(np.float32)


@pytest.mark.parametrize("cfg", [
    audio.LogMelConfig(),
    audio.LogMelConfig(n_fft=512, win_length=512, hop_length=128, n_mels=40, fmin=60.0, fmax=3800.0,
                       pad_mode="constant", power=1.0),
], ids=["default", "variant"])
def test_log_mel_matches_textbook_reference(cfg):
    for x in (audio.read_wav(CLIP)[0], chirp(0.3)):
        out = audio.log_mel_spectrogram(x, cfg)
        assert out.dtype == np.float32 and out.shape == (cfg.num_frames(x.size), cfg.n_mels)
        np.testing.assert_allclose(out, textbook_log_mel(x, cfg), **TOL)


@pytest.mark.parametrize("mel_scale", ["slaney", "htk"])
def test_log_mel_matches_librosa(mel_scale):
    librosa = pytest.importorskip("librosa")
    cfg = audio.LogMelConfig(mel_scale=mel_scale)
    x = audio.read_wav(CLIP)[0]
    ref = librosa.feature.melspectrogram(
        y=x.astype(np.float64), sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
        win_length=cfg.win_length, window="hann", center=True, pad_mode="reflect", power=cfg.power,
        n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.f_max, htk=mel_scale == "htk", norm="slaney")
    np.testing.assert_allclose(audio.log_mel_spectrogram(x, cfg), np.log(ref.T + cfg.log_offset), **TOL)


def test_mel_scales_and_filterbank():
    # Scale formulas at known points, and their inverses.
    np.testing.assert_allclose(audio.hz_to_mel([0.0, 1000.0, 6400.0], "slaney"), [0.0, 15.0, 42.0], atol=1e-9)
    np.testing.assert_allclose(audio.hz_to_mel(1000.0, "htk"), 2595 * np.log10(1 + 1000 / 700))
    f = np.array([0.0, 300.0, 1000.0, 2500.0, 4000.0])
    for scale in ("slaney", "htk"):
        np.testing.assert_allclose(audio.mel_to_hz(audio.hz_to_mel(f, scale), scale), f, atol=1e-6)

    cfg = audio.LogMelConfig()
    fb = audio.mel_filterbank(cfg)
    assert fb.shape == (129, 64) and fb.dtype == np.float32 and (fb >= 0).all()
    assert (fb > 0).sum(axis=0).min() >= 2  # no empty or single-bin band at 8 kHz / n_fft 256
    edges = audio.mel_to_hz(np.linspace(0, audio.hz_to_mel(4000.0), 66))
    centres, bin_hz = edges[1:-1], 8000 / 256
    assert np.all(np.abs(fb.argmax(axis=0) * bin_hz - centres) <= bin_hz / 2 + 1e-9)  # peaks at its centre
    # Unnormalised triangles peak at <= 1; Slaney's scales each to unit area, 2 / (upper - lower edge).
    plain = audio.mel_filterbank(dataclasses.replace(cfg, mel_norm="none"))
    assert plain.max() <= 1.0 and plain.max(axis=0).min() > 0.5
    np.testing.assert_allclose(fb, plain * 2 / (edges[2:] - edges[:-2]), rtol=1e-5)
    htk = audio.mel_filterbank(dataclasses.replace(cfg, mel_scale="htk"))
    assert htk.shape == fb.shape and not np.allclose(htk, fb)

    # A pure tone lands in the band whose centre is nearest to it.
    tone = np.sin(2 * np.pi * 1000.0 * np.arange(4000) / 8000).astype(np.float32)
    band = audio.log_mel_spectrogram(tone, cfg).mean(axis=0).argmax()
    assert band == np.abs(centres - 1000.0).argmin()


def test_config_from_mapping_and_validation():
    cfg = audio.from_config(ml_collections.ConfigDict({"n_mels": 40, "fmax": 3800.0}))
    assert cfg == audio.LogMelConfig(n_mels=40, fmax=3800.0)
    assert audio.from_config({}) == audio.LogMelConfig()
    with pytest.raises(ValueError, match=r"unknown log-mel config field\(s\) \['nmels'\]; valid: .*'n_mels'"):
        audio.from_config({"nmels": 40})
    with pytest.raises(ValueError, match="fmax <= sample_rate/2"):
        audio.LogMelConfig(fmax=5000.0)
    with pytest.raises(ValueError, match=r"mel_scale='mel'; valid: \['slaney', 'htk'\]"):
        audio.LogMelConfig(mel_scale="mel")
    assert audio.LogMelConfig().num_frames(8000) == 101


# ---------------------------------------------------------------- fixed length and augmentation
def test_fix_frames_pads_crops_and_is_deterministic():
    spec = np.arange(50 * 4, dtype=np.float32).reshape(50, 4)
    padded, valid = audio.fix_frames(spec, 64)
    assert padded.shape == (64, 4) and valid.sum() == 50 and valid[:50].all()
    np.testing.assert_array_equal(padded[:50], spec)
    np.testing.assert_allclose(padded[50:], np.log(1e-6))  # silence

    cropped, valid = audio.fix_frames(spec, 32)
    assert valid.all() and valid.shape == (32,)
    np.testing.assert_array_equal(cropped, spec[:32])  # no rng: from the start
    crops = [audio.fix_frames(spec, 32, np.random.default_rng(s))[0] for s in range(20)]
    starts = {int(c[0, 0]) // 4 for c in crops}
    assert len(starts) > 1 and all(0 <= s <= 18 for s in starts)
    for s, c in enumerate(crops[:3]):
        np.testing.assert_array_equal(c, audio.fix_frames(spec, 32, np.random.default_rng(s))[0])


def test_spec_augment_masks_within_bounds():
    rng = np.random.default_rng(0)
    spec, valid = audio.fix_frames(rng.normal(size=(70, 32)).astype(np.float32), 96)
    n, params = 70, dict(time_masks=2, time_width=10, freq_masks=2, freq_width=6)
    runs = lambda v: np.count_nonzero(np.diff(v.astype(int), prepend=0) == 1)  # contiguous True spans
    fractions = []
    for seed in range(50):
        out = audio.spec_augment(spec, valid, np.random.default_rng(seed), **params)
        changed = out != spec
        assert not changed[n:].any()  # padding untouched
        np.testing.assert_allclose(out[changed], spec[:n].mean(), rtol=1e-6)
        frames, bands = changed.all(axis=1), changed[:n].all(axis=0)  # fully masked frames / bands
        assert frames.sum() <= 2 * 10 and runs(frames) <= 2 and bands.sum() <= 2 * 6 and runs(bands) <= 2
        # Bins outside the masked frames and bands are unchanged.
        assert not (changed & ~frames[:, None] & ~bands[None]).any()
        fractions.append(changed[:n].mean())
    assert 0 < np.mean(fractions) and max(fractions) <= 2 * 10 / n + 2 * 6 / 32
    np.testing.assert_array_equal(audio.spec_augment(spec, valid, np.random.default_rng(3), **params),
                                  audio.spec_augment(spec, valid, np.random.default_rng(3), **params))


def test_random_gain_range():
    x = np.full(10, 0.1, np.float32)
    gains_db = [20 * np.log10(audio.random_gain(x, np.random.default_rng(s), 6.0)[0] / 0.1) for s in range(50)]
    assert -6.0 <= min(gains_db) < -2.0 and 2.0 < max(gains_db) <= 6.0


# ---------------------------------------------------------------- AudioTransformer
TINY = dict(patch_time=8, patch_freq=8, width=32, depth=1, num_heads=2, mlp_dim=64)
B, T, F = 2, 32, 16  # 4 x 2 = 8 patches


def random_params(model, *args):
    """Parameters of the right structure, without compiling the initialisers.

    `jax.eval_shape` runs `init` abstractly (every shape check included);
    filling the shapes from NumPy skips the XLA compile of the random
    initialisers, the slowest step of these tests on a small CPU. The
    properties tested hold for any parameter values.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), *args)
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.2, s.shape), s.dtype), shapes)


@pytest.fixture(scope="module", params=[
    dict(posemb="factorized", pool="mean", depth=2, scan=True),  # the mask is broadcast through nn.scan
    dict(posemb="sincos", pool="tok"),
], ids=lambda p: f"{p['posemb']}-{p['pool']}")
def tower(request):
    """(model, params, jitted apply) per configuration, shared by the tests below."""
    model = AudioTransformer(**{**TINY, **request.param})
    return model, random_params(model, jnp.zeros((B, T, F)), jnp.ones((B, T), bool)), jax.jit(model.apply)


def test_audio_transformer_output_contract(tower):
    model, params, apply = tower
    out = apply(params, jax.random.normal(jax.random.key(1), (B, T, F)))
    chex.assert_shape(out["pooled"], (B, 32))
    chex.assert_shape(out["tokens"], (B, (T // 8) * (F // 8), 32))
    chex.assert_tree_all_finite(out)
    names = set(params["params"])
    assert ({"posemb_time", "posemb_freq"} <= names) == (model.posemb == "factorized")
    assert ("cls" in names) == (model.pool == "tok")
    if model.pool == "mean":
        np.testing.assert_allclose(out["pooled"], out["tokens"].mean(axis=1), atol=1e-5)


def test_audio_transformer_ignores_padding_frames(tower):
    model, params, apply = tower
    spec = jax.random.normal(jax.random.key(1), (B, T, F))
    lengths = jnp.array([16, 13])  # 16 ends on a patch boundary; 13 inside a patch, then partly valid
    mask = jnp.arange(T)[None] < lengths[:, None]
    garbage = jnp.where(mask[..., None], spec, 1e3 * jax.random.normal(jax.random.key(2), (B, T, F)))
    clean, dirty = apply(params, spec, mask), apply(params, garbage, mask)
    np.testing.assert_allclose(clean["pooled"], dirty["pooled"], atol=1e-5)
    # Tokens of patches with a valid frame are unaffected too (time patches 0-1 of 4: tokens 0-3).
    np.testing.assert_allclose(clean["tokens"][:, :4], dirty["tokens"][:, :4], atol=1e-5)
    # The mask did the work: unmasked, the garbage changes the output; all-valid equals no mask.
    assert not np.allclose(apply(params, garbage)["pooled"], clean["pooled"], atol=1e-3)
    np.testing.assert_allclose(apply(params, spec, jnp.ones((B, T), bool))["pooled"],
                               apply(params, spec)["pooled"], atol=1e-5)
    # Padding is invisible: the padded clip encodes exactly like the clip cut to its 16 frames
    # (the learned time table cut to match; the sincos table's first rows do not depend on T).
    short = dict(params["params"])
    if model.posemb == "factorized":
        short["posemb_time"] = short["posemb_time"][:2]
    cut = apply({"params": short}, spec[:1, :16])
    np.testing.assert_allclose(cut["pooled"][0], clean["pooled"][0], atol=1e-5)
    np.testing.assert_allclose(cut["tokens"][0], clean["tokens"][0, :4], atol=1e-5)


@pytest.mark.parametrize("shape, fields, message", [
    ((1, 30, 16), {}, r"30 frames x 16 bands is not divisible by the \(8, 8\) patch"),
    ((1, 32, 12), {}, "not divisible"),
    ((1, 32, 16), {"posemb": "learn"}, "unknown audio posemb 'learn'; valid: 'factorized', 'sincos'"),
    ((1, 32, 16), {"pool": "gap"}, "unknown pool 'gap' for AudioTransformer"),
])
def test_audio_transformer_rejects_bad_shapes_and_options(shape, fields, message):
    model = AudioTransformer(**TINY, **fields)
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
