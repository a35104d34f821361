"""Encoded media in the modalities: image / audio decoding (mmjax.data.decode), the image geometry,
normalisation, several captions per record, and bad bytes through the example transform."""
import glob
import io
import os

import numpy as np
import pytest
import soundfile
from PIL import Image as PILImage
from scipy import signal

from mmjax.data import audio as audio_lib
from mmjax.data import decode
from mmjax.data.config import data_config
from mmjax.data.datasets import mnist
from mmjax.data.example import ExampleTransform
from mmjax.data.modalities import MODALITIES
from mmjax.data.tokenizer import from_data_config
from mmjax.data.transforms import BadInput, BadRecordError, random_resized_crop, random_resized_crop_box, \
    resize_bilinear

FSDD = os.path.join(os.path.dirname(__file__), "..", "mmjax", "data", "raw", "fsdd", "recordings")
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def digits():
    images, labels = mnist.load_raw()
    return images[:8], labels[:8]


def _photo(digit: np.ndarray, h: int = 90, w: int = 120, seed: int = 0) -> np.ndarray:
    """A smooth, non-square RGB 'photo' from a digit: upscaled, coloured per channel, a gradient."""
    big = np.asarray(PILImage.fromarray(digit).resize((w, h), PILImage.BICUBIC)).astype(np.float64)
    yy, xx = np.mgrid[:h, :w]
    tint = np.random.default_rng(seed).uniform(0.3, 1.0, 3)
    rgb = big[..., None] * tint + np.stack([xx / w * 60, yy / h * 60, (xx + yy) / (h + w) * 40], -1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _encode(array: np.ndarray, fmt: str, **kw) -> bytes:
    im = PILImage.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array)
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _pil_decode(data: bytes, mode: str) -> np.ndarray:
    x = np.asarray(PILImage.open(io.BytesIO(data)).convert(mode))
    return x[..., None] if x.ndim == 2 else x


def _image_modality(train=True, augment=True, **opts):
    cfg = data_config(modalities=("image",))
    cfg.augment = augment
    cfg.image.shape, cfg.image.max_shift = (24, 24, 3), 0
    for k, v in opts.items():
        cfg.image[k] = v
    return MODALITIES.get("image")(cfg, train=train)


# ------------------------------------------------------------------ decode_image

def test_jpeg_decode_matches_pillow(digits):
    for i, d in enumerate(digits[0][:4]):
        photo = _photo(d, seed=i)
        data = _encode(photo, "JPEG", quality=90)
        rgb = decode.decode_image(data, 3)
        assert rgb.dtype == np.uint8 and rgb.shape == photo.shape
        assert np.abs(rgb.astype(int) - _pil_decode(data, "RGB")).max() <= 2  # both libjpeg-turbo
        gray = decode.decode_image(data, 1)  # the luma plane: within a few levels of converting RGB
        assert gray.shape == photo.shape[:2] + (1,)
        assert np.abs(gray.astype(int) - _pil_decode(data, "L")).max() <= 4
        gray_jpeg = _encode(d[..., None], "JPEG")
        np.testing.assert_array_equal(decode.decode_image(gray_jpeg, 1), _pil_decode(gray_jpeg, "L"))
        np.testing.assert_array_equal(decode.decode_image(gray_jpeg, 3), _pil_decode(gray_jpeg, "RGB"))


def test_lossless_formats_decode_exactly(digits):
    d = digits[0][0]
    photo = _photo(d)
    for fmt in ("PNG", "WEBP"):
        kw = {"lossless": True} if fmt == "WEBP" else {}
        np.testing.assert_array_equal(decode.decode_image(_encode(photo, fmt, **kw), 3), photo)
        np.testing.assert_array_equal(decode.decode_image(_encode(d, fmt, **kw), 1)[..., 0], d)
    np.testing.assert_array_equal(decode.decode_image(_encode(d, "PNG"), 3), np.repeat(d[..., None], 3, -1))
    png = _encode(photo, "PNG")
    np.testing.assert_array_equal(decode.decode_image(png, 1), _pil_decode(png, "L"))
    # RGBA: alpha dropped (as CLIP's convert("RGB")); LA: the luma
    rgba = np.concatenate([photo, np.full(photo.shape[:2] + (1,), 40, np.uint8)], -1)
    np.testing.assert_array_equal(decode.decode_image(_encode(rgba, "PNG"), 3), photo)
    la = PILImage.fromarray(np.stack([d, 255 - d], -1), "LA")
    buf = io.BytesIO()
    la.save(buf, "PNG")
    np.testing.assert_array_equal(decode.decode_image(buf.getvalue(), 1)[..., 0], d)
    # palette, with and without transparency
    pal = PILImage.fromarray(photo).quantize(16)
    for transparency in (None, 3):
        buf = io.BytesIO()
        pal.save(buf, "PNG", **({} if transparency is None else {"transparency": transparency}))
        np.testing.assert_array_equal(decode.decode_image(buf.getvalue(), 3), np.asarray(pal.convert("RGB")))
    # 16-bit gray: scaled to 8 bits, not clipped
    buf = io.BytesIO()
    PILImage.fromarray(d.astype(np.uint16) * 257).save(buf, "PNG")
    np.testing.assert_array_equal(decode.decode_image(buf.getvalue(), 1)[..., 0], d)


