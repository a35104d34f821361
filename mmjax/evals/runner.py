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

Parallel: the eval splits are streamed and sharded across processes (mmjax.data.pipeline.EvalBatches):
each process reads and decodes only its rows of every batch, feeds them as a global array sharded
on the data axes (`parallel.host_to_global`) and gets the embeddings back replicated; labels and
masks are gathered the same way, so every process computes the same metrics.
"""
from __future__ import annotations

import functools
import operator
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
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
        eval / train split, this process's rows of each (mmjax.data.pipeline.EvalBatches); dataset: anything with
        `zeroshot_prompts()` -> [C][T] strings, needed by the zero-shot kinds; aliases: {short
        name: metric}."""
        self.evaluators, self.model, self.tokenizer, self.mesh = dict(evaluators), model, tokenizer, mesh
        # Iterables of batches, read once per evaluation (EvalBatches streams large splits).
        self.batches = batches
        self.split_batches = {EVAL: batches, TRAIN: train_batches}
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
        batches = functools.partial(pipeline.EvalBatches, config.data, batch_size=config.eval.batch_size,
                                    tokenizer=tokenizer, shard_index=jax.process_index(),
                                    shard_count=jax.process_count())
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
        if not prompts:
            raise ValueError(f"the zero-shot evaluators need class names: dataset {self.dataset.name} has none "
                             f"(an unlabelled corpus); list retrieval instead, or give the classes")
        if not prompts or not prompts[0] or any(len(p) != len(prompts[0]) for p in prompts):
            raise ValueError(f"dataset zeroshot_prompts() must be [C][T] strings with the same T per class, got "
                             f"{[len(p) for p in prompts]} templates per class")
        ids = self.tokenizer.encode_batch([p for per_class in prompts for p in per_class])
        # Pad to a multiple of the data-parallel size; the extra rows are dropped after embedding.
        batch = {"text": np.concatenate([ids, np.repeat(ids[-1:], -len(ids) % self.dp, axis=0)])}
        return batch, len(prompts), len(prompts[0])

    def _feed(self, batch: dict, modality: str) -> tuple:
        """(x, mask) of `modality` in this process's rows of `batch`, as global arrays on the mesh."""
        x = {"x": batch[modality]}
        if mask_key(modality) in batch:
            x["mask"] = batch[mask_key(modality)]
        x = parallel.host_to_global(x, self.mesh)
        return x["x"], x.get("mask")

    def _embed_prompts(self, params, tokens: bool) -> tuple[np.ndarray, ...]:
        """The class prompts' text embeddings [C * T, E] and, with `tokens`, their tokens and token
        validity, from one pass of the text tower."""
        batch, c, t = self._prompts
        x, mask = self._feed(self._local_prompt_rows(batch), "text")
        if not tokens:
            return (np.asarray(self._embed(params, x, mask, "text"))[:c * t],)
        z, text_tokens, valid = jax.tree.map(np.asarray, self._embed_with_tokens(params, x, mask, "text"))
        return z[:c * t], text_tokens[:c * t], valid[:c * t]

    def _local_prompt_rows(self, batch: dict) -> dict:
        rows = len(batch["text"]) // jax.process_count()
        return {"text": batch["text"][jax.process_index() * rows:(jax.process_index() + 1) * rows]}

    def _split_pass(self, params, split: str, modalities: Sequence[str], token_modalities: Sequence[str],
                    prompts) -> tuple[dict, dict, np.ndarray, np.ndarray]:
        """One pass over `split` (each batch read once, every needed tower run on it) ->
        ({m: embeddings [rows, E]}, {m: [rows, C * T] late-interaction scores against the prompts'
        tokens}, labels [rows], mask [rows]), over every process's rows, padding included. The
        split's tokens are never held at once (padding tokens on either side left out)."""
        z = {m: [] for m in modalities}
        sims = {m: [] for m in token_modalities}
        labels, masks = [], []
        for batch in self.split_batches[split]:
            labels.append(batch[LABEL])
            masks.append(batch[EVAL_MASK])
            for m in modalities:
                x, mask = self._feed(batch, m)
                if m in sims:  # embeddings and token scores from one tower pass
                    emb, tokens, valid = self._embed_with_tokens(params, x, mask, m)
                    sims[m].append(np.asarray(self._late_interaction(tokens, valid, *prompts[1:])))
                else:
                    emb = self._embed(params, x, mask, m)
                z[m].append(np.asarray(emb))
        # Every process holds its own rows of each batch; the embeddings came back with all rows, in
        # process order per batch: gather labels and masks the same way.
        labels, masks = (_gather_rows(np.stack(v)) if v else np.zeros((0,), np.int32) for v in (labels, masks))
        cat = {m: np.concatenate(v) for m, v in z.items()}, {m: np.concatenate(v) for m, v in sims.items()}
        return *cat, labels, masks.astype(bool)

    def extract(self, params, needs: Needs | None = None) -> Features:
        """The features of `needs` (default: every evaluator's): one pass per split running every
        needed tower, one text pass over the class prompts, padding rows dropped."""
        needs = self.needs if needs is None else needs
        if needs is not self.needs:
            self._check("EvalRunner.extract", needs)
        prompts = self._embed_prompts(params, tokens=bool(needs.token_similarities)) if needs.prompts else None
        embeddings, sims, labels = {}, {}, {}
        for split in sorted(needs.splits):
            wanted = [m for m, s in needs.embeddings if s == split]
            tokenwise = list(needs.token_similarities) if split == EVAL else []
            z, s, split_labels, mask = self._split_pass(params, split, list(dict.fromkeys(wanted + tokenwise)),
                                                        tokenwise, prompts)
            labels[split] = split_labels[mask]
            embeddings |= {(m, split): v[mask] for m, v in z.items()}
            sims |= {m: v[mask] for m, v in s.items()}
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


def _gather_rows(local: np.ndarray) -> np.ndarray:
    """[batches, rows] of this process -> [batches * processes * rows]: batch-major, then process
    order, as the embeddings of a global batch come back."""
    if jax.process_count() == 1:
        return local.reshape(-1)
    every = multihost_utils.process_allgather(local)  # [processes, batches, rows]
    return np.asarray(every).transpose(1, 0, 2).reshape(-1)
