"""Encoders: the registry a tower config names them in, and what a model may ask of one.

A tower is built from a config entry `{"encoder": <name>, **encoder_fields}` (`build_encoder`);
`<name>` is an entry of ENCODERS, which each encoder module fills with its own class
(`@ENCODERS.register("vit")`). Every encoder is called as `encoder(x, mask=None)`, where `mask`
marks the valid input positions (audio frames) for the encoders that have padding, and returns
{"pooled": [B, D], "tokens": [B, N, D]}; masked models also pass `keep_idx` [B, K], the tokens
to encode.

An encoder subclasses `TokenEncoder` and overrides what differs from its defaults, so that the
model families (contrastive towers, MAE, SimMIM) ask the encoder instead of testing its class:
  token_validity(x, mask, N)  which of its N output tokens hold input (default: all)
  patch_shape                 (ph, pw) if its tokens are the patches of a grid input
  patch_channels              values per grid position, if the encoder fixes them
  group_shape                 (G, K) if its tokens are G groups of K points
  takes_tokenizer             True if `vocab_size` and `eot_id` come from the run's tokenizer
A new encoder registers itself where it is defined; the built-in ones are imported by
mmjax/models/__init__.py, one elsewhere (a project, a test) by importing its own module.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models.layers import to_dtype
from mmjax.models.registry import ENCODERS

__all__ = ["ENCODERS", "TokenEncoder", "build_encoder"]


class TokenEncoder(nn.Module):
    """Base of the registered encoders: the defaults of what generic model code asks of one."""

    # A class attribute, not a field: the model builder fills `vocab_size` and `eot_id` from the
    # tokenizer for an encoder that sets it (text towers).
    takes_tokenizer = False

    @nn.nowrap  # plain Python on the (bound or unbound) module, no scope of its own
    def token_validity(self, x, mask, num_tokens: int) -> jax.Array:
        """bool [B, N]: which of the output tokens for input `x` (validity `mask`) hold input, e.g.
        FILIP's token mask. Default: all of them. A class token is never among the tokens."""
        del mask
        return jnp.ones((x.shape[0], num_tokens), bool)

    @property
    def patch_shape(self) -> tuple[int, int] | None:
        """(ph, pw) when the tokens are the non-overlapping ph x pw patches of the input's axes 1
        and 2 (image rows x columns, spectrogram frames x bands) in raster order, the layout
        `mmjax.models.patches` cuts; None when they are not patches of a grid."""
        return None

    @property
    def patch_channels(self) -> int | None:
        """Values per grid position when the encoder fixes them (a spectrogram: 1); None when the
        input decides (an image's C channels)."""
        return None

    @property
    def group_shape(self) -> tuple[int, int] | None:
        """(G, K) when the tokens are G groups of K points; the encoder then also returns
        "centres" [B, G, 3] and "neighbourhoods" [B, G, K, 3] (points relative to their centre)."""
        return None


def build_encoder(modality: str, tower_cfg: Mapping[str, Any], dtype: str, param_dtype: str) -> nn.Module:
    """Encoder module from its config entry, named "<modality>_encoder"; bad names fail with the
    valid choices."""
    fields = dict(tower_cfg)
    kind = fields.pop("encoder", None)
    if kind not in ENCODERS:
        raise ValueError(f"model.towers.{modality}.encoder={kind!r}; valid: {ENCODERS.names()}")
    cls = ENCODERS.get(kind)
    if not (isinstance(cls, type) and issubclass(cls, TokenEncoder)):
        raise TypeError(f"encoder {kind!r} is registered as {cls!r}, not a subclass of "
                        f"mmjax.models.encoders.TokenEncoder (which gives the defaults models ask for)")
    valid = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "dtype", "param_dtype"}
    unknown = set(fields) - valid
    if unknown:
        raise ValueError(f"model.towers.{modality}: unknown field(s) {sorted(unknown)} for encoder "
                         f"{kind!r}; valid: {sorted(valid)}")
    return cls(**fields, dtype=to_dtype(dtype), param_dtype=to_dtype(param_dtype), name=f"{modality}_encoder")