def test_bytes_wrappers_are_accepted(digits):
    data = _encode(digits[0][0], "PNG")
    for wrapped in (data, np.bytes_(data), np.array(data, dtype=object), bytearray(data)):
        assert decode.to_bytes(wrapped) == data
    assert decode.to_bytes(np.zeros((2, 2), np.uint8)) is None and decode.to_bytes("text") is None


def test_bad_images_raise_bad_input(digits, monkeypatch):
    jpeg = _encode(_photo(digits[0][0]), "JPEG")
    for data, reason in [(jpeg[:len(jpeg) // 2], "Premature end"), (jpeg[:-2], "JPEG"),
                         (b"a caption, not an image, in a file named x.jpg", "not an image"),
                         (_encode(digits[0][0], "PNG")[:200], "decodable"), (b"", "empty"),
                         (b"\xff\xd8\xff" + b"\x00" * 50, "decodable")]:
        with pytest.raises(BadInput, match=reason):
            decode.decode_image(data, 3)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)
    for data in (jpeg, _encode(_photo(digits[0][0]), "PNG")):
        with pytest.raises(BadInput, match="decompression bomb"):
            decode.decode_image(data, 3)


# ------------------------------------------------------------------ geometry and the image modality

@pytest.mark.parametrize("shape", [(28, 28), (45, 60), (300, 40)])
def test_crop_box_is_the_array_crops_sampling(digits, shape):
    h, w = shape
    x = np.random.default_rng(0).uniform(-1, 1, (h, w, 1)).astype(np.float32)
    for seed in range(10):
        scale = (0.08, 1.0) if seed % 2 else (0.9, 1.0)
        rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
        x0, y0, x1, y1 = random_resized_crop_box(h, w, rng_a, scale)
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        out = random_resized_crop(x, rng_b, scale)
        assert rng_a.bit_generator.state == rng_b.bit_generator.state  # the same draws
        expected = x if (x0, y0, x1, y1) == (0, 0, w, h) else resize_bilinear(x[y0:y1, x0:x1], h, w)
        np.testing.assert_array_equal(out, expected)
    # torchvision's fallback for a very tall image: the centre crop clamped to the ratio range
    # (height 40 / (3/4) = 53)
    assert random_resized_crop_box(300, 40, np.random.default_rng(0), (1.0, 1.0)) == (0, 123, 40, 176)


def test_image_modality_on_bytes_train(digits):
    photo = _photo(digits[0][1])
    data = _encode(photo, "JPEG", quality=95)
    image = _image_modality(crop_scale=(0.3, 1.0))
    assert image.validate(np.bytes_(data)) == data
    outs = [image(data, np.random.default_rng(s), {})["image"] for s in range(6)]
    for seed, out in enumerate(outs):
        assert out.shape == (24, 24, 3) and out.dtype == np.float32 and -1.0 <= out.min() <= out.max() <= 1.0
        # exactly: the box drawn by the shared sampling, one bicubic resize of the decoded image
        box = random_resized_crop_box(90, 120, np.random.default_rng(seed), (0.3, 1.0))
        expected = decode.resize(decode.decode_image(data, 3), box, 24, 24).astype(np.float32) / 127.5 - 1.0
        np.testing.assert_array_equal(out, expected)
    assert not np.array_equal(outs[0], outs[1])
    # crop_scale (1, 1): the whole image resized; a shift adds black (-1) borders
    whole = _image_modality(crop_scale=(1.0, 1.0), max_shift=3)(data, np.random.default_rng(0), {})["image"]
    rng = np.random.default_rng(0)
    dy, dx = rng.integers(-3, 4, size=2)
    ref = PILImage.fromarray(decode.decode_image(data, 3)).resize((24, 24), PILImage.BICUBIC)
    ref = np.asarray(ref).astype(np.float32) / 127.5 - 1.0
    np.testing.assert_array_equal(np.roll(whole, (-dy, -dx), (0, 1))[3:-3, 3:-3], ref[3:-3, 3:-3])
    if dy or dx:
        assert (whole == -1.0).all(-1).any()


@pytest.mark.parametrize("hw", [(90, 120), (120, 90), (21, 17)])
def test_image_modality_on_bytes_eval_is_clip_preprocessing(digits, hw):
    photo = _photo(digits[0][2], *hw)
    data = _encode(photo, "PNG")
    out = _image_modality(train=False, mean=CLIP_MEAN, std=CLIP_STD)(data, np.random.default_rng(0), {})["image"]
    # torchvision Resize(24) + CenterCrop(24) on the PIL image, then ToTensor + Normalize
    im = PILImage.open(io.BytesIO(data)).convert("RGB")
    short, long_ = min(im.size), max(im.size)
    size = (24, int(24 * long_ / short)) if im.width == short else (int(24 * long_ / short), 24)
    im = im.resize(size, PILImage.BICUBIC)
    top, left = int(round((im.height - 24) / 2.0)), int(round((im.width - 24) / 2.0))
    ref = np.asarray(im.crop((left, top, left + 24, top + 24))) / 255.0
    np.testing.assert_allclose(out, (ref - CLIP_MEAN) / CLIP_STD, atol=1e-5)
    # data.augment off in training: the same deterministic geometry
    untouched = _image_modality(train=True, augment=False, mean=CLIP_MEAN, std=CLIP_STD)
    np.testing.assert_array_equal(untouched(data, np.random.default_rng(1), {})["image"], out)


def test_normalisation_formula_and_default_bitwise(digits):
    x = _photo(digits[0][3], 24, 24)
    out = _image_modality(train=False, mean=CLIP_MEAN, std=CLIP_STD)(x, np.random.default_rng(0), {})["image"]
    np.testing.assert_allclose(out, (x / 255.0 - CLIP_MEAN) / CLIP_STD, atol=1e-5)
    default = _image_modality(train=False)(x, np.random.default_rng(0), {})["image"]
    np.testing.assert_array_equal(default, x.astype(np.float32) / 127.5 - 1.0)  # the digits' historical values
    with pytest.raises(ValueError, match="data.image.std"):
        _image_modality(std=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="data.image.mean"):
        _image_modality(mean=(0.5, 0.5))


def test_image_validate(digits):
    image = _image_modality()
    with pytest.raises(BadInput, match="empty"):
        image.validate(b"")
    with pytest.raises(BadInput, match="expected"):
        image.validate(np.zeros((5, 5, 3), np.uint8))
    with pytest.raises(BadInput, match="not a decodable image"):
        image(b"\xff\xd8\xff\xe0 truncated", np.random.default_rng(0), {})


# ------------------------------------------------------------------ audio

def test_flac_is_resampled_like_resample_poly():
    wave, rate = audio_lib.read_wav(sorted(glob.glob(os.path.join(FSDD, "*.wav")))[0])
    assert rate == 8000
    wave16k = (signal.resample_poly(wave, 2, 1) * 0.8).astype(np.float32)
    buf = io.BytesIO()
    soundfile.write(buf, wave16k, 16000, format="FLAC", subtype="PCM_16")
    out = decode.decode_audio(buf.getvalue(), 8000)
    expected = signal.resample_poly(wave16k, 1, 2)
    assert out.dtype == np.float32 and out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=1e-4)
    same_rate = decode.decode_audio(buf.getvalue(), 16000)
    np.testing.assert_allclose(same_rate, wave16k, atol=1 / 32768)


