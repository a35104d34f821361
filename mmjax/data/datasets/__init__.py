"""Datasets as components: one module per dataset, one registry (`DATASETS`).

Each dataset declares its schema (which stored field feeds which modality, labels, class names,
zero-shot prompts) and opens its splits; see `base.py`. Generic code reaches one only through
`get_dataset(config.data)`. A project adds a dataset by registering its own subclass:
`@DATASETS.register("my_data") class MyData(Dataset): ...`. The built-in ones register here.
"""
from mmjax.data.datasets.base import DATASETS, Dataset, TfdsDataset, get_dataset
from mmjax.data.datasets import avdigits, digits, fake, tfds_dataset  # noqa: F401  (registers the built-ins)

__all__ = ["DATASETS", "Dataset", "TfdsDataset", "get_dataset"]
