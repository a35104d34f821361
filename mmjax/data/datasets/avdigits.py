"""`av_digits`: four modalities of one digit, from embedded real data.

Each example pairs an MNIST image with a Free Spoken Digit recording of the
same digit (AV-MNIST style), a caption, and the label; the point cloud is
derived from the image's strokes in the input pipeline (so it can be
re-sampled and augmented every epoch). Splits are disjoint in both sources:
images follow `digits_captions` (8,000 train / 2,000 test of the MNIST test
split), audio follows FSDD's customary split (takes 0-4 of every speaker and
digit are test: 300 clips; takes 5-49 train: 2,700 clips). Within a split and
digit, clips are dealt to images round-robin from a fixed shuffle, so every
clip is used about equally often (~3x in train, ~7x in test).

Audio is stored as int16 PCM at 8 kHz, variable length; the pipeline turns
it into log-mel frames.
"""
from __future__ import annotations

import collections
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data import audio, builders
from mmjax.data.datasets import mnist
from mmjax.data.datasets.base import DATASETS, TfdsDataset

NAME = "av_digits"
SAMPLE_RATE = 8000
_RECORDINGS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "raw", "fsdd", "recordings")
_FILE = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")
_TEST_TAKES = range(5)
_PAIR_SEED = 2


def fsdd_split(take: int) -> str:
    return "test" if take in _TEST_TAKES else "train"


def load_fsdd(recordings_dir: str = _RECORDINGS) -> dict[str, list[tuple[str, int, np.ndarray]]]:
    """{split: [(clip id, digit, int16 waveform), ...]} sorted by clip id.

    A file that is not a readable 8 kHz WAV raises AudioDecodeError naming it.
    """
    out = collections.defaultdict(list)
    names = sorted(f for f in os.listdir(recordings_dir) if f.endswith(".wav"))
    if not names:
        raise FileNotFoundError(f"no .wav files in {recordings_dir}")
    for name in names:
        match = _FILE.match(name)
        if not match:
            raise ValueError(f"{name}: expected FSDD file names {{digit}}_{{speaker}}_{{take}}.wav")
        digit, take = int(match.group(1)), int(match.group(3))
        path = os.path.join(recordings_dir, name)
        wave, rate = audio.read_wav(path)
        if rate != SAMPLE_RATE:
            raise audio.AudioDecodeError(f"{path}: sample rate {rate} Hz, expected {SAMPLE_RATE}")
        pcm = np.round(wave * 32768.0).clip(-32768, 32767).astype(np.int16)
        out[fsdd_split(take)].append((name[:-4], digit, pcm))
    return dict(out)


def pair_clips(labels: np.ndarray, clips: list[tuple[str, int, np.ndarray]], seed: int) -> list[int]:
    """For each label, the index of a clip of the same digit, dealt round-robin from a shuffle."""
    rng = np.random.default_rng(seed)
    by_digit = {d: rng.permutation([i for i, c in enumerate(clips) if c[1] == d]) for d in range(10)}
    used = collections.Counter()
    choice = []
    for y in labels:
        pool = by_digit[int(y)]
        if len(pool) == 0:
            raise ValueError(f"no FSDD clip of digit {y} in this split")
        choice.append(int(pool[used[y] % len(pool)]))
        used[y] += 1
    return choice


class AVDigits(builders.EmbeddedBuilder):
    """MNIST images + FSDD audio + captions, paired by digit (points come from the image)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=mnist.IMAGE_SHAPE, dtype=np.uint8),
                "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
                "label": tfds.features.ClassLabel(names=mnist.CLASS_NAMES),
                "caption": tfds.features.Text(),
                "index": tfds.features.Scalar(dtype=np.int64),  # MNIST index
                "audio_id": tfds.features.Text(),  # FSDD file stem
            }),
            homepage="https://github.com/Jakobovski/free-spoken-digit-dataset",
            license="MNIST: CC BY-SA 3.0; FSDD: CC BY-SA 4.0",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # everything is embedded
        images, labels = mnist.load_raw()
        texts = mnist.captions(labels)
        clips = load_fsdd()
        return {split: self._generate_examples(images, labels, texts, indices, clips[split])
                for split, indices in mnist.split_indices(len(labels)).items()}

    def _generate_examples(self, images, labels, texts, indices, clips):
        paired = pair_clips(labels[indices], clips, _PAIR_SEED)
        for i, clip in zip(indices, paired):
            i = int(i)
            clip_id, digit, pcm = clips[clip]
            assert digit == labels[i], (clip_id, labels[i])
            yield i, {"image": images[i][..., None], "audio": pcm, "label": int(labels[i]),
                      "caption": texts[i], "index": i, "audio_id": clip_id}


@DATASETS.register(NAME)
class AVDigitsDataset(TfdsDataset):
    """Image, spoken digit, caption and (from the image's strokes) point cloud of one digit."""

    name = NAME

    fields = {"image": "image", "audio": "audio", "points": "image", "text": "caption"}
    builder_cls = AVDigits
    prompt_templates = mnist.ZEROSHOT_PROMPTS

    @property
    def class_names(self):
        return mnist.CLASS_NAMES

    def zeroshot_prompts(self):
        return mnist.zeroshot_prompts()
