"""Modality towers (encoder + projection) and the contrastive model over them.

A tower is an encoder built from a config entry `{"encoder": <name>, **fields}`
(mmjax.models.encoders: the registry, the call contract, what an encoder
declares) followed by a projection into the shared embedding space.

Batch convention: `batch[m]` is modality m's input, `batch[m + "_mask"]` its
optional input-validity mask, and `batch["present"][m]` an optional bool [B]
that is False where the example lacks m (objectives skip those pairs).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.batch_keys import mask_key, view_key
from mmjax.models.encoders import build_encoder
from mmjax.models.layers import to_dtype
from mmjax.models.registry import ENCODERS, MODELS
from mmjax.similarity import l2_normalize


def _projection(modality: str, embed_dim: int, dtype: str, param_dtype: str) -> nn.Dense:
    return nn.Dense(embed_dim, use_bias=False, dtype=to_dtype(dtype), param_dtype=to_dtype(param_dtype),
                    name=f"{modality}_proj")


def _merge_views(views: list) -> jax.Array:  # V arrays [B, ...] -> [B * V, ...], an example's views adjacent
    x = jnp.stack(views, axis=1)
    return x.reshape(-1, *x.shape[2:])


def _split_view(x, num_views: int, i: int) -> jax.Array:  # inverse of _merge_views, view i
    return x.reshape(-1, num_views, *x.shape[1:])[:, i]


class ReferenceTower(nn.Module):
    """A second, frozen tower + projection of one modality: CWCL's reference.

    Its params mirror a ContrastiveModel's `<m>_encoder` and `<m>_proj`, so a
    finished run's can be restored into it (the trainer calls
    `mmjax.checkpoint.restore_reference`). The model stops its gradient;
    config.optim.freeze_regex="^reference/" keeps the optimiser (weight decay
    included) from moving it.
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
      "token_masks" {m: bool [B, N]} tokens that hold input (the encoder's
                    `token_validity`);
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

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities `embed` accepts: one per tower."""
        return tuple(self.towers)

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
        return z, tokens, self.encoders[modality].token_validity(x, mask, tokens.shape[1])

    def embed_tokens(self, x, modality: str, mask=None):
        """One modality's input -> (its tokens [B, N, E or D], bool [B, N] which of them hold input)."""
        return self.embed_with_tokens(x, modality, mask)[1:]

    def __call__(self, batch: Mapping[str, Any]):
        embeddings, tokens, token_masks = {}, {}, {}
        for m in self.towers:
            views = [k for k in (m, view_key(m)) if k in batch]  # an absent modality is not encoded
            if not views:
                continue
            # Every view of m in one tower call, as [B, V, ...] -> [B * V, ...]: one compiled tower,
            # and under data sharding each device keeps its own examples' views (no resharding).
            masks = [batch.get(mask_key(k)) for k in views]
            x, mask = _merge_views([batch[k] for k in views]), None if masks[0] is None else _merge_views(masks)
            z, t = self.embed(x, m, mask)
            valid = self.encoders[m].token_validity(x, mask, t.shape[1])
            for i, k in enumerate(views):
                embeddings[k], tokens[k], token_masks[k] = (_split_view(a, len(views), i) for a in (z, t, valid))
        scale = jnp.minimum(jnp.exp(self.log_logit_scale), self.max_logit_scale)
        out = {"embeddings": embeddings, "tokens": tokens, "token_masks": token_masks, "logit_scale": scale,
               "logit_bias": self.logit_bias}
        if self.reference_modality and self.reference_modality in batch:
            m = self.reference_modality
            out["reference"] = {m: self.reference(batch[m], batch.get(mask_key(m)))}
        if self.missing_embeddings:
            out["missing_embeddings"] = {m: l2_normalize(e) for m, e in self.missing.items()}
        return out


@MODELS.register("contrastive")
def build_contrastive_model(model_cfg, tokenizer=None) -> ContrastiveModel:
    """The model from `config.model`; text towers take vocab size and eot id from `tokenizer`.

    Optional fields (absent = off): project_tokens (bool), reference
    ({"modality": m or "", "init_from": run dir or ""}), missing_embeddings
    (tuple of modalities).
    """
    towers = {m: dict(cfg) for m, cfg in model_cfg.towers.items()}
    for m, cfg in towers.items():
        encoder = ENCODERS.get(cfg["encoder"]) if cfg.get("encoder") in ENCODERS else None  # else build_encoder fails
        if getattr(encoder, "takes_tokenizer", False):
            if tokenizer is None:
                raise ValueError(f"tower {m!r}'s encoder {cfg['encoder']!r} reads the tokenizer: build_model "
                                 "needs the tokenizer")
            cfg.update(vocab_size=tokenizer.vocab_size, eot_id=tokenizer.eot_id)
    reference = model_cfg.get("reference") or {}
    return ContrastiveModel(
        towers=towers, embed_dim=model_cfg.embed_dim, logit_scale_init=model_cfg.logit_scale_init,
        logit_bias_init=model_cfg.logit_bias_init, project_tokens=bool(model_cfg.get("project_tokens", False)),
        reference_modality=reference.get("modality", ""),
        missing_embeddings=tuple(model_cfg.get("missing_embeddings", ())),
        dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype)

