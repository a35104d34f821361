"""Input pipelines on grain.MapDataset: an infinite, sharded, resumable train
stream and padded, masked eval batches.

Train stream, as one global sequence of examples:
    position p -> epoch p // N, shuffled (seed, epoch) -> augment (seed, p) -> tokenize
Global batch b is positions [b*B, (b+1)*B). Process k of S takes rows
[k*B/S, (k+1)*B/S) of it, so concatenating the processes' local batches in
process order gives exactly the single-process global batch, and a run's data
is the same on any number of hosts. Epochs are not padded or truncated: a
batch that straddles an epoch end holds the last examples of one epoch and the
first of the next, so every example is seen once per epoch.

Every element is a pure function of its position, so the iterator state is a
single counter (see `make_train_iterator`) and a restored iterator yields the
same bits as an uninterrupted one, whatever the number of prefetch threads.
"""

from __future__ import annotations

import grain
import ml_collections
import numpy as np

from mmjax.batch_keys import EVAL_MASK, LABEL, PRESENT
from mmjax.data.datasets import get_dataset
from mmjax.data.example import bind_modalities
from mmjax.data.tokenizer import Tokenizer


def open_split(data_cfg: ml_collections.ConfigDict, split: str) -> grain.MapDataset:
    """Validated raw records of one split of `data_cfg.name` in stored order (built on first use),
    each with "_index", its position in the split."""
    return get_dataset(data_cfg).open_split(split)


def input_specs(data_cfg: ml_collections.ConfigDict, tokenizer: Tokenizer | None) -> dict:
    """{key: (shape, dtype)} of one example's model inputs for data_cfg's modalities (each
    modality's `specs()`), plus "label" and "present": e.g. for sizing or initialising a model
    without reading any data."""
    out = {LABEL: ((), np.int32)}
    for modality in bind_modalities(data_cfg, tokenizer, train=False).values():
        out |= modality.specs()
    out[PRESENT] = {m: ((), np.bool_) for m in data_cfg.modalities}
    return out


class _TrainExample(grain.transforms.RandomMap):
    """The example transform with the generator grain seeds per stream position."""

    def __init__(self, fn):
        self.fn = fn

    def random_map(self, record, rng):
        return self.fn(record, rng)


class _EvalExample(grain.transforms.MapWithIndex):
    """The example transform with a generator seeded by the example's index: the same
    points are sampled for an example in every evaluation."""

    def __init__(self, fn, seed: int):
        self.fn, self.seed = fn, seed

    def map_with_index(self, index, record):
        return self.fn(record, np.random.default_rng([self.seed, index]))


def _read_options(data_cfg: ml_collections.ConfigDict) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=data_cfg.num_threads,
                             prefetch_buffer_size=data_cfg.prefetch_buffer_size)


def make_train_iterator(data_cfg: ml_collections.ConfigDict, *, global_batch_size: int, seed: int,
                        tokenizer: Tokenizer, shard_index: int, shard_count: int) -> grain.DatasetIterator:
    """Infinite iterator of this process's share of each global batch.

    Yields b = global_batch_size // shard_count rows of what
    the dataset's example transform (`mmjax.data.example.ExampleTransform`) makes (inputs of the configured
    modalities, "label", and the per-example "present" and "flags" dicts).

    State: `get_state()` is {"next_index": <batches yielded>} (plain ints,
    JSON-serialisable), the same on every process; `set_state()` of it on a
    freshly made iterator with the same arguments resumes bit-exactly.
    """
    if global_batch_size % shard_count:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by shard_count {shard_count}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} is outside [0, {shard_count})")
    local_batch_size = global_batch_size // shard_count
    # Independent streams for order and augmentation, both fixed by `seed`.
    shuffle_seed, augment_seed = np.random.SeedSequence(seed).generate_state(2)

    dataset = get_dataset(data_cfg)
    ds = open_split(data_cfg, data_cfg.train_split)
    ds = ds.shuffle(seed=int(shuffle_seed)).repeat()  # repeat re-seeds the shuffle per epoch.
    # After repeat: the index is the stream position, so epochs augment differently.
    example = dataset.example_transform(tokenizer, train=True, where=f"{data_cfg.name}/{data_cfg.train_split}")
    ds = ds.random_map(_TrainExample(example), seed=int(augment_seed))
    # Local batch j of the whole stream is rows [j*b, (j+1)*b); global batch t
    # is local batches t*S .. t*S+S-1, so shard k takes every S-th from k.
    ds = ds.batch(local_batch_size, drop_remainder=True)[shard_index::shard_count]
    return iter(ds.to_iter_dataset(_read_options(data_cfg)))


def make_eval_batches(data_cfg: ml_collections.ConfigDict, *, split: str, batch_size: int,
                      tokenizer: Tokenizer) -> list[dict[str, np.ndarray]]:
    """Every example of `split` once, in stored order, without augmentation.

    Each batch has exactly `batch_size` rows (one compiled eval step); the
    last is zero-padded, and "mask" (bool [batch_size]) is True on real rows.
    Keys: the modalities' inputs, label, present, flags, and mask.
    """
    dataset = get_dataset(data_cfg)
    example = dataset.example_transform(tokenizer, train=False, where=f"{data_cfg.name}/{split}")
    ds = open_split(data_cfg, split).map_with_index(_EvalExample(example, seed=0))
    ds = ds.batch(batch_size, drop_remainder=False)
    return [_pad_batch(batch, batch_size) for batch in ds.to_iter_dataset(_read_options(data_cfg))]


def _pad_batch(batch: dict, size: int) -> dict:
    n = len(batch[LABEL])

    def pad(v):
        if isinstance(v, dict):  # "present", "flags"
            return {k: pad(x) for k, x in v.items()}
        return np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)])
    padded = pad(batch)
    padded[EVAL_MASK] = np.arange(size) < n
    return padded
