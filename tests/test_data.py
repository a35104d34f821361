"""digits_captions build, transforms and grain pipelines.

Examples are identified by their image bytes (the 10,000 MNIST test images
are all distinct), so order, coverage and sharding are checked against the raw
IDX files rather than against the code under test.
"""

import collections
import gzip
import json
import os
import re
import shutil
import subprocess
import sys

import grain
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter

from mmjax.data import builders, pipeline
from mmjax.data.config import data_config
from mmjax.data.datasets import digits, get_dataset, mnist
from mmjax.data.example import bind_modalities
from mmjax.data.tokenizer import get_tokenizer
from mmjax.data.transforms import BadRecordError, RandomShift, ValidateRecord

_NUMBER_WORDS = {**{n: i for i, n in enumerate(mnist.CLASS_NAMES)}, **{str(i): i for i in range(10)}}


@pytest.fixture(scope="module")
def raw():
    images, labels = mnist.load_raw()
    return {"by_image": {im.tobytes(): i for i, im in enumerate(images)}, "labels": labels}


@pytest.fixture(scope="module")
def builder():
    return digits.DigitsCaptions(data_dir=builders.ensure_prepared(digits.DigitsCaptions))


@pytest.fixture
def cfg():
    cfg = data_config()
    cfg.num_threads, cfg.prefetch_buffer_size = 2, 4  # Threads on: resume must hold with them.
    return cfg


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer("bytes", data_config().text.max_len)


def mnist_indices(images, raw):
    """MNIST index of each un-augmented float image in [-1, 1]."""
    u8 = np.rint((images[..., 0] + 1.0) * 127.5).astype(np.uint8)
    return [raw["by_image"][im.tobytes()] for im in u8]


def named_digits(caption: str) -> set[int]:
    return {_NUMBER_WORDS[w] for w in re.findall(r"[a-z0-9]+", caption) if w in _NUMBER_WORDS}


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):  # "present", "flags"
            assert_batches_equal(a[k], b[k])
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# -- dataset build ------------------------------------------------------------

def test_read_idx_checks_magic(tmp_path):
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as f:
        f.write((0x0803).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\0")
    with pytest.raises(ValueError, match="magic"):
        mnist.read_idx(str(path), 1)


def test_splits(builder, raw):
    seen = {}
    for split, size in (("train", 8000), ("test", 2000)):
        records = list(builder.as_data_source(split))
        assert len(records) == size
        seen[split] = {int(r["index"]) for r in records}
        assert len(seen[split]) == size
        templates = set()
        for r in records:
            i = int(r["index"])
            assert raw["by_image"][r["image"][..., 0].tobytes()] == i
            assert r["label"] == raw["labels"][i]
            caption = r["caption"].decode()
            assert named_digits(caption) == {r["label"]}, caption
            templates |= {t for t in mnist.CAPTION_TEMPLATES if mnist.format_caption(t, r["label"]) == caption}
        assert len(templates) == len(mnist.CAPTION_TEMPLATES)  # Every template is used.
    assert not seen["train"] & seen["test"]
    assert seen["train"] | seen["test"] == set(range(10000))
    assert sorted(seen["test"]) == sorted(mnist.split_indices(10000)["test"])  # The fixed seed.


def test_templates_and_prompts():
    assert len(mnist.CAPTION_TEMPLATES) >= 8 and len(mnist.ZEROSHOT_PROMPTS) >= 4
    assert set(mnist.ZEROSHOT_PROMPTS) & set(mnist.CAPTION_TEMPLATES)
    fit = data_config().text.max_len - 2
    for template in mnist.CAPTION_TEMPLATES + mnist.ZEROSHOT_PROMPTS:
        for y in range(10):  # Truncation by the tokenizer must never drop the class.
            assert len(mnist.format_caption(template, y).encode()) <= fit, template
            assert named_digits(mnist.format_caption(template, y)) == {y}


_RACE = """
import os, sys, time, logging
logging.basicConfig(level=logging.INFO)
from mmjax.data import builders
from mmjax.data.datasets import digits
open(sys.argv[2], "w").close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.01)
builders.ensure_prepared(digits.DigitsCaptions, sys.argv[1])
"""


def test_concurrent_prepare_builds_once(tmp_path):
    # Both processes are released together once imported, so without the lock both would build.
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", _RACE, str(tmp_path / "data"), str(r), str(go)],
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True) for r in ready]
    while not all(r.exists() for r in ready):
        assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs]
    go.touch()
    logs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert sum(log.count("built digits_captions") for log in logs) == 1, logs


