"""Reading and validating records; image augmentation (shift, random resized crop) and caption
augmentation (EDA-style word deletion and swap).

Order in a pipeline: `RecordSource` (deserialise) -> `ValidateRecord` (before
any shuffle, so the index it names, and stores as "_index", is the example's
position in its split) -> `mmjax.data.example.ExampleTransform`.

Bad input stops the run with a `BadRecordError` that names dataset, split,
example index and field, so the record can be found and fixed (design guide:
"a clear error naming the example").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import grain
import numpy as np


Record = dict[str, Any]


class BadRecordError(ValueError):
    """A record that cannot be read or does not match the expected features."""


class BadInput(ValueError):
    """One modality's stored value is unusable (wrong shape or dtype, corrupt audio, an empty point
    cloud, ...). Raised by modality code, which does not know where the value came from; the
    pipeline turns it into a BadRecordError naming dataset, split, example and field, or, with
    data.on_bad_input="drop", marks the modality absent for that example and counts it."""


class RecordSource:
    """Random-access source that deserialises raw records and names a bad one.

    `raw` holds serialised records (e.g. a TFDS data source opened with
    `DeserializeMethod.RAW_BYTES`); reading and deserialising are split so that
    only the latter turns into a `BadRecordError`, while I/O errors propagate
    unchanged.
    """

    def __init__(self, raw: Sequence[bytes], deserialize: Callable[[bytes], Record], where: str):
        self._raw = raw
        self._deserialize = deserialize
        self._where = where  # "dataset/split", for messages.

    def __len__(self) -> int:
        return len(self._raw)

    def __getitem__(self, index: int) -> Record:
        data = self._raw[index]
        try:
            return self._deserialize(data)
        except Exception as e:  # Any parser failure means a corrupt record.
            raise BadRecordError(
                f"{self._where} example {index}: cannot deserialize record "
                f"({type(e).__name__}: {e})") from e

    def __repr__(self) -> str:
        return f"RecordSource({self._where}, {len(self)} records)"


def example_name(index: int, record: Record) -> str:
    """How an error names an example: its index in the split and, where the dataset stores one (the
    converter's "key": the archive member or file it came from), its key."""
    key = record.get("key")
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    return f"example {index}" + (f" (key {key!r})" if key else "")


def field_name(field: str, modality: str) -> str:
    """How an error names a value: the stored field, and the modality when they differ."""
    return repr(field) if field == modality else f"{field!r} ({modality})"


class ValidateRecord(grain.transforms.MapWithIndex):
    """Checks each configured modality's stored field (its `Modality.validate`) and the label;
    passes the record through, with validated values (e.g. captions as str) and "_index".

    `modalities` {m: bound Modality}, `fields` {m: the record field m reads}: both from the
    dataset's schema, so nothing here knows a particular dataset.
    """

    def __init__(self, where: str, modalities: dict[str, Any], fields: dict[str, str], *, num_classes: int,
                 label_field: str | None = "label"):
        self.where = where
        self.modalities, self.fields = dict(modalities), dict(fields)
        self.num_classes, self.label_field = num_classes, label_field

    def map_with_index(self, index: int, record: Record) -> Record:
        def fail(field: str, problem: str) -> NoReturn:
            raise BadRecordError(f"{self.where} {example_name(index, record)}: field {field} {problem}")

        out = dict(record)
        for m, modality in self.modalities.items():
            field = self.fields[m]
            self._require(record, field, fail)
            try:
                out[field] = modality.validate(out[field])
            except BadInput as e:
                fail(field_name(field, m), str(e))
        if self.label_field is None:  # an unlabelled corpus (image-text pairs): no class
            return {**out, "label": -1, "_index": index}
        self._require(record, self.label_field, fail)
        label = record[self.label_field]
        if not isinstance(label, (int, np.integer)) or isinstance(label, bool):
            fail(repr(self.label_field), f"has type {type(label).__name__}, expected an integer")
        if not 0 <= label < self.num_classes:
            fail(repr(self.label_field), f"is {label}, expected an integer in [0, {self.num_classes})")
        return {**out, "label": label, "_index": index}

    @staticmethod
    def _require(record: Record, field: str, fail) -> None:
        if record.get(field) is None:  # TFDS decodes an absent feature to None.
            fail(repr(field), f"is missing (record has {sorted(k for k, v in record.items() if v is not None)})")


class RandomShift(grain.transforms.RandomMap):
    """Translates the image by up to `max_shift` pixels on each axis.

    Pads with the background value and crops back to the original size; the
    offsets come from the generator grain seeds per (seed, element index), so
    a given position in the stream is always shifted the same way.
    """

    def __init__(self, max_shift: int, *, background: float = -1.0):
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.max_shift = max_shift
        self.background = background

    def random_map(self, record: Record, rng: np.random.Generator) -> Record:
        return {**record, "image": random_shift(record["image"], rng, self.max_shift, self.background)}


def random_shift(image: np.ndarray, rng: np.random.Generator, max_shift: int, background: float) -> np.ndarray:
    """image [H, W, C] translated by (dy, dx) ~ U{-max_shift..max_shift}^2, background outside."""
    h, w = image.shape[:2]
    dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
    # out[i, j] = image[i - dy, j - dx], background outside: the same as
    # padding by max_shift and cropping at (max_shift - dy, max_shift - dx),
    # without building the padded image (this runs for every example).
    out = np.full_like(image, background)
    out[max(dy, 0): h + min(dy, 0), max(dx, 0): w + min(dx, 0)] = \
        image[max(-dy, 0): h - max(dy, 0), max(-dx, 0): w - max(dx, 0)]
    return out


# torchvision's RandomResizedCrop default aspect-ratio range (w / h, log-uniform).
CROP_RATIO = (3 / 4, 4 / 3)


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, scale: tuple[float, float],
                        ratio: tuple[float, float] = CROP_RATIO, attempts: int = 10) -> np.ndarray:
    """image [H, W, C]: a crop resized back to [H, W] (Inception / torchvision RandomResizedCrop),
    the crop drawn by `random_resized_crop_box`; bilinear (`resize_bilinear`)."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = random_resized_crop_box(h, w, rng, scale, ratio, attempts)
    if (x0, y0, x1, y1) == (0, 0, w, h):
        return image
    return resize_bilinear(image[y0:y1, x0:x1], h, w)


def random_resized_crop_box(h: int, w: int, rng: np.random.Generator, scale: tuple[float, float],
                            ratio: tuple[float, float] = CROP_RATIO, attempts: int = 10) -> tuple[int, int, int, int]:
    """The crop of torchvision's RandomResizedCrop on an h x w image, as a Pillow box
    (left, top, right, bottom) in pixels.

    The crop covers a fraction s ~ U(scale) of the area with aspect ratio w / h
    log-uniform in `ratio`, at a uniform position; a draw that does not fit is
    retried, and after `attempts` the centre crop of the whole image clamped to
    `ratio` is taken (torchvision's fallback: the whole image when its aspect
    ratio is inside `ratio`, e.g. a square image). The one copy of this sampling:
    `random_resized_crop` (arrays) and the image modality's decoded images
    (mmjax.data.decode) both use it, so a generator gives the same box to both.
    """
    lo, hi = scale
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {scale}")
    for _ in range(attempts):
        area = h * w * rng.uniform(lo, hi)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            return x0, y0, x0 + cw, y0 + ch
    cw, ch = w, h
    if w / h < min(ratio):
        ch = int(round(w / min(ratio)))
    elif w / h > max(ratio):
        cw = int(round(h * max(ratio)))
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return x0, y0, x0 + cw, y0 + ch


def resize_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """image [h, w, C] -> [out_h, out_w, C], bilinear with half-pixel centres and clamped edges
    (jax.image.resize's "linear" when enlarging); separable, as two small matrix products."""
    rows, cols = _linear_weights(image.shape[0], out_h), _linear_weights(image.shape[1], out_w)
    return np.einsum("yh,hwc,xw->yxc", rows, image, cols).astype(image.dtype)


def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] interpolation weights: output i samples input position (i + 0.5) n_in / n_out - 0.5."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    left = np.floor(pos).astype(np.int64)
    right, frac = np.minimum(left + 1, n_in - 1), pos - left
    weights = np.zeros((n_out, n_in))
    np.add.at(weights, (np.arange(n_out), left), 1.0 - frac)
    np.add.at(weights, (np.arange(n_out), right), frac)
    return weights


def random_word_edit(text: str, rng: np.random.Generator, delete_prob: float, swap_prob: float) -> str:
    """EDA's random deletion and random swap (Wei & Zou 2019) on whitespace-separated words.

    Deletion drops each word with probability `delete_prob`, keeping one random
    word if all would go (as EDA does). Swap exchanges two random positions
    Binomial(words, swap_prob) times: EDA's alpha * length swaps in expectation,
    and none for alpha = 0 (EDA's max(1, .) would always swap at least once).
    EDA's synonym replacement and insertion need a thesaurus and are left out.
    """
    words = text.split()
    if delete_prob and words:
        kept = [word for word, keep in zip(words, rng.random(len(words)) >= delete_prob) if keep]
        words = kept or [words[rng.integers(len(words))]]
    if swap_prob and len(words) > 1:
        for _ in range(rng.binomial(len(words), swap_prob)):
            i, j = rng.choice(len(words), size=2, replace=False)
            words[i], words[j] = words[j], words[i]
    return " ".join(words)
