"""What a dataset is to mmjax: its schema and its records. One class per dataset, one registry.

A `Dataset` subclass declares
  name              the registry key (`config.data.name`)
  fields            {modality: stored field}: which field feeds which modality (one field may
                    feed several, e.g. the digits' image also gives the point cloud)
  label_field       the integer class label's field
  class_names       the classes, in label order
  prompt_templates  zero-shot prompt templates, formatted per class by `zeroshot_prompts`
                    ({name}: the class name, {index}: its label)
  default_config    its own options block `data.<options_key>` (most datasets need none)
and, bound to a run's `data` config, opens a split as a Grain MapDataset of validated records
(`open_split`) and makes the per-example transform (`example_transform`). Generic code (the
pipeline, the evaluators) reaches a dataset only through `get_dataset(data_cfg)`.
"""
from __future__ import annotations

from typing import Any, ClassVar

import grain
import tensorflow_datasets as tfds

from mmjax.data import builders
from mmjax.data.example import ExampleTransform, bind_modalities
from mmjax.data.transforms import RecordSource, ValidateRecord
from mmjax.registry import Registry

DATASETS = Registry("dataset")


class Dataset:
    name: ClassVar[str]
    fields: ClassVar[dict[str, str]]
    label_field: ClassVar[str] = "label"
    prompt_templates: ClassVar[tuple[str, ...]] = ("a photo of a {name}.",)
    options_key: ClassVar[str] = ""  # "" = no options block

    def __init__(self, data_cfg):
        self.data_cfg = data_cfg

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {}

    @property
    def class_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def zeroshot_prompts(self) -> list[list[str]]:
        """[C][T] prompts, class-major: every template filled in for each class."""
        return [[t.format(name=name, index=c) for t in self.prompt_templates] for c, name in enumerate(self.class_names)]

    def check_modalities(self) -> None:
        missing = set(self.data_cfg.modalities) - set(self.fields)
        if missing:
            raise ValueError(f"dataset {self.name} has no modality {sorted(missing)}; valid: {sorted(self.fields)}")

    def config_problems(self) -> list[str]:
        """One line per problem with this dataset's options that shows before any work (a directory
        the config names that does not hold the data): mmjax.validate reports them at start-up."""
        return []

    def open_split(self, split: str) -> grain.MapDataset:
        """Validated records of `split` in stored order, each with "_index", its position in the split."""
        raise NotImplementedError

    def example_transform(self, tokenizer, *, train: bool, where: str):
        """record -> model inputs (mmjax.data.example.ExampleTransform over this dataset's fields)."""
        return ExampleTransform.from_config(self.data_cfg, tokenizer, self.fields, train=train, where=where)

    def validated(self, records, split: str) -> grain.MapDataset:
        """`records` (a random-access source of stored records) checked field by field (each configured
        modality's `validate`, the label's range) with errors naming dataset, split, example and
        field: what `open_split` returns. Validation sits before any shuffle, so the index it
        names is the position in the split."""
        fields = {m: self.fields[m] for m in self.data_cfg.modalities}
        validate = ValidateRecord(self.location(split), bind_modalities(self.data_cfg, None, train=False), fields,
                                  num_classes=self.num_classes, label_field=self.label_field)
        return grain.MapDataset.source(records).map_with_index(validate)

    def location(self, split: str) -> str:
        """How errors name `split` of this dataset ("digits_captions/test", "/data/laion/train")."""
        return f"{self.name}/{split}"

    def _check_split(self, split: str, valid) -> None:
        if split not in valid:
            raise ValueError(f"{self.name} has no split {split!r}; valid splits: {sorted(valid)}")


class TfdsDataset(Dataset):
    """A dataset stored by a TFDS builder as ArrayRecord (read with `tfds.data_source`, no TensorFlow);
    `builder_cls` is built on first use under data.data_dir (`mmjax.data.builders.ensure_prepared`)."""

    builder_cls: ClassVar[type]

    def builder(self):
        return self.builder_cls(data_dir=builders.ensure_prepared(self.builder_cls, self.data_cfg.data_dir or None))

    def open_split(self, split: str) -> grain.MapDataset:
        builder = self.builder()
        self._check_split(split, builder.info.splits)
        raw = builder.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
        return self.validated(RecordSource(raw, builder.info.features.deserialize_example_np, self.location(split)), split)


def get_dataset(data_cfg) -> Dataset:
    """The registered dataset `data_cfg.name`, bound to data_cfg, its modalities checked."""
    dataset = DATASETS.get(data_cfg.name, "data.name")(data_cfg)
    dataset.check_modalities()
    return dataset
