"""Real formats through the whole input path: converted (mmjax.ingest) or prepared by TFDS, read by
the `tfds` dataset, decoded in the pipeline, trained and evaluated.

Parity is checked against the embedded path on the same content: PNG is lossless and FLAC too,
so a converted digit or clip must reach the model bit for bit as the embedded one does.
"""
import importlib
import io
import json
import os
import pathlib
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter

import real_formats as rf
from mmjax import metrics, train
from mmjax.data import builders, pipeline
from mmjax.data.config import data_config
from mmjax.data.datasets import get_dataset, mnist
from mmjax.data.example import bind_modalities
from mmjax.data.tokenizer import get_tokenizer
from mmjax.data.transforms import BadRecordError
from mmjax.ingest import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer("bytes", data_config().text.max_len)


@pytest.fixture(scope="module")
def class_names_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("classes") / "digits.txt"
    path.write_text("\n".join(mnist.CLASS_NAMES))
    return str(path)


@pytest.fixture(scope="module")
def digits_wds(tmp_path_factory, class_names_file):
    """The first 96 digits as webdataset tars (JPEG and PNG, captions, labels in the json),
    converted: train = all 96, test = the first 48 again (a second conversion)."""
    root = tmp_path_factory.mktemp("digits_wds")
    built = rf.write_webdataset(str(root / "src"), n=96, num_shards=2, corrupt=False)
    test = rf.write_webdataset(str(root / "src_test"), n=48, num_shards=1, corrupt=False)
    out = str(root / "digits_wds" / "1.0.0")
    for b, split in ((built, "train"), (test, "test")):
        labelled = ["--label-key", "label", "--class-names", class_names_file]
        assert cli.main([*b.args, "--out", out, "--split", split, "--workers", "1", *labelled]) == 0
    return out, built


def _tfds_config(directory, modalities, **tfds_fields):
    cfg = data_config("tfds", modalities)
    cfg.tfds.dir = directory
    cfg.tfds.update(tfds_fields)
    return cfg


def _eval_rows(cfg, split, tok, batch_size=16):
    batches = pipeline.make_eval_batches(cfg, split=split, batch_size=batch_size, tokenizer=tok)
    return {k: np.concatenate([b[k][b["mask"]] for b in batches]) for k in batches[0] if k not in ("present", "flags")}


def test_converted_digits_reach_the_model_as_the_embedded_ones(digits_wds, tok):
    out, built = digits_wds
    rows = _eval_rows(_tfds_config(out, ("image", "text")), "test", tok)
    embedded = bind_modalities(data_config(), tok, train=False)
    images, labels, captions = rf.digits(48)
    np.testing.assert_array_equal(rows["label"], labels)
    for i in range(48):
        want = embedded["image"](images[i][..., None], None, {})["image"]
        if i % 2:  # PNG: lossless, and the eval resize to the stored size is the identity
            np.testing.assert_array_equal(rows["image"][i], want, err_msg=str(i))
        else:  # JPEG at quality 95
            assert np.abs(rows["image"][i] - want).mean() < 0.02, i
        np.testing.assert_array_equal(rows["text"][i], tok.encode(captions[i]))
    dataset = get_dataset(_tfds_config(out, ("image", "text")))
    assert dataset.class_names == mnist.CLASS_NAMES
    assert dataset.zeroshot_prompts()[3] == ["a photo of a three."]


def _rewrite(out, split, index, **fields):
    """Replaces fields of record `index` of `split` in a converted dataset (one shard), bypassing
    the converter's checks: what a corrupt member in a training stream looks like."""
    builder = tfds.builder_from_directory(out)
    raw = list(builder.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES))
    features = builder.info.features
    example = features.deserialize_example_np(raw[index])
    raw[index] = features.serialize_example({**example, **fields})
    (path,) = [p for p in os.listdir(out) if f"-{split}.array_record" in p]
    writer = ArrayRecordWriter(os.path.join(out, path), "group_size:1")
    for record in raw:
        writer.write(record)
    writer.close()


