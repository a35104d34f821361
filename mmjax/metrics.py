"""Metric sinks: JSON lines + TensorBoard in the workdir, a readable line on stdout."""
from __future__ import annotations

import json
import os
import time

import numpy as np


def _scalar(v):
    v = np.asarray(v)
    return v.item() if v.size == 1 else v.tolist()


class MetricLogger:
    """Writes `{"step": s, **metrics}` lines to <workdir>/metrics.jsonl.

    Only process 0 writes. Each line is flushed as written, so a killed run
    leaves at worst one truncated last line (readers skip it).
    """

    def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self._file = open(os.path.join(workdir, "metrics.jsonl"), "a") if enabled else None
        self._tb = None
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter  # optional sink; no TensorFlow needed
            self._tb = SummaryWriter(os.path.join(workdir, "tb"))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        metrics = {k: _scalar(v) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": int(step), **metrics}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._file:
            self._file.close()
        if self._tb:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """All complete lines of <workdir>/metrics.jsonl, in order."""
    rows = []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # the last line of a killed run
                continue
    return rows


class Throughput:
    """Steps/s, examples/s and ETA over training time only (evals and waits excluded), and how much
    of each step the trainer spent waiting for its input batch (`data_wait`): a ratio near 1 says
    the input pipeline, not the accelerator, sets the pace (raise data.num_workers)."""

    def __init__(self, batch_size: int, total_steps: int):
        self.batch_size, self.total_steps = batch_size, total_steps
        self._t, self._step = None, None
        self.train_seconds, self.train_steps = 0.0, 0
        self._wait = 0.0  # seconds spent in next(data iterator) since the last report

    def data_wait(self, seconds: float) -> None:
        """Adds the time one `next(iterator)` blocked the training loop."""
        self._wait += seconds

    def start(self, step: int) -> None:
        self._t, self._step, self._wait = time.perf_counter(), step, 0.0

    def _accumulate(self, step: int) -> tuple[float, int]:
        now = time.perf_counter()
        dt, ds = now - self._t, step - self._step
        self.train_seconds += dt
        self.train_steps += ds
        self._t, self._step = now, step
        return dt, ds

    def report(self, step: int) -> dict:
        dt, ds = self._accumulate(step)
        sps = ds / dt if dt > 0 else 0.0
        out = {"steps_per_sec": sps, "examples_per_sec": sps * self.batch_size}
        if ds:
            # Wall time per step beside the part of it spent waiting for data.
            out |= {"step_ms": 1e3 * dt / ds, "data_wait_ms": 1e3 * self._wait / ds,
                    "data_wait_frac": self._wait / dt if dt > 0 else 0.0}
        self._wait = 0.0
        if sps:  # nothing to extrapolate from right after a (re)start
            out["eta_min"] = (self.total_steps - step) / sps / 60
        return out

    def pause(self, step: int) -> None:
        """Call before work that is not training (eval, checkpoint waits); resume with start()."""
        self._accumulate(step)

    @property
    def mean_examples_per_sec(self) -> float:
        return self.train_steps * self.batch_size / self.train_seconds if self.train_seconds else 0.0


def format_line(prefix: str, metrics: dict) -> str:
    parts = []
    for k, v in metrics.items():
        v = _scalar(v)
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return f"{prefix} " + " ".join(parts)
