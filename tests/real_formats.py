"""Corpora in the formats they really ship as, written into a tmp dir from the embedded data.

Each builder writes one corpus (from the embedded MNIST test digits or FSDD recordings), with a
few corrupt members of the kinds the web really produces, and returns a `Built`:

  args     the `python -m mmjax.ingest` arguments for it, without --out (`cli.main([*b.args, "--out", d])`)
  records  {key: expected fields} for every valid example (see each builder for the fields)
  skipped  {member: reason} for every member the converter must skip and report

  write_webdataset   tars of <key>.jpg (quality 95) / .png + .txt + .json (LAION / CC3M layout)
  write_csv          images + a tab-separated filepath/title CSV (open_clip's CsvDataset)
  write_imagefolder  ROOT/<class>/<image> (ImageFolder)
  write_audio        FSDD clips as FLAC + a label CSV, or an AudioSet-style multi-label CSV
  write_points       ROOT/<class>/<file>.off|npy|txt (ModelNet-style) from digit strokes

Images in `records` carry `pixels` (uint8 [28, 28]) and `lossy` (JPEG: compare with a tolerance).
"""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import tarfile

import numpy as np
import soundfile
from PIL import Image

from mmjax.data import points as points_lib
from mmjax.data.datasets import mnist

FSDD_DIR = os.path.join(os.path.dirname(mnist.__file__), os.pardir, "raw", "fsdd", "recordings")
JPEG_QUALITY = 95


@dataclasses.dataclass
class Built:
    args: list[str]
    records: dict[str, dict]
    skipped: dict[str, str]
    root: str = ""