# -- transforms ---------------------------------------------------------------

def _record(**changes):
    record = {"image": np.zeros(mnist.IMAGE_SHAPE, np.uint8), "label": 3, "caption": b"the digit 3", "index": 5}
    return {k: v for k, v in {**record, **changes}.items() if v is not ...}


def _validator(where, modalities=("image", "text")):
    """The digits dataset's validation of image and caption, as its open_split builds it."""
    cfg = data_config(modalities=modalities)
    return ValidateRecord(where, bind_modalities(cfg, None, train=False), {"image": "image", "text": "caption"},
                          num_classes=10)


@pytest.mark.parametrize("record, message", [
    (_record(image=np.zeros((27, 28, 1), np.uint8)), "field 'image' has shape (27, 28, 1), expected (28, 28, 1)"),
    (_record(image=np.zeros(mnist.IMAGE_SHAPE, np.float32)), "field 'image' has dtype float32, expected uint8"),
    (_record(label=...), "field 'label' is missing"),
    (_record(image=None), "field 'image' is missing"),  # What TFDS gives for an absent feature.
    (_record(caption=b"  "), "field 'caption' (text) is empty"),
    (_record(caption=b"\xff"), "field 'caption' (text) is not valid UTF-8"),
    (_record(label=10), "field 'label' is 10, expected an integer in [0, 10)"),
    (_record(label=-1), "field 'label' is -1"),
])
def test_validate_names_example_and_field(record, message):
    validate = _validator("digits_captions/train")
    with pytest.raises(BadRecordError) as err:
        validate.map_with_index(17, record)
    assert str(err.value).startswith(f"digits_captions/train example 17: {message}")


def test_validate_passes_good_record():
    validate = _validator("d/s")
    assert validate.map_with_index(0, _record())["caption"] == "the digit 3"


def test_random_shift_is_a_pad_crop_and_deterministic():
    image = np.random.default_rng(0).uniform(-1, 1, (28, 28, 1)).astype(np.float32)
    s = 2
    padded = np.pad(image, ((s, s), (s, s), (0, 0)), constant_values=-1.0)
    crops = {(y, x): padded[y:y + 28, x:x + 28] for y in range(2 * s + 1) for x in range(2 * s + 1)}
    ds = grain.MapDataset.source([{"image": image}] * 200).random_map(RandomShift(s), seed=7)
    offsets = collections.Counter()
    for i in range(len(ds)):
        out = ds[i]["image"]
        np.testing.assert_array_equal(out, ds[i]["image"])  # Same index, same shift.
        match = [o for o, c in crops.items() if np.array_equal(c, out)]
        assert len(match) == 1
        offsets[match[0]] += 1
    assert len(offsets) == 25  # Every offset in [-2, 2]^2 occurs.


# -- pipelines ----------------------------------------------------------------

