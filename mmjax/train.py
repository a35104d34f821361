"""The mmjax trainer: one file, read top to bottom.

  1. setup      process info, workdir, config values, the run's identity (mmjax.run_identity)
  2. mesh       devices -> Mesh, sharding rules
  3. parts      tokenizer, model, objective, optimiser (mmjax.step.build)
  4. data       TFDS/ArrayRecord -> Grain iterator (checkpointable); the evaluation runner
  5. state      params + optimiser state (+ EMA teacher), initialised directly into their shardings
  6. resume     latest checkpoint that restores (model, optimiser, step, data position; a damaged
                one is set aside), else warm starts
  7. step       one jit-compiled, donated train step (mmjax.step); randomness = fold_in(seed, step)
  8. loop       train, log, evaluate, checkpoint; the last line is `final: ...`

A run stops early, always with its checkpoints intact, on SIGTERM/SIGINT (saves the current
step: mmjax.errors.Preempted), a failed checkpoint save or non-finite steps beyond config.guard
(mmjax.errors.RunError).
"""
from __future__ import annotations

import contextlib
import os
import signal
import time

import jax
import numpy as np

from mmjax import accumulate
from mmjax import checkpoint as ckpt_lib
from mmjax import metrics as metrics_lib
from mmjax import parallel
from mmjax import profiling
from mmjax import run_identity
from mmjax import step as step_lib
from mmjax import teacher as teacher_lib
from mmjax import validate
from mmjax.batch_keys import FLAGS, model_inputs
from mmjax.data import pipeline
from mmjax.errors import Preempted, RunError
from mmjax.evals.runner import EvalRunner
from mmjax.preemption import PreemptionWatch


