"""Orbax checkpoints holding everything a run needs to continue exactly.

One checkpoint step = {"state": params + optimizer state + step counter,
"data": the Grain iterator state of every process}. Orbax writes each step to
a temporary directory and renames it only once every item is on disk, so a
process killed mid-save leaves a temporary directory that `latest_step` never
returns (and that is removed on the next start).
"""
from __future__ import annotations

import logging
import os

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, directory: str, *, every_steps: int, keep: int, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every_steps,
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # drop what a killed save left behind
            create=True,
        )
        # Orbax's OCDBT array writer rejects relative paths (`--workdir workdirs/x`), so resolve them here.
        self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, data_iterator, *, force: bool = False) -> bool:
        """Saves if `step` is on the interval (or force); returns whether a save started."""
        return self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    data=grain.checkpoint.CheckpointSave(data_iterator)),
            force=force,
        )

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

    def restore_state(self, step: int, abstract_state):
        """Only the model/optimiser state of `step` (no data iterator), e.g. for evaluation."""
        return self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))["state"]

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def wait(self) -> None:
        """Blocks until any in-flight async save is committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


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
