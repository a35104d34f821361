import numpy as np
import pytest

from mmjax.data.tokenizer import ByteTokenizer, get_tokenizer


def test_layout_and_round_trip():
    tok = ByteTokenizer(16)
    ids = tok.encode("the digit 7")
    assert ids.dtype == np.int32 and ids.shape == (16,)
    assert ids[0] == tok.bos_id
    assert list(ids[1:12]) == [b + 3 for b in b"the digit 7"]
    assert ids[12] == tok.eot_id
    assert (ids[13:] == tok.pad_id).all()
    assert tok.decode(ids) == "the digit 7"


def test_normalises_case_and_whitespace():
    tok = ByteTokenizer(32)
    np.testing.assert_array_equal(tok.encode("  The\tDigit\n\n7 "), tok.encode("the digit 7"))


def test_multibyte_round_trip_and_vocab_range():
    tok = ByteTokenizer(32)
    ids = tok.encode("Zéro → 0")
    assert tok.decode(ids) == "zéro → 0"
    assert ids.min() >= 0 and ids.max() < tok.vocab_size == 259


def test_truncation_keeps_eot():
    tok = ByteTokenizer(8)
    ids = tok.encode("a handwritten seven")
    assert ids[0] == tok.bos_id and ids[-1] == tok.eot_id
    assert tok.pad_id not in ids
    assert tok.decode(ids) == "a hand"  # max_len - 2 bytes survive.


def test_exact_fit_has_no_padding():
    tok = ByteTokenizer(7)
    ids = tok.encode("seven")
    assert ids[-1] == tok.eot_id and tok.decode(ids) == "seven"


def test_encode_batch_matches_encode():
    tok = ByteTokenizer(12)
    texts = ["one", "a scanned image of a 1", ""]
    batch = tok.encode_batch(texts)
    assert batch.shape == (3, 12) and batch.dtype == np.int32
    for row, text in zip(batch, texts):
        np.testing.assert_array_equal(row, tok.encode(text))
    assert tok.encode_batch([]).shape == (0, 12)


def test_max_len_must_hold_specials():
    with pytest.raises(ValueError, match="max_len"):
        ByteTokenizer(1)


def test_registry():
    assert isinstance(get_tokenizer("bytes", 8), ByteTokenizer)
    with pytest.raises(ValueError, match=r"unknown tokenizer 'wordpiece'.*\['bpe', 'bytes'\]"):
        get_tokenizer("wordpiece", 8)
