"""The evaluation the trainer runs: features extracted once, then every evaluator of the config.

`EvalRunner.from_config(config, model, tokenizer, mesh)` builds the evaluators of `config.evals`
(mmjax.evals.base), asks each what it reads (`Needs`) and loads only that: the eval split's
batches always, the train split's only when some evaluator fits on it, the dataset's class
prompts (`mmjax.data.datasets.get_dataset(config.data).zeroshot_prompts()`) only for the
zero-shot kinds. `runner(params)` then runs one tower pass per
(modality, split) (and one text pass over the prompts), hands the shared `Features` to every
evaluator, and returns their metrics, `config.eval.aliases` (short names for the `final:` line)
first. Model-kind agnostic: any model with `modalities` and `embed` (token-wise zero-shot also
needs `embed_with_tokens` and `project_tokens`).

Parallel: every process holds all rows of each eval batch, feeds its own slice
(`_local_rows`) as a global array sharded on the data axes (`parallel.host_to_global`), and gets
the outputs back replicated, so every process computes the same metrics.
"""
from __future__ import annotations

import functools
import operator
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax import parallel
from mmjax.batch_keys import EVAL_MASK, LABEL, mask_key
from mmjax.data import datasets, pipeline
from mmjax.evals.base import EVAL, TRAIN, Evaluator, Features, Needs, build_evaluators
from mmjax.evals.zeroshot import prompt_ensemble
from mmjax.similarity import filip_similarities


def union(needs: Sequence[Needs]) -> Needs:
    return functools.reduce(operator.or_, needs, Needs())


def check_model(where: str, needs: Needs, model) -> None:
    """Fails naming `where` when `needs` asks for what `model` cannot embed."""
    embeds = set(model.modalities)
    missing = sorted(needs.modalities - embeds)
    if missing:
        raise ValueError(f"{where} names modalities {missing} the model cannot embed; it embeds {sorted(embeds)}")
    if needs.prompts and "text" not in embeds:
        raise ValueError(f"{where} scores against the class prompts, which needs a text modality; the model "
                         f"embeds {sorted(embeds)}")
    if needs.token_similarities and not getattr(model, "project_tokens", False):
        raise ValueError(f"{where}: token-wise scores need model.project_tokens (every modality's tokens in "
                         f"the shared space, as FILIP)")


