"""The command line: parse, plan the shards, run them (pool or Beam), finalise, print one summary.

    python -m mmjax.ingest webdataset 'shards/{00000..00099}.tar' --out data/laion_sub
    python -m mmjax.ingest csv --csv train.csv --images-root imgs --img-key filepath --caption-key title --out d
    python -m mmjax.ingest imagefolder imagenet/train --out data/imagenet --split train
    python -m mmjax.ingest audio --csv balanced_train_segments.csv --audio-root wavs --file-key YTID \\
        --label-key positive_labels --multi-label --class-names class_labels_indices.csv --out data/audioset
    python -m mmjax.ingest points ModelNet40 --split test --out data/modelnet40

Problems with the command itself (no input matched, an unwritable --out, a bad option, a split that
disagrees with the ones already in --out) are one line on stderr and exit status 2; broken members
are not errors but skipped and listed in <out>/ingest_report_<split>.json.
"""
from __future__ import annotations

import argparse
import codecs
import multiprocessing
import os
import sys

from mmjax.ingest import sources, writer
from mmjax.ingest.spec import ShardTask, UsageError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (exit 2) instead of the usage block."""

    def error(self, message):
        self.exit(2, f"mmjax.ingest: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m mmjax.ingest", description="Convert a corpus as shipped into a TFDS "
                     "directory of ArrayRecord shards (readable with tfds.builder_from_directory, no TensorFlow).")
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")

    def kind(name, help_):
        p = kinds.add_parser(name, help=help_, description=help_)
        p.add_argument("--out", required=True, help="output dataset directory (several splits may share it)")
        p.add_argument("--split", default="train")
        p.add_argument("--name", default="", help="TFDS dataset name (default: --out's base name)")
        p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
        p.add_argument("--examples-per-shard", type=int, default=10_000, help="per output shard, for file-list kinds")
        p.add_argument("--overwrite", action="store_true",
                       help="replace this split if --out holds it from other inputs")
        p.add_argument("--runner", choices=("local", "beam"), default="local",
                       help="local: a multiprocessing pool; beam: an Apache Beam pipeline (pip install apache-beam)")
        p.add_argument("--beam-options", default="", help='Beam pipeline options, e.g. "--runner=DirectRunner"')
        return p

    p = kind("webdataset", "tar shards of <key>.jpg|jpeg|png|webp with <key>.txt and/or <key>.json (LAION, DataComp, "
                           "CC3M); one output shard per tar")
    p.add_argument("shards", nargs="+", help="tar files; globs and brace ranges (shard-{00000..00009}.tar) accepted")
    p.add_argument("--label-key", default="", help='a class label: "cls" (<key>.cls members) or a .json field')
    p.add_argument("--class-names", default="", help="with --label-key: the classes, one name a line")
    p = kind("csv", "open_clip's CsvDataset table (or .jsonl): an image path and a caption per row")
    p.add_argument("--csv", required=True)
    p.add_argument("--images-root", default="", help="the CSV's paths are relative to this (default: as written)")
    p.add_argument("--img-key", default="filepath")
    p.add_argument("--caption-key", default="title")
    p.add_argument("--sep", default="\\t", help="column separator; escapes such as \\t are understood")
    p = kind("imagefolder", "class-per-folder images, ROOT/<class>/<image> (torchvision ImageFolder)")
    p.add_argument("root")
    p.add_argument("--class-names", default="", help="file, one name a line (default: the sorted folder names)")
    p = kind("audio", "audio files (WAV/FLAC/OGG) with a CSV of labels, AudioSet's multi-label CSVs included")
    p.add_argument("--csv", required=True)
    p.add_argument("--audio-root", default="")
    p.add_argument("--file-key", required=True, help="column naming the file (no extension: .wav/.flac/... tried)")
    p.add_argument("--label-key", required=True)
    p.add_argument("--multi-label", action="store_true", help='labels comma-separated in one field ("/m/a,/m/b")')
    p.add_argument("--class-names", default="", help="one name a line, or AudioSet's class_labels_indices.csv "
                                                     "(default: the CSV's distinct labels, sorted)")
    p.add_argument("--sep", default=",")
    p = kind("points", "point clouds, ROOT/<class>/<file>.npy|txt|off (ModelNet-style), and/or .h5 files "
                       "(data [K,N,3] + label [K], ScanObjectNN/ModelNet h5; needs h5py)")
    p.add_argument("inputs", nargs="+", metavar="ROOT_OR_H5")
    p.add_argument("--class-names", default="", help="one name a line (default: the sorted folder names)")
    return parser


def plan(args) -> tuple[list, object]:
    """(units, spec) for the chosen kind."""
    eps = args.examples_per_shard
    if args.kind == "webdataset":
        return sources.plan_webdataset(args.shards, args.label_key, args.class_names)
    if args.kind == "csv":
        return sources.plan_csv(args.csv, args.images_root, args.img_key, args.caption_key, _unescape(args.sep), eps)
    if args.kind == "imagefolder":
        return sources.plan_imagefolder(args.root, args.class_names, eps)
    if args.kind == "audio":
        return sources.plan_audio(args.csv, args.audio_root, args.file_key, args.label_key, args.multi_label,
                                  args.class_names, _unescape(args.sep), eps)
    return sources.plan_points(args.inputs, args.class_names, args.split, eps)


def _unescape(sep: str) -> str:
    sep = codecs.decode(sep, "unicode_escape")
    if len(sep) != 1:
        raise UsageError(f"--sep must be one character, got {sep!r}")
    return sep


def run_local(tasks: list[ShardTask], workers: int) -> None:
    """convert_shard over `tasks`, in a spawn pool of `workers` processes (inline for one)."""
    from tqdm import tqdm

    with tqdm(total=len(tasks), unit="shard", desc="mmjax.ingest", disable=not tasks) as bar:
        if workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                writer.convert_shard(task)
                bar.update()
            return
        # spawn, not fork: the caller may hold threads (JAX, Grain) that a forked child would inherit.
        with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
            for _ in pool.imap_unordered(writer.convert_shard, tasks):
                bar.update()


def _join_beam_options(argv: list[str]) -> list[str]:
    """`--beam-options --runner=X` as `--beam-options=--runner=X`: argparse would take the value,
    which starts with "--", for an option of its own."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--beam-options":
            out[i:i + 2] = [f"--beam-options={out[i + 1]}"]
            break
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(_join_beam_options(sys.argv[1:] if argv is None else argv))
    try:
        if args.workers < 1:
            raise UsageError(f"--workers must be >= 1, got {args.workers}")
        units, spec = plan(args)
        name = args.name or writer.default_name(args.out)
        tasks = writer.make_tasks(units, spec, args.out, name, args.split)
        writer.prepare(tasks, args.out, name, args.split, spec, args.overwrite)
        todo = writer.pending(tasks)
        if len(todo) < len(tasks):
            print(f"mmjax.ingest: resuming, {len(tasks) - len(todo)} of {len(tasks)} shards already written",
                  file=sys.stderr)
        if args.runner == "beam":
            from mmjax.ingest import beam

            report = beam.run_beam(tasks, args.out, args.beam_options)
        else:
            run_local(todo, args.workers)
            report = writer.finalize(args.out, args.split)
    except UsageError as e:
        print(f"mmjax.ingest: error: {e}", file=sys.stderr)
        return 2
    print(writer.summary(report, os.path.abspath(args.out)))
    return 0