def test_stereo_is_averaged_and_wav_bytes_match_read_wav():
    path = sorted(glob.glob(os.path.join(FSDD, "*.wav")))[1]
    with open(path, "rb") as f:
        data = f.read()
    wave, _ = audio_lib.read_wav(data)
    np.testing.assert_array_equal(decode.decode_audio(data, 8000), wave)
    left, right = wave, np.roll(wave, 100) * 0.5
    buf = io.BytesIO()
    soundfile.write(buf, np.stack([left, right], 1), 8000, format="WAV", subtype="FLOAT")
    np.testing.assert_allclose(decode.decode_audio(buf.getvalue(), 8000), (left + right) / 2, atol=1e-7)
    # the modality: encoded bytes give exactly what the decoded waveform gives
    cfg = data_config(modalities=("audio",))
    audio = MODALITIES.get("audio")(cfg, train=True)
    from_bytes = audio(audio.validate(np.bytes_(data)), np.random.default_rng(3), {})
    from_array = audio(audio.validate(wave), np.random.default_rng(3), {})
    for k in from_array:
        np.testing.assert_array_equal(from_bytes[k], from_array[k])


def test_bad_audio_raises_bad_input():
    buf = io.BytesIO()
    soundfile.write(buf, np.zeros((0, 1), np.float32), 8000, format="WAV", subtype="PCM_16")
    for data, reason in [(b"", "empty"), (b"RIFF\x00\x00 not audio at all", "not decodable audio"),
                         (buf.getvalue(), "zero frames")]:
        with pytest.raises(BadInput, match=reason):
            decode.decode_audio(data, 8000)


