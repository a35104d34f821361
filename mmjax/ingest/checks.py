"""Verifying one member before it is written: raw bytes -> a value the shard can store, or `Skip`.

A corpus scraped from the web always holds some files that are broken (truncated downloads,
error pages saved as .jpg, empty files). Finding them here, once, at conversion, means
training never meets one mid-run, and the report names each so it can be re-fetched. Every
check raises `Skip(reason, detail)`; `reason` is one of `REASONS`, the key the report counts by.

Images are verified twice with Pillow: `verify()` (structure, checksums) and a full decode after
reopening, because `verify()` alone accepts a JPEG cut short. Truncated files are never
half-loaded (`LOAD_TRUNCATED_IMAGES` stays False). What is stored is the file's own bytes, not
a re-encoding: the pipeline decodes (and crops) the original.
"""
from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

# A truncated image must be an error, never a partly grey picture.
ImageFile.LOAD_TRUNCATED_IMAGES = False

REASONS = {
    "empty": "member has 0 bytes",
    "bad_archive": "the archive is unreadable (or truncated) from this point: its later members are lost",
    "not_regular": "archive member is a directory, link or device, not a file",
    "not_an_image": "bytes are not an image Pillow recognises (e.g. an HTML error page saved as .jpg)",
    "format_mismatch": "an image of another format than its extension says",
    "undecodable_image": "image fails to decode (truncated, corrupt)",
    "image_too_large": "image exceeds Pillow's decompression-bomb limit",
    "undecodable_audio": "audio that soundfile cannot read",
    "empty_audio": "audio with zero frames",
    "unparseable_points": "point file that does not parse as its format",
    "no_points": "point file with no points",
    "non_finite_points": "point file with NaN or infinite coordinates",
    "missing_caption": "image without a .txt or a .json caption",
    "missing_image": "caption (.txt/.json) without an image",
    "bad_text": "caption or json that is not valid UTF-8 / JSON",
    "duplicate_member": "a second member of the same kind for one key",
    "bad_row": "CSV/JSONL row without the file column, or a line that does not parse",
    "missing_file": "file listed (CSV row) that cannot be read",
    "unknown_label": "label not among the class names",
}

# Extension -> the Pillow formats a file with it may hold.
IMAGE_FORMATS = {
    "jpg": ("JPEG", "MPO"), "jpeg": ("JPEG", "MPO"), "png": ("PNG",), "webp": ("WEBP",),
    "bmp": ("BMP",), "gif": ("GIF",), "tif": ("TIFF",), "tiff": ("TIFF",), "ppm": ("PPM",), "pgm": ("PPM",),
}
Image.init()  # registers every plugin, so Image.OPEN lists what this Pillow can open
IMAGE_FORMATS = {ext: tuple(f for f in fs if f in Image.OPEN) for ext, fs in IMAGE_FORMATS.items()}
_ANY_FORMAT = tuple(sorted({f for fs in IMAGE_FORMATS.values() for f in fs}))
# What webdataset shards use for their images (ImageFolder also accepts the rest of IMAGE_FORMATS).
WEBDATASET_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
AUDIO_EXTS = ("wav", "flac", "ogg", "mp3")
POINT_EXTS = ("npy", "txt", "off")


class Skip(Exception):
    """This member is not written: `reason` (a REASONS key) and a short human `detail`."""

    def __init__(self, reason: str, detail: str = "", member: str | None = None):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.member = reason, detail, member


def nonempty(data: bytes | None, member: str | None = None) -> bytes:
    if not data:
        raise Skip("empty", "0 bytes", member)
    return data


def image(data: bytes, ext: str) -> bytes:
    """The encoded image, unchanged, once Pillow has verified and fully decoded it."""
    nonempty(data)
    allowed = IMAGE_FORMATS.get(ext.lower(), _ANY_FORMAT)  # a CSV path may have no image extension
    try:
        with Image.open(io.BytesIO(data), formats=_ANY_FORMAT) as im:  # never EPS & co (external programs)
            fmt = im.format
            im.verify()
        if fmt not in allowed:
            raise Skip("format_mismatch", f".{ext} holds a {fmt} image")
        with Image.open(io.BytesIO(data), formats=allowed) as im:
            im.load()
            if im.width <= 0 or im.height <= 0:
                raise Skip("undecodable_image", f"size {im.size}")
    except Skip:
        raise
    except UnidentifiedImageError:
        raise Skip("not_an_image", f"starts with {data[:16]!r}") from None
    except Image.DecompressionBombError as e:
        raise Skip("image_too_large", str(e)) from None
    except Exception as e:  # OSError (truncated), SyntaxError (bad PNG chunk), ValueError, struct.error, ...
        raise Skip("undecodable_image", f"{type(e).__name__}: {e}") from None
    return data


