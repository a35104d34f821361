"""`tfds`: any prepared TFDS dataset, by name or by directory, with its schema given in config.

Reads what researchers have on disk without writing a dataset class:
  - a dataset the user prepared with TFDS, by name (`data.tfds.name="imagenet2012"`, optional
    `version` and builder `config`) under `data.data_dir` (`tfds build imagenet2012
    --file_format=array_record --data_dir=...`);
  - a directory written by mmjax's converter (`python -m mmjax.ingest ...`, ArrayRecord shards +
    TFDS metadata), or any other prepared TFDS folder: `data.tfds.dir=/path/<name>/<version>`.
Both are opened with `tfds.data_source` (random access, no TensorFlow), so Grain shuffles,
shards and resumes them exactly as the embedded datasets.

The schema is config: `data.tfds.fields` {modality: stored feature} ("a/b" reaches a nested
feature, e.g. coco_captions' {"text": "captions/text"}: several captions per image, of which
training picks one per step and evaluation the first), `label_field` ("" for unlabelled corpora
such as image-text pairs: labels are then -1 and no class-based evaluator applies), the class
names (default: the label feature's ClassLabel names) and the zero-shot prompt templates. Image
and audio features are handed to the modalities as their encoded bytes (TFDS's own decoding is
skipped), so decoding, cropping and resampling happen in the pipeline's workers.
"""
from __future__ import annotations

import os
import re

import tensorflow_datasets as tfds

from mmjax.data import builders
from mmjax.data.datasets.base import DATASETS, Dataset
from mmjax.data.transforms import RecordSource

NAME = "tfds"
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
# Features the pipeline decodes itself (fast decoders, random-resized crop on the original size).
_ENCODED = (tfds.features.Image, tfds.features.Audio)


