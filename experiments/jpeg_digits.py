"""The main job trained from JPEG webdataset shards, against the embedded digits.

    python -m experiments.jpeg_digits [--smoke] [--quality 95]

Question: does the real-data path (webdataset tars -> `python -m mmjax.ingest` -> ArrayRecord ->
the `tfds` dataset -> JPEG decoding in the pipeline) train the same model as the embedded path?
The 10,000 embedded MNIST digits are written as a newcomer's corpus would ship: tar shards of
`<key>.jpg` (JPEG at --quality) + `<key>.txt` (the same caption the embedded dataset gives the
digit) + `<key>.json` ({"label": class index}), train and test split as the embedded dataset
splits them and in the same stored order, so both runs see the same examples in the same order
and differ only by JPEG's loss. Both are `configs/clip_digits.py` (the README's main job) with
its default seed; the JPEG run reads the converted directory (`data.name=tfds`) with the
embedded dataset's zero-shot prompts ({digit} written as the generic {index}). Target: zero-shot
top-1 within 0.01 of the embedded run's.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import time

import tensorflow_datasets as tfds
from PIL import Image

from experiments import common
from mmjax.data.config import data_config
from mmjax.data.datasets import get_dataset
from mmjax.ingest import cli

NAME = "jpeg_digits"
DATASET = "digits_captions"  # the main job's
CONFIG = "configs/clip_digits.py"
PER_SHARD = 1000


def write_shards(folder: str, split: str, quality: int) -> str:
    """The embedded dataset's `split` in its stored order as tars of <key>.jpg + .txt + .json."""
    dataset = get_dataset(data_config(DATASET, ("image", "text")))
    image_field, caption_field = dataset.fields["image"], dataset.fields["text"]
    records = dataset.open_split(split)
    os.makedirs(folder, exist_ok=True)
    for k in range(0, len(records), PER_SHARD):
        with tarfile.open(os.path.join(folder, f"{k // PER_SHARD:05d}.tar"), "w") as tar:
            for i in range(k, min(k + PER_SHARD, len(records))):
                record = records[i]
                buf = io.BytesIO()
                Image.fromarray(record[image_field][..., 0]).save(buf, "JPEG", quality=quality)
                members = {"jpg": buf.getvalue(), "txt": record[caption_field].encode(),
                           "json": json.dumps({"label": int(record["label"])}).encode()}
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{i:05d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return os.path.join(folder, "*.tar")


def main():
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=os.path.join(common.REPO, "workdirs", "experiments"))
    p.add_argument("--quality", type=int, default=95)
    p.add_argument("--smoke", action="store_true", help="40 steps each; results beside the runs")
    p.add_argument("--fresh", action="store_true")
    args = p.parse_args()
    root = os.path.join(args.workdir, NAME + ("_smoke" if args.smoke else ""))
    data = os.path.join(root, f"data_q{args.quality}")
    start = time.time()
    if not os.path.exists(os.path.join(data, "dataset_info.json")) or args.fresh:
        names = os.path.join(root, "classes.txt")
        os.makedirs(root, exist_ok=True)
        with open(names, "w") as f:
            f.write("\n".join(get_dataset(data_config(DATASET)).class_names))
        for split in ("train", "test"):
            pattern = write_shards(os.path.join(root, f"wds_q{args.quality}", split), split, args.quality)
            rc = cli.main(["webdataset", pattern, "--out", data, "--split", split, "--workers", "2",
                           "--label-key", "label", "--class-names", names, "--overwrite"])
            assert rc == 0, rc
    tar_bytes = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(os.path.join(root, f"wds_q{args.quality}"))
                    for f in fs)
    convert_s = time.time() - start

    steps = {"total_steps": 40} if args.smoke else {}
    prompts = tuple(t.replace("{digit}", "{index}") for t in get_dataset(data_config(DATASET)).prompt_templates)
    runs = {
        "embedded (uint8 arrays)": common.run_config(CONFIG, os.path.join(root, "embedded"), steps, args.fresh),
        f"JPEG q{args.quality} shards, converted": common.run_config(
            CONFIG, os.path.join(root, f"jpeg_q{args.quality}"),
            {**steps, "data.name": "tfds", "data.tfds.dir": data, "data.tfds.prompt_templates": prompts}, args.fresh),
    }
    keys = ("zeroshot_top1", "i2t_r1", "t2i_r1")
    rows = [[name, *(f"{r[k]:.4f}" for k in keys), f"{r['train/loss']:.4f}"] for name, r in runs.items()]
    (base, jpeg) = runs.values()
    gap = abs(jpeg["zeroshot_top1"] - base["zeroshot_top1"])
    info = tfds.builder_from_directory(data).info
    sections = [
        __doc__.split("\n\n", 1)[1].strip(),
        common.markdown_table(["data", *keys, "final train loss"], rows),
        f"Zero-shot gap: {gap:.4f} (target <= 0.01: {'met' if gap <= 0.01 else 'NOT met'}).",
        f"Corpus: {sum(s.num_examples for s in info.splits.values())} digits in {tar_bytes / 1e6:.1f} MB of tars "
        f"(JPEG q{args.quality}); conversion {convert_s:.0f} s (0 when reused).",
        common.machine_line(sum(r["run_s"] or 0.0 for r in runs.values())) + " " + common.load_line(),
    ]
    directory = root if args.smoke else common.RESULTS
    print(common.write_result(NAME, "Main job from JPEG webdataset shards vs the embedded digits", sections, directory))


if __name__ == "__main__":
    main()
