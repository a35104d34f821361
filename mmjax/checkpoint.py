"""Orbax checkpoints holding everything a run needs to continue exactly.

One checkpoint step = {"state": params + optimizer state + step counter,
"data": the Grain iterator state of every process}. Orbax writes each step to
a temporary directory and renames it only once every item is on disk, so a
process killed mid-save leaves a temporary directory that `latest_step` never
returns (and that is removed on the next start).

A committed step can still be damaged later (a truncated or overwritten file, a
deleted manifest). `Checkpointer.restore_latest` then sets that step aside (moved
to <workdir>/checkpoints_set_aside/, never deleted) and falls back to the
previous one; retention never deletes the step this run restored from. A failed
asynchronous save surfaces at the next step (`check_for_errors`), not at the
next save, as one line; the checkpoints committed before it stay as they were.
"""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import sys
import time
import warnings

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as preservation

from mmjax.errors import ConfigError, RunError

log = logging.getLogger(__name__)

SET_ASIDE = "checkpoints_set_aside"  # beside checkpoints/: damaged steps, kept for inspection


class _KeepKnownGood(preservation.PreservationPolicy):
    """Preserves the step this run restored from (the one step known to restore) whatever max_to_keep says."""

    def __init__(self):
        self.step: int | None = None

    def should_preserve(self, checkpoints, *, context):
        return [c.step == self.step for c in checkpoints]


class Checkpointer:
    def __init__(self, directory: str, *, every_steps: int, keep: int, async_save: bool = True):
        # Orbax's OCDBT array writer rejects relative paths (`--workdir workdirs/x`), so resolve them here.
        self.directory = os.path.abspath(directory)
        self._known_good = _KeepKnownGood()
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every_steps,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # drop what a killed save left behind
            create=True,
            preservation_policy=preservation.AnyPreservationPolicy([preservation.LatestN(keep), self._known_good]),
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))
        self._saving: int | None = None  # the step of the last save started (for error messages)
        _drop_orbax_error_logs()
        _silence_stray_read_errors()  # a failed write leaves the same stray callbacks as a failed read

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, data_iterator, *, force: bool = False) -> bool:
        """Saves if `step` is on the interval (or force); returns whether a save started. A save
        that fails (now, or the previous asynchronous one) raises RunError naming its step."""
        self.check_for_errors()
        if force and step in self._manager.all_steps():
            return False  # already committed (e.g. a preemption right after a periodic save)
        if self._saving is not None and (force or self._manager.should_save(step)):
            # Orbax waits for the previous save before starting one: wait here, so that its
            # failure is reported under its own step.
            self.wait()
        with self._failure_as_run_error(step):
            started = self._manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        data=grain.checkpoint.CheckpointSave(data_iterator)),
                force=force,
            )
        if started:
            self._saving = step
        return started

    def check_for_errors(self) -> None:
        """Raises RunError if the last asynchronous save failed (cheap; the trainer calls it every step)."""
        with self._failure_as_run_error(self._saving):
            self._manager.check_for_errors()
            # Orbax's finalize thread takes a failed commit's error for itself, where check_for_errors
            # does not look; wait_until_finished re-raises it, and returns at once once no save runs.
            if self._saving is not None and not self._manager.is_saving_in_progress():
                self._manager.wait_until_finished()
                self._saving = None

    @contextlib.contextmanager
    def _failure_as_run_error(self, step):
        try:
            yield
        except Exception as e:
            self._saving = None
            committed = [s for s in self._manager.all_steps() if s != step]
            kept = f"step {max(committed)} is the last committed checkpoint" if committed else "no checkpoint is committed"
            raise RunError(f"checkpoint save of step {step} failed ({one_line(e)}); {kept} in {self.directory}") from e

    def restore(self, step: int, abstract_state, data_iterator):
        """Restores `step` into arrays laid out like `abstract_state` (ShapeDtypeStructs with
        shardings) and sets `data_iterator` to its saved position; returns the state."""
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                    data=grain.checkpoint.CheckpointRestore(data_iterator)),
        )
        log.info("restored checkpoint step %d", step)
        return restored["state"]

    def restore_latest(self, abstract_state, data_iterator, say=print):
        """(step, state) of the newest committed step that restores, or None if there is none.

        A step that fails to restore, or restores non-finite params, is reported in one line,
        moved to checkpoints_set_aside/ and the previous step is tried. If steps existed but
        none restores, RunError says where they went.
        """
        set_aside = []
        while (step := self.latest_step()) is not None:
            problem = _missing_or_garbled(os.path.join(self.directory, str(step)))
            if problem is None:
                try:
                    with _quiet_orbax():
                        state = self.restore(step, abstract_state, data_iterator)
                    if not _all_finite(state["params"]):
                        raise ValueError("its params hold NaN or Inf")
                except (ConfigError, RunError):
                    raise  # the run's own refusal (e.g. a data position this batch size cannot take)
                except Exception as e:  # any damage: missing or truncated files, garbled JSON, wrong tree
                    problem = one_line(e)
            problem = _agree(problem)  # every process falls back together
            if problem is None:
                self._known_good.step = step
                return step, state
            where = self._set_aside(step)
            set_aside.append(where)
            say(f"checkpoint step {step} does not restore ({problem}); moved to {where}, trying the previous one",
                flush=True)
        if set_aside:
            raise RunError(f"no committed checkpoint restores (set aside: {', '.join(set_aside)}); inspect them, "
                           f"move one back into {self.directory} or start again with a new --workdir")
        return None

    def _set_aside(self, step: int) -> str:
        """Moves step `step` to <workdir>/checkpoints_set_aside/<step>[-<time>] (process 0) and re-lists."""
        where = os.path.join(os.path.dirname(self.directory), SET_ASIDE, str(step))
        if os.path.exists(where):
            where += f"-{time.strftime('%Y%m%dT%H%M%S')}"
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(where), exist_ok=True)
            shutil.move(os.path.join(self.directory, str(step)), where)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"mmjax: checkpoint {step} set aside")
        self._manager.reload()
        return where

    def restore_state(self, step: int, abstract_state):
        """Only the model/optimiser state of `step` (no data iterator), e.g. for evaluation."""
        return self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))["state"]

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def wait(self) -> None:
        """Blocks until any in-flight async save is committed; RunError if it failed."""
        with self._failure_as_run_error(self._saving):
            self._manager.wait_until_finished()
        self._saving = None

    def due(self, step: int) -> bool:
        """Whether `save(step)` would save (the interval)."""
        return self._manager.should_save(step)

    def close(self) -> None:
        """Releases the manager. Errors of the last save surfaced at `wait()`; one here would only
        hide the error that is already on its way out, so it is logged instead."""
        try:
            self._manager.close()
        except Exception as e:  # noqa: BLE001
            log.warning("closing the checkpoint manager: %s", one_line(e))


