"""Modality towers (encoder + projection) and the contrastive model over them.

A tower is built from a config entry `{"encoder": <name>, **encoder_fields}`;
the encoder registry is flat so that a config names an encoder as a string.
Every encoder is called as `encoder(x, mask=None)`, where `mask` marks the
valid input positions (audio frames) for the encoders that have padding, and
returns {"pooled": [B, D], "tokens": [B, N, D]}.

Batch convention: `batch[m]` is modality m's input, `batch[m + "_mask"]` its
optional input-validity mask, and `batch["present"][m]` an optional bool [B]
that is False where the example lacks m (objectives skip those pairs).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models.audio import AudioTransformer
from mmjax.models.point import PointTransformer
from mmjax.models.text import TextTransformer
from mmjax.models.vit import ViT

ENCODERS: dict[str, type[nn.Module]] = {
    "vit": ViT, "text": TextTransformer, "audio": AudioTransformer, "points": PointTransformer}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def to_dtype(name: str):
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: {sorted(DTYPES)}")
    return DTYPES[name]


def build_encoder(modality: str, tower_cfg: Mapping[str, Any], dtype: str, param_dtype: str) -> nn.Module:
    """Encoder module from its config entry; bad names fail with the valid choices."""
    fields = dict(tower_cfg)
    kind = fields.pop("encoder", None)
    if kind not in ENCODERS:
        raise ValueError(f"model.towers.{modality}.encoder={kind!r}; valid: {sorted(ENCODERS)}")
    cls = ENCODERS[kind]
    valid = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "dtype", "param_dtype"}
    unknown = set(fields) - valid
    if unknown:
        raise ValueError(f"model.towers.{modality}: unknown field(s) {sorted(unknown)} for encoder "
                         f"{kind!r}; valid: {sorted(valid)}")
    return cls(**fields, dtype=to_dtype(dtype), param_dtype=to_dtype(param_dtype), name=f"{modality}_encoder")


class ContrastiveModel(nn.Module):
    """Encodes every modality present in the batch into a shared embedding space.

    Returns {"embeddings": {m: [B, E] L2-normalised}, "tokens": {m: [B, N, D]},
    "logit_scale": scalar > 0, "logit_bias": scalar}. The temperature is learned
    as log(scale), clipped at `max_logit_scale` as in CLIP.
    """

    towers: Mapping[str, Mapping[str, Any]]
    embed_dim: int
    logit_scale_init: float = 1 / 0.07
    logit_bias_init: float = 0.0
    max_logit_scale: float = 100.0
    dtype: str = "float32"
    param_dtype: str = "float32"

    def setup(self):
        self.encoders = {m: build_encoder(m, cfg, self.dtype, self.param_dtype) for m, cfg in self.towers.items()}
        self.projections = {
            m: nn.Dense(self.embed_dim, use_bias=False, dtype=to_dtype(self.dtype),
                        param_dtype=to_dtype(self.param_dtype), name=f"{m}_proj")
            for m in self.towers
        }
        self.log_logit_scale = self.param("log_logit_scale", nn.initializers.constant(np.log(self.logit_scale_init)), ())
        self.logit_bias = self.param("logit_bias", nn.initializers.constant(self.logit_bias_init), ())

    def embed(self, x, modality: str, mask=None):
        """One modality's input -> (normalised embedding [B, E] in float32, tokens)."""
        out = self.encoders[modality](x, mask)
        z = self.projections[modality](out["pooled"]).astype(jnp.float32)
        # rsqrt of a clamped squared norm, not z / |z|: the gradient of |z| at
        # z = 0 (an absent modality's zero-filled input can embed to exactly 0)
        # is NaN, and 0 * NaN survives the loss's presence mask.
        z = z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-12))
        return z, out["tokens"]

    def __call__(self, batch: Mapping[str, Any]):
        embeddings, tokens = {}, {}
        for m in self.towers:
            if m in batch:  # a modality absent from the batch is simply not encoded
                embeddings[m], tokens[m] = self.embed(batch[m], m, batch.get(f"{m}_mask"))
        scale = jnp.minimum(jnp.exp(self.log_logit_scale), self.max_logit_scale)
        return {"embeddings": embeddings, "tokens": tokens, "logit_scale": scale, "logit_bias": self.logit_bias}


def build_contrastive_model(model_cfg, tokenizer=None) -> ContrastiveModel:
    """The model from `config.model`; text towers take vocab size and eot id from `tokenizer`."""
    towers = {m: dict(cfg) for m, cfg in model_cfg.towers.items()}
    for m, cfg in towers.items():
        if cfg.get("encoder") == "text":
            if tokenizer is None:
                raise ValueError(f"tower {m!r} is a text encoder: build_model needs the tokenizer")
            cfg.update(vocab_size=tokenizer.vocab_size, eot_id=tokenizer.eot_id)
    return ContrastiveModel(
        towers=towers, embed_dim=model_cfg.embed_dim, logit_scale_init=model_cfg.logit_scale_init,
        logit_bias_init=model_cfg.logit_bias_init, dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype)
