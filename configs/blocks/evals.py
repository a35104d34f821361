"""Evaluation blocks: `config.eval` (when and how) and `config.evals` (what: one entry per evaluator).

    c.eval = evals.cpu_schedule(tiny, aliases=evals.CLIP_ALIASES)
    c.evals = evals.entries(evals.zeroshot("image"), evals.retrieval("image:text", "text:image"))

Each entry is {"type": <evaluator registered in mmjax.evals>, **its fields}, named after its
type; a config lists what it wants evaluated and nothing else. The test split is
config.data.eval_split; probes fit on config.data.train_split.
"""
from __future__ import annotations

import ml_collections

# The short names of CLIP's final line.
CLIP_ALIASES = {"zeroshot_top1": "zeroshot_top1_image", "i2t_r1": "r1_image_text", "t2i_r1": "r1_text_image",
                "i2t_r5": "r5_image_text", "t2i_r5": "r5_text_image"}


def schedule(*, every_steps: int, batch_size: int, at_start: bool = False,
             aliases: dict | None = None) -> ml_collections.ConfigDict:
    """`config.eval`: every_steps (0: the final evaluation only), the eval batch size, at_start
    (also evaluate the untrained model, logged at step 0) and aliases {short name: metric}."""
    return ml_collections.ConfigDict({"every_steps": every_steps, "batch_size": batch_size, "at_start": at_start,
                                      "aliases": dict(aliases or {})})


def cpu_schedule(tiny: bool, *, at_start: bool = False, aliases: dict | None = None) -> ml_collections.ConfigDict:
    """The embedded-data recipes' schedule: every 200 steps; tiny (tests): the final evaluation only."""
    return schedule(every_steps=0 if tiny else 200, batch_size=256 if tiny else 512, at_start=at_start,
                    aliases=aliases)


def zeroshot(*modalities: str) -> dict:
    """Class = the prompt ensemble nearest each example's embedding: zeroshot_top{1,5}_<m>."""
    return {"zeroshot": {"type": "zeroshot", "modalities": modalities}}


def zeroshot_tokenwise(*modalities: str) -> dict:
    """FILIP's token-wise zero-shot (needs model.project_tokens): zeroshot_tokenwise_top{1,5}_<m>."""
    return {"zeroshot_tokenwise": {"type": "zeroshot_tokenwise", "modalities": modalities}}


def zeroshot_multilinear(*groups: str) -> dict:
    """Symile's zero-shot: per group "a+b", the class by <a, b, prompt>: zeroshot_multilinear_top1_a_b."""
    return {"zeroshot_multilinear": {"type": "zeroshot_multilinear", "groups": groups}}


def retrieval(*pairs: str, ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    """Per "query:key" pair, recall@k of the paired example (r<k>_a_b) and of any example of the
    query's class (class_r<k>_a_b)."""
    return {"retrieval": {"type": "retrieval", "pairs": pairs, "ks": tuple(ks)}}


def probes(*modalities: str, fewshot_ways: int = 5, fewshot_shots: tuple[int, ...] = (1, 5)) -> dict:
    """Frozen-feature probes: kNN (knn_top1_<m>), a ridge linear probe (linear_top1_<m>) and, unless
    fewshot_shots is empty, n-way k-shot episodes (<w>way<s>shot_<m>, <w>way<s>shot_std_<m>)."""
    out = {"knn": {"type": "knn", "modalities": modalities},
           "linear": {"type": "linear", "modalities": modalities}}
    if fewshot_shots:
        out["fewshot"] = {"type": "fewshot", "modalities": modalities, "ways": fewshot_ways,
                          "shots": tuple(fewshot_shots)}
    return out


def entries(*blocks: dict) -> ml_collections.ConfigDict:
    """`config.evals` from the blocks above; two entries of one name fail."""
    out = {}
    for block in blocks:
        twice = set(out) & set(block)
        if twice:
            raise ValueError(f"config.evals: entries {sorted(twice)} given twice")
        out.update(block)
    return ml_collections.ConfigDict(out)
