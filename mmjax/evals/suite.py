"""The evaluation suite run by the trainer: embeddings once, then every metric.

Per configured modality m: zero-shot classification against the class
prompts (`zeroshot_top1_<m>`, `zeroshot_top5_<m>`) and, with
`eval.zeroshot_tokenwise` (FILIP), by the token-wise late-interaction score
averaged over each class's prompts (`zeroshot_tokenwise_top1_<m>`, ...).
Per `eval.zeroshot_multilinear` entry "a+b" (Symile): the class whose prompt
embedding t maximises the multilinear inner product sum_d a_d b_d t_d of the
example's a and b embeddings (`zeroshot_multilinear_top1_a_b`, ...). Per configured directed
pair "a:b": retrieval of b from a, instance-level (`r<k>_<a>_<b>`: the paired
example is the one right answer) and class-level (`class_r<k>_<a>_<b>`: any
example of the query's class counts). `config.eval.aliases` adds short names
(e.g. "i2t_r1" for "r1_image_text"). Per probe modality m: frozen features of
the train split (`probe_batches`) and the test split feed a kNN classifier
(`knn_top1_<m>`), a ridge linear probe (`linear_top1_<m>`) and n-way k-shot
episodes (`<n>way<k>shot_<m>`, mean and std over episodes).
"""
from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax import parallel
from mmjax.data import digits, pipeline
from mmjax.evals import probe, retrieval, zeroshot
from mmjax.objectives.contrastive_variants import filip_similarities


def parse_pairs(pairs) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        a, sep, b = pair.partition(":")
        if not sep or not a or not b:
            raise ValueError(f"config.eval.retrieval_pairs entry {pair!r}: expected 'query:key', e.g. 'audio:image'")
        out.append((a, b))
    return out


