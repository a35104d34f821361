"""The unit of work and the schema: what one shard is made from and which features it stores.

Everything a worker needs to convert a shard travels in one small, picklable `ShardTask` (no open
files, no TFDS objects): that is what lets the same `convert_shard` run inline, in a
multiprocessing pool, or on a Beam worker on another machine. The TFDS features are rebuilt from
the plain `FeatureSpec` where they are used.

Feature sets, by `FeatureSpec.kind`:
  image_text   (webdataset, csv)  key Text, image encoded bytes, caption Text, json Text
                                  (+ label ClassLabel with --label-key: classes for zero-shot)
  image_class  (imagefolder)      key Text, image encoded bytes, label ClassLabel
  audio        (audio)            key Text, audio encoded bytes, label ClassLabel
                                  (or labels Sequence(ClassLabel) with multi_label)
  points       (points)           key Text, points float32 [N, 3], label ClassLabel
Encoded media are `Tensor((), object)`: the file's bytes as shipped, decoded by the pipeline.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from mmjax.ingest import checks

KINDS = ("image_text", "image_class", "audio", "points")


class UsageError(Exception):
    """A problem with the command line or its inputs: reported as one line, exit status 2."""


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    kind: str
    class_names: tuple[str, ...] = ()
    multi_label: bool = False
    # image_text: where a class label comes from ("" = none; "cls" = webdataset's <key>.cls member,
    # else a field of the .json member or a CSV column)
    label_key: str = ""

    def to_json(self) -> dict:
        return {"kind": self.kind, "class_names": list(self.class_names), "multi_label": self.multi_label,
                "label_key": self.label_key}

    @classmethod
    def from_json(cls, d: dict) -> "FeatureSpec":
        return cls(d["kind"], tuple(d["class_names"]), bool(d["multi_label"]), d.get("label_key", ""))


class FileItem(NamedTuple):
    """One example read from its own file (csv, imagefolder, audio, point files)."""
    key: str
    path: str
    labels: tuple = ()  # class names (empty for image_text)
    caption: str | None = None  # csv: the caption column
    json: str = ""  # csv: the whole row as JSON


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One output shard: `inputs` are tar paths (source "tar"), h5 paths ("h5") or FileItems ("files")."""
    source: str
    inputs: tuple
    spec: FeatureSpec
    split: str
    index: int
    num_shards: int
    out_path: str  # the finished ArrayRecord shard
    result_path: str  # its ShardResult JSON, written after the shard is complete


@dataclasses.dataclass
class ShardResult:
    shard: str  # the shard's file name
    index: int
    examples: int
    num_bytes: int
    skipped: list  # [{"shard", "member", "reason", "detail"}]


@dataclasses.dataclass
class Raw:
    """One candidate example as read from the source, before any check."""
    member: str  # how the report names it (archive member, file key, "file.h5#row")
    key: str
    media: bytes | None = None  # encoded image / audio, or a point file's bytes
    ext: str = ""  # media's extension, lower case, no dot
    caption: bytes | str | None = None
    json: bytes | str | None = None
    labels: tuple = ()
    points: np.ndarray | None = None  # rows read from an h5 file
    caption_member: str = ""  # archive member holding the caption (reports a caption without image)


def features_for(spec: FeatureSpec):
    import tensorflow_datasets as tfds  # imported where used: workers build features from the spec

    f = tfds.features
    encoded = f.Tensor(shape=(), dtype=np.object_)
    common = {"key": f.Text()}
    label = f.ClassLabel(names=list(spec.class_names))
    if spec.kind == "image_text":
        labelled = {"label": label} if spec.label_key else {}
        return f.FeaturesDict({**common, "image": encoded, "caption": f.Text(), "json": f.Text(), **labelled})
    if spec.kind == "image_class":
        return f.FeaturesDict({**common, "image": encoded, "label": label})
    if spec.kind == "audio":
        labels = {"labels": f.Sequence(label)} if spec.multi_label else {"label": label}
        return f.FeaturesDict({**common, "audio": encoded, **labels})
    if spec.kind == "points":
        return f.FeaturesDict({**common, "points": f.Tensor(shape=(None, 3), dtype=np.float32), "label": label})
    raise ValueError(f"unknown feature kind {spec.kind!r}; expected one of {KINDS}")


def to_example(raw: Raw, spec: FeatureSpec) -> dict:
    """A verified example for `spec`'s features, or raises checks.Skip."""
    if spec.kind == "image_text":
        if raw.media is None:
            raise checks.Skip("missing_image", "no image member for this key", raw.caption_member or raw.member)
        caption = checks.text(raw.caption) if raw.caption is not None else None
        json_text = ""
        if raw.json is not None:
            json_caption, json_text = checks.json_caption(raw.json)
            caption = caption if caption is not None else json_caption
        if not caption:
            raise checks.Skip("missing_caption", "no .txt and no json caption")
        example = {"key": raw.key, "image": checks.image(raw.media, raw.ext), "caption": caption, "json": json_text}
        if spec.label_key:
            example["label"] = checks.label(_image_text_label(raw, spec.label_key, json_text), spec.class_names)
        return example
    if spec.kind == "audio" and spec.multi_label:
        labels = [checks.label(name, spec.class_names) for name in raw.labels]
        return {"key": raw.key, "audio": checks.audio(raw.media), "labels": labels}
    if not raw.labels:
        raise checks.Skip("unknown_label", "no label")
    label = checks.label(raw.labels[0], spec.class_names)
    if spec.kind == "image_class":
        return {"key": raw.key, "image": checks.image(raw.media, raw.ext), "label": label}
    if spec.kind == "audio":
        return {"key": raw.key, "audio": checks.audio(raw.media), "label": label}
    if spec.kind == "points":
        pts = checks.cloud(raw.points) if raw.points is not None else checks.points(raw.media, raw.ext)
        return {"key": raw.key, "points": pts, "label": label}
    raise ValueError(f"unknown feature kind {spec.kind!r}")


def _image_text_label(raw: Raw, label_key: str, json_text: str):
    """The class of an image-text example: its .cls member or CSV column (raw.labels), else the
    .json member's `label_key` field; an integer is a class index, anything else a class name."""
    if raw.labels:
        value = raw.labels[0]
    else:
        import json
        try:
            value = json.loads(json_text).get(label_key) if json_text else None
        except (ValueError, AttributeError):
            value = None
    if value is None:
        raise checks.Skip("unknown_label", f"no label ({label_key!r})")
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if isinstance(text, str) and text.strip().lstrip("-").isdigit():
        return int(text.strip())
    return text.strip() if isinstance(text, str) else text
