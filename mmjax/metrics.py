"""Metric sinks: JSON lines + TensorBoard in the workdir (+ optional W&B), a readable line on stdout."""
from __future__ import annotations

import importlib.util
import json
import os
import time
import uuid

import numpy as np


def _scalar(v):
    v = np.asarray(v)
    return v.item() if v.size == 1 else v.tolist()


class MissingExtra(ImportError):
    """A config field asks for an optional dependency that is not installed (one line, says what to install)."""


class MetricLogger:
    """Writes `{"step": s, **metrics, "attempt": n}` lines to <workdir>/metrics.jsonl, the same
    scalars to TensorBoard (<workdir>/tb) and, when `wandb.project` is set, to Weights & Biases.

    Only process 0 writes (`enabled`). Each line is flushed as written, so a killed run leaves at
    worst one truncated last line (readers skip it).

    resume_step: the step of the checkpoint this attempt restored, or None when it starts from
    scratch. This attempt logs every later step again, so an earlier attempt's rows after
    `resume_step` (all of them from scratch) are dropped first, with a truncated last line: each
    step appears once. Rows at `resume_step` stay (that checkpoint was saved after the step's log
    and eval). attempt: this start's number (mmjax.run_identity's, so both files agree); None: one
    more than the file's largest, 1 on a first start (an attempt that logged nothing is not counted).
    wandb: `config.wandb` (project "" = off); run_config: the resolved config, shown by W&B.
    """

    def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int | None = None, attempt: int | None = None, wandb=None, run_config=None):
        self.enabled = enabled
        self._file = self._tb = self._wandb = self.attempt = None
        use_wandb = bool(wandb and wandb.get("project"))
        if use_wandb and importlib.util.find_spec("wandb") is None:
            # Checked on every process, so that process 0 alone does not fail and leave the others hanging.
            raise MissingExtra("config.wandb.project is set but wandb is not installed: pip install 'mmjax[wandb]'")
        if not enabled:
            return
        path = os.path.join(workdir, "metrics.jsonl")
        last = _drop_replayed(path, resume_step)
        self.attempt = attempt if attempt is not None else last + 1
        self._file = open(path, "a")
        if tensorboard:
            from tensorboardX import SummaryWriter  # optional sink; no TensorFlow needed
            tb_dir = os.path.join(workdir, "tb")
            # Event files cannot be edited: instead TensorBoard hides an earlier attempt's events from
            # `purge_step` on when it reads this writer's first event, as the jsonl rows are dropped.
            purge = (0 if resume_step is None else resume_step + 1) if os.path.isdir(tb_dir) else None
            self._tb = SummaryWriter(tb_dir, purge_step=purge)
        if use_wandb:
            self._wandb = _wandb_run(wandb, workdir, run_config, fresh=resume_step is None)

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        metrics = {k: _scalar(v) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": int(step), **metrics, "attempt": self.attempt}) + "\n")
        self._file.flush()
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            # W&B ignores steps below the last one it has: after a resume it keeps the earlier
            # attempt's values for replayed steps (its rewind feature is server-side and opt-in).
            self._wandb.log(scalars, step=int(step))

    def close(self) -> None:
        if self._file:
            self._file.close()
        if self._tb:
            self._tb.close()
        if self._wandb:
            self._wandb.finish()


def _drop_replayed(path: str, resume_step: int | None) -> int:
    """Rewrites `path` (atomically) without rows after `resume_step` and a truncated last line;
    returns the largest attempt number in it (0 for none)."""
    if not os.path.exists(path):
        return 0
    kept, last_attempt, changed = [], 0, False
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the last line of a killed run
                changed = True
                continue
            last_attempt = max(last_attempt, row.get("attempt", 1))  # rows from before attempts count as 1
            if resume_step is None or row["step"] > resume_step:
                changed = True
            elif line.endswith("\n"):
                kept.append(line)
            else:  # complete but for its newline: the next row would run on from it
                kept.append(line + "\n")
                changed = True
    if changed:
        with open(path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)  # a kill mid-rewrite leaves the old file whole
    return last_attempt


def _wandb_run(cfg, workdir: str, run_config, fresh: bool):
    """A W&B run for this workdir: its id is kept in <workdir>/wandb_run_id, so a resumed run
    continues the same W&B run; a start from scratch (`fresh`) logs everything again, in a new one."""
    import wandb
    id_path = os.path.join(workdir, "wandb_run_id")
    if os.path.exists(id_path) and not fresh:
        with open(id_path) as f:
            run_id = f.read().strip()
    else:
        run_id = uuid.uuid4().hex[:12]
        with open(id_path, "w") as f:
            f.write(run_id)
    if hasattr(run_config, "to_dict"):  # an ml_collections.ConfigDict
        run_config = run_config.to_dict()
    return wandb.init(project=cfg["project"], entity=cfg.get("entity") or None, name=cfg.get("name") or None,
                      mode=cfg.get("mode", "online"), config=run_config, resume="allow", id=run_id, dir=workdir)


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
