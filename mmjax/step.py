"""The train step and the set-up it runs on: one copy, shared by every entry point.

train.py, evaluate.py, tools/plan.py and the benchmarks all build their pieces here, so a
change to the step (a new state entry, another metric) reaches all of them at once:

  build(config)                        tokenizer, model, objective, optimiser: a `Setup`
  run_rngs(seed)                       (init_rng, train_rng) of a run
  state_layout(setup, mesh, init_rng)  the train state's init fn, abstract shapes and shardings
  Setup.forward / Setup.loss           the model's forward (with the EMA teacher's targets for
                                       a model that has one) and the objective, kept apart so
                                       that accumulation can run the forward per micro-batch
  train_step(setup, train_rng, state, batch)  one optimiser step; jit_train_step compiles it

The train state is {"step", "params", "opt_state", "guard"}, plus "teacher" for a model with an
EMA teacher (mmjax.teacher): the teacher is never differentiated or seen by the optimiser.

The guard: a step whose loss or gradient norm is not finite leaves params, optimiser state and
teacher as they were (the step counter and the data still advance, as optax.apply_if_finite
does, so the learning-rate schedule, which counts applied updates, is held back by one); state["guard"] counts such steps ("skipped"), the current run of them ("consecutive") and
the last one's number ("last_bad_step"), so that the trainer can stop on config.guard and no
checkpoint ever holds a non-finite update. Finite steps are bitwise what they were without it.

Randomness: step s draws from fold_in(train_rng, s), whatever happened before it (exact
resume); within a step fold_in(., 0) is dropout, 1 masking, 2 the objective's own (Symile's
shuffled negatives, read from batch["rng"]). Changing a constant changes every run's numbers.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax import accumulate, parallel
from mmjax import teacher as teacher_lib
from mmjax.data.tokenizer import from_data_config
from mmjax.models import build_model
from mmjax.objectives import get_objective
from mmjax.optim import make_optimizer

DROPOUT, MASKING, OBJECTIVE = 0, 1, 2  # fold_in constants of a step's rng (module doc)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What a run trains: built by `build(config)`; the step reads config.objective,
    config.accumulation and config.model.teacher from `config`."""
    config: Any  # the run's ConfigDict
    tokenizer: Any  # mmjax.data.tokenizer.Tokenizer, or None for a model without a text tower
    model: Any  # flax module (mmjax.models)
    objective: Callable  # (outputs, batch, objective cfg) -> (loss, metrics)
    tx: optax.GradientTransformation
    schedule: optax.Schedule  # the learning rate, logged as "lr"

    @property
    def has_teacher(self) -> bool:
        return teacher_lib.enabled(self.config, self.model)  # fails if model and config disagree

    def forward(self, params, batch, rng, teacher=None):
        """Model outputs of `batch`; with the EMA teacher's params (state["teacher"]), its targets added
        as outputs["masked"][m]["target"] (no gradient)."""
        rngs = {"dropout": jax.random.fold_in(rng, DROPOUT), "masking": jax.random.fold_in(rng, MASKING)}
        outputs = self.model.apply({"params": params}, batch, rngs=rngs)
        if teacher is not None:
            outputs = teacher_lib.add_targets(self.config.model.teacher, self.model, teacher, batch, outputs)
        return outputs

    def loss(self, outputs, batch, rng):
        """(loss, metrics) of the objective on `outputs`."""
        return self.objective(outputs, {**batch, "rng": jax.random.fold_in(rng, OBJECTIVE)}, self.config.objective)


def build(config, *, tokenizer=None, model=None) -> Setup:
    """The set-up of `config`: tokenizer (from config.data), model, objective, optimiser.

    `tokenizer` replaces the config's (tools/plan.py sizes a BPE model without its vocabulary
    file); `model` replaces the config's (benchmarks/throughput.py builds open_clip's shapes),
    and then no tokenizer is built unless given.
    """
    if tokenizer is None and model is None:
        tokenizer = from_data_config(config.data)
    if model is None:
        model = build_model(config.model, tokenizer)
    tx, schedule = make_optimizer(config.optim, config.total_steps)
    return Setup(config, tokenizer, model, get_objective(config.objective.name), tx, schedule)


def run_rngs(seed: int):
    """(init_rng, train_rng): the initial state's draws, and those of every step (fold_in(train_rng, step))."""
    init_rng, train_rng = jax.random.split(jax.random.key(seed))
    return init_rng, train_rng


def init_state(setup: Setup, example: dict, init_rng) -> dict:
    """The initial train state for a batch shaped like `example` (its values are not read)."""
    params = setup.model.init({"params": init_rng, "masking": init_rng}, example)["params"]
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": setup.tx.init(params),
             "guard": {"skipped": jnp.zeros((), jnp.int32), "consecutive": jnp.zeros((), jnp.int32),
                       "last_bad_step": jnp.full((), -1, jnp.int32)}}
    if setup.has_teacher:  # the teacher starts as a copy of the student
        state["teacher"] = teacher_lib.init(setup.model, params)
    return state