def test_train_batches(cfg, tok):
    it = pipeline.make_train_iterator(cfg, global_batch_size=64, seed=0, tokenizer=tok, shard_index=0, shard_count=1)
    batch = next(it)
    assert batch.keys() == {"image", "text", "label", "present", "flags"}
    assert batch["present"]["image"].all() and batch["present"]["text"].all()
    assert batch["flags"]["text_truncated"].dtype == bool and not batch["flags"]["text_truncated"].any()
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (64, 28, 28, 1)
    assert batch["text"].dtype == np.int32 and batch["text"].shape == (64, cfg.text.max_len)
    assert batch["label"].dtype == np.int32 and batch["label"].shape == (64,)
    assert batch["image"].min() == -1.0 and batch["image"].max() == 1.0
    assert (batch["text"][:, 0] == tok.bos_id).all() and ((batch["text"] == tok.eot_id).sum(1) == 1).all()
    for text, label in zip(batch["text"], batch["label"]):
        assert named_digits(tok.decode(text)) == {label}


SMALL = 1000  # Train examples in the epoch-boundary tests, to keep them fast.


@pytest.fixture
def small_train(monkeypatch, cfg, tok):
    """Pipelines over the first SMALL train records; returns make(batch, shard_index=0, shard_count=1)."""
    full = pipeline.open_split
    monkeypatch.setattr(pipeline, "open_split",
                        lambda c, split: full(c, split)[:SMALL] if split == "train" else full(c, split))

    def make(global_batch_size, shard_index=0, shard_count=1):
        return pipeline.make_train_iterator(cfg, global_batch_size=global_batch_size, seed=3, tokenizer=tok,
                                            shard_index=shard_index, shard_count=shard_count)
    return make


def run_with_states(iterator, n):
    """n batches and the state before each, as a checkpoint would store it (via JSON)."""
    states, batches = [], []
    for _ in range(n):
        states.append(json.loads(json.dumps(iterator.get_state())))
        batches.append(next(iterator))
    return batches, states


def test_epochs_cover_train_split_and_reshuffle(small_train, cfg, builder, raw):
    cfg.augment = False
    epoch1 = take(small_train(200), 5)
    order = [i for b in epoch1 for i in mnist_indices(b["image"], raw)]
    stored = builder.as_data_source("train")
    stored_order = [int(stored[i]["index"]) for i in range(SMALL)]
    assert sorted(order) == sorted(stored_order) and order != stored_order
    epoch2 = small_train(200)
    epoch2.set_state({"next_index": 5})
    assert mnist_indices(next(epoch2)["image"], raw) != order[:200]


def test_resume_is_bit_exact_across_epoch_boundary(small_train):
    # 96 does not divide 1000: batch 10 holds the end of epoch 1 and the start of epoch 2.
    reference, states = run_with_states(small_train(96), 14)
    for start in (3, 9, 10):
        resumed = small_train(96)
        resumed.set_state(states[start])
        for expected in reference[start:start + 3]:
            assert_batches_equal(next(resumed), expected)


def test_shards_concatenate_to_global_batch(small_train):
    # Exact, not just as a multiset: shard k holds rows [k*b, (k+1)*b) of the global batch.
    reference = take(small_train(96), 11)
    shards = [small_train(96, shard_index=k, shard_count=2) for k in range(2)]
    for expected in reference:  # Crosses the epoch boundary too.
        local = [next(s) for s in shards]
        assert local[0]["image"].shape[0] == 48
        assert_batches_equal(jax.tree_util.tree_map(lambda *rows: np.concatenate(rows), *local), expected)


def test_augmentation_changes_images_not_labels(small_train, cfg):
    shifted = next(small_train(200))
    cfg.augment = False
    plain = next(small_train(200))
    np.testing.assert_array_equal(plain["label"], shifted["label"])
    changed = (plain["image"] != shifted["image"]).any(axis=(1, 2, 3))
    assert 0.8 < changed.mean() < 1.0  # 1/25 of shifts are (0, 0).


def test_train_argument_errors(cfg, tok):
    with pytest.raises(ValueError, match="not divisible"):
        pipeline.make_train_iterator(cfg, global_batch_size=10, seed=0, tokenizer=tok, shard_index=0, shard_count=3)
    cfg.name = "mnist"
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'.*digits_captions"):
        pipeline.make_train_iterator(cfg, global_batch_size=8, seed=0, tokenizer=tok, shard_index=0, shard_count=1)


