"""The names of a batch's keys, shared by input, models, objectives and evaluators.

A batch is a dict keyed by modality name:
  batch[m]                 modality m's input (image [B, H, W, C], text [B, L], ...)
  batch[mask_key(m)]       optional bool validity of m's positions ("audio_mask": valid frames)
  batch[PRESENT][m]        bool [B]: False where the example lacks m (dropout, bad input)
  batch[LABEL]             int32 [B] class labels
  batch[view_key(m)]       a second, independently augmented view of m (SimCLR / TCL), training only
  batch[FLAGS]             host-side counters (truncated captions, dropped inputs); not for the device
  batch[EVAL_MASK]         bool [B] real (not padding) rows of an evaluation batch; not for the device
Both sides of every interface import these, so the naming lives in one place below all of them.
"""
from __future__ import annotations

PRESENT = "present"
LABEL = "label"
FLAGS = "flags"
EVAL_MASK = "mask"
VIEW2_SUFFIX = "_view2"
MASK_SUFFIX = "_mask"
HOST_ONLY = (FLAGS, EVAL_MASK)  # keys the train step never sees


def mask_key(key: str) -> str:
    """'audio' -> 'audio_mask'; 'audio_view2' -> 'audio_view2_mask'."""
    return key + MASK_SUFFIX


def view_key(modality: str) -> str:
    """The second view of `modality`: 'image' -> 'image_view2'."""
    return modality + VIEW2_SUFFIX


def rename_view(inputs: dict, modality: str) -> dict:
    """A modality's inputs {m: x, m_mask: v} renamed as its second view {m_view2: x, m_view2_mask: v}."""
    return {view_key(modality) + k[len(modality):]: v for k, v in inputs.items()}


def model_inputs(batch: dict) -> dict:
    """What the device sees: inputs, masks, presence and labels (not host-side flags or eval masks)."""
    return {k: v for k, v in batch.items() if k not in HOST_ONLY}