def audio(data: bytes) -> bytes:
    """The encoded audio, unchanged, once soundfile has decoded every frame of it."""
    import soundfile  # only the audio kind needs libsndfile

    nonempty(data)
    try:
        wave, _ = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:  # LibsndfileError, RuntimeError, TypeError (unknown format), ...
        raise Skip("undecodable_audio", f"{type(e).__name__}: {e}; starts with {data[:8]!r}") from None
    if wave.shape[0] == 0:
        raise Skip("empty_audio", "0 frames")
    return data


def text(data: bytes | str) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Skip("bad_text", f"not UTF-8 ({e})") from None


def json_caption(data: bytes | str) -> tuple[str, str]:
    """A webdataset .json member -> (its "caption", the JSON text as stored)."""
    raw = text(data)
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise Skip("bad_text", f"not JSON ({e})") from None
    caption = value.get("caption") if isinstance(value, dict) else None
    return (caption if isinstance(caption, str) else ""), raw


def label(name, class_names: tuple[str, ...]) -> int:
    """A class name (or, for h5 files, an integer index) -> its index in `class_names`."""
    if isinstance(name, (int, np.integer)):
        if 0 <= int(name) < len(class_names):
            return int(name)
    elif name in class_names:
        return class_names.index(name)
    raise Skip("unknown_label", f"{name!r} is not one of the {len(class_names)} class names")


# ------------------------------------------------------------------ point clouds

def points(data: bytes, ext: str) -> np.ndarray:
    """A point file's bytes -> float32 [N, 3] (xyz; normals and other columns dropped)."""
    nonempty(data)
    try:
        parsed = {"npy": _npy, "txt": _txt, "off": _off}[ext.lower()](data)
    except Skip:
        raise
    except Exception as e:  # ValueError, IndexError, UnicodeDecodeError, EOFError, ...
        raise Skip("unparseable_points", f".{ext}: {type(e).__name__}: {e}") from None
    return cloud(parsed)


def cloud(array) -> np.ndarray:
    """[N, >=3] numbers -> float32 [N, 3], or Skip (wrong shape, no points, non-finite)."""
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[1] < 3 or array.dtype.kind not in "fiu":
        if array.ndim == 2 and array.shape[0] == 0:
            raise Skip("no_points", "0 points")
        raise Skip("unparseable_points", f"expected [N, >=3] numbers, got {array.dtype} {array.shape}")
    if array.shape[0] == 0:
        raise Skip("no_points", "0 points")
    xyz = array[:, :3].astype(np.float32)
    bad = ~np.isfinite(xyz).all(axis=1)
    if bad.any():
        raise Skip("non_finite_points", f"{int(bad.sum())} of {len(xyz)} points, first at row {int(np.argmax(bad))}")
    return xyz


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _txt(data: bytes) -> np.ndarray:
    """ModelNet40-resampled text: one point a line, `x,y,z[,nx,ny,nz]` (commas or spaces)."""
    rows = [line.replace(",", " ").split() for line in data.decode("utf-8").splitlines()]
    rows = [r for r in rows if r and not r[0].startswith("#")]
    if not rows:
        return np.zeros((0, 3), np.float32)
    width = len(rows[0])
    if any(len(r) != width for r in rows):
        raise ValueError(f"rows of different lengths (first has {width} values)")
    return np.array(rows, dtype=np.float64)


def _off(data: bytes) -> np.ndarray:
    """OFF mesh -> its vertices. Handles ModelNet's fused first line `OFF<nv> <nf> <ne>`."""
    lines = [ln.split("#", 1)[0].strip() for ln in data.decode("ascii").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines or not lines[0].startswith("OFF"):
        raise ValueError("no OFF header")
    head = lines[0][3:].split()
    body = lines[1:]
    if not head:  # the usual layout: counts on their own line
        if not body:
            raise ValueError("no vertex/face counts")
        head, body = body[0].split(), body[1:]
    num_vertices = int(head[0])
    if num_vertices < 0 or len(body) < num_vertices:
        raise ValueError(f"header says {num_vertices} vertices, file has {len(body)} lines after it")
    if num_vertices == 0:
        return np.zeros((0, 3), np.float32)
    vertices = np.array([row.split()[:3] for row in body[:num_vertices]], dtype=np.float64)
    if vertices.shape != (num_vertices, 3):
        raise ValueError(f"vertex rows with fewer than 3 values (shape {vertices.shape})")
    return vertices