def one_line(e: BaseException, limit: int = 240) -> str:
    """`Type: first line of the message`, at most `limit` characters: the cause in a one-line report."""
    text = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    text = text.split(" See full TensorStore details")[0]  # a repr of the whole store spec follows
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    if len(text) <= limit:
        return text
    # Both ends: the kind of failure comes first, the OS's reason ("No space left on device") last.
    head = limit // 2 - 3
    return f"{text[:head]} ... {text[-(limit - head - 5):]}"


@jax.jit
def _finite(tree):
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree)
                              if jnp.issubdtype(x.dtype, jnp.inexact)] or [jnp.bool_(True)]))


def _all_finite(tree) -> bool:
    return bool(jax.device_get(_finite(tree)))


def _agree(problem: str | None) -> str | None:
    """With several processes: a restore counts only if it worked on all of them (the first
    process's problem is reported; a problem elsewhere is named by process)."""
    if jax.process_count() == 1:
        return problem
    from jax.experimental import multihost_utils
    failed = multihost_utils.process_allgather(np.array(problem is not None))
    if not failed.any():
        return None
    return problem or f"it failed on process(es) {np.flatnonzero(failed).tolist()}"


def _missing_or_garbled(step_dir: str) -> str | None:
    """A damaged step's missing or unreadable metadata, found before Orbax reads it (a failed
    Orbax read leaves TensorStore callbacks running into its closed event loop, which print a
    traceback each); None when the files are there. Array data is checked by the restore itself."""
    state = os.path.join(step_dir, "state")
    required = [os.path.join(state, "_METADATA")]
    writers = sorted(glob.glob(os.path.join(state, "ocdbt.process_*")))
    if writers:  # the OCDBT layout: one manifest for the step and one per writing process
        required += [os.path.join(state, "manifest.ocdbt")] + [os.path.join(w, "manifest.ocdbt") for w in writers]
    for path in required:
        if not os.path.isfile(path):
            return f"{os.path.relpath(path, step_dir)} is missing"
    for path in [required[0], *glob.glob(os.path.join(step_dir, "data", "*.json"))]:
        try:
            with open(path) as f:
                json.load(f)
        except (OSError, ValueError) as e:
            return f"{os.path.relpath(path, step_dir)}: {one_line(e)}"
    return None


