"""MultiMAE (Bachmann et al. 2022): one encoder over the patches of several modalities.

Each modality has an input adapter (a linear patch embedding, a fixed 2-D
sincos position embedding of its own patch grid, and a learned modality
embedding); their tokens are concatenated and masked jointly:
`masking.dirichlet_budgets` draws per-example shares p ~ Dirichlet(alpha) and
keeps exactly `num_keep` tokens in total, about p_m * num_keep of them from
modality m. The shared encoder sees only the kept tokens. Each modality has
its own lightweight output adapter: its N_m queries (the visible tokens back
in place, a mask token at the hidden ones, plus positions) cross-attend to
the visible tokens of *every* modality, then run a few self-attention blocks
and a linear head onto that modality's patches. The objective is "mae"
(per-modality `mae_loss` on hidden patches, summed; metrics per modality).

`embed(x, m)` runs the shared encoder on modality m alone, unmasked, for the
frozen-feature probes; `modalities` lists the m it accepts. Spectrogram inputs
follow the audio tower: frames outside `<m>_mask` are zeroed, patches without
a valid frame are neither attended to nor scored; an example lacking m
(`present[m]` False) gets no budget for m (its share goes to the others).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mmjax.batch_keys import mask_key
from mmjax.models import masking
from mmjax.models.layers import (Dtype, Encoder, MlpBlock, dot_product_attention, encode_and_pool, posemb_sincos_2d,
                                 to_dtype)
from mmjax.models.patches import patch_validity, patches_of
from mmjax.models.registry import MODELS


class PatchAdapter(nn.Module):
    """Patches [B, N, P] of a (gh, gw) grid -> tokens [B, N, D]."""

    width: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, patches, grid: tuple[int, int]):
        x = nn.Dense(self.width, dtype=self.dtype, param_dtype=self.param_dtype, name="patch_embed")(patches)
        modality = self.param("modality_embedding", nn.initializers.normal(0.02), (self.width,), self.param_dtype)
        return x + jnp.asarray(posemb_sincos_2d(*grid, self.width), x.dtype)[None] + modality.astype(x.dtype)


class SharedEncoder(nn.Module):
    """The transformer shared by all modalities; the fields `encode_and_pool` reads from a tower."""

    depth: int
    num_heads: int
    mlp_dim: int
    pool: str = "mean"
    scan: bool = False
    remat: str = "none"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, valid=None, keep_idx=None):
        return encode_and_pool(self, x, valid, keep_idx=keep_idx)


class OutputAdapter(nn.Module):
    """One modality's decoder: cross-attention to all visible tokens, self-attention, linear head."""

    out_dim: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, encoded, info: masking.MaskInfo, positions, context_valid, span: tuple[int, int]):
        """encoded [B, K, De]: the encoder's kept tokens (info.keep_idx order) of all
        modalities; positions [N, Dd]: fixed decoder positions of the whole sequence;
        context_valid bool [B, K]; span: this modality's [start, stop) in the sequence.
        Returns [B, stop - start, out_dim]."""
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        context = nn.Dense(self.width, **kw, name="proj_context")(encoded)
        token = self.param("mask_token", nn.initializers.normal(0.02), (self.width,), self.param_dtype)
        pos = jnp.asarray(positions, context.dtype)
        queries = masking.unshuffle_with_mask_tokens(context, token, info.restore_idx) + pos[None]
        queries = queries[:, span[0]:span[1]]
        context = context + jnp.take(pos, info.keep_idx, axis=0)
        norm = lambda name: nn.LayerNorm(**kw, name=name)
        attn_mask = nn.make_attention_mask(jnp.ones(queries.shape[:2], bool), context_valid)
        queries = queries + nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform(), attention_fn=dot_product_attention,
            **kw, name="cross_attn",
        )(norm("ln_query")(queries), norm("ln_context")(context), mask=attn_mask)
        queries = queries + MlpBlock(self.mlp_dim, **kw, name="cross_mlp")(norm("ln_mlp")(queries))
        y = Encoder(self.depth, self.num_heads, self.mlp_dim, **kw, name="blocks")(queries)
        return nn.Dense(self.out_dim, **kw, name="pred")(y)


