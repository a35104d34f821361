"""Byte-level BPE in OpenAI CLIP's format: `BPETokenizer`, `train_bpe`, `write_merges`.

Given OpenAI's `bpe_simple_vocab_16e6.txt.gz`, `BPETokenizer` yields CLIP's own
token ids, so a pretrained CLIP text tower can be loaded later; given the
embedded `raw/bpe/digits_merges.txt` (made by tools/train_bpe.py) it is a small
vocabulary fitted to the digits captions.

Merges file: UTF-8 text, optionally gzip; a header line, skipped whatever it
holds, as CLIP does (`write_merges` writes "#version: 0.2"; OpenAI's own file's
reads '"bpe_simple_vocab_16e6.txt#version: 0.2'), then one merge per line,
"a b", in priority order. CLIP reads only the first 49152 - 256 - 2 = 48894
merges of its file; so does this loader unless `num_merges` says otherwise.

Ids, exactly CLIP's layout: the 256 byte symbols in `bytes_to_unicode` order,
the same 256 with the end-of-word marker `</w>`, one token per merge (the
concatenated pair), then <|startoftext|> and <|endoftext|> as the last two ids
(49406 and 49407 for CLIP). Rows are [sot] + tokens + [eot] + padding with id 0,
CLIP's convention. Id 0 is also the token "!", so the end of a caption must be
found from eot, never from pad (mmjax's text tower does so).

Cleaning, as CLIP's basic_clean + whitespace_clean + lower(): html-unescape twice
(web captions are often escaped twice), collapse every whitespace run to one
space and strip the ends, lower-case. CLIP also runs ftfy.fix_text (mojibake
repair, NFC); we do not, to avoid the dependency, so only text that ftfy would
change can get ids that differ from CLIP's.

Pre-tokenisation: CLIP splits cleaned text with the `regex` pattern
  's|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+
i.e. contractions, letter runs, single numerals, runs of anything else; spaces
are dropped. We use stdlib `re` with the same alternatives, where `[^\\W\\d_]`
matches letters plus the non-decimal numerals (categories No/Nl: "²", "½",
"Ⅻ"), which we then split off one by one as CLIP's \\p{N} does. This is exact
(per Python's Unicode tables) except that (1) Python's \\s also counts the
control characters U+001C-U+001F, so they are dropped as whitespace instead of
becoming tokens; (2) a literal "<|endoftext|>" in the text is plain text
here, whereas CLIP turns it into the special token: a caption can never inject
a second eot; (3) characters newer than Python's Unicode tables, and a few
marks that CLIP's IGNORECASE flag folds into letters (U+0345), may split
differently. Checked against OpenAI's simple_tokenizer (ftfy off) on 30,000
random strings: no other difference.

Every pre-token ends with `</w>`, so ids do not record whether two pre-tokens
were separated by a space: `decode` joins pre-tokens with single spaces
("seven, written" -> "seven , written"). `normalize` gives that form, and
decode(encode(s)) == normalize(s) whenever nothing was truncated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
import functools
import gzip
import html
import itertools
import os
import re

import numpy as np

END_OF_WORD = "</w>"
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
# CLIP's loader slices merges[1 : 49152-256-2+1]: 48894 merges, 49408 ids.
CLIP_NUM_MERGES = 49152 - 256 - 2
MERGES_HEADER = "#version: 0.2"
DEFAULT_MERGES = os.path.join(os.path.dirname(__file__), "raw", "bpe", "digits_merges.txt")

# Group 1 marks letter runs, which may hold No/Nl numerals to split off (see module doc).
_PRETOKEN = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|([^\W\d_]+)|\d|(?:[^\s\w]|_)+")


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """byte -> the one-character symbol that stands for it, in CLIP's id order.

    Printable Latin-1 bytes stand for themselves; the rest (space, controls,
    NBSP, soft hyphen) get chr(256 + i), so no symbol is whitespace and a merges
    line "a b" always splits in two.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def clean(text: str) -> str:
    """CLIP's cleaning without ftfy: html-unescape twice, collapse whitespace, lower-case."""
    return " ".join(html.unescape(html.unescape(text)).split()).lower()


