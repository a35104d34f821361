"""mmjax command line: `python -m mmjax.main --config <file>[:variant] --workdir <dir>`.

Override any config field with `--config.a.b=value`. Running again with the
same workdir resumes from its latest checkpoint.
"""
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from mmjax.config_utils import apply_overrides, split_overrides

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, optionally with ':variant'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics; reused to resume.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 for multi-host runs (else JAX's auto-detection).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
flags.mark_flags_as_required(["config", "workdir"])

# `--config.a.b=v` flags, applied by mmjax.config_utils so that a bad key or
# value fails at start-up with the valid keys listed.
_OVERRIDES: list[str] = []


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # keep JAX's backend probing off stdout
    config = _CONFIG.value
    try:
        apply_overrides(config, _OVERRIDES)
    except ValueError as e:
        sys.exit(f"error: {e}")
    if _COORDINATOR.value or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        import jax
        # Cross-process collectives on the CPU backend (tests, laptops); GPU/TPU ignore it.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    from mmjax import train  # after distributed init: touching devices first would pin one process
    train.train_and_evaluate(config, _WORKDIR.value)


def run():
    # config_flags also scans sys.argv for `--config.*`, so remove them there too.
    sys.argv, _OVERRIDES[:] = split_overrides(sys.argv)
    app.run(main)


if __name__ == "__main__":
    run()
