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

from mmjax import checkpoint
from mmjax.models.audio import AudioTransformer
from mmjax.models.point import PointTransformer
from mmjax.models.text import TextTransformer
from mmjax.models.vit import ViT
from mmjax.objectives.contrastive_variants import VIEW2_SUFFIX

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


def l2_normalize(z) -> jax.Array:
    """z / |z| over the last axis, in float32.

    rsqrt of a clamped squared norm, not z / |z|: the gradient of |z| at z = 0
    (an absent modality's zero-filled input can embed to exactly 0) is NaN, and
    0 * NaN survives the loss's presence mask.
    """
    z = z.astype(jnp.float32)
    return z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-12))


def _projection(modality: str, embed_dim: int, dtype: str, param_dtype: str) -> nn.Dense:
    return nn.Dense(embed_dim, use_bias=False, dtype=to_dtype(dtype), param_dtype=to_dtype(param_dtype),
                    name=f"{modality}_proj")


def token_validity(encoder: nn.Module, x, mask, num_tokens: int) -> jax.Array:
    """bool [B, N]: which of `encoder`'s output tokens hold input (FILIP's token mask).

    Text: the tokens up to and including the first eot (those the text tower
    attends to). Audio: patches with at least one valid frame of `mask`, in the
    tower's time-major order. Image patches and point groups: all. A class
    token is never among the tokens (encode_and_pool pools and drops it).
    """
    b = x.shape[0]
    if isinstance(encoder, TextTransformer):
        eot = jnp.argmax(x == encoder.eot_id, axis=1)  # [B] first eot, as in the tower
        return jnp.arange(x.shape[1])[None, :] <= eot[:, None]
    if isinstance(encoder, AudioTransformer) and mask is not None:
        time_patches = mask.shape[1] // encoder.patch_time
        valid = mask.reshape(b, time_patches, encoder.patch_time).any(axis=-1)  # [B, Tp]
        return jnp.repeat(valid, num_tokens // time_patches, axis=1)  # every frequency patch of a time step
    return jnp.ones((b, num_tokens), bool)


def _merge_views(views: list) -> jax.Array:  # V arrays [B, ...] -> [B * V, ...], an example's views adjacent
    x = jnp.stack(views, axis=1)
    return x.reshape(-1, *x.shape[2:])


def _split_view(x, num_views: int, i: int) -> jax.Array:  # inverse of _merge_views, view i
    return x.reshape(-1, num_views, *x.shape[1:])[:, i]


class ReferenceTower(nn.Module):
    """A second, frozen tower + projection of one modality: CWCL's reference.

    Its params mirror a ContrastiveModel's `<m>_encoder` and `<m>_proj`, so a
    finished run's can be restored into it (`restore_reference`). The model
    stops its gradient; config.optim.freeze_regex="^reference/" keeps the
    optimiser (weight decay included) from moving it.
    """

    modality: str
    tower: Mapping[str, Any]
    embed_dim: int
    dtype: str = "float32"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x, mask=None):
        out = build_encoder(self.modality, self.tower, self.dtype, self.param_dtype)(x, mask)
        z = _projection(self.modality, self.embed_dim, self.dtype, self.param_dtype)(out["pooled"])
        return jax.lax.stop_gradient(l2_normalize(z))