@DATASETS.register(NAME)
class TfdsByName(Dataset):
    name = NAME
    options_key = NAME

    @classmethod
    def default_config(cls):
        return {
            "name": "",  # a TFDS dataset name (e.g. "imagenet2012", "coco_captions") under data.data_dir, or
            "dir": "",  # a prepared dataset directory (<name>/<version>, e.g. mmjax.ingest's output); wins over name
            "version": "",  # with `name`: "" = the newest prepared version
            "config": "",  # with `name`: the builder config, e.g. "2014" for coco_captions
            # {modality: stored feature}; a modality not listed reads the feature of its own name
            # (text: "caption"). "a/b" reaches a nested feature.
            "fields": {},
            "label_field": "label",  # "" = unlabelled (labels -1)
            "class_names": (),  # () = the label feature's class names
            # zero-shot, {name} / {index}: a class's name / label; CLIP's ImageNet default wording
            "prompt_templates": ("a photo of a {name}.",),
        }

    @property
    def opts(self):
        return self.data_cfg[NAME]

    @property
    def fields(self) -> dict[str, str]:
        given = dict(self.opts.fields)
        return {m: given.get(m, "caption" if m == "text" else m) for m in self.data_cfg.modalities}

    @property
    def label_field(self) -> str | None:  # type: ignore[override]
        return self.opts.label_field or None

    @property
    def prompt_templates(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.opts.prompt_templates)

    @property
    def where(self) -> str:
        o = self.opts
        return f"tfds dataset {o.dir or o.name}"

    def builder(self):
        """The TFDS builder (cached) of the prepared files: by directory, or by name under data_dir."""
        if getattr(self, "_builder", None) is None:
            o = self.opts
            problems = self.config_problems()
            if problems:
                raise ValueError(problems[0])
            if o.dir:
                builder = tfds.builder_from_directory(os.path.abspath(os.path.expanduser(o.dir)))
            else:
                builder = tfds.builder_from_directory(self._prepared_dir())
            if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
                raise ValueError(f"{self.where} is stored as {builder.info.file_format.value}; Grain's random access "
                                 f"(shuffling, exact resume) needs array_record: prepare it with `tfds build "
                                 f"--file_format=array_record` or convert it with `python -m mmjax.ingest`")
            self._builder = builder
        return self._builder

    def config_problems(self) -> list[str]:
        """Start-up checks (mmjax.validate, before any work): a dataset is named, and a directory the
        config names (data.tfds.dir, or data.data_dir for a dataset by name) holds it prepared."""
        o = self.opts
        if not (o.name or o.dir):
            return ["data.tfds: set name (a TFDS dataset under data.data_dir) or dir (a prepared "
                    "dataset directory, which wins over name)"]
        if o.dir:
            path = os.path.abspath(os.path.expanduser(o.dir))
            if not os.path.isfile(os.path.join(path, "dataset_info.json")):
                return [f"data.tfds.dir={o.dir!r} is not a prepared dataset directory (no "
                        f"dataset_info.json in {path}); write one with `python -m mmjax.ingest`"]
        elif self.data_cfg.data_dir:  # the default data dir ($MMJAX_DATA_DIR, ~/.cache) is checked on first use
            try:
                self._prepared_dir()
            except ValueError as e:
                return [str(e)]
        return []

    def _prepared_dir(self) -> str:
        """<data_dir>/<name>[/<config>]/<version> of a prepared dataset, the newest version unless
        data.tfds.version names one. Only the prepared files are read: no builder code runs (and
        none is needed, nor TensorFlow), whichever tool prepared them."""
        o = self.opts
        data_dir = builders.resolve_data_dir(self.data_cfg.data_dir or None)
        root = os.path.join(data_dir, o.name, o.config) if o.config else os.path.join(data_dir, o.name)
        spec = o.name + (f"/{o.config}" if o.config else "") + (f":{o.version}" if o.version else "")
        versions = sorted((v for v in (os.listdir(root) if os.path.isdir(root) else ())
                           if _VERSION.match(v) and os.path.isfile(os.path.join(root, v, "dataset_info.json"))),
                          key=lambda v: tuple(int(x) for x in v.split(".")))
        if o.version and o.version not in versions:
            versions = []
        if not versions:
            raise ValueError(
                f"data.tfds.name={spec!r}: no such TFDS dataset under data.data_dir={data_dir} (no prepared "
                f"{root}/<version>/dataset_info.json): prepare it with `tfds build {o.name} "
                f"--file_format=array_record --data_dir={data_dir}`, or convert files with `python -m mmjax.ingest "
                f"... --out {root}/1.0.0`, or set data.data_dir / data.tfds.dir")
        return os.path.join(root, o.version or versions[-1])

    def _feature(self, path: str):
        feature = self.builder().info.features
        for part in path.split("/"):
            if isinstance(feature, tfds.features.Sequence):
                feature = feature.feature
            try:
                feature = feature[part]
            except (KeyError, TypeError):
                raise ValueError(f"{self.where} has no feature {path!r}; top-level features: "
                                 f"{sorted(self.builder().info.features.keys())} (set data.tfds.fields)") from None
        return feature

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.opts.class_names:
            return tuple(self.opts.class_names)
        if self.label_field is None:
            return ()
        feature = self._feature(self.label_field)
        if not isinstance(feature, tfds.features.ClassLabel):
            raise ValueError(f"{self.where}: label feature {self.label_field!r} is a {type(feature).__name__}, not "
                             f"a ClassLabel: give data.tfds.class_names")
        return tuple(feature.names)

    def open_split(self, split: str):
        builder = self.builder()
        self._check_split(split, builder.info.splits)
        fields = sorted(set(self.fields[m] for m in self.data_cfg.modalities) | {self.label_field} - {None})
        if "key" in builder.info.features and "key" not in fields:  # the converter's: errors name the member
            fields.append("key")
        features = {f: self._feature(f) for f in fields}  # fails naming an unknown field before any read
        top = {f.split("/")[0] for f in fields}
        decoders = {f: tfds.decode.SkipDecoding() for f in top if isinstance(features.get(f), _ENCODED)}
        raw = builder.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
        deserialize = _Deserialize(builder.info.features, decoders, tuple(fields))
        return self.validated(RecordSource(raw, deserialize, self.location(split)), split)

    def location(self, split: str) -> str:
        return f"{self.opts.dir or self.opts.name}/{split}"


class _Deserialize:
    """Serialised example -> {field: value} of only the fields the run reads ("a/b" paths resolved),
    so workers never pickle features nobody uses. A class (not a closure) so Grain's worker
    processes can pickle it."""

    def __init__(self, features, decoders: dict, fields: tuple[str, ...]):
        self.features, self.decoders, self.fields = features, decoders, fields

    def __call__(self, data: bytes) -> dict:
        example = self.features.deserialize_example_np(data, decoders=self.decoders)
        out = {}
        for path in self.fields:
            value = example
            for part in path.split("/"):
                value = value[part]
            out[path] = value
        return out
