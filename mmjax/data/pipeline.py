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
same bits as an uninterrupted one, whatever the number of prefetch threads or
worker processes (data.num_workers: Grain's multiprocessing prefetch, so
decoding runs outside the trainer's GIL).

Evaluation splits are streamed and sharded across processes (`EvalBatches`).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import grain
from absl import flags
import ml_collections
import numpy as np

from mmjax.batch_keys import EVAL_MASK, LABEL, PRESENT
from mmjax.errors import ConfigError
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


def num_workers(data_cfg: ml_collections.ConfigDict) -> int:
    """data.num_workers, with -1 = one worker process per CPU core but one (the trainer's)."""
    n = int(data_cfg.num_workers)
    if n == -1:
        return max(1, (os.cpu_count() or 2) - 1)
    if n < 0:
        raise ValueError(f"data.num_workers={n}: expected >= 0, or -1 for one per CPU core but one")
    return n


def _iterate(ds: grain.MapDataset, data_cfg: ml_collections.ConfigDict) -> grain.IterDataset:
    """`ds` read ahead by data.num_threads threads in each of data.num_workers processes.

    Worker processes (Grain's mp_prefetch) take every n-th element of `ds` and the parent
    interleaves them back in order, so the stream and its checkpointed state are the same for
    any number of workers, including none; decoding then runs outside the trainer's GIL."""
    it = ds.to_iter_dataset(_read_options(data_cfg))
    workers = num_workers(data_cfg)
    if workers:
        if not flags.FLAGS.is_parsed():
            # Grain's worker start reads its absl flags; outside an absl app (tests, notebooks,
            # benchmarks) they are unparsed: take their defaults.
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                         per_worker_buffer_size=data_cfg.prefetch_buffer_size),
                            worker_init_fn=_die_with_parent)
    return it