_ASYNC_NOISE = ("Event loop is closed", "Encountered error while reading array index")


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax and TensorStore log a failed read with a traceback at ERROR level; the caller reports
    the failure in one line instead, so those logs are silenced during the attempt. (The stray
    tracebacks of reads that finish after the restore gave up are filtered for the whole run by
    `_silence_stray_read_errors`, installed with the Checkpointer.)"""
    loggers = [logging.getLogger(name) for name in ("absl", "orbax", "orbax.checkpoint", "jax")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _DropOrbaxErrorLogs(logging.Filter):
    """Orbax's worker threads log a failed write or read at ERROR level with its traceback (and
    asyncio logs the orbax task that held it) before the failure reaches the trainer, which
    reports it in one line (Checkpointer.check_for_errors / wait / restore_latest)."""

    def filter(self, record):
        from_orbax = f"{os.sep}orbax{os.sep}" in record.pathname or "orbax" in record.getMessage()
        return not (record.levelno >= logging.ERROR and from_orbax)


def _drop_orbax_error_logs() -> None:
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropOrbaxErrorLogs) for f in logger.filters):
            logger.addFilter(_DropOrbaxErrorLogs())


def _silence_stray_read_errors() -> None:
    """Drops, for the rest of the process, only the tracebacks of reads and writes still in flight
    when Orbax gave up (into its closed event loop, or never-awaited coroutines); the error
    itself reaches the trainer and is reported in one line. Anything else prints as before."""
    if getattr(sys.excepthook, "mmjax_filter", False):
        return
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def is_noise(exc) -> bool:
        return exc is not None and any(text in str(exc) for text in _ASYNC_NOISE)

    def filtered_excepthook(kind, exc, tb):
        if not is_noise(exc):
            excepthook(kind, exc, tb)

    def filtered_unraisablehook(info):
        if not is_noise(info.exc_value):
            unraisablehook(info)

    filtered_excepthook.mmjax_filter = True
    warnings.filterwarnings("ignore", message="coroutine '_read_array_index_and_device_put' was never awaited")
    sys.excepthook, sys.unraisablehook = filtered_excepthook, filtered_unraisablehook


def abstract_like(state, shardings):
    """ShapeDtypeStructs carrying the target shardings, for restore."""
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def restore_params_from_run(workdir: str, wanted, where: str) -> dict:
    """Top-level param subtrees `wanted` ({name: tree of arrays}) read from another run's latest checkpoint.

    `workdir` is that run's workdir (or its checkpoints/ directory). Only the
    named subtrees are read (an Orbax partial restore: neither the rest of
    the model nor the optimiser state), with the shardings, shapes and dtypes
    of `wanted`. Params the run lacks or holds in another shape fail, listed,
    before anything is read; `where` (the config field) starts each message.
    """
    directory = os.path.abspath(workdir)
    if os.path.isdir(os.path.join(directory, "checkpoints")):
        directory = os.path.join(directory, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{where}: no directory {directory}")
    manager = ocp.CheckpointManager(directory, item_handlers={"state": ocp.PyTreeCheckpointHandler()},
                                    options=ocp.CheckpointManagerOptions(read_only=True, create=False))
    try:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"{where}: no committed checkpoint in {directory}")
        stored = {jax.tree_util.keystr(path): leaf.shape for path, leaf in
                  jax.tree_util.tree_flatten_with_path(manager.item_metadata(step)["state"]["params"])[0]}
        shapes = {jax.tree_util.keystr(path): x.shape for path, x in jax.tree_util.tree_flatten_with_path(wanted)[0]}
        problems = [f"{k} {'missing' if k not in stored else f'has shape {stored[k]}'}, want {shape}"
                    for k, shape in shapes.items() if stored.get(k) != shape]
        if problems:
            raise ValueError(f"{where} (step {step}) does not hold params of this architecture: "
                             f"{problems[:4]}{' ...' if len(problems) > 4 else ''}")
        target = {"params": jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), dict(wanted))}
        args = ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                      partial_restore=True)
        return manager.restore(step, args=ocp.args.Composite(state=args))["state"]["params"]
    finally:
        manager.close()


def warm_start(init_cfg, params) -> dict:
    """`params` with the subtrees `init_cfg.params` (top-level names, e.g. "image_encoder") taken from the run
    in `init_cfg.workdir` (LiT-style locked towers, fine-tuning); unchanged if no workdir is set.

    Called once, on a fresh start: a resumed run has them in its own checkpoint.
    """
    if not init_cfg or not init_cfg.get("workdir"):
        return params
    names, where = tuple(init_cfg.get("params", ())), f"init_from.workdir={init_cfg['workdir']!r}"
    unknown = [n for n in names if n not in params]
    if not names or unknown:
        raise ValueError(f"init_from.params names {list(unknown or names)}: it must list top-level params of "
                         f"this model, one or more of {sorted(params)}")
    return {**params, **restore_params_from_run(init_cfg["workdir"], {n: params[n] for n in names}, where)}


def restore_reference(model_cfg, params) -> dict:
    """`params` with the CWCL reference tower taken from a finished run, if `model.reference.init_from` names one.

    init_from is that run's workdir (or its checkpoints/ directory); its latest
    committed checkpoint's `<m>_encoder` and `<m>_proj` params are restored
    alone (`restore_params_from_run`): the towers must have the same
    architecture. Called once, on a fresh start: a resumed run gets the
    reference back from its own checkpoint.
    """
    reference = model_cfg.get("reference") or {}
    if not reference.get("modality") or not reference.get("init_from"):
        return params
    # The reference subtree (mmjax.models.towers.ReferenceTower) mirrors the run's top-level
    # `<m>_encoder`, `<m>_proj` params.
    restored = restore_params_from_run(
        reference["init_from"], params["reference"], f"model.reference.init_from={reference['init_from']!r}")
    return {**params, "reference": restored}
