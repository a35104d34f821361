"""Random resized crop and EDA-style caption edits: the transforms and their wiring into ExampleTransform.

References are independent of the code under test: jax.image.resize for the
bilinear resampling, an exhaustive search over crop positions for the crop, and
counting words for the caption edits.
"""
import collections

import jax
import numpy as np
import pytest

from mmjax.data.config import data_config
from mmjax.data.datasets import get_dataset
from mmjax.data.tokenizer import from_data_config
from mmjax.data.transforms import random_resized_crop, random_word_edit, resize_bilinear

SENTENCE = " ".join(f"w{i}" for i in range(20))


def _image(seed=0, shape=(28, 28, 1)):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


@pytest.mark.parametrize("shape", [(13, 17, 1), (5, 28, 2), (28, 28, 1)])
def test_resize_bilinear_matches_jax_image_resize(shape):
    x = _image(1, shape)
    expected = jax.image.resize(x, (28, 28, shape[2]), method="linear", antialias=False)
    np.testing.assert_allclose(resize_bilinear(x, 28, 28), np.asarray(expected), atol=1e-5)


def test_full_scale_square_crop_is_the_identity():
    x = _image()
    np.testing.assert_allclose(random_resized_crop(x, np.random.default_rng(0), (1.0, 1.0), ratio=(1.0, 1.0)), x,
                               atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_crop_is_a_resized_window_of_the_drawn_size(seed):
    # With the area and aspect fixed the window is k x k, k = round(sqrt(0.36) * 28) = 17; the
    # output must be the resize of the window at exactly one position, found by search.
    x = _image(seed)
    out = random_resized_crop(x, np.random.default_rng(seed), (0.36, 0.36), ratio=(1.0, 1.0))
    assert out.shape == x.shape and out.dtype == x.dtype
    k = 17
    matches = [(y, z) for y in range(28 - k + 1) for z in range(28 - k + 1)
               if np.allclose(resize_bilinear(x[y:y + k, z:z + k], 28, 28), out, atol=1e-6)]
    assert len(matches) == 1


def test_crop_is_deterministic_in_range_and_varies_with_seed():
    x = _image()
    a, b = (random_resized_crop(x, np.random.default_rng(7), (0.3, 1.0)) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert a.shape == x.shape and x.min() - 1e-6 <= a.min() and a.max() <= x.max() + 1e-6  # convex weights
    others = [random_resized_crop(x, np.random.default_rng(s), (0.3, 1.0)) for s in range(8, 12)]
    assert not any(np.array_equal(a, o) for o in others)


def test_crop_rejects_bad_scale():
    with pytest.raises(ValueError, match="crop scale"):
        random_resized_crop(_image(), np.random.default_rng(0), (0.0, 1.0))


def test_word_deletion_rate_matches_probability():
    rng, p, draws = np.random.default_rng(0), 0.3, 2000
    kept = [random_word_edit(SENTENCE, rng, p, 0.0).split() for _ in range(draws)]
    words = SENTENCE.split()
    assert all(k == [w for w in words if w in k] for k in kept)  # a subsequence: order kept, nothing new
    rate = 1 - np.mean([len(k) for k in kept]) / len(words)
    assert abs(rate - p) < 0.01  # binomial std of the rate: sqrt(.3 * .7 / 40000) = 0.0023


def test_deletion_keeps_one_word_and_edits_are_deterministic():
    rng = np.random.default_rng(0)
    assert all(len(random_word_edit("one two", rng, 0.99, 0.0).split()) == 1 for _ in range(200))
    same = [random_word_edit(SENTENCE, np.random.default_rng(3), 0.2, 0.2) for _ in range(2)]
    assert same[0] == same[1] != SENTENCE
    assert random_word_edit(SENTENCE, np.random.default_rng(3), 0.0, 0.0) == SENTENCE


def test_word_swap_permutes_words_at_the_expected_rate():
    rng, alpha = np.random.default_rng(1), 0.1
    outs = [random_word_edit(SENTENCE, rng, 0.0, alpha).split() for _ in range(1000)]
    assert all(collections.Counter(o) == collections.Counter(SENTENCE.split()) for o in outs)
    # P(unchanged) is at least P(no swap) = (1 - alpha)^20 = 0.122 and barely more (a swap undoing
    # another is rare), so the unchanged fraction pins the number of swaps drawn.
    unchanged = np.mean([o == SENTENCE.split() for o in outs])
    assert 0.122 - 0.035 < unchanged < 0.122 + 0.045


@pytest.fixture(scope="module")
def tok():
    return from_data_config(data_config())


def _transform(tok, train, **fields):
    """The digits dataset's example transform with data.<block>.<key> = value for "<block>.<key>" fields."""
    cfg = data_config()
    cfg.image.max_shift = 0
    for path, value in fields.items():
        block, key = path.split(".")
        cfg[block][key] = value
    return get_dataset(cfg).example_transform(tok, train=train, where="test/split")


RECORD = {"image": np.arange(784, dtype=np.uint8).reshape(28, 28, 1) % 251, "label": 7, "_index": 0,
          "caption": "a small seven in black ink"}  # fits data.text.max_len: no truncation


def test_example_transform_applies_augmentations_only_in_training(tok):
    options = {"image.crop_scale": (0.5, 0.9), "text.delete_prob": 0.4}
    plain_image = RECORD["image"].astype(np.float32) / 127.5 - 1.0
    evaluated = _transform(tok, False, **options)(RECORD, np.random.default_rng(0))
    np.testing.assert_array_equal(evaluated["image"], plain_image)
    np.testing.assert_array_equal(evaluated["text"], tok.encode(RECORD["caption"]))

    train = _transform(tok, True, **options)
    outs = [train(RECORD, np.random.default_rng(s)) for s in range(20)]
    again = train(RECORD, np.random.default_rng(0))
    np.testing.assert_array_equal(again["image"], outs[0]["image"])  # a pure function of the generator
    np.testing.assert_array_equal(again["text"], outs[0]["text"])
    assert all(o["image"].shape == plain_image.shape and not np.array_equal(o["image"], plain_image) for o in outs)
    words = RECORD["caption"].split()
    captions = [tok.decode(o["text"]).split() for o in outs]
    assert all(c == [w for w in words if w in c] for c in captions)
    assert sum(len(c) < len(words) for c in captions) >= 15  # P(no word dropped) = 0.6^6 = 0.05 per draw


@pytest.mark.parametrize("field, value", [("image.crop_scale", (0.5, 1.5)), ("image.crop_scale", (0.9, 0.5)),
                                          ("text.delete_prob", 1.0), ("text.swap_prob", -0.1)])
def test_bad_augmentation_options_fail_at_start(tok, field, value):
    with pytest.raises(ValueError, match=f"data.{field}"):
        _transform(tok, True, **{field: value})