def test_a_corrupt_image_in_the_stream_is_named_or_dropped_and_counted(tmp_path, tok):
    built = rf.write_webdataset(str(tmp_path / "src"), n=16, num_shards=1, corrupt=False)
    out = str(tmp_path / "out")
    assert cli.main([*built.args, "--out", out, "--workers", "1"]) == 0
    images, _, _ = rf.digits(16)
    _rewrite(out, "train", 5, image=rf.truncated_jpeg(images[5]))
    cfg = _tfds_config(out, ("image", "text"), label_field="")
    with pytest.raises(BadRecordError, match=r"out/train example 5 \(key '000005'\): field 'image': is not a decodable image"):
        pipeline.make_eval_batches(cfg, split="train", batch_size=8, tokenizer=tok)
    cfg.on_bad_input = "drop"
    it = pipeline.make_train_iterator(cfg, global_batch_size=8, seed=0, tokenizer=tok, shard_index=0, shard_count=1)
    batches = [next(it) for _ in range(4)]  # two epochs: the bad record twice
    assert sum(int(b["flags"]["bad_image"].sum()) for b in batches) == 2
    assert sum(int((~b["present"]["image"]).sum()) for b in batches) == 2
    assert all((b["label"] == -1).all() for b in batches)  # unlabelled corpus


def test_converted_flac_clips_reach_the_model_as_the_embedded_waveforms(tmp_path, tok):
    built = rf.write_audio(str(tmp_path / "src"), num_clips=8, corrupt=False)
    out = str(tmp_path / "fsdd")
    assert cli.main([*built.args, "--out", out, "--workers", "1"]) == 0
    cfg = _tfds_config(out, ("audio",))
    rows = _eval_rows(cfg, "train", tok, batch_size=4)
    audio = bind_modalities(data_config(modalities=("audio",)), tok, train=False)["audio"]
    names = get_dataset(cfg).class_names
    for i, record in enumerate(built.records.values()):  # stored in the CSV's order
        want = audio(record["wave"], None, {})
        np.testing.assert_array_equal(rows["audio"][i], want["audio"], err_msg=str(i))
        np.testing.assert_array_equal(rows["audio_mask"][i], want["audio_mask"])
        assert names[rows["label"][i]] == record["label"]


def test_converted_point_files_become_fixed_size_clouds(tmp_path, tok):
    built = rf.write_points(str(tmp_path / "src"), n=12, num_points=100, corrupt=False)
    out = str(tmp_path / "points")
    assert cli.main([*built.args, "--out", out, "--workers", "1"]) == 0
    cfg = _tfds_config(out, ("points",))
    cfg.points.num_points = 64
    rows = _eval_rows(cfg, "train", tok, batch_size=8)
    assert rows["points"].shape == (12, 64, 3) and np.isfinite(rows["points"]).all()
    np.testing.assert_allclose(np.linalg.norm(rows["points"], axis=-1).max(axis=1), 1.0, atol=1e-5)  # unit sphere
    names = get_dataset(cfg).class_names
    assert sorted(names[y] for y in rows["label"]) == sorted(mnist.CLASS_NAMES[r["label"]] for r in built.records.values())