class MultiMAE(nn.Module):
    # modality -> {"patch": (ph, pw), "channels": C (images; default 1)} (config.model.modalities);
    # tokens in sorted-name order
    inputs: Mapping[str, Mapping[str, Any]]
    encoder: Mapping[str, Any]  # width, depth, num_heads, mlp_dim (+ scan, remat)
    decoder: Mapping[str, Any]  # width, depth, num_heads, mlp_dim
    num_keep: int = 24  # visible tokens per example, over all modalities
    alpha: float = 1.0  # Dirichlet concentration of the per-modality budgets
    dtype: str = "float32"
    param_dtype: str = "float32"

    def setup(self):
        kw = dict(dtype=to_dtype(self.dtype), param_dtype=to_dtype(self.param_dtype))
        self.adapters = {m: PatchAdapter(self.encoder["width"], **kw, name=f"{m}_adapter") for m in self.inputs}
        shared = {k: v for k, v in self.encoder.items() if k != "width"}  # the adapters set the width
        self.shared = SharedEncoder(**shared, **kw, name="encoder")
        dec = self.decoder
        self.decoders = {
            m: OutputAdapter(int(np.prod(cfg["patch"])) * cfg.get("channels", 1), dec["width"], dec["depth"],
                             dec["num_heads"], dec["mlp_dim"], **kw, name=f"{m}_decoder")
            for m, cfg in self.inputs.items()}

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities `embed` accepts, in token order."""
        return tuple(sorted(self.inputs))

    def _tokens(self, m: str, x, frame_mask):
        """Modality m's input -> (patches [B, N, P], grid, valid bool [B, N])."""
        if frame_mask is not None:  # padding frames never reach the model, as in the audio tower
            x = jnp.where(frame_mask[..., None], x, 0)
        patches, grid = patches_of(x, tuple(self.inputs[m]["patch"]))
        valid = (jnp.ones(patches.shape[:2], bool) if frame_mask is None else patch_validity(frame_mask, grid))
        return patches, grid, valid

    def embed(self, x, modality: str, mask=None):
        """Frozen features of one modality alone: the shared encoder on all its tokens, mean-pooled."""
        patches, grid, valid = self._tokens(modality, x, mask)
        out = self.shared(self.adapters[modality](patches.astype(to_dtype(self.dtype)), grid), valid)
        return out["pooled"].astype(jnp.float32), out["tokens"]

    def __call__(self, batch: Mapping[str, Any]):
        names = self.modalities
        present = {m: p for m, p in batch.get("present", {}).items() if m in self.inputs}
        targets, tokens, valid, sizes, positions = {}, [], {}, {}, []
        for m in names:
            targets[m], grid, valid[m] = self._tokens(m, batch[m], batch.get(mask_key(m)))
            if m in present:
                valid[m] = valid[m] & present[m][:, None]
            tokens.append(self.adapters[m](targets[m].astype(to_dtype(self.dtype)), grid))
            sizes[m] = targets[m].shape[1]
            positions.append(posemb_sincos_2d(*grid, self.decoder["width"]))
        b = tokens[0].shape[0]
        info, kept = masking.dirichlet_budgets(self.make_rng("masking"), b, sizes, self.num_keep, self.alpha,
                                               present or None)
        all_valid = jnp.concatenate([valid[m] for m in names], axis=1)
        encoded = self.shared(jnp.concatenate(tokens, axis=1), all_valid, keep_idx=info.keep_idx)["tokens"]
        context_valid = jnp.take_along_axis(all_valid, info.keep_idx, axis=1)
        positions = np.concatenate(positions)
        hidden = masking.split_modalities(info.mask, sizes)
        out, start = {}, 0
        for m in names:
            span = (start, start + sizes[m])
            pred = self.decoders[m](encoded, info, positions, context_valid, span)
            out[m] = {"pred": pred, "target": targets[m], "mask": hidden[m] & valid[m]}
            start = span[1]
        return {"masked": out, "kept": kept}


@MODELS.register("multimae")
def build_multimae(model_cfg, tokenizer=None) -> MultiMAE:
    del tokenizer  # no text tower
    return MultiMAE(
        inputs={m: dict(cfg) for m, cfg in model_cfg.modalities.items()}, encoder=dict(model_cfg.encoder),
        decoder=dict(model_cfg.decoder), num_keep=model_cfg.num_keep, alpha=model_cfg.alpha,
        dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype)