class EvalRunner:
    def __init__(self, evaluators: Mapping[str, Evaluator], model, tokenizer, mesh, batches: Sequence[dict], *,
                 train_batches: Sequence[dict] = (), dataset=None, aliases: Mapping[str, str] | None = None):
        """evaluators: {config.evals name: evaluator}; batches / train_batches: padded batches of the
        eval / train split (mmjax.data.pipeline.make_eval_batches); dataset: anything with
        `zeroshot_prompts()` -> [C][T] strings, needed by the zero-shot kinds; aliases: {short
        name: metric}."""
        self.evaluators, self.model, self.tokenizer, self.mesh = dict(evaluators), model, tokenizer, mesh
        self.batches = list(batches)
        self.split_batches = {EVAL: self.batches, TRAIN: list(train_batches)}
        self.dataset, self.aliases = dataset, dict(aliases or {})
        for name, evaluator in self.evaluators.items():
            self._check(f"config.evals.{name}", evaluator.needs())
        self.needs = union([e.needs() for e in self.evaluators.values()])
        self.dp = parallel.data_parallel_size(mesh)
        replicated = NamedSharding(mesh, P())
        self._embed = jax.jit(
            lambda params, x, mask, modality: model.apply({"params": params}, x, modality, mask, method="embed")[0],
            static_argnums=3, out_shardings=replicated)
        # (embedding, tokens, token validity) from one tower pass
        self._embed_with_tokens = jax.jit(
            lambda params, x, mask, modality: model.apply({"params": params}, x, modality, mask,
                                                          method="embed_with_tokens"),
            static_argnums=3, out_shardings=replicated)
        # example tokens -> prompt tokens direction: the row of FILIP's loss for an example query
        self._late_interaction = jax.jit(lambda ta, va, tb, vb: filip_similarities(ta, tb, va, vb)[0])
        if self.needs.prompts:
            self._prompts  # noqa: B018  (tokenized now: malformed prompts fail here, not mid-training)

    @classmethod
    def from_config(cls, config, model, tokenizer, mesh) -> "EvalRunner":
        """The evaluators of config.evals over config.data's eval split (and train split, if read)."""
        evaluators = build_evaluators(config.get("evals") or {})
        for name, evaluator in evaluators.items():  # before any data is read
            check_model(f"config.evals.{name}", evaluator.needs(), model)
        needs = union([e.needs() for e in evaluators.values()])
        batches = functools.partial(pipeline.make_eval_batches, config.data, batch_size=config.eval.batch_size,
                                    tokenizer=tokenizer)
        train_batches = batches(split=config.data.train_split) if TRAIN in needs.splits else ()
        # The dataset's prompts are read only when some evaluator (or an `extract` call) scores against them.
        return cls(evaluators, model, tokenizer, mesh, batches(split=config.data.eval_split),
                   train_batches=train_batches, dataset=datasets.get_dataset(config.data),
                   aliases=config.eval.get("aliases") or {})

    def _check(self, where: str, needs: Needs) -> None:
        check_model(where, needs, self.model)
        if TRAIN in needs.splits and not self.split_batches[TRAIN]:
            raise ValueError(f"{where} reads the train split: the runner needs its batches (train_batches)")
        if needs.prompts and self.dataset is None:
            raise ValueError(f"{where} reads the class prompts: the runner needs the dataset (dataset=)")

    @functools.cached_property
    def _prompts(self) -> tuple[dict, int, int]:
        """({"text": token ids [C * T (padded), L]}, C, T) of the dataset's class prompts, class-major."""
        prompts = [list(p) for p in self.dataset.zeroshot_prompts()]
        if not prompts or not prompts[0] or any(len(p) != len(prompts[0]) for p in prompts):
            raise ValueError(f"dataset zeroshot_prompts() must be [C][T] strings with the same T per class, got "
                             f"{[len(p) for p in prompts]} templates per class")
        ids = self.tokenizer.encode_batch([p for per_class in prompts for p in per_class])
        # Pad to a multiple of the data-parallel size; the extra rows are dropped after embedding.
        batch = {"text": np.concatenate([ids, np.repeat(ids[-1:], -len(ids) % self.dp, axis=0)])}
        return batch, len(prompts), len(prompts[0])

    def _local_rows(self, x):
        rows = x.shape[0] // jax.process_count()
        return x[jax.process_index() * rows:(jax.process_index() + 1) * rows]

    def _per_batch(self, fn, params, batches, modality) -> list:
        """fn(params, x, mask, modality) on each of `batches`, as NumPy (every process gets all rows)."""
        out = []
        for b in batches:
            x = {"x": self._local_rows(b[modality])}
            if mask_key(modality) in b:
                x["mask"] = self._local_rows(b[mask_key(modality)])
            x = parallel.host_to_global(x, self.mesh)
            out.append(jax.tree.map(np.asarray, fn(params, x["x"], x.get("mask"), modality)))
        return out

    def _embed_prompts(self, params, tokens: bool) -> tuple[np.ndarray, ...]:
        """The class prompts' text embeddings [C * T, E] and, with `tokens`, their tokens and token
        validity, from one pass of the text tower."""
        batch, c, t = self._prompts
        if not tokens:
            return (np.concatenate(self._per_batch(self._embed, params, [batch], "text"))[:c * t],)
        ((z, text_tokens, valid),) = self._per_batch(self._embed_with_tokens, params, [batch], "text")
        return z[:c * t], text_tokens[:c * t], valid[:c * t]

    def _embed_and_score_tokens(self, params, modality, prompt_tokens, prompt_valid):
        """([rows, E] eval embeddings of `modality`, [rows, C * T] late-interaction scores of its
        tokens against each prompt's), from one tower pass, batch by batch: the split's tokens are
        never held at once (padding tokens on either side left out)."""
        z, sims = [], []
        for emb, tokens, valid in self._per_batch(self._embed_with_tokens, params, self.batches, modality):
            z.append(emb)
            sims.append(np.asarray(self._late_interaction(tokens, valid, prompt_tokens, prompt_valid)))
        return np.concatenate(z), np.concatenate(sims)

    def extract(self, params, needs: Needs | None = None) -> Features:
        """The features of `needs` (default: every evaluator's): one tower pass per (modality, split),
        one text pass over the class prompts, padding rows dropped."""
        needs = self.needs if needs is None else needs
        if needs is not self.needs:
            self._check("EvalRunner.extract", needs)
        masks = {s: np.concatenate([b[EVAL_MASK] for b in self.split_batches[s]]) for s in needs.splits}
        labels = {s: np.concatenate([b[LABEL] for b in self.split_batches[s]])[masks[s]] for s in needs.splits}
        prompts = self._embed_prompts(params, tokens=bool(needs.token_similarities)) if needs.prompts else None
        embeddings, sims = {}, {}
        for m, split in dict.fromkeys(needs.embeddings + tuple((m, EVAL) for m in needs.token_similarities)):
            if split == EVAL and m in needs.token_similarities:  # embeddings and token scores, one pass
                z, s = self._embed_and_score_tokens(params, m, *prompts[1:])
                sims[m] = s[masks[EVAL]]
            else:
                z = np.concatenate(self._per_batch(self._embed, params, self.split_batches[split], m))
            embeddings[m, split] = z[masks[split]]
        class_embeddings, num_classes = None, None
        if prompts is not None:
            _, num_classes, templates = self._prompts
            if needs.class_embeddings:
                class_embeddings = prompt_ensemble(prompts[0].reshape(num_classes, templates, -1))
        return Features(embeddings, labels, class_embeddings, sims, num_classes)

    def __call__(self, params) -> dict[str, float]:
        features = self.extract(params)
        results = {}
        for name, evaluator in self.evaluators.items():
            metrics = evaluator(features)
            clash = sorted(set(metrics) & set(results))
            if clash:
                raise ValueError(f"config.evals.{name} reports metrics {clash} another entry already reported")
            results |= metrics
        unknown = {a: n for a, n in self.aliases.items() if n not in results}
        if unknown:
            raise ValueError(f"config.eval.aliases {unknown} name unknown metrics; valid: {sorted(results)}")
        # Short names first: they lead the `final:` line.
        return {alias: results[name] for alias, name in self.aliases.items()} | results
