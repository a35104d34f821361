"""Captions: text records -> int32 [max_len] token ids (truncated keeping eot, and counted),
EDA-style word deletion / swap augmentation, a causal text transformer by default.

A record holds one caption (str or UTF-8 bytes) or several (a list / tuple / 1-d array of them,
e.g. coco_captions' five per image): training picks one uniformly with the example's generator
(drawing only when there are several), evaluation takes the first."""
from __future__ import annotations

import numpy as np

from mmjax.data.modalities.base import MODALITIES, Modality
from mmjax.data.transforms import BadInput, random_word_edit


@MODALITIES.register("text")
class Text(Modality):
    name = "text"
    encoder = "text"

    @classmethod
    def default_config(cls):
        return {
            "tokenizer": "bytes",  # or "bpe" (mmjax.data.tokenizer)
            "tokenizer_path": "",  # vocabulary file ("bpe": merges); "" = the embedded default
            "max_len": 32,  # tokens incl. bos/eot; every digits caption template fits in 30 bytes
            # EDA-style caption edits in training (with data.augment): per-word deletion probability,
            # expected swaps per word.
            "delete_prob": 0.0,
            "swap_prob": 0.0,
        }

    def __init__(self, data_cfg, tokenizer=None, *, train: bool = False):
        super().__init__(data_cfg, tokenizer, train=train)
        for key in ("delete_prob", "swap_prob"):
            if not 0.0 <= float(self.cfg[key]) < 1.0:
                raise ValueError(f"data.text.{key}={self.cfg[key]}: a probability in [0, 1) expected")

    @property
    def tok(self):
        if self.tokenizer is None:  # validation alone needs none; encoding does
            raise ValueError("the text modality needs the tokenizer (mmjax.data.tokenizer.from_data_config)")
        return self.tokenizer

    def specs(self):
        return {"text": ((self.tok.max_len,), np.int32)}

    def validate(self, value):
        """One caption -> str; several -> a tuple of str (BadInput naming the first bad one)."""
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        if isinstance(value, (list, tuple, np.ndarray)):
            if isinstance(value, np.ndarray) and value.ndim != 1:
                raise BadInput(f"is an array of shape {value.shape}, expected a caption or a 1-d array of captions")
            if len(value) == 0:
                raise BadInput("is an empty list of captions")
            captions = []
            for i, caption in enumerate(value):
                try:
                    captions.append(_caption(caption))
                except BadInput as e:
                    raise BadInput(f"caption {i} {e}") from None
            return tuple(captions)
        return _caption(value)

    def __call__(self, value, rng, flags):
        if isinstance(value, (list, np.ndarray)):  # not through validate (e.g. called directly)
            value = self.validate(value)
        if isinstance(value, tuple):  # several captions (validated): one per example
            value = value[int(rng.integers(len(value)))] if self.train and len(value) > 1 else value[0]
        if self.augmenting and (self.cfg.delete_prob or self.cfg.swap_prob):
            value = random_word_edit(value, rng, float(self.cfg.delete_prob), float(self.cfg.swap_prob))
        return self._encode(value, flags)

    def _encode(self, caption: str, flags: dict):
        # Over-long captions are truncated (keeping eot, as CLIP does) and counted.
        flags["text_truncated"] = np.bool_(self.tok.num_tokens(caption) > self.tok.max_len)
        return {"text": self.tok.encode(caption)}

    def placeholder(self):
        return {"text": self.tok.encode("")}  # a valid (empty) sequence: the tower still finds an eot

    def fake(self, rng, flags, class_names=()):
        # Words from the class names, so captions and zero-shot prompts share a vocabulary; up to one
        # word per 6 tokens: fits a byte tokenizer (a class name and a space), rarely truncated.
        words = list(class_names) or ["word"]
        caption = " ".join(rng.choice(words, size=rng.integers(1, max(1, self.tok.max_len // 6) + 1)))
        return self._encode(caption, flags)


def _caption(value) -> str:
    """One caption as str; BadInput if it is not UTF-8 text or is blank."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadInput(f"is not valid UTF-8 ({e})") from None
    if not isinstance(value, str):
        raise BadInput(f"has type {type(value).__name__}, expected text")
    if not value.strip():
        raise BadInput("is empty")
    return str(value)
