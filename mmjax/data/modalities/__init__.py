"""Modalities as components: one module per modality, one registry (`MODALITIES`).

Each module (image, text, audio, points) holds a `Modality` subclass that owns its config
defaults (`data.<name>`), validation, train/eval transforms, absent-example placeholder, fake
generator and default encoder; see `base.py` for the interface. A project adds a modality by
registering its own subclass: `@MODALITIES.register("depth") class Depth(Modality): ...`.
"""
from mmjax.data.modalities.base import MODALITIES, Modality, get_modality
from mmjax.data.modalities import audio, image, points, text  # noqa: F401  (registers the built-ins)

__all__ = ["MODALITIES", "Modality", "get_modality"]
