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

from mmjax.data import avdigits, builders, digits, fake
from mmjax.data.modalities import ExampleTransform
from mmjax.data.tokenizer import Tokenizer
from mmjax.data.transforms import RecordSource, ValidateRecord

# name -> (builder class, modalities its examples can provide)
DATASETS = {
    digits.NAME: (digits.DigitsCaptions, ("image", "points", "text")),  # points: sampled from the image
    avdigits.NAME: (avdigits.AVDigits, avdigits.MODALITIES),
    # Generated in memory at the config's shapes (mmjax.data.fake): no builder, nothing to prepare.
    fake.NAME: (None, fake.MODALITIES),
}


def default_data_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({
        "name": digits.NAME,
        "data_dir": "",  # "" -> $MMJAX_DATA_DIR, else ~/.cache/mmjax/tfds.
        "train_split": "train",
        "eval_split": "test",
        "modalities": ("image", "text"),
        # Modality dropout: probability that a training example loses each
        # modality (marked absent in batch["present"]; objectives skip it).
        "drop_prob": {"image": 0.0, "audio": 0.0, "points": 0.0, "text": 0.0},
        "on_bad_input": "error",  # or "drop": mark the modality absent and count it
        # Modalities that also get a second, independently augmented view "<m>_view2" in
        # training (SimCLR / TCL); evaluation batches never have one.
        "second_view": (),
        "augment": True,
        "max_shift": 2,  # Pixels; digits fill a centred 20x20 box, so 2 rarely clips one.
        # Further training augmentations (with data.augment), off by default: random resized
        # crop of an area fraction in crop_scale (before the shift; (1, 1) = off), and
        # EDA-style caption edits before tokenising: per-word deletion, expected swaps per word.
        "crop_scale": (1.0, 1.0),
        "text_delete_prob": 0.0,
        "text_swap_prob": 0.0,
        "text_len": 32,  # Tokens incl. bos/eot; every caption template fits in 30 bytes.
        "tokenizer": "bytes",  # or "bpe"
        "tokenizer_path": "",  # vocabulary file ("bpe": merges); "" = the embedded default
        "audio": {
            # 8 kHz speech: 32 ms windows, 10 ms hop, 64 Slaney mels up to Nyquist.
            "logmel": {"sample_rate": avdigits.SAMPLE_RATE, "n_fft": 256, "win_length": 256, "hop_length": 80,
                       "n_mels": 64, "fmin": 0.0, "log_offset": 1e-6},
            "num_frames": 96,  # ~0.96 s: longer than 98% of FSDD clips; pad/crop + mask
            # Log-mel mean and std over every 10th FSDD clip with the settings above.
            "norm_mean": -9.6, "norm_std": 3.5,
            "gain_db": 6.0,
            "time_masks": 2, "time_width": 10, "freq_masks": 2, "freq_width": 8,
        },
        "points": {
            "num_points": 256, "thickness": 0.3,
            # In-plane rotation only: a full turn would make 6 and 9 the same cloud.
            "rotation_deg": 15.0, "scale_low": 0.8, "scale_high": 1.25,
            "jitter_sigma": 0.01, "jitter_clip": 0.05, "dropout_max": 0.5,
        },
        # Threads building whole batches ahead of the trainer. Decoding is
        # mostly GIL-bound Python, so more threads overlap with device steps
        # but barely add throughput.
        "num_threads": 2,
        "prefetch_buffer_size": 4,  # Batches (not examples) held ready.
    })


def dataset_builder(data_cfg: ml_collections.ConfigDict):
    """The prepared TFDS builder of `data_cfg.name` (built on first use)."""
    if data_cfg.name not in DATASETS:
        raise ValueError(f"unknown dataset {data_cfg.name!r}; valid names: {sorted(DATASETS)}")
    builder_cls, available = DATASETS[data_cfg.name]
    missing = set(data_cfg.modalities) - set(available)
    if missing:
        raise ValueError(f"dataset {data_cfg.name} has no modality {sorted(missing)}; valid: {list(available)}")
    return builder_cls(data_dir=builders.ensure_prepared(builder_cls, data_cfg.data_dir or None))


def open_split(data_cfg: ml_collections.ConfigDict, split: str) -> grain.MapDataset:
    """Validated raw records of one split in stored order (builds the dataset on
    first use), each with "_index", its position in the split."""
    if data_cfg.name == fake.NAME:  # generated, not stored: nothing to build or validate
        return fake.open_split(data_cfg, split)
    builder = dataset_builder(data_cfg)
    if split not in builder.info.splits:
        raise ValueError(f"{data_cfg.name} has no split {split!r}; valid splits: {sorted(builder.info.splits)}")
    where = f"{data_cfg.name}/{split}"
    raw = builder.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    source = RecordSource(raw, builder.info.features.deserialize_example_np, where)
    # Validation sits before any shuffle so its index is the position in the split.
    validate = ValidateRecord(where, image_shape=digits.IMAGE_SHAPE, num_classes=len(digits.CLASS_NAMES))
    return grain.MapDataset.source(source).map_with_index(validate)


def _example_fn(data_cfg: ml_collections.ConfigDict):
    """record -> model inputs: ExampleTransform, or the fake dataset's generator of them."""
    return fake.FakeExample if data_cfg.name == fake.NAME else ExampleTransform


class _TrainExample(grain.transforms.RandomMap):
    """ExampleTransform with the generator grain seeds per stream position."""

    def __init__(self, fn: ExampleTransform):
        self.fn = fn

    def random_map(self, record, rng):
        return self.fn(record, rng)


class _EvalExample(grain.transforms.MapWithIndex):
    """ExampleTransform with a generator seeded by the example's index: the same
    points are sampled for an example in every evaluation."""

    def __init__(self, fn: ExampleTransform, seed: int):
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
    `mmjax.data.modalities.ExampleTransform` makes (inputs of the configured
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

    ds = open_split(data_cfg, data_cfg.train_split)
    ds = ds.shuffle(seed=int(shuffle_seed)).repeat()  # repeat re-seeds the shuffle per epoch.
    # After repeat: the index is the stream position, so epochs augment differently.
    example = _example_fn(data_cfg).from_config(data_cfg, tokenizer, train=True,
                                                where=f"{data_cfg.name}/{data_cfg.train_split}")
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
    example = _example_fn(data_cfg).from_config(data_cfg, tokenizer, train=False, where=f"{data_cfg.name}/{split}")
    ds = open_split(data_cfg, split).map_with_index(_EvalExample(example, seed=0))
    ds = ds.batch(batch_size, drop_remainder=False)
    return [_pad_batch(batch, batch_size) for batch in ds.to_iter_dataset(_read_options(data_cfg))]


def _pad_batch(batch: dict, size: int) -> dict:
    n = len(batch["label"])

    def pad(v):
        if isinstance(v, dict):  # "present", "flags"
            return {k: pad(x) for k, x in v.items()}
        return np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)])
    padded = pad(batch)
    padded["mask"] = np.arange(size) < n
    return padded
