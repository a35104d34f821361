import os
import pickle
import random

import numpy as np
import pytest

from mmjax.data import bpe
from mmjax.data.datasets import mnist
from mmjax.data.bpe import BPETokenizer, read_merges, train_bpe, write_merges
from mmjax.data.tokenizer import ByteTokenizer, get_tokenizer


def project_texts() -> list[str]:
    templates = mnist.CAPTION_TEMPLATES + mnist.ZEROSHOT_PROMPTS
    return [mnist.format_caption(t, y) for t in templates for y in range(len(mnist.CLASS_NAMES))]


@pytest.fixture(scope="module")
def default_tok():
    return BPETokenizer(16)


@pytest.fixture
def hello_merges(tmp_path):
    """A hand-made CLIP-format file: 4 merges, so ids 512..515, sot 516, eot 517."""
    path = tmp_path / "hello.txt"
    path.write_text("#version: 0.2\nh e\nl l\nhe ll\nhell o</w>\n")
    return str(path)


# ------------------------------------------------------------- round trips


def test_round_trip_on_every_project_caption(default_tok):
    for text in project_texts():
        ids = default_tok.encode(text)
        assert ids.shape == (16,) and ids.dtype == np.int32
        assert default_tok.decode(ids) == default_tok.normalize(text)
    # Pre-tokens come back space-separated: ids cannot tell "seven," from "seven ,".
    assert default_tok.normalize("Seven,  written by HAND") == "seven , written by hand"
    assert default_tok.normalize("digit 7 (seven)") == "digit 7 ( seven )"
    assert default_tok.normalize("a handwritten seven") == "a handwritten seven"


def test_round_trip_on_random_latin1_and_unicode(default_tok):
    tok = BPETokenizer(256)  # 40 chars of at most 4 UTF-8 bytes each always fit
    rng = random.Random(0)
    latin1 = [chr(i) for i in range(256)]
    wide = latin1 + list("東京タワー漢字🙂👍🏽½²Ⅻ①") + [" "] * 20
    for alphabet in (latin1, wide):
        for _ in range(300):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
            ids = tok.encode(text)
            assert ids.max() < tok.vocab_size
            assert tok.decode(ids) == tok.normalize(text), repr(text)


def test_cleaning_and_prettokenisation_follow_clip():
    assert bpe.clean("  Tom &amp;amp; JERRY\t\n&lt;3 ") == "tom & jerry <3"
    assert bpe.pretokenize("it's x²½ don't 42 a_b ...!") == \
        ["it", "'s", "x", "²", "½", "don", "'t", "4", "2", "a", "_", "b", "...!"]
    # A literal special string is plain text: eot appears once, at the end.
    tok = BPETokenizer(64)
    ids = tok.encode("a <|endoftext|> b")
    assert list(ids).count(tok.eot_id) == 1 and tok.decode(ids) == "a <| endoftext |> b"


def test_pad_id_zero_is_also_the_exclamation_token(default_tok):
    ids = default_tok.encode("wow!!")
    assert 0 in ids[:list(ids).index(default_tok.eot_id)]  # "!" without </w> is id 0, as in CLIP
    assert default_tok.decode(ids) == "wow !!"


# ------------------------------------------------------------- layout


def test_truncation_keeps_eot_and_length(default_tok):
    tok = BPETokenizer(6)
    ids = tok.encode("A photo of the number seven")
    assert ids.shape == (6,) and ids[0] == tok.bos_id and ids[-1] == tok.eot_id
    assert tok.decode(ids) == "a photo of the"
    ids = BPETokenizer(2).encode("seven")
    assert list(ids) == [tok.bos_id, tok.eot_id]
    # A cut multi-byte character decodes to U+FFFD instead of raising.
    assert "\ufffd" in BPETokenizer(4).decode(BPETokenizer(4).encode("東京"))
    with pytest.raises(ValueError, match="max_len"):
        BPETokenizer(1)


def test_encode_batch_matches_encode(default_tok):
    texts = ["one", "a scanned image of a 1", ""]
    batch = default_tok.encode_batch(texts)
    assert batch.shape == (3, 16) and batch.dtype == np.int32
    for row, text in zip(batch, texts):
        np.testing.assert_array_equal(row, default_tok.encode(text))
    assert default_tok.encode_batch([]).shape == (0, 16)


