"""AV-digits, per-modality example transforms, bad input, and missing modalities end to end."""
import pathlib
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.data import audio, builders, pipeline
from mmjax.data.datasets import avdigits, get_dataset
from mmjax.data.tokenizer import from_data_config
from mmjax.data.transforms import BadRecordError
from mmjax.models import build_model
from mmjax.objectives.contrastive import binding_objective

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from configs import bind_avdigits  # noqa: E402

RECORDINGS = ROOT / "mmjax" / "data" / "raw" / "fsdd" / "recordings"


@pytest.fixture(scope="module")
def av_builder():
    return avdigits.AVDigits(data_dir=builders.ensure_prepared(avdigits.AVDigits))


@pytest.fixture(scope="module")
def tiny():
    return bind_avdigits.get_config("model=tiny")


@pytest.fixture(scope="module")
def tok(tiny):
    return from_data_config(tiny.data)


def test_av_digits_splits_are_disjoint_and_paired_by_label(av_builder):
    splits = {s: av_builder.as_data_source(s) for s in ("train", "test")}
    assert {s: len(d) for s, d in splits.items()} == {"train": 8000, "test": 2000}
    seen = {}
    for split, data in splits.items():
        rows = [data[i] for i in range(0, len(data), 7)]
        ids = {r["audio_id"].decode() for r in rows}
        takes = {int(i.split("_")[2]) for i in ids}
        assert takes <= (set(range(5)) if split == "test" else set(range(5, 50))), split
        for r in rows:
            assert int(r["audio_id"].decode()[0]) == r["label"]  # clip of the image's digit
            assert r["audio"].dtype == np.int16 and r["audio"].size > 0
        seen[split] = ({int(r["index"]) for r in rows}, ids)
    assert not seen["train"][0] & seen["test"][0]  # images disjoint
    assert not seen["train"][1] & seen["test"][1]  # audio disjoint


def test_pairing_deals_clips_evenly():
    clips = [(f"{d}_x_{t}", d, None) for d in range(10) for t in range(3)]
    labels = np.repeat(np.arange(10), 7)
    chosen = avdigits.pair_clips(labels, clips, seed=0)
    assert all(clips[c][1] == y for c, y in zip(chosen, labels))
    counts = np.bincount(chosen, minlength=len(clips))
    assert counts.min() >= 2 and counts.max() <= 3  # 7 uses over 3 clips per digit


