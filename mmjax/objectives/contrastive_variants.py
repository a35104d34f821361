"""Contrastive variants: DCL, FILIP, hard negatives, CWCL, SimCLR, Symile, and a weighted sum.

As in contrastive.py: pure losses on global-batch arrays (float32 results, bool
masks for absent examples), then `(outputs, batch, cfg) -> (loss, metrics)`
wrappers and a flat registry. Pairwise losses are 0.5 * (a->b + b->a), each
direction a mean over its queries (present pairs), like `softmax_contrastive_loss`,
so a variant with its knob at the neutral value is CLIP (the tests check it).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from mmjax.batch_keys import view_key
from mmjax.objectives.contrastive import (
    _MASKED, DEFAULT_MODALITIES, Metrics, _as_f32_scalar, _in_batch_accuracy, _masked_mean, _prefixed,
    _scaled_similarity, _validity, modality_pair)
from mmjax.objectives.registry import OBJECTIVES
from mmjax.similarity import filip_similarities, l2_normalize

# Symile's negative sets; a config names one as a string (configs import no objective) and an
# unknown one fails in symile_loss listing these.
SYMILE_NEGATIVES = ("n", "n_squared")


def _lse(logits: jax.Array, mask: jax.Array) -> jax.Array:  # row-wise, over mask; about -1e9 for an empty row
    return jax.nn.logsumexp(jnp.where(mask, logits, _MASKED), axis=1)


def _negatives(logits: jax.Array, candidates: jax.Array, queries: jax.Array):
    """(present off-diagonal candidates [B, B], queries without any negative dropped: log 0)."""
    neg = candidates[None, :] & ~jnp.eye(logits.shape[0], dtype=bool)
    return neg, queries & jnp.any(neg, axis=1)


def _ce_rows(logits, candidates, queries):  # CLIP's per-query cross-entropy towards the diagonal
    return _lse(logits, candidates[None, :]) - jnp.diagonal(logits), queries


def _symmetric(row_loss, a2b, b2a, va, vb, scale, row_loss_b2a=None) -> tuple[jax.Array, Metrics]:
    """0.5 * (a->b + b->a), `row_loss(logits, candidates, queries) -> (per-row loss, queries)`;
    a2b: [a queries, b candidates], b2a: [b queries, a candidates]; `row_loss_b2a` serves b->a."""
    pair = va & vb
    loss_a, queries_a = row_loss(a2b, vb, pair)
    loss_b, queries_b = (row_loss_b2a or row_loss)(b2a, va, pair)
    loss = 0.5 * (_masked_mean(loss_a, queries_a) + _masked_mean(loss_b, queries_b))
    metrics = _in_batch_accuracy(jnp.where(vb[None, :], a2b, _MASKED), jnp.where(va[None, :], b2a, _MASKED).T, pair)
    metrics["logit_scale"] = _as_f32_scalar(scale)
    return loss, metrics


def dcl_loss(za, zb, scale, valid_a=None, valid_b=None, vmf_sigma=None) -> tuple[jax.Array, Metrics]:
    """Decoupled contrastive loss (Yeh et al. 2022): per query i, -w_i logits_ii +
    logsumexp_{j != i} logits_ij, CLIP without the positive in the denominator.
    Negatives are cross-modal only (the paper's SimCLR form adds same-view ones);
    directions are averaged (the reference code sums them). `vmf_sigma` gives DCLW:
    w = 2 - P * softmax(cos(a_i, b_i) / sigma) over the P present pairs, with
    gradients through w as in the reference code; else w = 1.
    """
    va, vb, pair = _validity(za.shape[0], valid_a, valid_b)
    logits = _scaled_similarity(za, zb, scale)
    weight = 1.0
    if vmf_sigma is not None:
        cosine = jnp.sum(za.astype(jnp.float32) * zb.astype(jnp.float32), axis=1)
        weight = 2.0 - jnp.sum(pair) * jax.nn.softmax(jnp.where(pair, cosine / vmf_sigma, _MASKED))

    def rows(l, candidates, queries):
        neg, queries = _negatives(l, candidates, queries)
        return _lse(l, neg) - weight * jnp.diagonal(l), queries
    return _symmetric(rows, logits, logits.T, va, vb, scale)


def hard_negative_loss(za, zb, scale, beta=1.0, tau_plus=0.1, valid_a=None, valid_b=None) -> tuple[jax.Array, Metrics]:
    """Hard-negative sampling, debiased estimator (Robinson et al. 2021), symmetric.

    Per query with positive logit p and N negative logits l_j (logits = scale * cos):
      R = sum_j e^{(1+beta) l_j} / mean_j e^{beta l_j}   (negatives reweighted by e^{beta l})
      Ng = max((R - tau_plus N e^p) / (1 - tau_plus), N e^{-scale}),  loss = -log(e^p / (e^p + Ng)).
    As in the reference code beta multiplies the scaled logit, and the floor is the
    least N exponentials of cosines can sum to. Negatives are cross-modal
    (N = present candidates - 1). beta = tau_plus = 0 is CLIP.
    """
    if isinstance(tau_plus, (int, float)) and not 0 <= tau_plus < 1:
        raise ValueError(f"hard_negative tau_plus={tau_plus}: the positive-class prior must lie in [0, 1)")
    va, vb, _ = _validity(za.shape[0], valid_a, valid_b)
    logits, floor = _scaled_similarity(za, zb, scale), -_as_f32_scalar(scale)

    def rows(l, candidates, queries):
        neg, queries = _negatives(l, candidates, queries)
        pos, count = jnp.diagonal(l), jnp.sum(neg, axis=1)
        log_n = jnp.log(jnp.maximum(count, 1))
        log_r = _lse((1.0 + beta) * l, neg) - _lse(beta * l, neg) + log_n
        # In log space, since e^l overflows float32 past l = 88 (scale 100):
        # log(e^p + Ng) = max(log(R + c e^p) - log(1 - tau_plus), log(e^p + N e^-scale)),
        # c = 1 - tau_plus (N + 1); where R + c e^p <= 0 the floor binds.
        top = jnp.maximum(log_r, pos)
        arg = jnp.exp(log_r - top) + (1.0 - tau_plus * (count + 1)) * jnp.exp(pos - top)
        floored = jnp.logaddexp(pos, log_n + floor)
        debiased = jnp.where(arg > 0, top + jnp.log(jnp.where(arg > 0, arg, 1.0)) - jnp.log1p(-tau_plus), floored)
        return jnp.maximum(debiased, floored) - pos, queries
    return _symmetric(rows, logits, logits.T, va, vb, scale)


def cwcl_loss(za, zb, scale, ref_a=None, ref_b=None, valid_a=None, valid_b=None) -> tuple[jax.Array, Metrics]:
    """Continuously weighted contrastive loss (Srinivasa et al. 2023): per query i,
    -sum_j t_ij log softmax_j(logits_i.), t_ij = w_ij / sum_k w_ik over present candidates.

    w_ij = cos(ref_i, ref_j) / 2 + 1/2 in [0, 1] from a frozen reference tower's
    embeddings [B, Dr] (no gradient). A direction uses its candidate side's
    reference (the paper's U->V uses the pretrained V's similarities); with one
    reference (the paper's one frozen tower) both directions use it.
    """
    if ref_a is None and ref_b is None:
        raise ValueError("cwcl_loss needs reference embeddings for at least one side")
    va, vb, _ = _validity(za.shape[0], valid_a, valid_b)
    logits = _scaled_similarity(za, zb, scale)

    def rows_with(ref):
        ref = l2_normalize(jax.lax.stop_gradient(ref))
        weights = _scaled_similarity(ref, ref, 0.5) + 0.5

        def rows(l, candidates, queries):
            t = jnp.where(candidates[None, :], weights, 0.0)
            t = t / jnp.maximum(jnp.sum(t, axis=1, keepdims=True), 1e-12)  # a query's own w_ii = 1 keeps it > 0
            return -jnp.sum(t * jax.nn.log_softmax(jnp.where(candidates[None, :], l, _MASKED), axis=1), 1), queries
        return rows
    a2b = rows_with(ref_b if ref_b is not None else ref_a)
    return _symmetric(a2b, logits, logits.T, va, vb, scale, row_loss_b2a=a2b if ref_a is None else rows_with(ref_a))


def filip_loss(tokens_a, tokens_b, scale, token_valid_a=None, token_valid_b=None,
               valid_a=None, valid_b=None) -> tuple[jax.Array, Metrics]:
    """FILIP: CLIP's softmax, a->b over scale * s_ab and b->a over scale * s_ba; tokens_*
    [B, N, D], token_valid_* bool [B, N] (False on padding), valid_* presence as in CLIP."""
    va, vb, _ = _validity(tokens_a.shape[0], valid_a, valid_b)
    s_ab, s_ba = filip_similarities(tokens_a, tokens_b, token_valid_a, token_valid_b)
    scale = _as_f32_scalar(scale)
    return _symmetric(_ce_rows, scale * s_ab, scale * s_ba.T, va, vb, scale)


def nt_xent_loss(z1, z2, temperature, valid=None) -> tuple[jax.Array, Metrics]:
    """SimCLR's NT-Xent (Chen et al. 2020) on two views [B, D]: over the [2B, 2B]
    similarity / temperature, a view's positive is its example's other view, its
    candidates every other present view (never itself); mean over present views."""
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"NT-Xent wants two [B, D] views of equal shape, got {z1.shape} and {z2.shape}")
    n = z1.shape[0]
    v = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)
    v2, z = jnp.concatenate([v, v]), jnp.concatenate([z1, z2])
    logits = _scaled_similarity(z, z, 1.0 / jnp.asarray(temperature, jnp.float32))  # [2B, 2B]
    partner = (jnp.arange(2 * n) + n) % (2 * n)
    candidates = v2[None, :] & ~jnp.eye(2 * n, dtype=bool)
    ce = _lse(logits, candidates) - logits[jnp.arange(2 * n), partner]
    acc = jnp.argmax(jnp.where(candidates, logits, _MASKED), axis=1) == partner
    return _masked_mean(ce, v2), {"acc": _masked_mean(acc, v2), "temperature": _as_f32_scalar(temperature)}


def symile_shuffles(rng, num_modalities: int, batch_size: int) -> jax.Array:
    """Symile's O(N) row permutations [M anchors, M - 1 other modalities, B], fixed by rng."""
    keys = jax.random.split(rng, num_modalities * (num_modalities - 1))
    perms = jax.vmap(lambda k: jax.random.permutation(k, batch_size))(keys)
    return perms.reshape(num_modalities, num_modalities - 1, batch_size)


def symile_loss(embeddings, scale, negatives="n", rng=None, valid=None, missing=None, names=None):
    """Symile (Saporta et al. 2024; rajesh-lab/symile) over M >= 2 modalities, scores
    scale * MIP(x, y, z) = scale * sum_d x_d y_d z_d. Each modality in turn anchors;
    row x_i is a cross-entropy towards (x_i, y_i, z_i) against negatives:
      "n": (y_p(j), z_q(j)), j != i, rows shuffled by independent permutations per
        anchor (`symile_shuffles(rng)`; a rare false negative, as in the paper);
      "n_squared": every (y_j, z_k) but (y_i, z_i): B^(M-1) candidates in memory.
    Loss: mean over anchors of the mean over rows; metrics "<name>_acc" per anchor.

    Missing data: the paper's code keeps every example, an absent modality taking
    a learned "missing" representation; here `missing[m]` ([D], normalised) fills
    the rows where `valid[m]` is False. Flags without a missing embedding fall back
    to the mmjax convention: those examples are dropped (as anchors and candidates).
    """
    num = len(embeddings)
    if negatives not in SYMILE_NEGATIVES:  # config.objective.negatives of the "symile" objective
        raise ValueError(f"symile negatives={negatives!r}; valid: {list(SYMILE_NEGATIVES)}")
    if num < 2 or (negatives == "n" and rng is None):
        raise ValueError(f"symile wants >= 2 modalities (got {num}) and, for negatives='n', an rng to shuffle rows")
    reps = [jnp.asarray(e, jnp.float32) for e in embeddings]
    if any(r.ndim != 2 or r.shape != reps[0].shape for r in reps):
        raise ValueError(f"symile wants [B, D] embeddings of one shape, got {[r.shape for r in reps]}")
    n, d = reps[0].shape
    keep = jnp.ones((n,), bool)
    for m, (v, miss) in enumerate(zip(valid or [None] * num, missing or [None] * num)):
        if v is not None and miss is None:
            keep = keep & jnp.asarray(v, bool)
        elif v is not None:
            reps[m] = jnp.where(jnp.asarray(v, bool)[:, None], reps[m], jnp.asarray(miss, jnp.float32)[None, :])
    perms = symile_shuffles(rng, num, n) if negatives == "n" else None
    scale, highest = _as_f32_scalar(scale), jax.lax.Precision.HIGHEST  # HIGHEST: see contrastive._scaled_similarity
    losses, metrics = [], {}
    for m, anchor in enumerate(reps):
        others = reps[:m] + reps[m + 1:]
        if negatives == "n":
            shuffled, usable = jnp.ones_like(anchor), jnp.ones((n,), bool)
            for rep, perm in zip(others, perms[m]):
                shuffled, usable = shuffled * rep[perm], usable & keep[perm]
            eye = jnp.eye(n, dtype=bool)
            positive = jnp.sum(anchor * jnp.prod(jnp.stack(others), axis=0), axis=1)
            logits = scale * jnp.where(eye, positive[:, None], jnp.matmul(anchor, shuffled.T, precision=highest))
            candidates, target = jnp.where(eye, keep[:, None], usable[None, :]), jnp.arange(n)
        else:
            product, usable = others[0], keep
            for rep in others[1:]:  # every index tuple, row-major: (j, k) sits at j * B + k
                product = (product[:, None, :] * rep[None, :, :]).reshape(-1, d)
                usable = (usable[:, None] & keep[None, :]).reshape(-1)
            logits = scale * jnp.matmul(anchor, product.T, precision=highest)  # [B, B^(M-1)]
            candidates = jnp.broadcast_to(usable, logits.shape)
            target = jnp.arange(n) * sum(n ** t for t in range(num - 1))  # the all-i tuple
        masked = jnp.where(candidates, logits, _MASKED)
        ce = jax.nn.logsumexp(masked, axis=1) - jnp.take_along_axis(logits, target[:, None], 1)[:, 0]
        losses.append(_masked_mean(ce, keep))
        metrics[f"{names[m] if names else m}_acc"] = _masked_mean(jnp.argmax(masked, axis=1) == target, keep)
    metrics["logit_scale"] = scale
    return sum(losses) / num, metrics


def _options(cfg, defaults: Mapping[str, Any], objective: str) -> dict[str, Any]:
    """cfg's fields over `defaults`; an unknown (e.g. misspelled) field fails listing the valid ones."""
    given = {k: v for k, v in cfg.items() if k != "name"}
    if unknown := sorted(set(given) - set(defaults)):
        raise ValueError(f"config.objective ({objective}): unknown field(s) {unknown}; valid: {sorted(defaults)}")
    return {**defaults, **given}


def _lookup(table: Mapping[str, Any], names, what: str) -> list:
    if any(m not in table for m in names):
        raise ValueError(f"objective needs {what} {[m for m in names if m not in table]}; model gave {sorted(table)}")
    return [table[m] for m in names]


def _references(outputs, a: str, b: str, opts) -> dict[str, Any]:
    """CWCL's reference embeddings for one side or both. opts["reference"] "": the model's frozen reference
    tower, outputs["reference"][m]; a modality of the pair: that tower's own embeddings, for a tower kept
    frozen (restored by config.init_from and in optim.freeze_regex: the paper's and LiT's locked tower)."""
    source = opts.pop("reference")
    if source:
        if source not in (a, b):
            raise ValueError(f"cwcl reference={source!r} must be one of the pair {(a, b)} or '' (reference tower)")
        return {"ref_a" if source == a else "ref_b": outputs["embeddings"][source]}
    refs = outputs.get("reference", {})
    if a not in refs and b not in refs:
        raise ValueError(f'cwcl needs outputs["reference"][m] for {a!r} or {b!r}; the model gave {sorted(refs)}')
    return {"ref_a": refs.get(a), "ref_b": refs.get(b)}


def _token_masks(outputs, a: str, b: str, opts) -> dict[str, Any]:
    # outputs["token_masks"][m] if the model gives it, else all tokens count: batch[m + "_mask"] marks input frames.
    masks = outputs.get("token_masks", {})
    return {"token_valid_a": masks.get(a), "token_valid_b": masks.get(b)}


def _pair_objective(name: str, loss_fn, source: str = "embeddings", extras=None, **defaults):
    """`loss_fn` between the two cfg.modalities of outputs[source]; the other cfg fields are its
    keyword arguments (with `defaults`), `extras(outputs, a, b, fields)` adds further model outputs
    (and may take fields of its own out of `fields`)."""
    def objective(outputs, batch, cfg):
        opts = _options(cfg, {"modalities": DEFAULT_MODALITIES, **defaults}, name)
        names = modality_pair(opts.pop("modalities"))
        x_a, x_b = _lookup(outputs[source], names, f'outputs["{source}"]')
        present = batch.get("present", {})
        more = extras(outputs, *names, opts) if extras else {}
        loss, metrics = loss_fn(x_a, x_b, outputs["logit_scale"], valid_a=present.get(names[0]),
                                valid_b=present.get(names[1]), **more, **opts)
        return loss, _prefixed("_".join(names), metrics)
    objective.__name__ = f"{name}_objective"
    objective.__doc__ = f"`{loss_fn.__name__}` on cfg.modalities; fields {sorted(defaults)}; metrics 'a_b/...'."
    return objective


dcl_objective = _pair_objective("dcl", dcl_loss, vmf_sigma=None)
hard_negative_objective = _pair_objective("hard_negative", hard_negative_loss, beta=1.0, tau_plus=0.1)  # paper's
cwcl_objective = _pair_objective("cwcl", cwcl_loss, extras=_references, reference="")
# The tower tokens are used as they are: a per-token projection to a shared width is the model's job.
filip_objective = _pair_objective("filip", filip_loss, source="tokens", extras=_token_masks)
OBJECTIVES.register("dcl", dcl_objective)
OBJECTIVES.register("hard_negative", hard_negative_objective)
OBJECTIVES.register("cwcl", cwcl_objective)
OBJECTIVES.register("filip", filip_objective)


@OBJECTIVES.register("simclr")
def simclr_objective(outputs, batch, cfg) -> tuple[jax.Array, Metrics]:
    """NT-Xent between outputs["embeddings"][m] and [m + "_view2"], m = cfg.modality; cfg.temperature
    defaults to 1 / outputs["logit_scale"]. "sum" adds it to a cross-modal term (TCL-style)."""
    opts = _options(cfg, {"modality": "image", "temperature": None}, "simclr")
    names = (opts["modality"], view_key(opts["modality"]))
    z1, z2 = _lookup(outputs["embeddings"], names, 'outputs["embeddings"]')
    temperature = 1.0 / outputs["logit_scale"] if opts["temperature"] is None else opts["temperature"]
    loss, metrics = nt_xent_loss(z1, z2, temperature, valid=batch.get("present", {}).get(names[0]))
    return loss, _prefixed("_".join(names), metrics)


@OBJECTIVES.register("symile")
def symile_objective(outputs, batch, cfg) -> tuple[jax.Array, Metrics]:
    """Symile over cfg.modalities (>= 2), cfg.negatives "n" | "n_squared". The "n" shuffles use
    batch["rng"] (a per-step key from the trainer) if given, else jax.random.key(cfg.seed): then
    the same every step. Learned missing embeddings: outputs["missing_embeddings"][m], if any."""
    opts = _options(cfg, {"modalities": None, "negatives": "n", "seed": 0}, "symile")
    names = tuple(opts["modalities"] or ())
    if len(names) < 2:
        raise ValueError(f"config.objective.modalities must name two or more modalities for symile, got {names}")
    embeddings = _lookup(outputs["embeddings"], names, 'outputs["embeddings"]')
    rng = batch["rng"] if batch.get("rng") is not None else jax.random.key(opts["seed"])
    present, missing = batch.get("present", {}), outputs.get("missing_embeddings", {})
    loss, metrics = symile_loss(embeddings, outputs["logit_scale"], opts["negatives"], rng, names=names,
                                valid=[present.get(m) for m in names], missing=[missing.get(m) for m in names])
    return loss, _prefixed("_".join(names), metrics)


@OBJECTIVES.register("sum")
def weighted_sum_objective(outputs, batch, cfg) -> tuple[jax.Array, Metrics]:
    """sum_t weight_t * loss_t, cfg.terms = ({"name": ..., "weight": 1.0, **fields}, ...): any
    registered objectives; loss and metrics of each under "<label>/", label defaulting to name."""
    terms = _options(cfg, {"terms": ()}, "sum")["terms"]
    if not terms:
        raise ValueError("config.objective.terms is empty; give ({'name': ..., 'weight': ...}, ...)")
    total, metrics = jnp.zeros((), jnp.float32), {}
    for term in terms:
        fields = term.to_dict() if isinstance(term, ml_collections.ConfigDict) else dict(term)
        weight, label = fields.pop("weight", 1.0), fields.pop("label", fields.get("name"))
        if f"{label}/loss" in metrics:
            raise ValueError(f"config.objective.terms: two terms labelled {label!r}; give each a distinct 'label'")
        loss, term_metrics = OBJECTIVES.get(fields.get("name"))(
            outputs, batch, ml_collections.ConfigDict(fields))
        total = total + weight * loss
        metrics |= _prefixed(label, {"loss": loss, **term_metrics})
    return total, metrics

