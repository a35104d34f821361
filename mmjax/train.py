"""The mmjax trainer: one file, read top to bottom.

  1. setup      process info, workdir, logging
  2. mesh       devices -> Mesh, sharding rules
  3. data       TFDS/ArrayRecord -> Grain iterator (checkpointable), eval batches
  4. model      towers from config, objective by name
  5. optimiser  optax from config
  6. state      params + optimizer state, initialised directly into their shardings
  7. resume     latest committed checkpoint (model, optimiser, step, data position)
  8. step       one jit-compiled, donated train step; randomness = fold_in(seed, step)
  9. evals      zero-shot with a prompt ensemble, retrieval R@K
 10. loop       train, log, evaluate, checkpoint; the last line is `final: ...`
"""
from __future__ import annotations

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax import accumulate
from mmjax import checkpoint as ckpt_lib
from mmjax import metrics as metrics_lib
from mmjax import parallel
from mmjax import teacher as teacher_lib
from mmjax.data import pipeline
from mmjax.data.tokenizer import get_tokenizer
from mmjax.evals.suite import EvalSuite
from mmjax.models import build_model
from mmjax.models.towers import restore_reference
from mmjax.objectives import get_objective
from mmjax.optim import make_optimizer


def train_and_evaluate(config, workdir: str, devices=None) -> dict:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns final metrics."""
    # ---------------------------------------------------------------- 1. setup
    process_index, process_count = jax.process_index(), jax.process_count()
    is_main = process_index == 0
    os.makedirs(workdir, exist_ok=True)
    say = print if is_main else (lambda *a, **k: None)

    # ---------------------------------------------------------------- 2. mesh
    mesh = parallel.make_mesh(config.mesh, devices)
    dp = parallel.data_parallel_size(mesh)
    for name, size in (("batch_size", config.batch_size), ("eval.batch_size", config.eval.batch_size)):
        if size % dp or size % process_count:
            raise ValueError(f"{name}={size} must divide over {dp} data-parallel devices and {process_count} processes")
    accumulate.validate(config.accumulation, config.batch_size, dp)  # micro-batches split every device's rows
    say(f"mesh: {dict(mesh.shape)} over {len(mesh.devices.flat)} {jax.default_backend()} devices, "
        f"{process_count} process(es)")

    # ---------------------------------------------------------------- 3. data
    tokenizer = get_tokenizer(config.data.tokenizer, config.data.text_len, config.data.tokenizer_path or None)
    train_iter = pipeline.make_train_iterator(
        config.data, global_batch_size=config.batch_size, seed=config.seed, tokenizer=tokenizer,
        shard_index=process_index, shard_count=process_count)

    # ---------------------------------------------------------------- 4. model
    model = build_model(config.model, tokenizer)
    objective = get_objective(config.objective.name)
    evaluate = EvalSuite.from_config(config, model, tokenizer, mesh)  # section 9 runs it

    # ---------------------------------------------------------------- 5. optimiser
    tx, schedule = make_optimizer(config.optim, config.total_steps)

    # ---------------------------------------------------------------- 6. state
    init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
    init_state, abstract_state, state_shardings = state_layout(config, model, tx, mesh, evaluate.batches[0], init_rng)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(abstract_state["params"]))
    say(f"model: {config.model.get('kind', 'contrastive')}, {num_params / 1e6:.2f}M params, "
        f"modalities {list(config.data.modalities)}; objective {config.objective.name}")

    # ---------------------------------------------------------------- 7. resume
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=config.checkpoint.every_steps,
                                 keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)
    start_step = ckpt.latest_step()
    if start_step is None:
        state = jax.jit(init_state, out_shardings=state_shardings)()
        # Towers may start from finished runs' checkpoints: a frozen reference tower (CWCL), locked or
        # fine-tuned towers (config.init_from). The teacher, if any, copies the student as it starts.
        params = restore_reference(config.model, state["params"])
        state["params"] = ckpt_lib.warm_start(config.get("init_from"), params)
        if "teacher" in state and state["params"] is not params:
            state["teacher"] = jax.jit(lambda p: teacher_lib.init(model, p),
                                       out_shardings=state_shardings["teacher"])(state["params"])
        start_step = 0
    else:
        state = ckpt.restore(start_step, ckpt_lib.abstract_like(abstract_state, state_shardings), train_iter)
        say(f"resumed from step {start_step}")

    # ---------------------------------------------------------------- 8. step
    batch_sharding = parallel.batch_sharding(mesh)

    def train_step(state, batch):
        step_rng = jax.random.fold_in(train_rng, state["step"])

        # forward and objective apart, so that accumulation can run the forward per micro-batch.
        def forward(params, batch, rng):
            rngs = {"dropout": jax.random.fold_in(rng, 0), "masking": jax.random.fold_in(rng, 1)}
            outputs = model.apply({"params": params}, batch, rngs=rngs)
            if "teacher" in state:  # masked feature prediction: the EMA teacher's targets (no gradient)
                outputs = teacher_lib.add_targets(config.model.teacher, model, state["teacher"], batch, outputs)
            return outputs

        def loss_fn(outputs, batch, rng):
            # Objectives that sample (Symile's shuffled negatives) read batch["rng"].
            return objective(outputs, {**batch, "rng": jax.random.fold_in(rng, 2)}, config.objective)

        (loss, step_metrics), grads = accumulate.value_and_grad(
            forward, loss_fn, state["params"], batch, step_rng, config.accumulation)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                     "opt_state": opt_state}
        step_metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state["step"]),
                        **step_metrics}
        if "teacher" in state:  # EMA towards the updated student; the optimiser never sees the teacher
            new_state["teacher"], step_metrics["ema_decay"] = teacher_lib.update(
                config.model.teacher, model, state["teacher"], new_state["params"], state["step"])
        return new_state, step_metrics

    train_step = jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                         out_shardings=(state_shardings, NamedSharding(mesh, P())), donate_argnums=0)

    # ---------------------------------------------------------------- 9. evals (built in section 4)
    # ---------------------------------------------------------------- 10. loop
    logger = metrics_lib.MetricLogger(workdir, enabled=is_main, tensorboard=config.tensorboard)
    meter = metrics_lib.Throughput(config.batch_size, config.total_steps)

    def run_eval(step: int) -> dict:
        results = evaluate(state["params"])
        logger.write(step, {f"eval/{k}": v for k, v in results.items()})
        say(metrics_lib.format_line(f"eval {step}", results), flush=True)
        return results

    if config.eval.at_start and start_step == 0:  # the untrained model's numbers, as a baseline
        run_eval(0)
    step = start_step
    flag_counts: dict[str, int] = {}  # e.g. truncated captions, dropped bad inputs, since this start
    meter.start(step)
    while step < config.total_steps:
        try:
            batch = next(train_iter)
        except Exception:
            # The state is intact (the step never ran): keep it before failing.
            ckpt.save(step, state, train_iter, force=True)
            ckpt.wait()
            raise
        for flag, values in batch["flags"].items():  # data problems counted on the host
            flag_counts[flag] = flag_counts.get(flag, 0) + int(np.sum(values))
        with jax.set_mesh(mesh):  # objectives with explicit collectives (shard_map) read it at trace time
            state, step_metrics = train_step(state, parallel.host_to_global(model_inputs(batch), mesh))
        step += 1
        if step == start_step + 1:  # keep compilation out of the throughput figures
            jax.block_until_ready(state)
            meter.start(step)

        if step % config.log_every_steps == 0 or step == config.total_steps:
            step_metrics = {f"train/{k}": v for k, v in jax.device_get(step_metrics).items()}
            step_metrics |= meter.report(step) | {f"data/{k}": v for k, v in flag_counts.items()}
            logger.write(step, step_metrics)
            say(metrics_lib.format_line(f"step {step}/{config.total_steps}", step_metrics), flush=True)

        if config.eval.every_steps and step % config.eval.every_steps == 0 and step < config.total_steps:
            meter.pause(step)
            run_eval(step)
            meter.start(step)

        if step == config.debug.sigkill_after_step:
            _preempt_mid_save(ckpt, step, state, train_iter)
        ckpt.save(step, state, train_iter, force=step == config.total_steps)
    meter.pause(step)
    ckpt.wait()

    final = {**run_eval(step), "steps": step, "examples_per_sec": meter.mean_examples_per_sec}
    logger.close()
    ckpt.close()
    say(metrics_lib.format_line("final:", final), flush=True)
    return final


def state_layout(config, model, tx, mesh, example_batch, init_rng):
    """(init_state fn, abstract state, shardings) of {"step", "params", "opt_state"},
    plus "teacher" for models with an EMA teacher (mmjax.teacher).

    Shared by training and the standalone evaluator, which restores into the
    same layout. Shardings come from config.sharding's regex rules (plus the
    tensor-parallel ones when enabled) and FSDP above fsdp_min_size.
    """
    dp = parallel.data_parallel_size(mesh)
    example = jax.tree_util.tree_map(lambda v: jnp.zeros((dp,) + v.shape[1:], v.dtype), model_inputs(example_batch))

    def init_state():
        params = model.init({"params": init_rng, "masking": init_rng}, example)["params"]
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
        if teacher_lib.enabled(config, model):
            state["teacher"] = teacher_lib.init(model, params)
        return state

    abstract_state = jax.eval_shape(init_state)
    rules = tuple(config.sharding.rules)
    if config.sharding.tensor_parallel:
        rules += parallel.TENSOR_PARALLEL_RULES
    return init_state, abstract_state, parallel.tree_shardings(abstract_state, mesh, rules, config.sharding.fsdp_min_size)


def _preempt_mid_save(ckpt, step, state, train_iter):
    """Test hook (config.debug.sigkill_after_step): the worst moment for a preemption.

    Earlier checkpoints are committed, a save of `step` is in flight, and the
    process dies by SIGKILL: no cleanup, no finalisation, as on a pod.
    """
    ckpt.wait()
    ckpt.save(step, state, train_iter, force=True)
    print(f"debug: SIGKILL after step {step} with its checkpoint save in flight", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def model_inputs(batch: dict) -> dict:
    """What the train step sees: modality inputs, their masks, presence, labels (not host-side flags)."""
    return {k: v for k, v in batch.items() if k not in ("flags", "mask")}