def test_corrupt_wav_is_named(tmp_path):
    for name in ("0_george_0.wav", "1_george_0.wav"):
        shutil.copy(RECORDINGS / name, tmp_path / name)
    (tmp_path / "2_george_0.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(audio.AudioDecodeError, match="2_george_0.wav"):
        avdigits.load_fsdd(str(tmp_path))


def _record(av_builder, **changes):
    record = dict(av_builder.as_data_source("test")[0])
    record["caption"] = record["caption"].decode()
    return {**record, "_index": 0, **changes}


def _transform(tiny, tok, train=False, **data_changes):
    cfg = tiny.data
    with cfg.unlocked():
        cfg = cfg.copy_and_resolve_references()
        for k, v in data_changes.items():
            cfg[k] = v
    return get_dataset(cfg).example_transform(tok, train=train, where="av_digits/test")


def test_example_has_every_modality_with_static_shapes(av_builder, tiny, tok):
    out = _transform(tiny, tok, train=True)(_record(av_builder), np.random.default_rng(0))
    assert out["image"].shape == (28, 28, 1) and out["points"].shape == (tiny.data.points.num_points, 3)
    assert out["audio"].shape == (96, 64) and out["audio_mask"].dtype == bool
    assert out["text"].shape == (tiny.data.text.max_len,)
    assert all(out["present"].values()) and set(out["present"]) == set(tiny.data.modalities)
    # deterministic under the same generator state
    again = _transform(tiny, tok, train=True)(_record(av_builder), np.random.default_rng(0))
    np.testing.assert_array_equal(out["points"], again["points"])
    np.testing.assert_array_equal(out["audio"], again["audio"])


@pytest.mark.parametrize("field, bad, message", [
    ("audio", np.zeros(0, np.int16), "zero-length audio"),
    ("audio", np.array([0.1, np.nan, 0.2], np.float32), "non-finite"),
    ("image", np.zeros((28, 28, 1), np.uint8), "blank"),
])
def test_bad_modality_input_errors_or_is_dropped_and_counted(av_builder, tiny, tok, field, bad, message):
    record = _record(av_builder, **{field: bad})
    modality = "points" if field == "image" else field
    named = r"'image' \(points\)" if field == "image" else f"'{field}'"  # the stored field, and the modality it feeds
    with pytest.raises(BadRecordError, match=rf"av_digits/test example 0: field {named}.*{message}"):
        _transform(tiny, tok)(record, np.random.default_rng(0))
    out = _transform(tiny, tok, on_bad_input="drop")(record, np.random.default_rng(0))
    assert not out["present"][modality] and out["flags"][f"bad_{modality}"]
    assert out["present"]["text"] and not out["flags"]["bad_text"]


def test_long_caption_is_truncated_and_counted(av_builder, tiny, tok):
    out = _transform(tiny, tok)(_record(av_builder, caption="seven " * 20), np.random.default_rng(0))
    assert out["flags"]["text_truncated"] and out["text"][-1] == tok.eot_id
    out = _transform(tiny, tok)(_record(av_builder), np.random.default_rng(0))
    assert not out["flags"]["text_truncated"]


def test_modality_dropout_marks_absent_and_zero_fills(av_builder, tiny, tok):
    drop = dict(tiny.data.drop_prob, audio=1.0)
    out = _transform(tiny, tok, train=True, drop_prob=drop)(_record(av_builder), np.random.default_rng(0))
    assert not out["present"]["audio"] and not out["audio_mask"].any()
    assert out["present"]["image"] and out["present"]["points"]
    with pytest.raises(ValueError, match=r"unknown modalities \['video'\]"):
        _transform(tiny, tok, drop_prob={"video": 0.5})


def test_unknown_modality_for_dataset_lists_valid(tiny):
    cfg = tiny.data.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.name, cfg.modalities = "digits_captions", ("image", "audio")
    with pytest.raises(ValueError, match=r"no modality \['audio'\]; valid: \['image', 'points', 'text'\]"):
        get_dataset(cfg)


def test_missing_modality_pairs_are_ignored_by_the_loss(tiny, tok):
    """Absent examples' inputs can be anything: loss and gradients do not see them."""
    model = build_model(tiny.model, tok)
    data = pipeline.make_eval_batches(tiny.data, split="test", batch_size=16, tokenizer=tok)[0]
    batch = {k: v for k, v in data.items() if k not in ("flags", "mask")}
    absent = np.array([0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0], bool)
    batch["present"] = dict(batch["present"], audio=~absent)
    garbage = dict(batch, audio=np.where(absent[:, None, None], 1e3, batch["audio"]).astype(np.float32))
    params = jax.jit(model.init)(jax.random.key(0), batch)["params"]

    @jax.jit
    def loss_and_grad(params, batch):
        def loss_fn(p):
            return binding_objective(model.apply({"params": p}, batch), batch, tiny.objective)
        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss, metrics), grads = loss_and_grad(params, batch)
    (loss_g, _), grads_g = loss_and_grad(params, garbage)
    assert np.isfinite(loss) and float(loss) == float(loss_g)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(grads_g)):
        np.testing.assert_array_equal(a, b)
    # ... but the present pairs do count: changing a present example's audio changes the loss
    changed = dict(batch, audio=batch["audio"].at[0].set(0.0) if isinstance(batch["audio"], jnp.ndarray)
                   else np.where(np.arange(16)[:, None, None] == 0, 0.0, batch["audio"]).astype(np.float32))
    assert float(loss_and_grad(params, changed)[0][0]) != float(loss)
