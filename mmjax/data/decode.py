"""Decoding stored media for the input pipeline: encoded images and audio -> arrays, and the image
geometry (random resized crop, resize, eval centre crop) done with one Pillow resampling.

Real corpora (TFDS image / audio features, mmjax.ingest's shards) store encoded bytes; the
modalities decode them here, in the pipeline's workers, so the random resized crop is drawn on
the original image (as Inception / CLIP training does) rather than on a pre-shrunk copy.

  decode_image  JPEG via simplejpeg (libjpeg-turbo; chosen by the SOI magic bytes, not a name),
                anything else (PNG, WebP, GIF, BMP, TIFF, CMYK JPEG) via Pillow; uint8 [h, w, C]
  decode_audio  WAV / FLAC / OGG via soundfile, downmixed to mono and resampled (polyphase)
  random_resized_crop_box, resize, resize_shorter_center_crop  image geometry

Anything unreadable (truncated, not an image, a decompression bomb, zero audio frames) raises
`BadInput` with a short reason, which the pipeline turns into an error naming the example or,
with data.on_bad_input="drop", a dropped and counted modality.
"""
from __future__ import annotations

import io
import math

import numpy as np
import simplejpeg
import soundfile
from PIL import Image as PILImage
from PIL import ImageFile
from scipy import signal

from mmjax.data.transforms import CROP_RATIO, BadInput, random_resized_crop_box

__all__ = ["decode_image", "decode_audio", "to_bytes", "random_resized_crop_box", "resize",
           "resize_shorter_center_crop", "CROP_RATIO"]

# A truncated file must be an error, never a partly grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False

JPEG_MAGIC = b"\xff\xd8\xff"  # SOI marker and the first byte of the next marker
# Raster formats Pillow may open: never EPS / PDF-like formats that run external programs.
PIL_FORMATS = ("PNG", "WEBP", "JPEG", "GIF", "BMP", "TIFF", "PPM", "TGA", "ICO")
_MODES = {1: "L", 3: "RGB"}


