"""What every experiment script shares: run a config, aggregate seeds, write the table and plot.

Each run is a fresh `python -m mmjax.main` process (the README's command), so an
experiment measures exactly what users run; its metrics come back from the
run's metrics.jsonl. A finished run (its workdir holds the final eval) is not
run again, so an interrupted sweep resumes where it stopped; `--fresh` reruns.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mmjax.config_utils import apply_overrides
from mmjax.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "experiments", "results")


def parse_args(description: str, default_seeds: int = 2) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--workdir", default=os.path.join(REPO, "workdirs", "experiments"),
                   help="where the runs' checkpoints and metrics go")
    p.add_argument("--seeds", type=int, default=default_seeds, help="seeds per setting (>= 2 for a spread)")
    p.add_argument("--fresh", action="store_true", help="rerun settings whose workdir already finished")
    p.add_argument("--smoke", action="store_true",
                   help="end-to-end check in minutes: one seed, a few steps; results go to <workdir>/smoke_results")
    return p.parse_args()


def results_dir(args: argparse.Namespace) -> str:
    """Where a script writes its table and plot: experiments/results, or beside the runs for --smoke."""
    return os.path.join(args.workdir, "smoke_results") if getattr(args, "smoke", False) else RESULTS


def run_config(config: str, workdir: str, overrides: Mapping[str, Any] | None = None, fresh: bool = False) -> dict:
    """Trains `config` (path[:variant]) with `--config.k=v` overrides; returns the final eval metrics.

    The returned dict holds the last `eval/*` values (prefix removed), the last
    `train/*` values, `wall_s` of this call (0 if the run was already done) and
    `run_s`, the run's own wall time as recorded when it finished (None if unknown),
    so a report regenerated from finished runs can still state what they cost.
    """
    if fresh and os.path.exists(workdir):
        shutil.rmtree(workdir)
    start, ran = time.time(), False
    if not _finished(workdir):
        cmd = [sys.executable, "-m", "mmjax.main", f"--config={config}", f"--workdir={workdir}"]
        cmd += [f"--config.{k}={_flag_value(v)}" for k, v in (overrides or {}).items()]
        print("$", " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=_run_env())
        if proc.returncode:
            raise RuntimeError(f"run failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}\n"
                               f"{proc.stderr[-3000:]}")
        mark_finished(workdir, time.time() - start)
        ran = True
    result = {"wall_s": time.time() - start if ran else 0.0, "run_s": recorded_wall_s(workdir)}
    for row in read_metrics(workdir):
        for k, v in row.items():
            if k.startswith("eval/"):
                result[k[5:]] = v
            elif k.startswith("train/"):
                result[k] = v
    return result


def final_eval_only(steps: int) -> dict:
    """Overrides for a short sweep run: one evaluation and one checkpoint, at the end, and
    eight log lines; what a sweep compares is the final metrics."""
    return {"total_steps": steps, "eval.every_steps": 0, "checkpoint.every_steps": steps,
            "log_every_steps": max(1, steps // 8), "tensorboard": False}


def _run_env() -> dict:
    """The runs' environment: XLA's persistent compilation cache shared by a sweep's runs.

    A short run spends most of its time compiling (about 20 of 30 s for the tiny
    CLIP config on 2 cores); runs that differ only in seed or in a data-side knob
    compile the same programs, which the cache turns into a lookup. The cached
    executable is the one that would be compiled, so results are unchanged. An
    explicit JAX_COMPILATION_CACHE_DIR in the caller's environment wins.
    """
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(REPO, "workdirs", "jax_compilation_cache"))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")  # default 1 s skips the small programs
    return env


def load_config(config: str, overrides: Mapping[str, Any] | None = None):
    """The ConfigDict that `run_config(config, ..., overrides)` trains, built in this process.

    For evaluations beyond the trainer's suite, which rebuild a finished run's
    model and restore its checkpoint: the overrides go through the same flag
    strings and parser as on the command line, so the two cannot drift apart.
    """
    path, _, variant = config.partition(":")
    spec = importlib.util.spec_from_file_location("experiment_config", os.path.join(REPO, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(variant or None)
    apply_overrides(c, [f"{k}={_flag_value(v)}" for k, v in (overrides or {}).items()])
    return c


def _flag_value(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return "(" + ",".join(repr(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return str(v)


def _finished(workdir: str) -> bool:
    # Written by run_config once the process exited 0 (its final eval is in metrics.jsonl).
    return os.path.exists(os.path.join(workdir, "FINISHED"))


def mark_finished(workdir: str, wall_s: float | None = None) -> None:
    with open(os.path.join(workdir, "FINISHED"), "w") as f:
        f.write(time.strftime("%Y-%m-%d %H:%M:%S\n") + (f"wall_s {wall_s:.1f}\n" if wall_s is not None else ""))


def recorded_wall_s(workdir: str) -> float | None:
    """The wall time `mark_finished` recorded for a finished run, or None."""
    path = os.path.join(workdir, "FINISHED")
    lines = open(path).read().split("\n") if os.path.exists(path) else []
    return next((float(line.split()[1]) for line in lines if line.startswith("wall_s ")), None)


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half the range (max - min) / 2 over seeds: with 2-3 seeds, the honest spread."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float((v.max() - v.min()) / 2)


def fmt(values: Sequence[float], digits: int = 3) -> str:
    mean, spread = mean_spread(values)
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(name: str, title: str, sections: Sequence[str], directory: str = RESULTS) -> str:
    """<directory>/<name>.md (default experiments/results): title, then the given markdown sections."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.md")
    with open(path, "w") as f:
        f.write(f"# {title}\n\n" + "\n\n".join(s.strip() for s in sections) + "\n")
    print(f"wrote {path}")
    return path


def save_figure(fig, name: str, directory: str = RESULTS) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.png")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"wrote {path}")
    return path


def pyplot():
    """matplotlib.pyplot with a file-only backend (experiments run headless)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def machine_line(wall_s: float) -> str:
    return (f"Run time: {wall_s / 60:.1f} min on this machine ({os.cpu_count()} CPU cores, no accelerator), "
            f"{time.strftime('%Y-%m-%d')}.")


def load_line() -> str:
    """The 15-min load average now: wall times measured beside other jobs overstate a quiet machine's."""
    return f"15-min load average when this was written: {os.getloadavg()[2]:.1f} on {os.cpu_count()} cores."
