"""Text tokenizers, by name: `get_tokenizer(config.data.tokenizer, max_len, path)`.

A tokenizer maps text to a fixed-length int32 row [max_len] laid out as
[bos] + tokens + [eot] + pads; towers pool at eot, so it is always present.
Names: "bytes" (UTF-8 bytes, no vocabulary file) and "bpe" (CLIP-format
byte-level BPE, mmjax.data.bpe; `path` is its merges file).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from mmjax.data.bpe import BPETokenizer


class Tokenizer(Protocol):
    """What the pipeline and the zero-shot eval need from any tokenizer."""

    vocab_size: int
    max_len: int
    pad_id: int
    bos_id: int
    eot_id: int

    @staticmethod
    def normalize(text: str) -> str: ...
    def encode(self, text: str) -> np.ndarray: ...
    def num_tokens(self, text: str) -> int: ...
    def encode_batch(self, texts: Sequence[str]) -> np.ndarray: ...
    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: no vocabulary file, every string is encodable.

    Ids: 0 pad, 1 bos, 2 eot, byte b -> b + 3 (vocab_size 259).

    Text is normalised before encoding: lower-cased and every whitespace run
    collapsed to one space (ends stripped), so "The  Digit\\n7" and
    "the digit 7" are the same sequence. `decode` returns normalised text.
    """

    pad_id = 0
    bos_id = 1
    eot_id = 2
    _offset = 3
    vocab_size = 256 + _offset

    def __init__(self, max_len: int):
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 to hold bos and eot, got {max_len}")
        self.max_len = max_len

    @staticmethod
    def normalize(text: str) -> str:
        return " ".join(text.lower().split())

    def encode(self, text: str) -> np.ndarray:
        """Returns int32 [max_len]; bytes beyond max_len - 2 are dropped, eot kept."""
        data = self.normalize(text).encode("utf-8")[: self.max_len - 2]
        ids = np.full(self.max_len, self.pad_id, np.int32)
        ids[0] = self.bos_id
        ids[1: 1 + len(data)] = np.frombuffer(data, np.uint8).astype(np.int32) + self._offset
        ids[1 + len(data)] = self.eot_id
        return ids

    def num_tokens(self, text: str) -> int:
        """Ids `text` needs with bos and eot, before truncation to max_len."""
        return len(self.normalize(text).encode("utf-8")) + 2

    def encode_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Returns int32 [N, max_len]."""
        if not texts:
            return np.zeros((0, self.max_len), np.int32)
        return np.stack([self.encode(t) for t in texts])

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of the byte ids; specials are skipped, so this inverts `encode`.

        Truncation can cut a multi-byte character; its partial bytes decode to
        U+FFFD rather than raising.
        """
        ids = np.asarray(ids)
        data = (ids[ids >= self._offset] - self._offset).astype(np.uint8).tobytes()
        return data.decode("utf-8", errors="replace")


TOKENIZERS: dict[str, type[Tokenizer]] = {"bytes": ByteTokenizer, "bpe": BPETokenizer}


def get_tokenizer(name: str, max_len: int, path: str | None = None) -> Tokenizer:
    """`path`: the vocabulary file of tokenizers that have one ("bpe": a merges
    file, None for the embedded default); "bytes" takes none."""
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; valid names: {sorted(TOKENIZERS)}")
    if path is None:
        return TOKENIZERS[name](max_len)
    if name == "bytes":
        raise ValueError(f"tokenizer 'bytes' has no vocabulary file, got path={path!r}")
    return TOKENIZERS[name](max_len, path)


def from_data_config(data_cfg) -> Tokenizer:
    """The tokenizer of `config.data.text` (tokenizer, max_len, tokenizer_path)."""
    text = data_cfg.text
    return get_tokenizer(text.tokenizer, text.max_len, text.tokenizer_path or None)