@functools.lru_cache(maxsize=1)
def digits(n: int = 200) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The first `n` embedded MNIST test digits: images uint8 [n, 28, 28], labels [n], captions."""
    images, labels = mnist.load_raw()
    return images[:n], labels[:n], mnist.captions(labels[:n])


def encode(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format=fmt, **({"quality": JPEG_QUALITY} if fmt == "JPEG" else {}))
    return buf.getvalue()


def truncated_jpeg(image: np.ndarray) -> bytes:
    data = encode(image, "JPEG")
    return data[: len(data) // 2]


def _image_record(i: int, lossy: bool, **fields) -> dict:
    images, labels, captions = digits()
    return {"pixels": images[i], "lossy": lossy, "label": int(labels[i]), **fields}


# ------------------------------------------------------------------ webdataset

def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_webdataset(root: str, n: int = 200, num_shards: int = 3, corrupt: bool = True) -> Built:
    """`num_shards` tars `shard-0000{k}.tar`; even digits JPEG, odd PNG; every digit has a .json
    {"caption", "label"}, and all but every 5th a .txt (those take the caption from the json).
    Corrupt members (in shard 0): a truncated JPEG, an empty .jpg (its .txt is then a caption
    without image), a .jpg that is text, an image without caption, a symlink, a directory,
    `/etc/passwd.txt` (a caption without image); `../evil.jpg` + `../evil.txt` is a valid pair
    whose key is "../evil" and must never become a path. Records: pixels, lossy, label, caption, json."""
    images, labels, captions = digits(n)
    os.makedirs(root, exist_ok=True)
    shards = [os.path.join(root, f"shard-{k:05d}.tar") for k in range(num_shards)]
    records, skipped = {}, {}
    bounds = np.linspace(0, n, num_shards + 1).astype(int)
    for k, path in enumerate(shards):
        with tarfile.open(path, "w") as tar:
            for i in range(bounds[k], bounds[k + 1]):
                key, lossy = f"{i:06d}", i % 2 == 0
                meta = json.dumps({"caption": captions[i], "label": int(labels[i])})
                add_member(tar, f"{key}.{'jpg' if lossy else 'png'}", encode(images[i], "JPEG" if lossy else "PNG"))
                if i % 5:
                    add_member(tar, f"{key}.txt", captions[i].encode())
                add_member(tar, f"{key}.json", meta.encode())
                records[key] = _image_record(i, lossy, caption=captions[i], json=meta)
            if k == 0 and corrupt:
                add_member(tar, "bad_truncated.jpg", truncated_jpeg(images[0]))
                add_member(tar, "bad_truncated.txt", b"a truncated file")
                add_member(tar, "bad_empty.jpg", b"")
                add_member(tar, "bad_empty.txt", b"an empty image")
                add_member(tar, "bad_text.jpg", b"<html><body>404 Not Found</body></html>")
                add_member(tar, "bad_text.txt", b"an error page")
                add_member(tar, "bad_nocaption.png", encode(images[1], "PNG"))
                add_member(tar, "../evil.jpg", encode(images[2], "JPEG"))
                add_member(tar, "../evil.txt", captions[2].encode())
                add_member(tar, "/etc/passwd.txt", b"root:x:0:0")
                link = tarfile.TarInfo("bad_link.jpg")
                link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(link)
                folder = tarfile.TarInfo("somedir")
                folder.type = tarfile.DIRTYPE
                tar.addfile(folder)
                records["../evil"] = _image_record(2, True, caption=captions[2], json="")
                skipped.update({"bad_truncated.jpg": "undecodable_image", "bad_empty.jpg": "empty",
                                "bad_empty.txt": "missing_image", "bad_text.jpg": "not_an_image",
                                "bad_nocaption.png": "missing_caption", "/etc/passwd.txt": "missing_image",
                                "bad_link.jpg": "not_regular", "somedir": "not_regular"})
    pattern = os.path.join(root, "shard-{00000..%05d}.tar" % (num_shards - 1))
    return Built(["webdataset", pattern], records, skipped, root)


# ------------------------------------------------------------------ csv (open_clip)

def write_csv(root: str, n: int = 200, corrupt: bool = True) -> Built:
    """root/images/<i>.png|jpg and root/train.csv (tab-separated filepath, title; paths relative to
    root/images). Corrupt rows: a truncated JPEG, a .jpg holding text, a file that does not exist.
    Records: pixels, lossy, label, caption."""
    images, labels, captions = digits(n)
    folder = os.path.join(root, "images")
    os.makedirs(folder, exist_ok=True)
    rows, records, skipped = [], {}, {}
    for i in range(n):
        lossy = i % 3 == 0
        name = f"{i:05d}.{'jpg' if lossy else 'png'}"
        with open(os.path.join(folder, name), "wb") as f:
            f.write(encode(images[i], "JPEG" if lossy else "PNG"))
        rows.append((name, captions[i]))
        records[name] = _image_record(i, lossy, caption=captions[i])
    if corrupt:
        for name, data, reason in (("bad_truncated.jpg", truncated_jpeg(images[0]), "undecodable_image"),
                                   ("bad_text.jpg", b"not an image at all", "not_an_image"),
                                   ("missing.png", None, "missing_file")):
            if data is not None:
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(data)
            rows.append((name, f"caption of {name}"))
            skipped[name] = reason
    path = os.path.join(root, "train.csv")
    with open(path, "w", encoding="utf-8") as f:
        f.write("filepath\ttitle\n" + "".join(f"{a}\t{b}\n" for a, b in rows))
    return Built(["csv", "--csv", path, "--images-root", folder, "--img-key", "filepath", "--caption-key", "title",
                  "--sep", "\\t"], records, skipped, root)


# ------------------------------------------------------------------ imagefolder

def write_imagefolder(root: str, n: int = 200, corrupt: bool = True) -> Built:
    """root/<class name>/<i>.png|jpg (every 4th JPEG). Corrupt: a truncated JPEG, a .jpg holding
    text, an empty .png. Records {"<class>/<file>": pixels, lossy, label}."""
    images, labels, _ = digits(n)
    records, skipped = {}, {}
    for i in range(n):
        cls, lossy = mnist.CLASS_NAMES[labels[i]], i % 4 == 0
        name = f"{cls}/{i:05d}.{'jpg' if lossy else 'png'}"
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        with open(os.path.join(root, name), "wb") as f:
            f.write(encode(images[i], "JPEG" if lossy else "PNG"))
        records[name] = _image_record(i, lossy)
    if corrupt:
        for name, data, reason in (("zero/bad_truncated.jpg", truncated_jpeg(images[0]), "undecodable_image"),
                                   ("one/bad_text.jpg", b"GIF89a? no, just text", "not_an_image"),
                                   ("two/bad_empty.png", b"", "empty")):
            os.makedirs(os.path.join(root, os.path.dirname(name)), exist_ok=True)
            with open(os.path.join(root, name), "wb") as f:
                f.write(data)
            skipped[name] = reason
    return Built(["imagefolder", root], records, skipped, root)


# ------------------------------------------------------------------ audio (FSDD)

def fsdd_clips(num_clips: int = 40) -> list[str]:
    """`num_clips` FSDD file names, spread over digits and speakers (sorted)."""
    names = sorted(f for f in os.listdir(FSDD_DIR) if f.endswith(".wav") and f.split("_")[2] == "0.wav")
    return [names[i] for i in np.linspace(0, len(names) - 1, min(num_clips, len(names))).astype(int)]


def write_audio(root: str, num_clips: int = 40, multi_label: bool = False, corrupt: bool = True) -> Built:
    """FSDD clips re-encoded as root/clips/<digit>_<speaker>_<take>.flac, with either
    - labels.csv: `filename,label` (label = the digit's name), or (multi_label)
    - segments.csv in AudioSet's layout (`#` comments, header `# YTID, start_seconds, end_seconds,
      positive_labels`, file ids without extension, quoted mids "/m/digit_7,/m/speaker_jackson")
      plus class_labels_indices.csv (index,mid,display_name) lacking one mid used by a row.
    Corrupt: a FLAC of random bytes, a row whose file does not exist (and, multi-label, an unknown
    mid). Records {key: {"wave": float32 [n], "label" or "labels": names}}."""
    folder = os.path.join(root, "clips")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    rows, records, skipped = [], {}, {}
    for wav in fsdd_clips(num_clips):
        digit, speaker, _ = wav[:-4].split("_")
        wave, rate = soundfile.read(os.path.join(FSDD_DIR, wav), dtype="float32")
        name = wav[:-4] + ".flac"
        soundfile.write(os.path.join(folder, name), wave, rate, format="FLAC", subtype="PCM_16")
        if multi_label:
            rows.append((name[:-5], [f"/m/digit_{digit}", f"/m/speaker_{speaker}"]))
            records[name[:-5]] = {"wave": wave, "labels": [f"digit {digit}", f"speaker {speaker}"]}
        else:
            rows.append((name, [mnist.CLASS_NAMES[int(digit)]]))
            records[name] = {"wave": wave, "label": mnist.CLASS_NAMES[int(digit)]}
    if corrupt:
        with open(os.path.join(folder, "bad_random.flac"), "wb") as f:
            f.write(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
        bad = [("bad_random", "undecodable_audio"), ("missing_clip", "missing_file")]
        for stem, reason in bad:
            key = stem if multi_label else f"{stem}.flac"
            rows.append((key, ["/m/digit_0"] if multi_label else ["zero"]))
            skipped[key] = reason
        if multi_label:
            first = rows[0][0]
            with open(os.path.join(folder, first + ".flac"), "rb") as src, \
                    open(os.path.join(folder, "odd_label.flac"), "wb") as dst:
                dst.write(src.read())
            rows.append(("odd_label", ["/m/digit_1", "/m/not_in_ontology"]))
            skipped["odd_label"] = "unknown_label"
    if not multi_label:
        path = os.path.join(root, "labels.csv")
        with open(path, "w") as f:
            f.write("filename,label\n" + "".join(f"{k},{v[0]}\n" for k, v in rows))
        return Built(["audio", "--csv", path, "--audio-root", folder, "--file-key", "filename",
                      "--label-key", "label"], records, skipped, root)
    path = os.path.join(root, "segments.csv")
    with open(path, "w") as f:
        f.write("# Segments csv created for the mmjax tests\n# num_ytids=%d\n" % len(rows))
        f.write("# YTID, start_seconds, end_seconds, positive_labels\n")
        f.write("".join(f'{k}, 0.000, 1.000, "{",".join(v)}"\n' for k, v in rows))
    mids = sorted({m for key, v in rows for m in v if key != "odd_label" or m != "/m/not_in_ontology"})
    names_path = os.path.join(root, "class_labels_indices.csv")
    with open(names_path, "w") as f:
        f.write("index,mid,display_name\n" + "".join(
            f'{i},{m},"{m[3:].replace("_", " ")}"\n' for i, m in enumerate(mids)))
    return Built(["audio", "--csv", path, "--audio-root", folder, "--file-key", "YTID", "--label-key",
                  "positive_labels", "--multi-label", "--class-names", names_path], records, skipped, root)


# ------------------------------------------------------------------ points (ModelNet-style)

def write_off(path: str, vertices: np.ndarray, fused_header: bool) -> None:
    """An OFF mesh of `vertices` (one triangle fan of faces); ModelNet's quirk `OFF<nv> <nf> 0`
    on one line when `fused_header`."""
    faces = [(3, i, i + 1, i + 2) for i in range(0, len(vertices) - 2, 3)]
    head = f"OFF{len(vertices)} {len(faces)} 0\n" if fused_header else f"OFF\n{len(vertices)} {len(faces)} 0\n"
    with open(path, "w") as f:
        f.write(head + "".join(f"{x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in vertices)
                + "".join(" ".join(map(str, face)) + "\n" for face in faces))


def write_points(root: str, n: int = 60, num_points: int = 128, corrupt: bool = True) -> Built:
    """root/<class name>/<i>.off|npy|txt: digit strokes lifted to 3-D (mmjax.data.points), cycling
    through .off (every other one with ModelNet's fused header), .npy [N, 6] (xyz + fake normals)
    and ModelNet40-resampled .txt (x,y,z,nx,ny,nz). Corrupt: an .off that does not parse, a .npy
    with a NaN, an empty-of-points .txt. Records {"<class>/<file>": points (float32 [N, 3],
    exact for .npy, 1e-5 for text formats), label}."""
    images, labels, _ = digits()
    rng = np.random.default_rng(0)
    records, skipped = {}, {}
    for i in range(n):
        cls = mnist.CLASS_NAMES[labels[i]]
        cloud = points_lib.digit_to_points(images[i], num_points, rng)
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        fmt = ("off", "npy", "txt")[i % 3]
        name = f"{cls}/{cls}_{i:04d}.{fmt}"
        path = os.path.join(root, name)
        if fmt == "off":
            write_off(path, cloud, fused_header=i % 2 == 1)
        elif fmt == "npy":
            np.save(path, np.concatenate([cloud, np.ones_like(cloud)], axis=1))
        else:
            with open(path, "w") as f:
                f.write("".join(",".join(f"{v:.6f}" for v in (*p, 0.0, 0.0, 1.0)) + "\n" for p in cloud))
        records[name] = {"points": cloud, "label": int(labels[i]), "exact": fmt == "npy"}
    if corrupt:
        nan_cloud = np.ones((5, 3), np.float32)
        nan_cloud[2, 1] = np.nan
        for name, write, reason in (
                ("zero/bad_parse.off", lambda p: open(p, "w").write("OFF\n3 1 0\n0 0 zero\n"), "unparseable_points"),
                ("one/bad_nan.npy", lambda p: np.save(p, nan_cloud), "non_finite_points"),
                ("two/bad_nopoints.txt", lambda p: open(p, "w").write("# no points here\n"), "no_points")):
            os.makedirs(os.path.join(root, os.path.dirname(name)), exist_ok=True)
            write(os.path.join(root, name))
            skipped[name] = reason
    return Built(["points", root], records, skipped, root)
