"""What a run costs the machine: a profiler trace of chosen steps, compile time, device memory.

The trainer merges `device_memory()` into its log lines and `compile_s` into the first one;
`ProfileWindow` brackets the steps named by `config.profile`.
"""
from __future__ import annotations

import os
import time

import jax

_GB = 1e9


def device_memory() -> dict:
    """{"mem/bytes_in_use_gb", "mem/peak_bytes_in_use_gb"} in GB (1e9 bytes), each the largest over
    this process's devices (the fullest device is the one that runs out first); {} on backends that
    report nothing (CPU). Peak is since the process started, so it includes compilation scratch."""
    stats = [d.memory_stats() for d in jax.local_devices()]
    stats = [s for s in stats if s and "bytes_in_use" in s]
    if not stats:
        return {}
    return {"mem/bytes_in_use_gb": max(s["bytes_in_use"] for s in stats) / _GB,
            "mem/peak_bytes_in_use_gb": max(s.get("peak_bytes_in_use", s["bytes_in_use"]) for s in stats) / _GB}


def timed_compile(jitted, *args):
    """(compiled, seconds): `jitted` lowered for `args` and compiled ahead of time.

    Call it where the step is called (inside `jax.set_mesh(mesh)`, which tracing reads), then call
    `compiled` instead of `jitted`: it takes the same arguments, honours donation, and never
    re-traces, so later arguments must have the same shapes, dtypes and shardings (it raises
    otherwise). The time covers tracing, lowering and XLA compilation: the first step's overhead.
    """
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


class ProfileWindow:
    """A jax.profiler trace of the train steps numbered [start_step, start_step + num_steps) into
    <workdir>/profile, where TensorBoard's profile plugin finds it (plugins/profile/<time>/*.xplane.pb).

    A step is numbered by the loop counter before it runs: step 0 is the first (and carries
    compilation); log lines name the counter after it, so start_step=10, num_steps=3 traces the
    steps logged as 11, 12 and 13.
    Call `step_started(step)` before running step `step` and `step_finished(step + 1, state)` after;
    a resumed run inside the window traces what is left of it. start_step < 0 or not enabled: off.
    """

    def __init__(self, profile_cfg, workdir: str, enabled: bool = True):
        self.start = int(profile_cfg["start_step"])
        self.stop = self.start + int(profile_cfg["num_steps"])
        self.log_dir = os.path.join(workdir, "profile")
        self.on = enabled and self.start >= 0 and self.stop > self.start
        self.tracing = False

    def step_started(self, step: int) -> None:
        if self.on and not self.tracing and self.start <= step < self.stop:
            jax.profiler.start_trace(self.log_dir)
            self.tracing = True

    def step_finished(self, step: int, state) -> None:
        """`step`: the number of steps done, i.e. the counter after the step; `state`: its outputs."""
        if self.tracing and step >= self.stop:
            jax.block_until_ready(state)  # the trace holds the window's device work, not just its dispatch
            self.close()
            self.on = False  # one window per run

    def close(self) -> None:
        """Stops a running trace (the run ended or failed inside the window), writing what it holds."""
        if self.tracing:
            jax.profiler.stop_trace()
            self.tracing = False