def _die_with_parent(worker_index: int, worker_count: int) -> None:
    """Runs first in each worker process: the worker ends when the trainer does, however it ends.

    A preempted or SIGKILLed trainer cannot stop its workers; orphans would keep decoding, hold
    the job's stdout open and stall a restart. Linux delivers SIGKILL to the worker when its parent
    dies (prctl PR_SET_PDEATHSIG); elsewhere a thread polls for the parent."""
    del worker_index, worker_count
    parent = os.getppid()
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG = 1
            raise OSError(ctypes.get_errno(), "prctl")
    except OSError:
        def watch():
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)
        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def make_train_iterator(data_cfg: ml_collections.ConfigDict, *, global_batch_size: int, seed: int,
                        tokenizer: Tokenizer, shard_index: int, shard_count: int) -> "BatchPositionIterator":
    """Infinite iterator of this process's share of each global batch.

    Yields b = global_batch_size // shard_count rows of what
    the dataset's example transform (`mmjax.data.example.ExampleTransform`) makes (inputs of the configured
    modalities, "label", and the per-example "present" and "flags" dicts).

    State: `get_state()` is {"next_index": <batches yielded>, "examples_seen": <that many global
    batches in examples>} (plain ints, JSON-serialisable), the same on every process and for any
    data.num_workers; `set_state()` of it on a freshly made iterator with the same arguments
    resumes bit-exactly, and one with another global batch size resumes at the same example.
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
    example = dataset.example_transform(tokenizer, train=True, where=dataset.location(data_cfg.train_split))
    ds = ds.random_map(_TrainExample(example), seed=int(augment_seed))
    # Local batch j of the whole stream is rows [j*b, (j+1)*b); global batch t
    # is local batches t*S .. t*S+S-1, so shard k takes every S-th from k.
    ds = ds.batch(local_batch_size, drop_remainder=True)[shard_index::shard_count]
    return BatchPositionIterator(ds, data_cfg, global_batch_size)


class BatchPositionIterator(grain.DatasetIterator):
    """Iterates a MapDataset of batches from a position; the state is that position.

    With worker processes, Grain's own iterator state lists every worker's position, so a
    checkpoint would pin data.num_workers; this state, {"next_index": batches yielded}, is the
    same for any number of workers or threads, and a restored iterator restarts the workers at
    that batch (`ds[next_index:]`: every batch is a pure function of its position).

    The state also holds the position in examples, so a run resumed with another global batch
    size (config.resume.allow_batch_size_change) continues at the same example of the stream;
    a position that is not a whole number of new batches is refused.
    """

    def __init__(self, ds: grain.MapDataset, data_cfg: ml_collections.ConfigDict, global_batch_size: int):
        super().__init__()
        self._ds, self._data_cfg, self._global_batch_size = ds, data_cfg, global_batch_size
        self._next, self._it = 0, None

    def __next__(self):
        if self._it is None:
            self._it = iter(_iterate(self._ds[self._next:], self._data_cfg))
        batch = next(self._it)
        self._next += 1
        return batch

    def get_state(self) -> dict:
        return {"next_index": self._next, "examples_seen": self._next * self._global_batch_size}

    def set_state(self, state: dict) -> None:
        self.close()
        examples = int(state.get("examples_seen", int(state["next_index"]) * self._global_batch_size))
        if examples % self._global_batch_size:
            raise ConfigError(f"config.batch_size={self._global_batch_size}: the checkpoint's data position, "
                              f"{examples} examples, is not a whole number of batches of this size; pick a "
                              f"batch size that divides it")
        self._next = examples // self._global_batch_size

    def close(self) -> None:
        """Stops the worker processes (they also stop with the process)."""
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()
        self._it = None


class EvalBatches:
    """Every example of `split` once, in stored order, without augmentation, in padded batches of
    this process's rows; iterable any number of times (one pass per evaluation).

    Global batch b is examples [b*B, (b+1)*B) (B = batch_size); process k of S reads and decodes
    only rows [k*B/S, (k+1)*B/S) of it, so an evaluation split is streamed and sharded across
    processes rather than held in memory whole (ImageNet's 50,000 validation images at 224 px
    are 30 GB as float32). Every process yields the same number of batches (`len(self)`), each of
    exactly B/S rows (one compiled eval step); rows past the split's end are zeros with
    "mask" False. A split of at most data.eval_cache_examples examples is kept after its first
    pass (the embedded datasets: evaluated every few hundred steps, decoded once).

    Keys: the modalities' inputs, label, present, flags, and mask.
    """

    def __init__(self, data_cfg: ml_collections.ConfigDict, *, split: str, batch_size: int, tokenizer: Tokenizer,
                 shard_index: int = 0, shard_count: int = 1):
        if batch_size % shard_count:
            raise ValueError(f"eval batch_size {batch_size} is not divisible by the {shard_count} processes")
        dataset = get_dataset(data_cfg)
        example = dataset.example_transform(tokenizer, train=False, where=dataset.location(split))
        self._examples = open_split(data_cfg, split).map_with_index(_EvalExample(example, seed=0))
        self.data_cfg, self.split = data_cfg, split
        self.num_examples = len(self._examples)
        self.rows = batch_size // shard_count
        self.shard_index, self.shard_count = shard_index, shard_count
        self._len = -(-self.num_examples // batch_size)
        self._cache = None
        self._cacheable = self.num_examples <= data_cfg.eval_cache_examples

    def __len__(self) -> int:
        return self._len

    def __iter__(self):
        if self._cache is not None:
            return iter(self._cache)
        batches = self._stream()
        if not self._cacheable:
            return batches
        self._cache = list(batches)
        return iter(self._cache)

    def _stream(self):
        # This process's chunks of `rows` examples: chunk j is examples [j*rows, (j+1)*rows), and
        # global batch b is chunks b*S .. b*S+S-1.
        chunks = self._examples.batch(self.rows, drop_remainder=False)
        mine = chunks[self.shard_index::self.shard_count]
        template = None
        yielded = 0
        for batch in _iterate(mine, self.data_cfg):
            template = batch if template is None else template
            yielded += 1
            yield _pad_batch(batch, self.rows)
        if yielded < self._len:  # the split ended before this process's last rows: all-padding batches
            empty = _pad_batch(_tree_map(lambda x: x[:0], template if template is not None else chunks[0]),
                               self.rows)
            for _ in range(self._len - yielded):
                yield empty


def make_eval_batches(data_cfg: ml_collections.ConfigDict, *, split: str, batch_size: int,
                      tokenizer: Tokenizer) -> list[dict[str, np.ndarray]]:
    """Every batch of `split` (one process's view, `EvalBatches`), in a list."""
    return list(EvalBatches(data_cfg, split=split, batch_size=batch_size, tokenizer=tokenizer))


def _pad_batch(batch: dict, size: int) -> dict:
    n = len(batch[LABEL])

    def pad(v):
        if isinstance(v, dict):  # "present", "flags"
            return {k: pad(x) for k, x in v.items()}
        return np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)])
    padded = pad(batch)
    padded[EVAL_MASK] = np.arange(size) < n
    return padded


def _tree_map(fn, tree):
    # jax.tree.map without importing jax: Grain's worker processes import this module.
    return {k: _tree_map(fn, v) for k, v in tree.items()} if isinstance(tree, dict) else fn(tree)