class EvalSuite:
    def __init__(self, eval_cfg, model, tokenizer, mesh, eval_batches: list[dict], probe_batches: list[dict] = ()):
        self.cfg, self.model, self.mesh, self.batches = eval_cfg, model, mesh, eval_batches
        self.probe_batches = probe_batches
        self.pairs = parse_pairs(eval_cfg.retrieval_pairs)
        self.zeroshot = tuple(eval_cfg.zeroshot_modalities)
        self.probes = tuple(eval_cfg.probe_modalities)
        self.multilinear = [tuple(entry.split("+")) for entry in eval_cfg.get("zeroshot_multilinear", ())]
        if any(len(group) < 2 or not all(group) for group in self.multilinear):
            raise ValueError(f"config.eval.zeroshot_multilinear {tuple(eval_cfg.zeroshot_multilinear)}: expected "
                             f"entries of two or more modalities joined by '+', e.g. 'image+audio'")
        if self.probes and not probe_batches:
            raise ValueError("config.eval.probe_modalities needs the train split's batches (probe_batches)")
        towers = set(model.towers) if hasattr(model, "towers") else {model.modality}
        needed = (set(self.zeroshot) | {m for p in self.pairs for m in p} | set(self.probes)
                  | {m for group in self.multilinear for m in group}
                  | ({"text"} if self.zeroshot or self.multilinear else set()))
        if needed - towers:
            raise ValueError(f"config.eval names modalities {sorted(needed - towers)} the model has no tower for; "
                             f"towers: {sorted(towers)}")
        self.modalities = sorted(needed)
        self.dp = parallel.data_parallel_size(mesh)
        prompts = zeroshot.build_prompts(digits.CLASS_NAMES, [str(d) for d in range(len(digits.CLASS_NAMES))],
                                         digits.ZEROSHOT_PROMPTS)
        self.num_prompts = len(prompts)
        ids = tokenizer.encode_batch(prompts)
        # Pad to a multiple of the data-parallel size; the extra rows are dropped after embedding.
        self.prompt_batch = {"text": np.concatenate([ids, np.repeat(ids[-1:], -len(ids) % self.dp, axis=0)])}
        self._embed = jax.jit(
            lambda params, x, mask, modality: model.apply({"params": params}, x, modality, mask, method="embed")[0],
            static_argnums=3, out_shardings=NamedSharding(mesh, P()))
        self.tokenwise = bool(eval_cfg.get("zeroshot_tokenwise", False))
        if self.tokenwise:
            if not (self.zeroshot and getattr(model, "project_tokens", False)):
                raise ValueError("config.eval.zeroshot_tokenwise needs eval.zeroshot_modalities and "
                                 "model.project_tokens (every modality's tokens in the shared space, as FILIP)")
            self._embed_with_tokens = jax.jit(
                lambda params, x, mask, modality: model.apply({"params": params}, x, modality, mask,
                                                              method="embed_with_tokens"),
                static_argnums=3, out_shardings=NamedSharding(mesh, P()))
            # example tokens -> prompt tokens direction: the row of FILIP's loss for an example query
            self._late_interaction = jax.jit(lambda ta, va, tb, vb: filip_similarities(ta, tb, va, vb)[0])

    @classmethod
    def from_config(cls, config, model, tokenizer, mesh) -> "EvalSuite":
        """The suite over the eval split (and the train split, for probes) of config.data."""
        batches = functools.partial(pipeline.make_eval_batches, config.data, batch_size=config.eval.batch_size,
                                    tokenizer=tokenizer)
        probe_batches = batches(split=config.data.train_split) if config.eval.probe_modalities else ()
        return cls(config.eval, model, tokenizer, mesh, batches(split=config.data.eval_split), probe_batches)

    def _local_rows(self, x):
        rows = x.shape[0] // jax.process_count()
        return x[jax.process_index() * rows:(jax.process_index() + 1) * rows]

    def _per_batch(self, fn, params, batches, modality) -> list:
        """fn(params, x, mask, modality) on each of `batches`, as NumPy (every process gets all rows)."""
        out = []
        for b in batches:
            x = {"x": self._local_rows(b[modality])}
            if f"{modality}_mask" in b:
                x["mask"] = self._local_rows(b[f"{modality}_mask"])
            x = parallel.host_to_global(x, self.mesh)
            out.append(jax.tree.map(np.asarray, fn(params, x["x"], x.get("mask"), modality)))
        return out

    def embed_all(self, params, batches, modality) -> np.ndarray:
        """[sum of batch rows, E] embeddings of `modality` over `batches` (every process gets all)."""
        return np.concatenate(self._per_batch(self._embed, params, batches, modality))

    def embed_prompts(self, params) -> tuple[np.ndarray, ...]:
        """The class prompts' text embeddings [prompts, E] and, with token-wise zero-shot, their tokens
        and token validity, from one pass of the text tower."""
        if not self.tokenwise:
            return (self.embed_all(params, [self.prompt_batch], "text")[:self.num_prompts],)
        ((z, tokens, valid),) = self._per_batch(self._embed_with_tokens, params, [self.prompt_batch], "text")
        return z[:self.num_prompts], tokens[:self.num_prompts], valid[:self.num_prompts]

    def embed_and_score_tokens(self, params, modality, prompt_tokens, prompt_valid) -> tuple[np.ndarray, np.ndarray]:
        """([eval rows, E] embeddings of `modality`, [eval rows, prompts] FILIP late-interaction
        similarities of its tokens to each prompt's text tokens), from one tower pass over the eval
        batches (padding tokens on either side left out)."""
        z, sims = [], []
        for emb, tokens, valid in self._per_batch(self._embed_with_tokens, params, self.batches, modality):
            z.append(emb)
            sims.append(np.asarray(self._late_interaction(tokens, valid, prompt_tokens, prompt_valid)))
        return np.concatenate(z), np.concatenate(sims)

    def tokenwise_similarities(self, params, modality) -> np.ndarray:
        """[eval rows, prompts]: the similarities of `embed_and_score_tokens`."""
        return self.embed_and_score_tokens(params, modality, *self.embed_prompts(params)[1:])[1]

    def __call__(self, params) -> dict[str, float]:
        mask = np.concatenate([b["mask"] for b in self.batches])
        labels = np.concatenate([b["label"] for b in self.batches])[mask]
        results, z, sims = {}, {}, {}
        prompts = self.embed_prompts(params) if self.zeroshot or self.multilinear else None
        for m in self.modalities:  # one tower pass per modality, token-wise scores included
            if self.tokenwise and m in self.zeroshot:
                z[m], sims[m] = (x[mask] for x in self.embed_and_score_tokens(params, m, *prompts[1:]))
            else:
                z[m] = self.embed_all(params, self.batches, m)[mask]
        if prompts is not None:
            z_prompts = prompts[0]
            classes = zeroshot.prompt_ensemble(z_prompts.reshape(len(digits.CLASS_NAMES), -1, z_prompts.shape[-1]))
            for m in self.zeroshot:
                for key, value in zeroshot.zeroshot_metrics(z[m], labels, classes, topk=(1, 5)).items():
                    results[f"{key}_{m}"] = value
                if self.tokenwise:
                    scores = zeroshot.tokenwise_class_scores(sims[m], len(digits.CLASS_NAMES))
                    for key, value in zeroshot.zeroshot_metrics_from_scores(scores, labels, topk=(1, 5)).items():
                        results[f"{key.replace('zeroshot_', 'zeroshot_tokenwise_')}_{m}"] = value
            for group in self.multilinear:
                scores = np.prod([z[m] for m in group], axis=0) @ classes.T  # <a, b, ..., t_c>
                for key, value in zeroshot.zeroshot_metrics_from_scores(scores, labels, topk=(1, 5)).items():
                    results[f"{key.replace('zeroshot_', 'zeroshot_multilinear_')}_{'_'.join(group)}"] = value
        ks = tuple(self.cfg.retrieval_ks)
        for a, b in self.pairs:
            for k, v in retrieval.retrieval_recall(z[a], z[b], ks=ks).items():
                results[f"{k}_{a}_{b}"] = v
            for k, v in retrieval.class_recall(z[a], z[b], labels, labels, ks=ks).items():
                results[f"class_{k}_{a}_{b}"] = v
        if self.probes:
            train_mask = np.concatenate([b["mask"] for b in self.probe_batches])
            train_labels = np.concatenate([b["label"] for b in self.probe_batches])[train_mask]
            for m in self.probes:
                train_x = self.embed_all(params, self.probe_batches, m)[train_mask]
                results[f"knn_top1_{m}"] = probe.knn_accuracy(train_x, train_labels, z[m], labels)
                results[f"linear_top1_{m}"] = probe.ridge_probe_accuracy(train_x, train_labels, z[m], labels)[0]
                for shots in self.cfg.few_shot_shots:
                    mean, std = probe.few_shot_accuracy(train_x, train_labels, z[m], labels, ways=self.cfg.few_shot_ways,
                                                        shots=shots)
                    results[f"{self.cfg.few_shot_ways}way{shots}shot_{m}"] = mean
                    results[f"{self.cfg.few_shot_ways}way{shots}shot_std_{m}"] = std
        unknown = {a: n for a, n in dict(self.cfg.aliases).items() if n not in results}
        if unknown:
            raise ValueError(f"config.eval.aliases {unknown} name unknown metrics; valid: {sorted(results)}")
        # Short names first: they lead the `final:` line.
        return {alias: results[name] for alias, name in dict(self.cfg.aliases).items()} | results
