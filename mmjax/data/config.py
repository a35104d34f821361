"""`config.data`: the input pipeline's options, assembled from the components that own them.

`data_config(name, modalities, **fields)` gives the run-level fields below, one `data.<m>` block
per registered modality (its `default_config`, so `--config.data.audio.num_frames=...` exists
whatever the modality set) and the options block of every registered dataset that has one
(`data.fake`). A config overrides what it needs after building it.
"""
from __future__ import annotations

import ml_collections

from mmjax.data.datasets import DATASETS
from mmjax.data.modalities import MODALITIES


def data_config(name: str = "digits_captions", modalities=("image", "text"), **fields) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict({
        "name": name,
        "data_dir": "",  # "" -> $MMJAX_DATA_DIR, else ~/.cache/mmjax/tfds.
        "train_split": "train",
        "eval_split": "test",
        "modalities": tuple(modalities),
        # Modality dropout: probability that a training example loses each modality
        # (marked absent in batch["present"]; objectives skip it).
        "drop_prob": {m: 0.0 for m in MODALITIES},
        "on_bad_input": "error",  # or "drop": mark the modality absent and count it
        # Modalities that also get a second, independently augmented view "<m>_view2" in
        # training (SimCLR / TCL); evaluation batches never have one.
        "second_view": (),
        "augment": True,  # the modalities' training augmentations (each block has its options)
        # Threads building whole batches ahead of the trainer. Decoding is mostly GIL-bound
        # Python, so more threads overlap with device steps but barely add throughput.
        "num_threads": 2,
        "prefetch_buffer_size": 4,  # Batches (not examples) held ready (per worker process with num_workers).
        # Worker processes decoding and augmenting batches (Grain's multiprocessing prefetch);
        # 0 = in the trainer's process (the embedded data needs no more), -1 = one per CPU core but
        # one. The stream and its checkpointed position do not depend on it.
        "num_workers": 0,
        # Evaluation splits of at most this many examples are decoded once and kept in memory;
        # larger ones are streamed from storage at every evaluation.
        "eval_cache_examples": 20_000,
    })
    for m, modality in MODALITIES.items():
        c[m] = modality.default_config()
    for _, dataset in DATASETS.items():
        if dataset.options_key:
            c[dataset.options_key] = dataset.default_config()
    for key, value in fields.items():
        if key not in c:
            raise ValueError(f"data_config: unknown field {key!r}; valid: {sorted(c.keys())}")
        c[key] = value
    return c
