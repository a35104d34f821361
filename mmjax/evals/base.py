"""The evaluator interface, its registry, and building evaluators from `config.evals`.

An evaluator is a small class registered under a type name. It declares what it reads
(`needs() -> Needs`) and turns the features the runner extracted into metrics
(`__call__(features) -> {name: float}`); it never runs a model itself, so features are
extracted once per (modality, split) however many evaluators read them (mmjax.evals.runner).

A config lists what to evaluate, one entry per evaluation:
    config.evals.<name> = {"type": "<registered type>", **fields}
The fields are the evaluator's constructor arguments (a dataclass's fields); an unknown type,
an unknown field or a missing one fails at construction listing the valid ones. A project adds
an evaluator from its own module:

    @EVALUATORS.register("mean_norm")
    @dataclasses.dataclass
    class MeanNorm(Evaluator):
        modalities: tuple[str, ...]
        def needs(self):
            return Needs(embeddings=tuple((m, EVAL) for m in self.modalities))
        def __call__(self, features):
            return {f"mean_norm_{m}": float(np.linalg.norm(features.embeddings[m, EVAL], axis=1).mean())
                    for m in self.modalities}
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Mapping

import numpy as np

from mmjax.registry import Registry

EVALUATORS = Registry("evaluator")

# The splits an evaluator can ask for, by role: the runner maps them to config.data.eval_split
# and config.data.train_split (the train split is read only when some evaluator asks for it).
EVAL, TRAIN = "eval", "train"
SPLITS = (EVAL, TRAIN)


@dataclasses.dataclass(frozen=True)
class Needs:
    """What an evaluator reads from `Features`; the runner extracts the union of all of them.

    embeddings          (modality, EVAL or TRAIN) pairs -> Features.embeddings[modality, split]
    class_embeddings    the dataset's class prompts through the text tower, prompt-ensembled
                        -> Features.class_embeddings [C, E]
    token_similarities  modalities whose eval examples' tokens are scored against every class
                        prompt's tokens (FILIP late interaction; needs model.project_tokens)
                        -> Features.token_similarities[modality] [eval rows, C * T]
    """
    embeddings: tuple[tuple[str, str], ...] = ()
    class_embeddings: bool = False
    token_similarities: tuple[str, ...] = ()

    def __post_init__(self):
        bad = [s for _, s in self.embeddings if s not in SPLITS]
        if bad:
            raise ValueError(f"Needs.embeddings names splits {bad}; valid: {list(SPLITS)}")

    @property
    def modalities(self) -> set[str]:
        """Every modality whose examples these needs embed (the class prompts' text pass aside)."""
        return {m for m, _ in self.embeddings} | set(self.token_similarities)

    @property
    def prompts(self) -> bool:
        """Whether the class prompts go through the text tower at all."""
        return self.class_embeddings or bool(self.token_similarities)

    @property
    def splits(self) -> set[str]:
        return {s for _, s in self.embeddings} | ({EVAL} if self.token_similarities else set())

    def __or__(self, other: "Needs") -> "Needs":
        return Needs(embeddings=tuple(dict.fromkeys(self.embeddings + other.embeddings)),
                     class_embeddings=self.class_embeddings or other.class_embeddings,
                     token_similarities=tuple(dict.fromkeys(self.token_similarities + other.token_similarities)))


@dataclasses.dataclass
class Features:
    """Frozen features of one evaluation, padding rows already dropped; every process holds all rows.

    embeddings          {(modality, split): [rows of split, E]} float32 (normalised by contrastive models)
    labels              {split: [rows of split]} int class ids, for every split read
    class_embeddings    [C, E] or None: class prompts' text embeddings, averaged over templates
    token_similarities  {modality: [eval rows, C * T]} late-interaction scores against each prompt
                        (class-major: prompt c * T + t is template t of class c)
    num_classes         C, the number of classes of the dataset's prompts (None without prompts)
    """
    embeddings: dict[tuple[str, str], np.ndarray]
    labels: dict[str, np.ndarray]
    class_embeddings: np.ndarray | None = None
    token_similarities: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    num_classes: int | None = None


class Evaluator:
    """Base class of evaluators: subclasses are dataclasses whose fields are their config fields."""

    def needs(self) -> Needs:
        raise NotImplementedError

    def __call__(self, features: Features) -> dict[str, float]:
        raise NotImplementedError


def names(value, field: str) -> tuple[str, ...]:
    """A config tuple of non-empty strings; a bare string (a common slip: "image" for ("image",))
    fails instead of being read as its characters."""
    if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{field}={value!r}: expected a tuple of non-empty strings, e.g. ('image',)")
    return tuple(value)


def fields_of(cls) -> tuple[list[str], list[str]]:
    """(every config field, the required ones) of an evaluator class: its constructor's arguments."""
    params = [p for p in inspect.signature(cls).parameters.values()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return [p.name for p in params], [p.name for p in params if p.default is p.empty]


def build_evaluator(name: str, entry: Mapping) -> Evaluator:
    """The evaluator of `config.evals.<name>` = {"type": ..., **fields}."""
    where = f"config.evals.{name}"
    entry = dict(entry)
    if "type" not in entry:
        raise ValueError(f"{where} has no 'type'; valid types: {EVALUATORS.names()}")
    cls = EVALUATORS.get(entry.pop("type"), f"{where}.type")
    valid, required = fields_of(cls)
    unknown, missing = sorted(set(entry) - set(valid)), [f for f in required if f not in entry]
    if unknown or missing:
        problem = f"unknown fields {unknown}" if unknown else f"missing fields {missing}"
        raise ValueError(f"{where} ({cls.__name__}): {problem}; valid fields: ['type'] + {valid}")
    try:
        return cls(**entry)
    except ValueError as e:  # the evaluator's own checks, told where in the config they failed
        raise ValueError(f"{where}: {e}") from None


def build_evaluators(evals_cfg: Mapping) -> dict[str, Evaluator]:
    """{name: evaluator} of every `config.evals` entry, in the config's (sorted) key order. An entry of
    type "none" is left out: `--config.evals.<name>.type=none` drops one from the command line
    (e.g. zero-shot on a corpus without classes)."""
    return {name: build_evaluator(name, entry) for name, entry in evals_cfg.items()
            if (entry.get("type") if isinstance(entry, Mapping) else None) != "none"}