def train_and_evaluate(config, workdir: str, devices=None) -> dict:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns final metrics."""
    # Whatever ends the run (the last step, a signal, an error), what it opened is closed, in reverse order.
    with contextlib.ExitStack() as cleanup:
        # ---------------------------------------------------------------- 1. setup
        validate.check(config, workdir)  # every bad value at once, before anything is built
        process_index, process_count = jax.process_index(), jax.process_count()
        is_main = process_index == 0
        os.makedirs(workdir, exist_ok=True)
        say = print if is_main else (lambda *a, **k: None)
        ckpt = cleanup.enter_context(contextlib.closing(ckpt_lib.Checkpointer(
            os.path.join(workdir, "checkpoints"), every_steps=config.checkpoint.every_steps,
            keep=config.checkpoint.keep, async_save=config.checkpoint.async_save)))
        if ckpt.latest_step() is not None:  # a resume must continue the same run
            run_identity.check_resume(config, workdir, say)

        # ---------------------------------------------------------------- 2. mesh
        mesh = parallel.make_mesh(config.mesh, devices)
        dp = parallel.data_parallel_size(mesh)
        for name, size in (("batch_size", config.batch_size), ("eval.batch_size", config.eval.batch_size)):
            if size % dp or size % process_count:
                raise ValueError(f"{name}={size} must divide over {dp} data-parallel devices and {process_count} processes")
        accumulate.validate(config.accumulation, config.batch_size, dp)  # micro-batches split every device's rows
        say(f"mesh: {dict(mesh.shape)} over {len(mesh.devices.flat)} {jax.default_backend()} devices, "
            f"{process_count} process(es)")

        # ---------------------------------------------------------------- 3. parts
        setup = step_lib.build(config)  # tokenizer, model, objective, optimiser

        # ---------------------------------------------------------------- 4. data
        train_iter = pipeline.make_train_iterator(
            config.data, global_batch_size=config.batch_size, seed=config.seed, tokenizer=setup.tokenizer,
            shard_index=process_index, shard_count=process_count)
        cleanup.callback(train_iter.close)  # input worker processes and their shared memory
        evaluate = EvalRunner.from_config(config, setup.model, setup.tokenizer, mesh)  # params -> {metric: value}

        # ---------------------------------------------------------------- 5. state
        init_rng, train_rng = step_lib.run_rngs(config.seed)
        layout = step_lib.state_layout(setup, mesh, init_rng)
        num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(layout.abstract["params"]))
        say(f"model: {config.model.get('kind', 'contrastive')}, {num_params / 1e6:.2f}M params, "
            f"modalities {list(config.data.modalities)}; objective {config.objective.name}")

        # ---------------------------------------------------------------- 6. resume
        restored = ckpt.restore_latest(ckpt_lib.abstract_like(layout.abstract, layout.shardings), train_iter, say)
        if restored is None:
            state = jax.jit(layout.init, out_shardings=layout.shardings)()
            # Towers may start from finished runs' checkpoints: a frozen reference tower (CWCL), locked or
            # fine-tuned towers (config.init_from). The teacher, if any, copies the student as it starts.
            params = ckpt_lib.restore_reference(config.model, state["params"])
            state["params"] = ckpt_lib.warm_start(config.get("init_from"), params)
            if "teacher" in state and state["params"] is not params:
                state["teacher"] = jax.jit(lambda p: teacher_lib.init(setup.model, p),
                                           out_shardings=layout.shardings["teacher"])(state["params"])
            start_step = 0
        else:
            start_step, state = restored
            say(f"resumed from step {start_step}")
        attempt = run_identity.record(config, workdir, start_step=start_step, mesh=mesh)

        # ---------------------------------------------------------------- 7. step
        train_step = step_lib.jit_train_step(setup, train_rng, mesh, layout.shardings)

        # ---------------------------------------------------------------- 8. loop
        logger = metrics_lib.MetricLogger(workdir, enabled=is_main, tensorboard=config.tensorboard,
                                          resume_step=start_step if restored else None,
                                          attempt=attempt["attempt"], wandb=config.wandb, run_config=config)
        cleanup.callback(logger.close)
        meter = metrics_lib.Throughput(config.batch_size, config.total_steps)
        profile = cleanup.enter_context(contextlib.closing(profiling.ProfileWindow(config.profile, workdir, enabled=is_main)))
        watch = cleanup.enter_context(contextlib.closing(PreemptionWatch()))  # SIGTERM / SIGINT: stop after this step, saved

        def run_eval(step: int) -> dict:
            try:
                results = evaluate(state["params"])
            except Exception:
                if watch.signal_name:  # a signal to the process group also stopped the eval's input workers
                    stop_for_signal(step)
                raise
            logger.write(step, {f"eval/{k}": v for k, v in results.items()})
            say(metrics_lib.format_line(f"eval {step}", results), flush=True)
            return results

        def stop_for_signal(step: int):
            ckpt.save(step, state, train_iter, force=True)
            ckpt.wait()
            say(f"{watch.signal_name}: saved step {step} in {ckpt.directory}; exiting to be resumed", flush=True)
            raise Preempted(step, watch.signal_name)

        if config.eval.at_start and start_step == 0:  # the untrained model's numbers, as a baseline
            run_eval(0)
        step = start_step
        flag_counts: dict[str, int] = {}  # e.g. truncated captions, dropped bad inputs, since this start
        once: dict[str, float] = {}
        meter.start(step)
        while step < config.total_steps:
            ckpt.check_for_errors()  # a failed asynchronous save stops the run now, not at the next save
            try:
                waited = time.perf_counter()
                batch = next(train_iter)
                meter.data_wait(time.perf_counter() - waited)
            except Exception:
                if watch.signal_name:  # the signal also stopped the input workers
                    stop_for_signal(step)
                # The state is intact (the step never ran): keep it before failing.
                ckpt.save(step, state, train_iter, force=True)
                ckpt.wait()
                raise
            for flag, values in batch[FLAGS].items():  # data problems counted on the host
                flag_counts[flag] = flag_counts.get(flag, 0) + int(np.sum(values))
            inputs = parallel.host_to_global(model_inputs(batch), mesh)
            profile.step_started(step)
            with jax.set_mesh(mesh):  # objectives with explicit collectives (shard_map) read it at trace time
                if step == start_step:  # compile ahead of time, to report how long it takes
                    train_step, compile_seconds = profiling.timed_compile(train_step, state, inputs)
                    once = {"compile_s": compile_seconds}  # goes into the next logged row
                state, step_metrics = train_step(state, inputs)
            step += 1
            profile.step_finished(step, state)
            if step == start_step + 1:  # keep compilation out of the throughput figures
                jax.block_until_ready(state)
                meter.start(step)

            if step % config.log_every_steps == 0 or step == config.total_steps:
                step_metrics = {f"train/{k}": v for k, v in jax.device_get(step_metrics).items()}
                step_metrics |= meter.report(step) | {f"data/{k}": v for k, v in flag_counts.items()}
                step_metrics |= profiling.device_memory() | once
                once = {}
                logger.write(step, step_metrics)
                say(metrics_lib.format_line(f"step {step}/{config.total_steps}", step_metrics), flush=True)
                _check_guard(config.guard, state)

            if config.eval.every_steps and step % config.eval.every_steps == 0 and step < config.total_steps:
                meter.pause(step)
                run_eval(step)
                meter.start(step)

            if step == config.debug.sigkill_after_step:
                _preempt_mid_save(ckpt, step, state, train_iter)
            if step == config.debug.sigterm_after_step:
                os.kill(os.getpid(), signal.SIGTERM)  # test hook: a real signal, handled as a scheduler's
            if watch.should_stop(step):
                stop_for_signal(step)
            if ckpt.due(step) or step == config.total_steps:
                _check_guard(config.guard, state)  # never save after steps the guard would stop on
            ckpt.save(step, state, train_iter, force=step == config.total_steps)
        meter.pause(step)
        ckpt.wait()

        final = run_eval(step) | {"steps": step}
        if meter.train_steps:  # a resume at total_steps trained nothing: no throughput to report
            final["examples_per_sec"] = meter.mean_examples_per_sec
        say(metrics_lib.format_line("final:", final), flush=True)
        return final


def _check_guard(guard_cfg, state) -> None:
    """RunError when config.guard says to stop on the non-finite steps counted in state["guard"]."""
    guard = {k: int(v) for k, v in jax.device_get(state["guard"]).items()}
    if not guard["skipped"]:
        return
    what = (f"step {guard['last_bad_step']} had a non-finite loss or gradient norm; its update was not applied "
            f"and no checkpoint holds one")
    if guard_cfg.non_finite == "stop":
        raise RunError(f"{what} (config.guard.non_finite='stop'). Lower config.optim.lr, check the data, or "
                       f"skip such steps with --config.guard.non_finite=skip")
    if guard["consecutive"] >= guard_cfg.max_consecutive_skips:
        raise RunError(f"{guard['consecutive']} steps in a row up to {what} (config.guard.max_consecutive_skips="
                       f"{guard_cfg.max_consecutive_skips}): the run diverged. Lower config.optim.lr or check the data")


def _preempt_mid_save(ckpt, step, state, train_iter):
    """Test hook (config.debug.sigkill_after_step): the worst moment for a preemption.

    Earlier checkpoints are committed, a save of `step` is in flight, and the
    process dies by SIGKILL: no cleanup, no finalisation, as on a pod.
    """
    ckpt.wait()
    ckpt.save(step, state, train_iter, force=True)
    print(f"debug: SIGKILL after step {step} with its checkpoint save in flight", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