def pretokenize(text: str) -> list[str]:
    """Cleaned text -> pre-tokens, the units BPE never merges across."""
    pieces = []
    for m in _PRETOKEN.finditer(text):
        piece = m.group()
        if m.lastindex and not piece.isalpha():  # letters mixed with No/Nl numerals
            for is_letter, run in itertools.groupby(piece, str.isalpha):
                pieces.extend(["".join(run)] if is_letter else run)
        else:
            pieces.append(piece)
    return pieces


def _word_symbols(piece: str) -> tuple[str, ...]:
    """A pre-token as byte symbols, the last one carrying the end-of-word marker."""
    chars = bytes_to_unicode()
    symbols = [chars[b] for b in piece.encode("utf-8")]
    symbols[-1] += END_OF_WORD
    return tuple(symbols)


def _merge_pair(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Replaces every occurrence of `pair` in `word`, left to right, without overlaps."""
    a, b = pair
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def apply_merges(word: tuple[str, ...], ranks: dict[tuple[str, str], int]) -> tuple[str, ...]:
    """CLIP's BPE: merge the best-ranked adjacent pair until none is in `ranks`."""
    while len(word) > 1:
        pair = min(zip(word, word[1:]), key=lambda p: ranks.get(p, float("inf")))
        if pair not in ranks:
            break
        word = _merge_pair(word, pair)
    return word


def read_merges(path: str, num_merges: int | None = None) -> list[tuple[str, str]]:
    """The first `num_merges` merges of a file (None: up to CLIP's 48894)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        data = gzip.decompress(data)
    lines = data.decode("utf-8").rstrip("\r\n").split("\n")
    limit = CLIP_NUM_MERGES if num_merges is None else num_merges
    if limit < 0:
        raise ValueError(f"num_merges must be >= 0, got {num_merges}")
    merges = []
    for lineno, line in enumerate(lines[1:1 + limit], start=2):  # line 1 is the header
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected a merge 'a b', got {line!r}")
        merges.append((parts[0], parts[1]))
    if num_merges is not None and len(merges) < num_merges:
        raise ValueError(f"{path} holds {len(merges)} merges, fewer than num_merges={num_merges}")
    return merges


def write_merges(path: str, merges: Sequence[tuple[str, str]]) -> None:
    """Writes CLIP's format (gzip if `path` ends in .gz, with a fixed mtime so
    the bytes depend only on the merges)."""
    for a, b in merges:
        if len(f"{a} {b}".split()) != 2:
            raise ValueError(f"merge symbols must be non-empty and hold no whitespace: {(a, b)!r}")
    data = "\n".join([MERGES_HEADER, *(f"{a} {b}" for a, b in merges)]).encode("utf-8") + b"\n"
    if path.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    with open(path, "wb") as f:
        f.write(data)


def train_bpe(texts: Iterable[str], num_merges: int, min_count: int = 2) -> list[tuple[str, str]]:
    """Learns up to `num_merges` merges, most frequent adjacent pair first.

    Texts are cleaned and pre-tokenised as `BPETokenizer` does, so the merges
    never cross a pre-token and `</w>` marks word ends. Ties go to the
    lexicographically smallest pair, so the result does not depend on the order
    of `texts`. Stops early once the best pair occurs fewer than `min_count`
    times (merging a pair seen once only memorises that word). Each step
    recounts pairs over the distinct words: fine for caption sets, slow for a
    web-scale corpus.
    """
    words = Counter(_word_symbols(p) for text in texts for p in pretokenize(clean(text)))
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < min_count:
            break
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for word, count in words.items():
            merged[_merge_pair(word, best)] += count
        words = merged
    return merges


class BPETokenizer:
    """CLIP-compatible byte-level BPE with the same interface as ByteTokenizer.

    `encode` -> int32 [max_len]: [bos (sot)] + tokens + [eot] + pads (id 0);
    tokens past max_len - 2 are dropped, eot is always kept.
    """

    pad_id = 0

    def __init__(self, max_len: int, merges_path: str | None = None, num_merges: int | None = None,
                 cache_size: int = 2**16):
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 to hold sot and eot, got {max_len}")
        self.max_len = max_len
        self.merges_path = merges_path or DEFAULT_MERGES
        merges = read_merges(self.merges_path, num_merges)
        byte_symbols = list(bytes_to_unicode().values())
        vocab = [*byte_symbols, *(s + END_OF_WORD for s in byte_symbols), *("".join(m) for m in merges), SOT, EOT]
        self.vocab_size = len(vocab)
        self.bos_id, self.eot_id = self.vocab_size - 2, self.vocab_size - 1
        self._vocab = vocab
        # A repeated entry maps to its last id, as CLIP's dict(zip(vocab, ids)) does.
        self._ids = {symbol: i for i, symbol in enumerate(vocab)}
        self._ranks = {m: r for r, m in enumerate(merges)}
        # id -> UTF-8 bytes, the end-of-word marker as a space, specials empty.
        byte_of = {s: b for b, s in bytes_to_unicode().items()}
        self._id_bytes = [bytes(byte_of[c] for c in s.removesuffix(END_OF_WORD))
                          + (b" " if s.endswith(END_OF_WORD) else b"") for s in vocab[:-2]] + [b"", b""]
        self.cache_size = cache_size
        self._make_cache()

    def _make_cache(self) -> None:
        # Captions reuse few words, so memoising word -> ids skips almost all BPE
        # work. lru_cache is thread-safe, as Grain's reader threads need.
        self._word_ids = functools.lru_cache(maxsize=self.cache_size)(self._bpe_ids)

    def __getstate__(self) -> dict:
        # A cache over a bound method does not pickle; Grain workers get a fresh one.
        return {k: v for k, v in self.__dict__.items() if k != "_word_ids"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._make_cache()

    def _bpe_ids(self, piece: str) -> tuple[int, ...]:
        return tuple(self._ids[s] for s in apply_merges(_word_symbols(piece), self._ranks))

    @staticmethod
    def normalize(text: str) -> str:
        """The text `decode` returns: cleaned pre-tokens joined by single spaces."""
        return " ".join(pretokenize(clean(text)))

    def tokenize(self, text: str, limit: int | None = None) -> list[int]:
        """Token ids without specials; stops once `limit` ids are known."""
        ids: list[int] = []
        for piece in pretokenize(clean(text)):
            ids.extend(self._word_ids(piece))
            if limit is not None and len(ids) >= limit:
                return ids[:limit]
        return ids

    def num_tokens(self, text: str) -> int:
        """Ids `text` needs with sot and eot, before truncation to max_len."""
        return len(self.tokenize(text)) + 2

    def encode(self, text: str) -> np.ndarray:
        """Returns int32 [max_len]."""
        tokens = self.tokenize(text, limit=self.max_len - 2)
        ids = np.full(self.max_len, self.pad_id, np.int32)
        ids[0] = self.bos_id
        ids[1:1 + len(tokens)] = tokens
        ids[1 + len(tokens)] = self.eot_id
        return ids

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Returns int32 [N, max_len]."""
        if not texts:
            return np.zeros((0, self.max_len), np.int32)
        return np.stack([self.encode(t) for t in texts])

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text up to the first eot, sot dropped; everything after eot (the
        pads) is ignored, while id 0 before it is the token "!". Truncation can
        cut a multi-byte character; its partial bytes decode to U+FFFD."""
        ids = np.asarray(ids, np.int64).ravel()
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), got {ids.min()}..{ids.max()}")
        ends = np.flatnonzero(ids == self.eot_id)
        ids = ids[:ends[0]] if ends.size else ids
        ids = ids[ids != self.bos_id].tolist()
        data = b"".join(self._id_bytes[i] for i in ids)
        if ids and self._vocab[ids[-1]].endswith(END_OF_WORD):
            data = data[:-1]  # the last word's end is no separator
        return data.decode("utf-8", errors="replace")
