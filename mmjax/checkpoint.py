"""Orbax checkpoints holding everything a run needs to continue exactly.

One checkpoint step = {"state": params + optimizer state + step counter,
"data": the Grain iterator state of every process}. Orbax writes each step to
a temporary directory and renames it only once every item is on disk, so a
process killed mid-save leaves a temporary directory that `latest_step` never
returns (and that is removed on the next start).
"""
from __future__ import annotations

import logging

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
        self._manager = ocp.CheckpointManager(directory, options=options, item_names=("state", "data"))

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
