"""Standalone evaluation of a run's checkpoint: every evaluator of the config, one JSON.

    python -m mmjax.evaluate --config configs/clip_digits.py --workdir workdirs/clip_digits [--step N]

Restores the latest (or the named) committed checkpoint of `--workdir` into the
train state's layout (mmjax.step), runs the evaluators of `config.evals`
(mmjax.evals.runner: features are extracted once and shared), prints the
metrics and writes them to `<workdir>/eval/step_<N>.json`. `--config.a.b=v`
overrides work as in training (e.g. `--config.evals.retrieval.ks="(1, 20)"`).
"""
import json
import os
import sys

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from mmjax import checkpoint as ckpt_lib
from mmjax import parallel
from mmjax import step as step_lib
from mmjax.config_utils import apply_overrides, split_overrides
from mmjax.evals.runner import EvalRunner
from mmjax.metrics import format_line

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file (and variant).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
flags.mark_flags_as_required(["config", "workdir"])
_OVERRIDES: list[str] = []


def restore_for_eval(config, workdir: str, step: int | None = None, devices=None):
    """(evaluation runner, params, step) of `workdir`'s latest (or `step`'s) committed checkpoint."""
    mesh = parallel.make_mesh(config.mesh, devices)
    setup = step_lib.build(config)  # the optimiser too: its state is part of the saved layout
    runner = EvalRunner.from_config(config, setup.model, setup.tokenizer, mesh)
    layout = step_lib.state_layout(setup, mesh, jax.random.key(0))  # shapes only: the init never runs
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=1, keep=1 << 30)
    steps = ckpt.all_steps()
    if not steps:
        raise FileNotFoundError(f"no committed checkpoint in {workdir}/checkpoints")
    step = max(steps) if step is None else step
    if step not in steps:
        raise ValueError(f"no checkpoint for step {step} in {workdir}; available: {sorted(steps)}")
    state = ckpt.restore_state(step, ckpt_lib.abstract_like(layout.abstract, layout.shardings))
    ckpt.close()
    return runner, state["params"], step


def evaluate_checkpoint(config, workdir: str, step: int | None = None, devices=None) -> dict:
    runner, params, step = restore_for_eval(config, workdir, step, devices)
    results = {"step": step, **runner(params)}
    if jax.process_index() == 0:
        os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
        with open(os.path.join(workdir, "eval", f"step_{step}.json"), "w") as f:
            json.dump(results, f, indent=1)
    return results


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)
    config = _CONFIG.value
    try:
        apply_overrides(config, _OVERRIDES)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(format_line("eval:", evaluate_checkpoint(config, _WORKDIR.value, _STEP.value)), flush=True)


if __name__ == "__main__":
    sys.argv, _OVERRIDES[:] = split_overrides(sys.argv)
    app.run(main)
