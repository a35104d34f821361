"""`fake`: deterministic random examples of the configured shapes, made in memory.

For running a config where its data is not: a pod config on a laptop or in CI,
or a new cluster before the data lands. `--config.data.name=fake` (a pod
config's `data=fake` variant) swaps the dataset for examples of exactly the
shapes and dtypes the real pipeline hands the model, for every configured
modality, so that model, sharding, train step, evaluation and checkpointing
(data iterator included: the stream is the same Grain pipeline, shuffled,
repeated, batched and sharded, so its state is the same position counter and
a resumed run continues bit-exactly) all run unchanged. No download, no build.

An example is what `mmjax.data.modalities.ExampleTransform` outputs:
  image  [*data.fake.image_shape] float32 uniform in [-1, 1]
  text   [data.text_len] int32: the configured tokenizer's encoding of a few
         random words (so bos/eot and padding are laid out as for real text)
  audio  [data.audio.num_frames, data.audio.logmel.n_mels] float32 standard
         normal, audio_mask [num_frames] bool: a random valid prefix of at
         least half the frames, the rest zero
  points [data.points.num_points, 3] float32, Gaussian normalised to the unit
         sphere (Point-MAE's normalisation)
  label  int32 in [0, data.fake.num_classes); the evaluators name the
         digits' ten classes, hence the default of 10
  present {m: True}, flags {"text_truncated"} when text is configured
plus `<m>_view2` for the modalities of data.second_view in training.

Record i of split s is a pure function of (data.fake.seed, s, i): it is the
same in every epoch and every evaluation, and the splits differ. The splits
are the config's data.train_split and data.eval_split; their sizes and the
image shape come from `data.fake` (`fake_config`), which a config may leave
out (then 28x28x1 images, the digits' shape).
"""
from __future__ import annotations

import dataclasses
import zlib

import grain
import ml_collections
import numpy as np

from mmjax.data import digits
from mmjax.data import points as points_lib
from mmjax.objectives.contrastive_variants import VIEW2_SUFFIX

NAME = "fake"
MODALITIES = ("image", "audio", "points", "text")
# Caption words: class names, so that captions and zero-shot prompts share a vocabulary.
WORDS = digits.CLASS_NAMES


def fake_config(image_shape=digits.IMAGE_SHAPE, train_examples: int = 1024, eval_examples: int = 256,
                num_classes: int = len(digits.CLASS_NAMES), seed: int = 0) -> ml_collections.ConfigDict:
    """`data.fake`: the image shape (other modalities' shapes are in data.*) and split sizes."""
    return ml_collections.ConfigDict({"image_shape": tuple(image_shape), "train_examples": train_examples,
                                      "eval_examples": eval_examples, "num_classes": num_classes, "seed": seed})


def _options(data_cfg) -> ml_collections.ConfigDict:
    return data_cfg.get("fake") or fake_config()


def open_split(data_cfg, split: str) -> grain.MapDataset:
    """Records {"_index", "_split"} of `split` (data.train_split or data.eval_split, whatever their
    names); `FakeExample` makes each one's content."""
    opts = _options(data_cfg)
    sizes = {data_cfg.train_split: opts.train_examples, data_cfg.eval_split: opts.eval_examples}
    if split not in sizes:
        raise ValueError(f"{NAME} has no split {split!r}; valid splits: {sorted(sizes)}")
    return grain.MapDataset.range(sizes[split]).map(lambda i: {"_index": int(i), "_split": split})


def input_shapes(data_cfg) -> dict:
    """(shape, dtype) of one example's model inputs: what FakeExample makes for data_cfg (and the
    real pipeline for its modalities), e.g. for sizing a model without any data."""
    out = {"label": ((), np.int32)}
    shapes = {"image": {"image": (tuple(_options(data_cfg).image_shape), np.float32)},
              "text": {"text": ((data_cfg.text_len,), np.int32)},
              "audio": {"audio": ((data_cfg.audio.num_frames, data_cfg.audio.logmel.n_mels), np.float32),
                        "audio_mask": ((data_cfg.audio.num_frames,), np.bool_)},
              "points": {"points": ((data_cfg.points.num_points, 3), np.float32)}}
    for m in data_cfg.modalities:
        out |= shapes[m]
    out["present"] = {m: ((), np.bool_) for m in data_cfg.modalities}
    return out


@dataclasses.dataclass
class FakeExample:
    """record -> model inputs; a stand-in for ExampleTransform with the same call signature."""

    modalities: tuple[str, ...]
    second_view: tuple[str, ...]
    tokenizer: object
    image_shape: tuple[int, ...]
    num_frames: int
    num_mels: int
    num_points: int
    num_classes: int
    seed: int

    @classmethod
    def from_config(cls, data_cfg, tokenizer, *, train: bool, where: str) -> "FakeExample":
        del where  # generated examples are never bad
        opts = _options(data_cfg)
        unknown = set(data_cfg.modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(f"dataset {NAME} has no modality {sorted(unknown)}; valid: {list(MODALITIES)}")
        return cls(tuple(data_cfg.modalities), tuple(data_cfg.get("second_view", ())) if train else (), tokenizer,
                   tuple(opts.image_shape), data_cfg.audio.num_frames, data_cfg.audio.logmel.n_mels,
                   data_cfg.points.num_points, opts.num_classes, opts.seed)

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        del rng  # the record's content depends on its index only, as a stored record's would
        rng = np.random.default_rng([self.seed, zlib.crc32(record["_split"].encode()), record["_index"]])
        out = {"label": np.int32(rng.integers(self.num_classes)), "present": {}, "flags": {}}
        for m in self.modalities:
            out |= self._modality(m, rng, out["flags"])
            out["present"][m] = np.bool_(True)
            if m in self.second_view:
                out |= {m + VIEW2_SUFFIX + k[len(m):]: v for k, v in self._modality(m, rng, {}).items()}
        return out

    def _modality(self, m: str, rng: np.random.Generator, flags: dict) -> dict:
        if m == "image":
            return {"image": rng.uniform(-1.0, 1.0, self.image_shape).astype(np.float32)}
        if m == "text":
            # Up to one word per 6 tokens: fits a byte tokenizer (a class name and a space), rarely truncated.
            caption = " ".join(rng.choice(WORDS, size=rng.integers(1, max(1, self.tokenizer.max_len // 6) + 1)))
            flags["text_truncated"] = np.bool_(self.tokenizer.num_tokens(caption) > self.tokenizer.max_len)
            return {"text": self.tokenizer.encode(caption)}
        if m == "audio":
            valid = np.arange(self.num_frames) < rng.integers((self.num_frames + 1) // 2, self.num_frames + 1)
            spec = rng.standard_normal((self.num_frames, self.num_mels)).astype(np.float32)
            return {"audio": np.where(valid[:, None], spec, 0.0).astype(np.float32), "audio_mask": valid}
        return {"points": points_lib.normalize_unit_sphere(rng.standard_normal((self.num_points, 3)))}
