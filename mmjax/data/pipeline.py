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
import tensorflow_datasets as tfds

from mmjax.data import digits
from mmjax.data.tokenizer import Tokenizer
from mmjax.data.transforms import (DecodeImage, RandomShift, RecordSource,
                                   TokenizeCaption, ValidateRecord)

DATASETS = (digits.NAME,)


def default_data_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "name": digits.NAME,
        "data_dir": "",  # "" -> $MMJAX_DATA_DIR, else ~/.cache/mmjax/tfds.
        "train_split": "train",
        "eval_split": "test",
        "augment": True,
        "max_shift": 2,  # Pixels; digits fill a centred 20x20 box, so 2 rarely clips one.
        "text_len": 32,  # Tokens incl. bos/eot; every caption template fits in 30 bytes.
        "tokenizer": "bytes",
        # Threads building whole batches ahead of the trainer. Decoding is
        # mostly GIL-bound Python, so more threads overlap with device steps
        # but barely add throughput.
        "num_threads": 2,
        "prefetch_buffer_size": 4,  # Batches (not examples) held ready.
    })


def open_split(data_cfg: ml_collections.ConfigDict, split: str) -> grain.MapDataset:
    """Validated, decoded records of one split in stored order (builds the
    dataset on first use). Elements: image float32 [28, 28, 1] in [-1, 1],
    label int32, caption str."""
    if data_cfg.name not in DATASETS:
        raise ValueError(f"unknown dataset {data_cfg.name!r}; valid names: {list(DATASETS)}")
    builder = digits.DigitsCaptions(data_dir=digits.ensure_prepared(data_cfg.data_dir or None))
    if split not in builder.info.splits:
        raise ValueError(f"{data_cfg.name} has no split {split!r}; valid splits: {sorted(builder.info.splits)}")
    where = f"{data_cfg.name}/{split}"
    raw = builder.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    source = RecordSource(raw, builder.info.features.deserialize_example_np, where)
    # Validation sits before any shuffle so its index is the position in the split.
    validate = ValidateRecord(where, image_shape=digits.IMAGE_SHAPE, num_classes=len(digits.CLASS_NAMES))
    return grain.MapDataset.source(source).map_with_index(validate).map(DecodeImage())


def _read_options(data_cfg: ml_collections.ConfigDict) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=data_cfg.num_threads,
                             prefetch_buffer_size=data_cfg.prefetch_buffer_size)


def make_train_iterator(data_cfg: ml_collections.ConfigDict, *, global_batch_size: int, seed: int,
                        tokenizer: Tokenizer, shard_index: int, shard_count: int) -> grain.DatasetIterator:
    """Infinite iterator of this process's share of each global batch.

    Yields {"image": float32 [b, 28, 28, 1], "text": int32 [b, L],
    "label": int32 [b]} with b = global_batch_size // shard_count.

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

    ds = open_split(data_cfg, data_cfg.train_split)
    ds = ds.shuffle(seed=int(shuffle_seed)).repeat()  # repeat re-seeds the shuffle per epoch.
    if data_cfg.augment:
        # After repeat: the index is the stream position, so epochs augment differently.
        ds = ds.random_map(RandomShift(data_cfg.max_shift), seed=int(augment_seed))
    ds = ds.map(TokenizeCaption(tokenizer))
    # Local batch j of the whole stream is rows [j*b, (j+1)*b); global batch t
    # is local batches t*S .. t*S+S-1, so shard k takes every S-th from k.
    ds = ds.batch(local_batch_size, drop_remainder=True)[shard_index::shard_count]
    return iter(ds.to_iter_dataset(_read_options(data_cfg)))


def make_eval_batches(data_cfg: ml_collections.ConfigDict, *, split: str, batch_size: int,
                      tokenizer: Tokenizer) -> list[dict[str, np.ndarray]]:
    """Every example of `split` once, in stored order, without augmentation.

    Each batch has exactly `batch_size` rows (one compiled eval step); the
    last is zero-padded, and "mask" (bool [batch_size]) is True on real rows.
    Keys: image, text, label, mask.
    """
    ds = open_split(data_cfg, split).map(TokenizeCaption(tokenizer))
    ds = ds.batch(batch_size, drop_remainder=False)
    return [_pad_batch(batch, batch_size) for batch in ds.to_iter_dataset(_read_options(data_cfg))]


def _pad_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    n = len(batch["label"])
    padded = {k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
    padded["mask"] = np.arange(size) < n
    return padded