def test_clip_vocabulary_layout_by_hand(hello_merges):
    tok = BPETokenizer(8, hello_merges)
    # 256 byte symbols + 256 with </w> + 4 merges + sot + eot.
    assert (tok.vocab_size, tok.bos_id, tok.eot_id, tok.pad_id) == (518, 516, 517, 0)
    # Merges in file order: he=512, ll=513, hell=514, hello</w>=515.
    np.testing.assert_array_equal(tok.encode("Hello hell"), [516, 515, 512, 75, 331, 517, 0, 0])
    # Byte order: '!'..'~' -> 0..93, '¡'..'¬' -> 94..105, '®'..'ÿ' -> 106..187, then
    # the other bytes in byte order from 188 (0x00 -> 188, 0x20 -> 220, 0x7f -> 221,
    # 0xad -> 255); the </w> block adds 256. "h" = 104 - 33 = 71, "l" = 75.
    assert tok.tokenize("h") == [71 + 256]
    assert tok.tokenize("é") == [127, 102 + 256]  # UTF-8 c3 a9: 106 + 0xc3 - 174, 94 + 0xa9 - 161
    assert tok.tokenize("\x00") == [188 + 256]
    assert tok.tokenize("\x7f") == [221 + 256]
    assert tok.tokenize("\xad") == [126, 255 + 256]  # UTF-8 c2 ad; soft hyphen is the last byte
    assert tok.decode([220]) == " "


def test_num_merges_cap_gzip_and_bad_files(hello_merges, tmp_path):
    assert BPETokenizer(8, hello_merges, num_merges=2).vocab_size == 512 + 2 + 2
    gz = str(tmp_path / "hello.txt.gz")
    write_merges(gz, read_merges(hello_merges))
    np.testing.assert_array_equal(BPETokenizer(8, gz).encode("hello"), BPETokenizer(8, hello_merges).encode("hello"))
    with pytest.raises(ValueError, match="fewer than num_merges=5"):
        BPETokenizer(8, hello_merges, num_merges=5)
    bad = tmp_path / "bad.txt"
    bad.write_text("#version: 0.2\nh e\nhe ll o\n")
    with pytest.raises(ValueError, match=r"bad.txt:3: expected a merge"):
        BPETokenizer(8, str(bad))
    with pytest.raises(ValueError, match="token ids must be in"):
        BPETokenizer(8, hello_merges).decode([518])


@pytest.mark.skipif(not os.environ.get("MMJAX_CLIP_BPE"),
                    reason="set MMJAX_CLIP_BPE to OpenAI's bpe_simple_vocab_16e6.txt.gz")
def test_openai_merges_give_clip_ids():
    tok = BPETokenizer(77, os.environ["MMJAX_CLIP_BPE"])
    assert tok.vocab_size == 49408
    assert list(tok.encode("a photo of a cat")[:7]) == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_pickles_with_a_fresh_cache(default_tok):
    default_tok.encode("a handwritten seven")
    clone = pickle.loads(pickle.dumps(default_tok))
    np.testing.assert_array_equal(clone.encode("a handwritten seven"), default_tok.encode("a handwritten seven"))


# ------------------------------------------------------------- training


def test_train_bpe_learns_most_frequent_pairs_in_order():
    corpus = ["ab ab ab", "abc abc", "xy"]
    # Words: (a, b</w>) x3, (a, b, c</w>) x2, (x, y</w>) x1. First (a, b</w>): 3; then
    # (a, b) and (b, c</w>) tie at 2 and the smaller pair wins; then (ab, c</w>).
    # (x, y</w>) occurs once, below min_count.
    expected = [("a", "b</w>"), ("a", "b"), ("ab", "c</w>")]
    assert train_bpe(corpus, 10) == expected
    assert train_bpe(corpus[::-1], 10) == expected  # independent of text order
    assert train_bpe(corpus, 1) == expected[:1]
    assert train_bpe(corpus, 10, min_count=1) == expected + [("x", "y</w>")]


def test_trained_merges_round_trip_through_the_file(tmp_path):
    path = str(tmp_path / "m.txt")
    write_merges(path, train_bpe(["ab ab ab", "abc abc"], 10))
    assert path and open(path).read() == "#version: 0.2\na b</w>\na b\nab c</w>\n"
    tok = BPETokenizer(8, path)
    assert tok.tokenize("abc ab") == [512 + 2, 512]


def test_embedded_default_fits_every_caption_in_16_tokens(default_tok):
    num_merges = len(read_merges(bpe.DEFAULT_MERGES))
    assert default_tok.vocab_size == 512 + num_merges + 2
    for text in project_texts():
        assert len(default_tok.tokenize(text)) + 2 <= 16, text


# ------------------------------------------------------------- registry


def test_registry_and_shared_interface(hello_merges):
    assert isinstance(get_tokenizer("bpe", 16), BPETokenizer)
    assert get_tokenizer("bpe", 16, hello_merges).vocab_size == 518
    with pytest.raises(ValueError, match=r"unknown tokenizer 'wordpiece'.*\['bpe', 'bytes'\]"):
        get_tokenizer("wordpiece", 16)
    with pytest.raises(ValueError, match="no vocabulary file"):
        get_tokenizer("bytes", 16, hello_merges)
    for tok in (get_tokenizer("bytes", 16), get_tokenizer("bpe", 16)):
        for attr in ("vocab_size", "max_len", "pad_id", "bos_id", "eot_id"):
            assert isinstance(getattr(tok, attr), int), (type(tok).__name__, attr)
        for method in ("normalize", "encode", "encode_batch", "decode"):
            assert callable(getattr(tok, method))
    assert ByteTokenizer.pad_id == BPETokenizer.pad_id == 0
