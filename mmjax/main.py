"""mmjax command line: `python -m mmjax.main --config <file>[:variant] --workdir <dir>`.

Override any config field with `--config.a.b=value`. Running again with the
same workdir resumes from its latest checkpoint.

Flags and config values are checked before any work (mmjax.validate): nothing
compiles and no workdir is made for a run that cannot start. A run that fails
says why in one line on stderr; the traceback goes to <workdir>/logs/error.log,
or to the terminal with --debug. Exit codes (mmjax.errors):
  0    finished
  1    the run failed (EXIT_ERROR)
  2    bad flags or config values, one `error: ...` line each (EXIT_CONFIG)
  130  interrupted (SIGINT), 143 preempted (SIGTERM): checkpoint saved; rerun to resume
"""
import datetime
import os
import socket
import sys
import traceback

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from mmjax import validate
from mmjax.config_utils import apply_overrides, split_overrides
from mmjax.errors import EXIT_CONFIG, EXIT_ERROR, ConfigError, Preempted, RunError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, optionally with ':variant'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics; reused to resume.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 for multi-host runs (else JAX's auto-detection).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
_DEBUG = flags.DEFINE_bool("debug", False, "Print full tracebacks instead of one-line errors.")
flags.mark_flags_as_required(["config", "workdir"])

# `--config.a.b=v` flags, applied by mmjax.config_utils so that a bad key or
# value fails at start-up with the valid keys listed.
_OVERRIDES: list[str] = []


def _fail(code: int, lines: list[str]):
    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    sys.exit(code)


def _log_error(workdir: str) -> str:
    """Appends the current exception's traceback to <workdir>/logs/error.log; returns that path."""
    path = os.path.join(workdir, "logs", "error.log")
    command = " ".join(sys.argv + [f"--config.{o}" for o in _OVERRIDES])
    header = (f"=== {datetime.datetime.now().astimezone().isoformat(timespec='seconds')} "
              f"{socket.gethostname()} pid {os.getpid()}: {command}\n")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write(header + traceback.format_exc() + "\n")  # one write: processes sharing a workdir append whole entries
    return path


def _train(config, workdir: str) -> None:
    if _COORDINATOR.value or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        import jax
        # Cross-process collectives on the CPU backend (tests, laptops); GPU/TPU ignore it.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    from mmjax import train  # after distributed init: touching devices first would pin one process
    train.train_and_evaluate(config, workdir)


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # keep JAX's backend probing off stdout
    config, workdir = _CONFIG.value, _WORKDIR.value
    try:
        apply_overrides(config, _OVERRIDES)
        validate.check(config, workdir)  # before any device is touched or the workdir is made
    except ConfigError as e:
        _fail(EXIT_CONFIG, e.problems)
    except ValueError as e:
        _fail(EXIT_CONFIG, [str(e)])
    existed = os.path.exists(workdir)
    try:
        _train(config, workdir)
    except Exception as e:
        if _DEBUG.value:
            raise
        if isinstance(e, Preempted):
            print(e, file=sys.stderr)
            sys.exit(e.exit_code)
        if isinstance(e, (ConfigError, RunError)):
            _fail(EXIT_CONFIG if isinstance(e, ConfigError) else EXIT_ERROR, str(e).splitlines())
        try:
            where = f"full traceback: {_log_error(workdir)}; rerun with --debug to print it"
        except OSError as log_error:
            where = f"could not write the traceback ({log_error}); rerun with --debug to print it"
        _fail(EXIT_ERROR, [f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]} ({where})"])
    finally:
        if not existed and os.path.isdir(workdir) and not os.listdir(workdir):
            os.rmdir(workdir)  # a run that failed at start-up leaves no empty workdir behind


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with each problem as one `error:` line (rc 2), a bad --config included."""
    try:
        argv = flags.FLAGS(argv)
    except flags.Error as e:
        # config_flags wraps a failing get_config() in a message holding its traceback: report the
        # error itself (the innermost exception Python would show), once.
        cause = e
        while (nxt := cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)) is not None:
            cause = nxt
        _fail(EXIT_CONFIG, [str(e) if cause is e else f"--config: {cause}"])
    path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":", 1)[0]  # less the variant
    if not os.path.isfile(path):  # config_flags defers this error to the config's first use
        _fail(EXIT_CONFIG, [f"--config: no such file {path!r}"])
    return argv


def run():
    # config_flags also scans sys.argv for `--config.*`, so remove them there too.
    sys.argv, _OVERRIDES[:] = split_overrides(sys.argv)
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