class ContrastiveModel(nn.Module):
    """Encodes every modality present in the batch into a shared embedding space.

    Returns
      "embeddings"  {m: [B, E]} L2-normalised; a second view `batch[m + "_view2"]`
                    (SimCLR/TCL) goes through m's tower into "<m>_view2";
      "tokens"      {m: [B, N, D]} the tower's tokens or, with `project_tokens`,
                    their projections into the shared space, L2-normalised per
                    token, [B, N, E] (FILIP's late interaction);
      "token_masks" {m: bool [B, N]} tokens that hold input (`token_validity`);
      "logit_scale" scalar > 0, learned as log(scale), clipped at
                    `max_logit_scale` as in CLIP; "logit_bias" scalar;
    and optionally
      "reference"   {m: [B, E]} the frozen `ReferenceTower` (CWCL), if
                    `reference_modality` is set and m is in the batch;
      "missing_embeddings" {m: [E]} learned, L2-normalised stand-ins for an
                    absent m (Symile), for m in `missing_embeddings`.
    """

    towers: Mapping[str, Mapping[str, Any]]
    embed_dim: int
    logit_scale_init: float = 1 / 0.07
    logit_bias_init: float = 0.0
    max_logit_scale: float = 100.0
    project_tokens: bool = False
    reference_modality: str = ""
    missing_embeddings: tuple[str, ...] = ()
    dtype: str = "float32"
    param_dtype: str = "float32"

    def setup(self):
        unknown = (({self.reference_modality} - {""}) | set(self.missing_embeddings)) - set(self.towers)
        if unknown:
            raise ValueError(f"model.reference.modality / model.missing_embeddings name {sorted(unknown)}, which "
                             f"have no tower; towers: {sorted(self.towers)}")
        self.encoders = {m: build_encoder(m, cfg, self.dtype, self.param_dtype) for m, cfg in self.towers.items()}
        self.projections = {m: _projection(m, self.embed_dim, self.dtype, self.param_dtype) for m in self.towers}
        self.log_logit_scale = self.param("log_logit_scale", nn.initializers.constant(np.log(self.logit_scale_init)), ())
        self.logit_bias = self.param("logit_bias", nn.initializers.constant(self.logit_bias_init), ())
        if self.reference_modality:
            m = self.reference_modality
            self.reference = ReferenceTower(m, self.towers[m], self.embed_dim, self.dtype, self.param_dtype,
                                            name="reference")
        # Named "..._embedding" so the default no-decay regex leaves them alone, like other embeddings.
        self.missing = {m: self.param(f"{m}_missing_embedding", nn.initializers.normal(1.0), (self.embed_dim,),
                                      to_dtype(self.param_dtype))
                        for m in self.missing_embeddings}

    def embed(self, x, modality: str, mask=None):
        """One modality's input -> (normalised embedding [B, E] in float32, tokens)."""
        out = self.encoders[modality](x, mask)
        z = l2_normalize(self.projections[modality](out["pooled"]))
        tokens = out["tokens"]
        if self.project_tokens:  # the same projection as the pooled embedding, token by token
            tokens = l2_normalize(self.projections[modality](tokens))
        return z, tokens

    def embed_with_tokens(self, x, modality: str, mask=None):
        """`embed` plus which tokens hold input, from one tower pass: (embedding [B, E], tokens
        [B, N, E or D], bool [B, N])."""
        z, tokens = self.embed(x, modality, mask)
        return z, tokens, token_validity(self.encoders[modality], x, mask, tokens.shape[1])

    def embed_tokens(self, x, modality: str, mask=None):
        """One modality's input -> (its tokens [B, N, E or D], bool [B, N] which of them hold input)."""
        return self.embed_with_tokens(x, modality, mask)[1:]

    def __call__(self, batch: Mapping[str, Any]):
        embeddings, tokens, token_masks = {}, {}, {}
        for m in self.towers:
            views = [k for k in (m, m + VIEW2_SUFFIX) if k in batch]  # an absent modality is not encoded
            if not views:
                continue
            # Every view of m in one tower call, as [B, V, ...] -> [B * V, ...]: one compiled tower,
            # and under data sharding each device keeps its own examples' views (no resharding).
            masks = [batch.get(f"{k}_mask") for k in views]
            x, mask = _merge_views([batch[k] for k in views]), None if masks[0] is None else _merge_views(masks)
            z, t = self.embed(x, m, mask)
            valid = token_validity(self.encoders[m], x, mask, t.shape[1])
            for i, k in enumerate(views):
                embeddings[k], tokens[k], token_masks[k] = (_split_view(a, len(views), i) for a in (z, t, valid))
        scale = jnp.minimum(jnp.exp(self.log_logit_scale), self.max_logit_scale)
        out = {"embeddings": embeddings, "tokens": tokens, "token_masks": token_masks, "logit_scale": scale,
               "logit_bias": self.logit_bias}
        if self.reference_modality and self.reference_modality in batch:
            m = self.reference_modality
            out["reference"] = {m: self.reference(batch[m], batch.get(f"{m}_mask"))}
        if self.missing_embeddings:
            out["missing_embeddings"] = {m: l2_normalize(e) for m, e in self.missing.items()}
        return out


def build_contrastive_model(model_cfg, tokenizer=None) -> ContrastiveModel:
    """The model from `config.model`; text towers take vocab size and eot id from `tokenizer`.

    Optional fields (absent = off): project_tokens (bool), reference
    ({"modality": m or "", "init_from": run dir or ""}), missing_embeddings
    (tuple of modalities).
    """
    towers = {m: dict(cfg) for m, cfg in model_cfg.towers.items()}
    for m, cfg in towers.items():
        if cfg.get("encoder") == "text":
            if tokenizer is None:
                raise ValueError(f"tower {m!r} is a text encoder: build_model needs the tokenizer")
            cfg.update(vocab_size=tokenizer.vocab_size, eot_id=tokenizer.eot_id)
    reference = model_cfg.get("reference") or {}
    return ContrastiveModel(
        towers=towers, embed_dim=model_cfg.embed_dim, logit_scale_init=model_cfg.logit_scale_init,
        logit_bias_init=model_cfg.logit_bias_init, project_tokens=bool(model_cfg.get("project_tokens", False)),
        reference_modality=reference.get("modality", ""),
        missing_embeddings=tuple(model_cfg.get("missing_embeddings", ())),
        dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype)


def restore_reference(model_cfg, params):
    """`params` with the reference tower taken from a finished run, if `model.reference.init_from` names one.

    init_from is that run's workdir (or its checkpoints/ directory); its latest
    committed checkpoint's `<m>_encoder` and `<m>_proj` params are restored
    alone (mmjax.checkpoint.restore_params_from_run): the towers must have the
    same architecture. Called once, on a fresh start: a resumed run gets the
    reference back from its own checkpoint.
    """
    reference = model_cfg.get("reference") or {}
    if not reference.get("modality") or not reference.get("init_from"):
        return params
    # Our reference subtree mirrors the run's top-level `<m>_encoder`, `<m>_proj` params.
    restored = checkpoint.restore_params_from_run(
        reference["init_from"], params["reference"], f"model.reference.init_from={reference['init_from']!r}")
    return {**params, "reference": restored}
