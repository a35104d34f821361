"""One validated record -> the model's inputs for every configured modality.

`ExampleTransform(data_cfg, tokenizer, train)` is a pure function of
(record, rng): Grain calls it as a `RandomMap` in training (rng seeded per
stream position, so resumed runs see the same augmentations) and with an rng
seeded by the example index in evaluation (no augmentation, but point
sampling still needs randomness).

Output per example (only the configured modalities):
  image [28, 28, 1] float32 in [-1, 1]     text [L] int32 token ids
  audio [T, F] float32 log-mel + audio_mask [T] bool (valid frames)
  points [N, 3] float32 (unit sphere)      label int32
  <m>_view2 (and <m>_view2_mask)  for m in data.second_view, in training only:
      a second, independently augmented view of m (SimCLR / TCL); it shares
      m's presence and augments with its own generator, seeded by a draw from
      the example's (a pure function of the stream position, like the first)
  present {m: bool}  False where m was dropped (modality dropout) or bad
  flags {"text_truncated": bool, "bad_<m>": bool}  counted in the metrics

Bad modality input (zero-length or non-finite audio, a blank digit that gives
no points): with data.on_bad_input="error" a BadRecordError naming the example
and field; with "drop" the modality is marked absent for that example, its
input zero-filled, and `flags["bad_<m>"]` set so the trainer counts it.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mmjax.data import audio as audio_lib
from mmjax.data import digits
from mmjax.data import points as points_lib
from mmjax.data.transforms import BadRecordError, random_resized_crop, random_shift, random_word_edit
from mmjax.objectives.contrastive_variants import VIEW2_SUFFIX

ON_BAD_INPUT = ("error", "drop")


@dataclasses.dataclass
class ExampleTransform:
    modalities: tuple[str, ...]
    tokenizer: Any
    train: bool
    augment: bool
    max_shift: int
    drop_prob: dict[str, float]
    on_bad_input: str
    logmel: audio_lib.LogMelConfig
    audio_cfg: dict
    points_cfg: dict
    where: str  # "dataset/split", for error messages
    second_view: tuple[str, ...] = ()  # modalities given a second augmented view in training
    # Off by default (and then no draw from the generator, so existing streams are unchanged).
    crop_scale: tuple[float, float] = (1.0, 1.0)  # random resized crop's area range; (1, 1) = off
    text_delete_prob: float = 0.0  # EDA random deletion, per word
    text_swap_prob: float = 0.0  # EDA random swap, expected swaps per word

    @classmethod
    def from_config(cls, data_cfg, tokenizer, *, train: bool, where: str) -> "ExampleTransform":
        if data_cfg.on_bad_input not in ON_BAD_INPUT:
            raise ValueError(f"data.on_bad_input={data_cfg.on_bad_input!r}; valid: {list(ON_BAD_INPUT)}")
        drop = dict(data_cfg.drop_prob)
        unknown = set(drop) - set(MODALITY_FNS)
        if unknown:
            raise ValueError(f"data.drop_prob has unknown modalities {sorted(unknown)}; valid: {sorted(MODALITY_FNS)}")
        second_view = tuple(data_cfg.get("second_view", ()))
        if set(second_view) - set(data_cfg.modalities):
            raise ValueError(f"data.second_view={second_view} names modalities outside data.modalities="
                             f"{tuple(data_cfg.modalities)}")
        audio_cfg = dict(data_cfg.audio)
        logmel = audio_lib.from_config(audio_cfg.pop("logmel"))
        return cls(tuple(data_cfg.modalities), tokenizer, train, bool(data_cfg.augment), data_cfg.max_shift, drop,
                   data_cfg.on_bad_input, logmel, audio_cfg, dict(data_cfg.points), where, second_view=second_view,
                   **_augment_options(data_cfg))

    @property
    def augmenting(self) -> bool:
        return self.train and self.augment

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        out = {"label": np.int32(record["label"]), "present": {}, "flags": {}}
        # The second views' generator: seeded by the example's own stream (so a resumed run
        # redraws the same views) and drawn from only when there are second views.
        view_rng = np.random.default_rng(rng.integers(2**63, size=2)) if self.train and self.second_view else None
        for m in self.modalities:
            try:
                out |= MODALITY_FNS[m](self, record, rng, out["flags"])
                present = True
            except (audio_lib.AudioDecodeError, points_lib.PointCloudError) as e:
                if self.on_bad_input == "error":
                    raise BadRecordError(f"{self.where} example {record['_index']}: field {m!r}: {e}") from e
                out |= _zeros_like_inputs(self, m)
                out["flags"][f"bad_{m}"] = True
                present = False
            if self.on_bad_input == "drop":
                out["flags"].setdefault(f"bad_{m}", False)
            if present and self.train and rng.random() < self.drop_prob.get(m, 0.0):
                out |= _zeros_like_inputs(self, m)
                present = False
            out["present"][m] = np.bool_(present)
            if view_rng is not None and m in self.second_view:
                view = MODALITY_FNS[m](self, record, view_rng, {}) if present else _zeros_like_inputs(self, m)
                out |= {m + VIEW2_SUFFIX + k[len(m):]: v for k, v in view.items()}  # audio_mask -> audio_view2_mask
        return out


def _image(t: ExampleTransform, record, rng, flags) -> dict:
    image = record["image"].astype(np.float32) / 127.5 - 1.0
    if t.augmenting and t.crop_scale != (1.0, 1.0):
        image = random_resized_crop(image, rng, t.crop_scale)
    if t.augmenting and t.max_shift:
        image = random_shift(image, rng, t.max_shift, background=-1.0)
    return {"image": image}


def _text(t: ExampleTransform, record, rng, flags) -> dict:
    caption = record["caption"]
    if t.augmenting and (t.text_delete_prob or t.text_swap_prob):
        caption = random_word_edit(caption, rng, t.text_delete_prob, t.text_swap_prob)
    # Over-long captions are truncated (keeping eot, as CLIP does) and counted.
    flags["text_truncated"] = np.bool_(t.tokenizer.num_tokens(caption) > t.tokenizer.max_len)
    return {"text": t.tokenizer.encode(caption)}


def _audio(t: ExampleTransform, record, rng, flags) -> dict:
    c = t.audio_cfg
    wave = audio_lib.pcm_to_float32(audio_lib.validate_waveform(record["audio"], "waveform"))
    if t.augmenting and c["gain_db"]:
        wave = audio_lib.random_gain(wave, rng, c["gain_db"])
    spec = audio_lib.log_mel_spectrogram(wave, t.logmel)
    spec, valid = audio_lib.fix_frames(spec, c["num_frames"], rng if t.augmenting else None,
                                       pad_value=t.logmel.silence)
    if t.augmenting:
        spec = audio_lib.spec_augment(spec, valid, rng, c["time_masks"], c["time_width"], c["freq_masks"],
                                      c["freq_width"])
    # Standardise with dataset statistics (as AST/AudioMAE do) so the patch
    # embedding sees unit-scale inputs instead of log values around -10.
    spec = (spec - c["norm_mean"]) / c["norm_std"]
    return {"audio": spec.astype(np.float32), "audio_mask": valid}


def _points(t: ExampleTransform, record, rng, flags) -> dict:
    c = t.points_cfg
    pts = points_lib.digit_to_points(record["image"], c["num_points"], rng, c["thickness"])
    if t.augmenting:
        pts = points_lib.random_rotation(pts, rng, "z", np.deg2rad(c["rotation_deg"]))
        pts = points_lib.random_anisotropic_scale(pts, rng, c["scale_low"], c["scale_high"])
        pts = points_lib.jitter(pts, rng, c["jitter_sigma"], c["jitter_clip"])
        if c["dropout_max"]:
            pts = points_lib.point_dropout(pts, rng, c["dropout_max"])
    return {"points": pts}


MODALITY_FNS = {"image": _image, "text": _text, "audio": _audio, "points": _points}


def _augment_options(data_cfg) -> dict:
    """The image crop and caption edit options of data_cfg, checked here rather than per example."""
    scale = tuple(float(x) for x in data_cfg.crop_scale)
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"data.crop_scale={data_cfg.crop_scale}: expected (min, max) with 0 < min <= max <= 1")
    probs = {"text_delete_prob": float(data_cfg.text_delete_prob), "text_swap_prob": float(data_cfg.text_swap_prob)}
    if bad := {k: v for k, v in probs.items() if not 0.0 <= v < 1.0}:
        raise ValueError(f"data.{next(iter(bad))}={next(iter(bad.values()))}: a probability in [0, 1) expected")
    return {"crop_scale": scale, **probs}


def _zeros_like_inputs(t: ExampleTransform, m: str) -> dict:
    """Static-shape placeholders for an absent modality (the model still sees a full batch)."""
    shapes = {
        "image": {"image": (digits.IMAGE_SHAPE, np.float32)},
        "text": {"text": ((t.tokenizer.max_len,), np.int32)},
        "audio": {"audio": ((t.audio_cfg["num_frames"], t.logmel.n_mels), np.float32),
                  "audio_mask": ((t.audio_cfg["num_frames"],), bool)},
        "points": {"points": ((t.points_cfg["num_points"], 3), np.float32)},
    }[m]
    out = {k: np.zeros(shape, dtype) for k, (shape, dtype) in shapes.items()}
    if m == "text":  # a valid (empty) sequence, so the text tower still finds an eot
        out["text"] = t.tokenizer.encode("")
    if m == "audio":
        out["audio"][:] = (t.logmel.silence - t.audio_cfg["norm_mean"]) / t.audio_cfg["norm_std"]
    return out
