"""Reading and validating records; image augmentation.

Order in a pipeline: `RecordSource` (deserialise) -> `ValidateRecord` (before
any shuffle, so the index it names, and stores as "_index", is the example's
position in its split) -> `mmjax.data.modalities.ExampleTransform`.

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


class ValidateRecord(grain.transforms.MapWithIndex):
    """Checks fields, dtypes, shapes and ranges; passes the record through."""

    def __init__(self, where: str, *, image_shape: tuple[int, ...], num_classes: int):
        self.where = where
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes

    def map_with_index(self, index: int, record: Record) -> Record:
        def fail(field: str, problem: str) -> NoReturn:
            raise BadRecordError(f"{self.where} example {index}: field {field!r} {problem}")

        for field in ("image", "label", "caption"):
            if record.get(field) is None:  # TFDS decodes an absent feature to None.
                fail(field, f"is missing (record has {sorted(k for k, v in record.items() if v is not None)})")
        image, label, caption = record["image"], record["label"], record["caption"]
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            fail("image", f"has dtype {getattr(image, 'dtype', type(image).__name__)}, expected uint8")
        if image.shape != self.image_shape:
            fail("image", f"has shape {image.shape}, expected {self.image_shape}")
        if not isinstance(label, (int, np.integer)) or isinstance(label, bool):
            fail("label", f"has type {type(label).__name__}, expected an integer")
        if not 0 <= label < self.num_classes:
            fail("label", f"is {label}, expected an integer in [0, {self.num_classes})")
        if isinstance(caption, bytes):
            try:
                caption = caption.decode("utf-8")
            except UnicodeDecodeError as e:
                fail("caption", f"is not valid UTF-8 ({e})")
        if not isinstance(caption, str):
            fail("caption", f"has type {type(caption).__name__}, expected text")
        if not caption.strip():
            fail("caption", "is empty")
        return {**record, "caption": caption, "_index": index}


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