# ------------------------------------------------------------------ text

def test_several_captions():
    cfg = data_config(modalities=("text",))
    tok = from_data_config(cfg)
    train, evaluate = (MODALITIES.get("text")(cfg, tok, train=t) for t in (True, False))
    stored = np.array([b"a red bus", "two dogs".encode(), b"a cat on a mat"], dtype=object)
    captions = train.validate(stored)
    assert captions == ("a red bus", "two dogs", "a cat on a mat")
    picked = [tok.decode(train(captions, np.random.default_rng(s), {})["text"]) for s in range(60)]
    assert set(picked) == set(captions)
    assert all(tok.decode(evaluate(captions, np.random.default_rng(s), {})["text"]) == captions[0]
               for s in range(5))
    # one caption, listed or not: no draw, so the example's generator is untouched
    for single in (["a red bus"], "a red bus", b"a red bus"):
        rng = np.random.default_rng(0)
        assert tok.decode(train(train.validate(single), rng, {})["text"]) == "a red bus"
        assert rng.bit_generator.state == np.random.default_rng(0).bit_generator.state
    with pytest.raises(BadInput, match="caption 2 is empty"):
        train.validate(["a", "b", "  ", "d"])
    with pytest.raises(BadInput, match="caption 1 is not valid UTF-8"):
        train.validate([b"a", b"\xff"])
    with pytest.raises(BadInput, match="empty list"):
        train.validate([])


# ------------------------------------------------------------------ points

def test_points_with_features_keep_xyz():
    cfg = data_config(modalities=("points",))
    points = MODALITIES.get("points")(cfg, train=False)
    cloud = np.random.default_rng(0).standard_normal((300, 6))
    kept = points.validate(cloud)
    np.testing.assert_array_equal(kept, cloud[:, :3])
    for value in (cloud, cloud.astype(np.float32)):
        np.testing.assert_array_equal(points(value, np.random.default_rng(1), {})["points"],
                                      points(cloud[:, :3], np.random.default_rng(1), {})["points"])
    with pytest.raises(BadInput, match="expected a cloud"):
        points.validate(cloud[:, :2])


# ------------------------------------------------------------------ through the example transform

def test_truncated_jpeg_is_named_or_dropped(digits):
    jpeg = _encode(_photo(digits[0][4]), "JPEG")
    record = {"img": jpeg[: len(jpeg) // 2], "label": 3, "_index": 17}
    for policy in ("error", "drop"):
        cfg = data_config(modalities=("image",), on_bad_input=policy)
        cfg.image.shape = (24, 24, 3)
        transform = ExampleTransform.from_config(cfg, None, {"image": "img"}, train=True, where="coco/train")
        if policy == "error":
            with pytest.raises(BadRecordError, match=r"coco/train example 17: field 'img' \(image\): is not a "
                                                     r"decodable image"):
                transform(record, np.random.default_rng(0))
        else:
            out = transform(record, np.random.default_rng(0))
            assert not out["present"]["image"] and out["flags"]["bad_image"]
            np.testing.assert_array_equal(out["image"], np.zeros((24, 24, 3), np.float32))
            good = transform({**record, "img": jpeg}, np.random.default_rng(0))
            assert good["present"]["image"] and not good["flags"]["bad_image"]