def test_eval_batches_cover_split_once(cfg, tok, builder, raw):
    batches = pipeline.make_eval_batches(cfg, split="test", batch_size=300, tokenizer=tok)
    assert len(batches) == 7
    for b in batches:
        assert b.keys() == {"image", "text", "label", "present", "flags", "mask"}
        assert b["image"].shape == (300, 28, 28, 1)
    assert [int(b["mask"].sum()) for b in batches] == [300] * 6 + [200]
    assert batches[-1]["mask"][:200].all() and not (batches[-1]["image"][200:]).any()
    real = {k: np.concatenate([b[k][b["mask"]] for b in batches]) for k in ("image", "label")}
    stored = list(builder.as_data_source("test"))
    assert mnist_indices(real["image"], raw) == [int(r["index"]) for r in stored]  # Stored order.
    np.testing.assert_array_equal(real["label"], [r["label"] for r in stored])
    with pytest.raises(ValueError, match=r"no split 'validation'.*\['test', 'train'\]"):
        pipeline.make_eval_batches(cfg, split="validation", batch_size=8, tokenizer=tok)


def test_eval_batches_are_sharded_across_processes_and_streamed(cfg, tok):
    """Process k of S holds rows [k*B/S, (k+1)*B/S) of every global batch, all processes the same
    number of batches (the last ones all padding where the split ends early); streamed (no cache)
    or cached, a pass gives the same batches."""
    whole = pipeline.make_eval_batches(cfg, split="test", batch_size=600, tokenizer=tok)
    shards = [pipeline.EvalBatches(cfg, split="test", batch_size=600, tokenizer=tok, shard_index=k, shard_count=3)
              for k in range(3)]
    assert [len(s) for s in shards] == [len(whole)] * 3 == [4] * 3
    for b, batch in enumerate(whole):
        parts = [list(s)[b] for s in shards]
        for key in ("image", "text", "label", "mask"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), batch[key], err_msg=key)
    assert [int(list(s)[3]["mask"].sum()) for s in shards] == [200, 0, 0]  # 2,000 = 3 x 600 + 200
    cfg.eval_cache_examples = 0
    streamed = pipeline.EvalBatches(cfg, split="test", batch_size=600, tokenizer=tok, shard_index=1, shard_count=3)
    for _ in range(2):  # read from storage on every pass
        for a, b in zip(streamed, shards[1]):
            assert_batches_equal(a, b)
    assert streamed._cache is None and shards[1]._cache is not None


def test_corrupt_record_names_example(cfg, tok, builder, tmp_path):
    # A copy of the dataset whose test file has record 5 overwritten by garbage.
    shutil.copytree(builder.data_path, tmp_path / digits.NAME / "1.0.0")
    path = next((tmp_path / digits.NAME / "1.0.0").glob("*-test.array_record*"))
    records = list(builder.as_data_source("test", deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES))
    records[5] = b"\xffnot a tf.train.Example"
    os.remove(path)
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for r in records:
        writer.write(r)
    writer.close()
    cfg.data_dir = str(tmp_path)
    with pytest.raises(BadRecordError, match=r"^digits_captions/test example 5: cannot deserialize record"):
        pipeline.make_eval_batches(cfg, split="test", batch_size=100, tokenizer=tok)


def test_dataset_zeroshot_prompts_are_class_major():
    """[C][T]: every template of mnist.ZEROSHOT_PROMPTS filled in for each class, in label order."""
    prompts = get_dataset(data_config()).zeroshot_prompts()
    assert len(prompts) == 10 and all(len(p) == len(mnist.ZEROSHOT_PROMPTS) for p in prompts)
    assert prompts[7][1] == mnist.ZEROSHOT_PROMPTS[1].format(name="seven", digit=7)
    assert all(named_digits(p) == {c} for c, row in enumerate(prompts) for p in row)
