"""`digits_captions`: the embedded MNIST test split as an image-caption dataset (8,000 train /
2,000 test), each image with one generated caption (mmjax.data.datasets.mnist).

Fields -> modalities: image -> image, caption -> text, and the image again -> points (its
strokes extruded to 3-D, re-sampled every epoch by the points modality). Zero-shot prompts mix
caption templates (in-distribution wording) with unseen ones. The builder writes ArrayRecord,
which `tfds.data_source` reads without TensorFlow; it is built once per data_dir, under a lock.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data import builders
from mmjax.data.datasets import mnist
from mmjax.data.datasets.base import DATASETS, TfdsDataset

NAME = "digits_captions"


class DigitsCaptions(builders.EmbeddedBuilder):
    """MNIST test digits with generated captions, 8,000 train / 2,000 test."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=mnist.IMAGE_SHAPE, dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=mnist.CLASS_NAMES),
                "caption": tfds.features.Text(),
                "index": tfds.features.Scalar(dtype=np.int64),
            }),
            supervised_keys=("image", "label"),
            homepage="http://yann.lecun.com/exdb/mnist/",
            license="CC BY-SA 3.0",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is embedded; nothing to download.
        images, labels = mnist.load_raw()
        texts = mnist.captions(labels)
        return {
            split: self._generate_examples(images, labels, texts, indices)
            for split, indices in mnist.split_indices(len(labels)).items()
        }

    def _generate_examples(self, images, labels, texts, indices):
        for i in indices:
            i = int(i)
            yield i, {
                "image": images[i][..., None],
                "label": int(labels[i]),
                "caption": texts[i],
                "index": i,
            }


@DATASETS.register(NAME)
class Digits(TfdsDataset):
    name = NAME
    fields = {"image": "image", "text": "caption", "points": "image"}
    builder_cls = DigitsCaptions
    prompt_templates = mnist.ZEROSHOT_PROMPTS

    @property
    def class_names(self):
        return mnist.CLASS_NAMES

    def zeroshot_prompts(self):
        return mnist.zeroshot_prompts()