class TinyDigits(builders.EmbeddedBuilder, skip_registration=True):
    """A TFDS dataset as `tfds build` prepares one (PNG-encoded Image feature, ClassLabel, several
    captions per image as coco_captions has), read back by name from its files alone."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=mnist.CLASS_NAMES),
            "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
        }))

    def _split_generators(self, dl_manager):
        return {"validation": self._generate_examples()}

    def _generate_examples(self):
        images, labels, captions = rf.digits(12)
        for i in range(12):
            # PNG bytes as a file object: TFDS would encode an array with TensorFlow.
            yield i, {"image": io.BytesIO(rf.encode(images[i], "PNG")), "label": int(labels[i]),
                      "captions": {"text": [captions[i], f"digit number {labels[i]}", "a digit"]}}


def test_a_tfds_dataset_prepared_locally_is_read_by_name(tmp_path, tok):
    TinyDigits(data_dir=str(tmp_path)).download_and_prepare()  # ArrayRecord, as `tfds build --file_format=array_record`
    cfg = data_config("tfds", ("image", "text"), data_dir=str(tmp_path), eval_split="validation")
    cfg.tfds.update(name="tiny_digits", fields={"text": "captions/text"})
    rows = _eval_rows(cfg, "validation", tok, batch_size=8)
    images, labels, captions = rf.digits(12)
    embedded = bind_modalities(data_config(), tok, train=False)["image"]
    want = {embedded(im[..., None], None, {})["image"].tobytes(): i for i, im in enumerate(images)}
    order = [want[row.tobytes()] for row in rows["image"]]  # TFDS stores examples in hashed-key order
    assert sorted(order) == list(range(12))  # every image exactly, once
    np.testing.assert_array_equal(rows["label"], labels[order])
    np.testing.assert_array_equal(rows["text"], tok.encode_batch([captions[i] for i in order]))  # the first caption
    cfg.train_split = "validation"
    it = pipeline.make_train_iterator(cfg, global_batch_size=12, seed=0, tokenizer=tok, shard_index=0, shard_count=1)
    drawn = {tuple(t) for _ in range(6) for t in next(it)["text"]}
    assert {tuple(tok.encode("a digit"))} < drawn and len(drawn) > 12  # training draws among the captions
    cfg.tfds.name = "nope"
    with pytest.raises(ValueError, match=r"data.tfds.name='nope': no such TFDS dataset under data.data_dir="):
        get_dataset(cfg).open_split("validation")


def test_pod_clip_runs_with_data_real_on_a_converted_corpus(tmp_path):
    """configs/pod/clip_vitb16.py:data=real,size=tiny on webdataset shards (JPEG and PNG) converted as
    its docstring says, under data.data_dir as `laion400m`, decoded by 2 worker processes, on a 2x2
    (data x fsdp) mesh with 2 GradCache micro-batches (scan, remat, bf16, FSDP): trains, evaluates,
    checkpoints, logs the data wait; an unprepared name fails in one line."""
    data_dir = tmp_path / "data"
    for split, n in (("train", 32), ("validation", 16)):
        built = rf.write_webdataset(str(tmp_path / split), n=n, num_shards=1, corrupt=False)
        out = str(data_dir / "laion400m" / "1.0.0")
        assert cli.main([*built.args, "--out", out, "--split", split, "--workers", "1"]) == 0
    config = importlib.import_module("configs.pod.clip_vitb16").get_config("data=real,size=tiny")
    with config.unlocked():
        config.data.data_dir = str(data_dir)
        config.data.text.tokenizer_path = ""  # OpenAI's vocabulary is not shipped; the embedded BPE
        config.data.num_workers = 2
        config.accumulation.steps = 2
    final = train.train_and_evaluate(config, str(tmp_path / "run"), devices=jax.devices()[:4])
    assert final["steps"] == 2 and 0.0 <= final["r1_image_text"] <= 1.0 and "class_r1_image_text" not in final
    losses = [r["train/loss"] for r in metrics.read_metrics(str(tmp_path / "run")) if "train/loss" in r]
    assert len(losses) == 2 and np.isfinite(losses).all() and (tmp_path / "run" / "checkpoints" / "2").is_dir()
    logged = [r for r in metrics.read_metrics(str(tmp_path / "run")) if "data_wait_ms" in r]
    assert logged and all(0.0 <= r["data_wait_ms"] <= r["step_ms"] for r in logged)
    with config.unlocked():
        config.data.data_dir = str(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"data.tfds.name='laion400m': no such TFDS dataset"):
        get_dataset(config.data).open_split("train")
