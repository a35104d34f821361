"""What a run is, written into its workdir, and the check that a resume continues the same run.

Every start appends one line to <workdir>/run.jsonl: the attempt number, the step it starts
from, the resolved config, package versions, the git commit of the code (if it is a checkout),
the mesh and the devices. A resume compares its config with the last attempt's: a field that
changes what the run computes (batch size, seed, model shapes, objective, data, optimiser)
must be equal, or the run refuses, naming each differing field. These may change:
"""
from __future__ import annotations

import datetime
import fnmatch
import json
import os
import platform
import subprocess
from importlib import metadata

import jax

from mmjax.errors import ConfigError

# Fields a resumed run may change (glob patterns on dotted paths). Schedule length, cadences,
# evaluation, logging and the layout on devices (mesh, sharding, micro-batching, input workers)
# change when or where the same computation happens, not what it computes; the warm-start fields
# are read on a fresh start only. batch_size may change with resume.allow_batch_size_change,
# which converts the data position exactly (in examples; mmjax.data.pipeline).
MAY_CHANGE = (
    "total_steps", "log_every_steps", "tensorboard",
    "eval.*", "evals.*", "checkpoint.*", "debug.*", "profile.*", "wandb.*", "resume.*", "guard.*",
    "mesh.*", "sharding.*", "accumulation.steps",
    "data.data_dir", "data.num_workers", "data.num_threads", "data.prefetch_buffer_size",
    "data.eval_cache_examples", "data.eval_split",
    "init_from.*", "model.reference.init_from",
)
__doc__ += "\n".join(f"    {p}" for p in MAY_CHANGE) + "\n"

FILE = "run.jsonl"
PACKAGES = ("mmjax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "ml-collections")


def flatten(config) -> dict:
    """{"a.b": value} of a ConfigDict (or dict), with tuples as lists (as they are stored)."""
    out = {}

    def walk(node, prefix):
        for key, value in (node.items() if hasattr(node, "items") else ()):
            path = f"{prefix}{key}"
            if hasattr(value, "items"):
                walk(value, path + ".")
            else:
                out[path] = json.loads(json.dumps(value, default=str))
    walk(config, "")
    return out


def attempts(workdir: str) -> list[dict]:
    """The complete lines of <workdir>/run.jsonl, oldest first."""
    path = os.path.join(workdir, FILE)
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a killed process's last line
                continue
    return rows


def check_resume(config, workdir: str, say=print) -> None:
    """Raises ConfigError naming every field that differs from the workdir's last attempt and may
    not change (batch_size allowed with config.resume.allow_batch_size_change)."""
    history = attempts(workdir)
    if not history:
        say(f"warning: {workdir} has checkpoints but no {FILE} (a run from before it existed): "
            f"resuming without comparing configs", flush=True)
        return
    before, now = history[-1]["config"], flatten(config)
    allowed = MAY_CHANGE + (("batch_size",) if config.resume.allow_batch_size_change else ())
    problems = [f"config.{key}: {before[key]!r} in the run in {workdir}, {now[key]!r} now"
                for key in sorted(set(before) & set(now))
                if before[key] != now[key] and not any(fnmatch.fnmatchcase(key, p) for p in allowed)]
    if problems:
        hint = ("; batch_size may change with --config.resume.allow_batch_size_change=True"
                if any(p.startswith("config.batch_size:") for p in problems) else "")
        raise ConfigError(problems + [
            f"resume refused: these fields change what the run computes. Use the values above, or a new "
            f"--workdir to start another run{hint}"])
    unmatched = sorted(set(before) ^ set(now))
    if unmatched:  # fields another version of the code did not have: they take their defaults
        say(f"warning: config fields only in one of the run's versions: {unmatched}", flush=True)


def record(config, workdir: str, *, start_step: int, mesh) -> dict:
    """Appends this attempt to <workdir>/run.jsonl (process 0) and returns it."""
    entry = {
        "attempt": len(attempts(workdir)) + 1,
        "start_step": start_step,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "git": _git_commit(),
        "versions": {p: _version(p) for p in PACKAGES},
        "mesh": dict(mesh.shape),
        "devices": {"platform": jax.default_backend(), "count": jax.device_count(),
                    "process_count": jax.process_count(), "kinds": sorted({d.device_kind for d in jax.devices()})},
        "config": flatten(config),
    }
    if jax.process_index() == 0:
        with open(os.path.join(workdir, FILE), "a") as f:
            f.write(json.dumps(entry) + "\n")
    return entry


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    """The commit of the mmjax checkout in use, "+dirty" with uncommitted changes; None outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10, check=True).stdout
        commit = git("rev-parse", "HEAD").strip()
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no").strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
