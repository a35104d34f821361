"""Image decoding throughput: examples/s of the image modality on encoded JPEGs (decode + random
resized crop + bicubic resize + normalise, or the eval resize + centre crop), simplejpeg vs Pillow.

    python benchmarks/decode.py [--images 64] [--size 500x375] [--out 224] [--seconds 2]

The JPEGs are made here (quality 90, 4:2:0) from upscaled smooth blobs tinted per channel over a colour
gradient with noise, so they compress like photos (about 40-60 KB at 500x375). Each row is one
thread of one process (a Grain worker runs one example at a time); "pillow only" routes JPEGs
through the Pillow fallback (mmjax.data.decode._decode_pillow) to show what simplejpeg buys.
Columns: decode alone, the training transform (RRC of data.image.crop_scale (0.08, 1) on the
original size, one resize, shift off), the eval transform (shorter side + centre crop).
"""
import argparse
import io
import pathlib
import sys
import time
from unittest import mock

import numpy as np
from PIL import Image as PILImage

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmjax.data import decode  # noqa: E402
from mmjax.data.config import data_config  # noqa: E402
from mmjax.data.modalities import MODALITIES  # noqa: E402


def make_jpegs(n: int, w: int, h: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    # Blobs of 28x28 smooth noise (generic code names no dataset): upscaled, they give photo-like
    # edges and gradients.
    digits = (np.clip(rng.normal(0, 1, (n, 7, 7)).repeat(4, 1).repeat(4, 2), 0, 1) * 255).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    out = []
    for i in range(n):
        big = np.asarray(PILImage.fromarray(digits[i]).resize((w, h), PILImage.BICUBIC)).astype(np.float32)
        rgb = big[..., None] * rng.uniform(0.3, 1.0, 3) + np.stack([xx / w * 80, yy / h * 80, (xx + yy) / (w + h) * 60], -1)
        rgb += rng.normal(0, 6, rgb.shape)
        buf = io.BytesIO()
        PILImage.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def rate(fn, jpegs: list[bytes], seconds: float) -> float:
    for data in jpegs[:4]:  # warm-up
        fn(data, np.random.default_rng(0))
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for data in jpegs:
            fn(data, np.random.default_rng(count))
            count += 1
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", default="500x375", help="WxH of the JPEGs")
    parser.add_argument("--out", type=int, default=224, help="the model's image side")
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    jpegs = make_jpegs(args.images, w, h)

    cfg = data_config(modalities=("image",))
    cfg.image.shape, cfg.image.max_shift, cfg.image.crop_scale = (args.out, args.out, 3), 0, (0.08, 1.0)
    cfg.image.mean = (0.48145466, 0.4578275, 0.40821073)
    cfg.image.std = (0.26862954, 0.26130258, 0.27577711)
    train = MODALITIES.get("image")(cfg, train=True)
    evaluate = MODALITIES.get("image")(cfg, train=False)

    def decode_only(data, rng):
        return decode.decode_image(data, 3)

    columns = {"decode": decode_only, "train (RRC)": lambda d, r: train(d, r, {}),
               "eval (centre crop)": lambda d, r: evaluate(d, r, {})}
    print(f"{args.images} JPEGs {w}x{h} (mean {np.mean([len(j) for j in jpegs]) / 1e3:.0f} KB) -> "
          f"{args.out}x{args.out}x3, one thread, examples/s\n")
    print("| decoder | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    rows = {}
    for name in ("simplejpeg", "pillow only"):
        if name == "pillow only":
            patch = mock.patch.object(decode, "JPEG_MAGIC", b"never a prefix")
        else:
            patch = mock.patch.object(decode, "JPEG_MAGIC", decode.JPEG_MAGIC)
        with patch:
            rows[name] = [rate(fn, jpegs, args.seconds) for fn in columns.values()]
        print(f"| {name} | " + " | ".join(f"{r:.0f}" for r in rows[name]) + " |")
    speedup = np.array(rows["simplejpeg"]) / np.array(rows["pillow only"])
    print("| speed-up | " + " | ".join(f"{s:.2f}x" for s in speedup) + " |")


if __name__ == "__main__":
    main()
