"""SIGTERM / SIGINT as a request to stop at a step boundary that every process agrees on.

A pod scheduler sends SIGTERM some seconds before it kills a job. The trainer asks
`PreemptionWatch.should_stop(step)` after every step; once it says yes, the trainer saves a
checkpoint at that step, waits for it to commit and exits (mmjax.errors.Preempted).

One process: a Python handler records the signal. Several processes: the signal reaches
one host (or all, at different moments), but all must save the same step, so the decision is
JAX's preemption sync point (the coordination service's notifier catches SIGTERM itself and
`multihost_utils.reached_preemption_sync_point(step)` turns true on every process at the same
step). SIGINT is handed to it as a SIGTERM to this process. A second Ctrl-C while a stop is
pending raises KeyboardInterrupt, for a user who does not want to wait for the save.
"""
from __future__ import annotations

import os
import signal
import threading

import jax


class PreemptionWatch:
    def __init__(self):
        self.signal_name: str | None = None  # the signal that asked this process to stop
        self._multi_process = jax.process_count() > 1
        # With several processes the coordination service owns SIGTERM (installed by
        # jax.distributed.initialize); replacing its handler would keep the others from hearing.
        signals = (signal.SIGINT,) if self._multi_process else (signal.SIGINT, signal.SIGTERM)
        if threading.current_thread() is not threading.main_thread():
            signals = ()  # Python delivers signals to the main thread only: a trainer run in a thread leaves them
        self._previous = {s: signal.signal(s, self._on_signal) for s in signals}

    def _on_signal(self, signum, frame):
        if signum == signal.SIGINT and self.signal_name is not None:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, without the checkpoint
        self.signal_name = signal.Signals(signum).name
        if self._multi_process:
            os.kill(os.getpid(), signal.SIGTERM)  # to the coordination service's notifier

    def should_stop(self, step: int) -> bool:
        """Whether to stop after `step` (the same answer on every process). Call once per step, on
        every process, with increasing steps."""
        if not self._multi_process:
            return self.signal_name is not None
        from jax.experimental import multihost_utils
        if multihost_utils.reached_preemption_sync_point(step):
            self.signal_name = self.signal_name or "SIGTERM"  # the signal may have reached another host
            return True
        return False

    def close(self) -> None:
        """Puts the previous handlers back."""
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
