"""The embedded MNIST test split (raw/mnist, IDX gzip) and its captions: the source that the
`digits_captions` and `av_digits` datasets are built from.

The 10,000 official MNIST test digits ship with the package, so a run needs no network. A
fixed permutation (seed 0) sends 8,000 to "train" and 2,000 to "test"; each image gets one
caption from `CAPTION_TEMPLATES`, chosen by a fixed seed, so the text side has to learn that
"seven", "7" and "a handwritten seven" name the same class.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

IMAGE_SHAPE = (28, 28, 1)
CLASS_NAMES = ("zero", "one", "two", "three", "four",
               "five", "six", "seven", "eight", "nine")
NUM_TRAIN = 8000

# Word and numeral forms are mixed so the text tower cannot key on one token.
# All fit in 30 bytes (the default text_len 32 less bos/eot), so truncation
# never cuts off the class name.
CAPTION_TEMPLATES = (
    "a handwritten {name}",
    "the digit {digit}",
    "a photo of the number {name}",
    "a scanned image of a {digit}",
    "{name}, written by hand",
    "a black and white {name}",
    "the number {digit} in ink",
    "a small handwritten {digit}",
    "a pen drawing of a {name}",
    "digit {digit} ({name})",
)

# Zero-shot prompt ensemble: half reuse caption templates (in-distribution
# wording), half are unseen, so the eval measures some generalisation too.
ZEROSHOT_PROMPTS = (
    "a handwritten {name}",
    "the digit {digit}",
    "a photo of the number {name}",
    "a drawing of the number {digit}",
    "an image of a {name}",
    "the handwritten digit {digit}",
)

_RAW_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "raw", "mnist")
_IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
_LABELS_FILE = "t10k-labels-idx1-ubyte.gz"
# IDX magic: two zero bytes, dtype code 0x08 (uint8), number of dimensions.
_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}
_SPLIT_SEED = 0
_CAPTION_SEED = 1


def read_idx(path: str, ndim: int) -> np.ndarray:
    """Parses a gzip IDX file of uint8 values with `ndim` dimensions."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if magic != _IDX_MAGIC[ndim]:
        raise ValueError(f"{path}: IDX magic {magic:#010x}, expected {_IDX_MAGIC[ndim]:#010x}")
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    values = np.frombuffer(data, dtype=np.uint8, offset=header)
    if values.size != int(np.prod(shape)):
        raise ValueError(f"{path}: {values.size} values for header shape {shape}")
    return values.reshape(shape)


def load_raw() -> tuple[np.ndarray, np.ndarray]:
    """Returns the embedded MNIST test split: images [10000, 28, 28] uint8, labels [10000]."""
    images = read_idx(os.path.join(_RAW_DIR, _IMAGES_FILE), 3)
    labels = read_idx(os.path.join(_RAW_DIR, _LABELS_FILE), 1)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} MNIST images but {len(labels)} labels")
    return images, labels


def split_indices(num_examples: int) -> dict[str, np.ndarray]:
    """MNIST indices of each split: a fixed permutation, first NUM_TRAIN are train."""
    order = np.random.default_rng(_SPLIT_SEED).permutation(num_examples)
    return {"train": order[:NUM_TRAIN], "test": order[NUM_TRAIN:]}


def format_caption(template: str, label: int) -> str:
    return template.format(name=CLASS_NAMES[label], digit=label)


def captions(labels: np.ndarray) -> list[str]:
    """One caption per MNIST index; drawn once over all indices so a caption
    depends only on the example, not on which split or order it is built in."""
    choice = np.random.default_rng(_CAPTION_SEED).integers(len(CAPTION_TEMPLATES), size=len(labels))
    return [format_caption(CAPTION_TEMPLATES[c], int(y)) for c, y in zip(choice, labels)]


def zeroshot_prompts() -> list[list[str]]:
    """[10][T] prompts: every ZEROSHOT_PROMPTS template filled in for each digit."""
    return [[format_caption(t, label) for t in ZEROSHOT_PROMPTS] for label in range(len(CLASS_NAMES))]