class StateLayout(NamedTuple):
    init: Callable[[], dict]  # -> the initial state; jit it with out_shardings=shardings
    abstract: dict  # its jax.ShapeDtypeStructs
    shardings: dict  # its NamedShardings on the mesh


def state_layout(setup: Setup, mesh, init_rng, specs: dict | None = None) -> StateLayout:
    """The layout of the train state on `mesh` (a Mesh, or an AbstractMesh to plan without devices).

    The model is initialised on one example per data-parallel device of the shapes `specs`
    ({key: (shape, dtype)}, default mmjax.data.pipeline.input_specs of config.data), so no data
    is read. Shardings come from config.sharding's regex rules (plus the tensor-parallel ones when
    enabled) and FSDP above sharding.fsdp_min_size. Training, the standalone evaluator (which
    restores into this layout) and tools/plan.py share it.
    """
    config = setup.config
    if specs is None:
        # Imported here, not above: the pipeline brings grain, and the benchmarks that pass their own
        # specs (throughput.py) run where only jax, flax, optax and ml_collections are installed.
        from mmjax.data import pipeline
        specs = pipeline.input_specs(config.data, setup.tokenizer)
    dp = parallel.data_parallel_size(mesh)
    example = jax.tree.map(lambda s: jnp.zeros((dp, *s[0]), s[1]), specs, is_leaf=_is_spec)
    init = functools.partial(init_state, setup, example, init_rng)
    abstract = jax.eval_shape(init)
    rules = tuple(config.sharding.rules)
    if config.sharding.tensor_parallel:
        rules += parallel.TENSOR_PARALLEL_RULES
    return StateLayout(init, abstract, parallel.tree_shardings(abstract, mesh, rules, config.sharding.fsdp_min_size))


def _is_spec(x) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], tuple)


def train_step(setup: Setup, train_rng, state: dict, batch: dict) -> tuple[dict, dict]:
    """(new state, metrics) after one optimiser step on `batch` (config.accumulation micro-batches).

    Metrics: loss, grad_norm, lr, the objective's own, and ema_decay with a teacher.
    """
    config = setup.config
    step_rng = jax.random.fold_in(train_rng, state["step"])
    teacher = state.get("teacher")  # masked feature prediction: the EMA teacher's targets

    def forward(params, batch, rng):
        return setup.forward(params, batch, rng, teacher)

    (loss, step_metrics), grads = accumulate.value_and_grad(
        forward, setup.loss, state["params"], batch, step_rng, config.accumulation)
    updates, opt_state = setup.tx.update(grads, state["opt_state"], state["params"])
    grad_norm = optax.tree.norm(grads)
    new_state = {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}
    # optax's schedule counts applied updates only, so skipped steps hold the learning rate back.
    lr = setup.schedule(state["step"] - state["guard"]["skipped"])
    step_metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr, **step_metrics}
    if teacher is not None:  # EMA towards the updated student; the optimiser never sees the teacher
        new_state["teacher"], step_metrics["ema_decay"] = teacher_lib.update(
            config.model.teacher, setup.model, teacher, new_state["params"], state["step"])
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state,
                             {k: state[k] for k in new_state})
    new_state["step"] = state["step"] + 1
    new_state["guard"] = _count_non_finite(state["guard"], finite, new_state["step"])
    step_metrics["skipped_steps"] = new_state["guard"]["skipped"]
    return new_state, step_metrics


def _count_non_finite(guard: dict, finite, step) -> dict:
    """state["guard"] after a step numbered `step` whose loss and grad norm were `finite` (or not)."""
    bad = (~finite).astype(jnp.int32)
    return {"skipped": guard["skipped"] + bad, "consecutive": (guard["consecutive"] + 1) * bad,
            "last_bad_step": jnp.where(finite, guard["last_bad_step"], step)}


def jit_train_step(setup: Setup, train_rng, mesh=None, state_shardings=None):
    """`train_step` compiled with the state donated: step(state, batch) -> (state, metrics).

    With `mesh` (and the layout's `state_shardings`), the batch is laid out on the data-parallel
    axes and the metrics replicated; call it under `jax.set_mesh(mesh)`, which objectives with
    explicit collectives (shard_map) read at trace time. Without, it runs where its inputs are.
    """
    step = functools.partial(train_step, setup, train_rng)
    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    return jax.jit(step, in_shardings=(state_shardings, parallel.batch_sharding(mesh)),
                   out_shardings=(state_shardings, NamedSharding(mesh, P())), donate_argnums=0)
