"""`fake`: deterministic random examples of the configured shapes, made in memory.

For running a config where its data is not: a pod config on a laptop or in CI, or a new
cluster before the data lands. `--config.data.name=fake` (a pod config's `data=fake` variant)
swaps the dataset for examples of exactly the shapes and dtypes the real pipeline hands the
model, for every configured modality (each modality's `specs()`, made by its `fake()`), so that
model, sharding, train step, evaluation and checkpointing (data iterator included: the stream
is the same Grain pipeline, shuffled, repeated, batched and sharded, so its state is the same
position counter and a resumed run continues bit-exactly) all run unchanged. No download, no
build.

Record i of split s is a pure function of (data.fake.seed, s, i): it is the same in every epoch
and every evaluation, and the splits differ. The splits are the config's data.train_split and
data.eval_split; their sizes, the number of classes and the seed are `data.fake`. Labels are
uniform over the classes; captions are random class names, so captions and zero-shot prompts
share a vocabulary.
"""
from __future__ import annotations

import dataclasses
import zlib

import grain
import numpy as np

from mmjax.batch_keys import rename_view
from mmjax.data.datasets.base import DATASETS, Dataset
from mmjax.data.example import bind_modalities
from mmjax.data.modalities import MODALITIES, Modality

NAME = "fake"
# Class names up to ten are number words (short under a byte tokenizer), beyond that "class <i>".
_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@DATASETS.register(NAME)
class Fake(Dataset):
    name = NAME
    options_key = NAME
    prompt_templates = ("{name}", "a {name}", "the {name}")

    @classmethod
    def default_config(cls):
        return {"train_examples": 1024, "eval_examples": 256, "num_classes": 10, "seed": 0}

    @property
    def fields(self):  # every registered modality can be generated
        return {m: m for m in MODALITIES}

    @property
    def options(self):
        return self.data_cfg[self.options_key]

    @property
    def class_names(self):
        n = self.options.num_classes
        return _WORDS[:n] if n <= len(_WORDS) else tuple(f"class {i}" for i in range(n))

    def open_split(self, split: str) -> grain.MapDataset:
        """Records {"_index", "_split"} of `split` (data.train_split or data.eval_split, whatever their
        names); `FakeExample` makes each one's content."""
        sizes = {self.data_cfg.train_split: self.options.train_examples,
                 self.data_cfg.eval_split: self.options.eval_examples}
        self._check_split(split, sizes)
        return grain.MapDataset.range(sizes[split]).map(lambda i: {"_index": int(i), "_split": split})

    def example_transform(self, tokenizer, *, train: bool, where: str):
        del where  # generated examples are never bad
        second_view = tuple(self.data_cfg.get("second_view", ())) if train else ()
        return FakeExample(bind_modalities(self.data_cfg, tokenizer, train=train), second_view, self.class_names,
                           self.options.seed)


@dataclasses.dataclass
class FakeExample:
    """record -> model inputs; a stand-in for ExampleTransform with the same call signature."""

    modalities: dict[str, Modality]
    second_view: tuple[str, ...]
    class_names: tuple[str, ...]
    seed: int

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        del rng  # the record's content depends on its index only, as a stored record's would
        rng = np.random.default_rng([self.seed, zlib.crc32(record["_split"].encode()), record["_index"]])
        out = {"label": np.int32(rng.integers(len(self.class_names))), "present": {}, "flags": {}}
        for m, modality in self.modalities.items():
            out |= modality.fake(rng, out["flags"], self.class_names)
            out["present"][m] = np.bool_(True)
            if m in self.second_view:
                out |= rename_view(modality.fake(rng, {}, self.class_names), m)
        return out