def to_bytes(value) -> bytes | None:
    """Encoded media as `bytes` (from bytes, np.bytes_, bytearray, memoryview or a 0-d array holding
    one of those); None when `value` is not encoded bytes."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "OS":
        value = value.item()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return None


# ------------------------------------------------------------------ images

def decode_image(data: bytes, channels: int) -> np.ndarray:
    """Encoded image -> uint8 [h, w, channels], channels 1 (luma) or 3 (RGB).

    JPEGs (recognised by the SOI magic) go to simplejpeg, which matches Pillow's decode exactly
    for RGB (both libjpeg-turbo, same DCT and upsampling); a JPEG simplejpeg rejects (CMYK /
    YCCK, or unsupported coding) is retried with Pillow, so the two accept the same files. Gray
    from a colour JPEG is its luma plane, as libjpeg outputs it (within a few levels of
    converting the decoded RGB). Other formats: Pillow, converted to "L" / "RGB" (palette via
    RGBA, alpha dropped as CLIP / open_clip do, 16-bit gray scaled to 8 bits).
    """
    if channels not in _MODES:
        raise ValueError(f"decoding images to {channels} channels: 1 (gray) or 3 (RGB) supported")
    if not data:
        raise BadInput("is empty (0 bytes), expected an encoded image")
    if data[:3] == JPEG_MAGIC:
        try:
            h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            colorspace = None  # Pillow decides (and names the problem)
        else:
            _check_pixels(h, w)
            if colorspace in ("YCbCr", "Gray"):
                try:
                    return simplejpeg.decode_jpeg(data, colorspace="GRAY" if channels == 1 else "RGB", strict=True)
                except ValueError as e:
                    jpeg_error = e
                    try:  # the same file through Pillow: accepted only if Pillow decodes all of it
                        return _decode_pillow(data, channels)
                    except BadInput:
                        raise BadInput(f"is not a decodable image (JPEG: {jpeg_error})") from None
    return _decode_pillow(data, channels)


def _check_pixels(h: int, w: int) -> None:
    limit = PILImage.MAX_IMAGE_PIXELS
    if limit is not None and h * w > limit:
        raise BadInput(f"is not a decodable image ({w}x{h} = {h * w} pixels exceeds the decompression bomb "
                       f"limit PIL.Image.MAX_IMAGE_PIXELS={limit})")


def _decode_pillow(data: bytes, channels: int) -> np.ndarray:
    try:
        with PILImage.open(io.BytesIO(data), formats=PIL_FORMATS) as im:
            _check_pixels(im.height, im.width)
            if im.format == "JPEG" and channels == 1:
                im.draft("L", im.size)  # libjpeg's luma plane, as simplejpeg's GRAY gives it
            im.load()
            return _to_array(im, channels)
    except BadInput:
        raise
    except PILImage.DecompressionBombError as e:
        raise BadInput(f"is not a decodable image ({e})") from None
    except Exception as e:  # UnidentifiedImageError, OSError (truncated), SyntaxError, ...
        kind = "not an image" if isinstance(e, PILImage.UnidentifiedImageError) else f"{type(e).__name__}: {e}"
        raise BadInput(f"is not a decodable image ({kind}; starts with {data[:8]!r})") from None


def _to_array(im: PILImage.Image, channels: int) -> np.ndarray:
    mode = _MODES[channels]
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit gray: scale, do not clip
        x = np.asarray(im).astype(np.float64)
        x = np.clip(np.round(x / 257.0), 0, 255).astype(np.uint8)
        im = PILImage.fromarray(x, "L")
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # the documented route for palette transparency (no warning)
    if im.mode != mode:
        im = im.convert(mode)
    x = np.asarray(im)
    return x[..., None] if x.ndim == 2 else x


def _pil(image: np.ndarray) -> PILImage.Image:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in _MODES:
        raise ValueError(f"expected a uint8 [h, w, 1 or 3] image, got {image.dtype} {image.shape}")
    return PILImage.fromarray(image[..., 0] if image.shape[2] == 1 else image, _MODES[image.shape[2]])


def resize(image: np.ndarray, box: tuple[float, float, float, float] | None, out_h: int, out_w: int) -> np.ndarray:
    """uint8 [h, w, C] -> the region `box` (left, top, right, bottom; None = all) resized to
    [out_h, out_w, C]: Pillow bicubic, antialiased when shrinking (what torchvision does to PIL
    images), one resampling and only the box's rows and columns read. Pixels just outside the box
    feed its border (torchvision's crop-then-resize clamps at the crop edge instead), and the
    rounding of Pillow's two passes differs from crop-then-resize by a level or two on photos."""
    out = np.asarray(_pil(image).resize((out_w, out_h), PILImage.Resampling.BICUBIC, box=box))
    return out[..., None] if out.ndim == 2 else out


def center_crop_box(h: int, w: int, out_h: int, out_w: int) -> tuple[int, int, int, int]:
    """torchvision CenterCrop's window of out_h x out_w in an h x w image (round-half-even offsets)."""
    top, left = int(round((h - out_h) / 2.0)), int(round((w - out_w) / 2.0))
    return left, top, left + out_w, top + out_h


def shorter_side_size(h: int, w: int, out_h: int, out_w: int) -> tuple[int, int]:
    """(new_h, new_w): h x w scaled to just cover out_h x out_w, aspect kept; for a square target
    torchvision's Resize(size): the shorter side becomes size, the longer int(size * long / short)."""
    if out_h * w >= out_w * h:  # height is the binding side
        return out_h, max(out_w, int(out_h * w / h))
    return max(out_h, int(out_w * h / w)), out_w


def resize_shorter_center_crop(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Evaluation geometry of CLIP / open_clip: resize (bicubic) so the image just covers the target,
    keeping its aspect ratio, then crop the centre: exactly torchvision's Resize + CenterCrop on a
    PIL image (one resampling; the crop is a copy). Done literally rather than as one `resize` of
    the crop's box because Pillow's boxed two-pass resize rounds differently (up to 2 levels on
    photos), and evaluation numbers should match the reference preprocessing."""
    h, w = image.shape[:2]
    new_h, new_w = shorter_side_size(h, w, out_h, out_w)
    left, top, right, bottom = center_crop_box(new_h, new_w, out_h, out_w)
    if (new_h, new_w) != (h, w):
        image = resize(image, None, new_h, new_w)
    return np.ascontiguousarray(image[top:bottom, left:right])


# ------------------------------------------------------------------ audio

def decode_audio(data: bytes, sample_rate: int) -> np.ndarray:
    """Encoded audio (WAV, FLAC, OGG: whatever libsndfile reads) -> float32 mono [n] at `sample_rate`:
    channels averaged, resampled with a polyphase filter (scipy.signal.resample_poly) when the
    file's rate differs."""
    if not data:
        raise BadInput("is empty (0 bytes), expected encoded audio")
    try:
        wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile.LibsndfileError, RuntimeError, TypeError (unknown format), ...
        raise BadInput(f"is not decodable audio ({type(e).__name__}: {e}; starts with {data[:8]!r})") from None
    if wave.shape[0] == 0:
        raise BadInput("is decodable audio with zero frames")
    wave = wave.mean(axis=1, dtype=np.float32)
    if rate != sample_rate:
        g = math.gcd(int(sample_rate), int(rate))
        wave = signal.resample_poly(wave, int(sample_rate) // g, int(rate) // g).astype(np.float32)
    if not np.isfinite(wave).all():
        raise BadInput("is audio with non-finite (NaN/inf) samples")
    return wave
