"""Fault injection for mmjax runs: damage a committed checkpoint the ways disks and people do.

`corrupt(step_dir, kind)` applies one of CORRUPTIONS to a committed checkpoint step directory
(<workdir>/checkpoints/<step>). The trainer must set such a step aside and fall back to the
previous one (mmjax.checkpoint.Checkpointer.restore_latest); tests/test_reliability.py and the
harness below use the same cases.

Run as a script (`python tools/faults.py --help`), it is a harness that runs the trainer
(`python -m mmjax.main`, tiny clip_digits, one CPU device) as a scheduler would and checks that
every fault ends in the result of an unbroken run, bit for bit:

  signals      --trials N random SIGKILL/SIGTERM interruptions (to the trainer or its whole
               process group with Grain workers, at random moments, 1-3 per trial, some right
               after a checkpoint step while its save is in flight), each attempt restarted
               until it exits 0; losses of every step and the final state == the reference's.
  corruption   each CORRUPTIONS kind applied to a finished run's latest step, then the same
               command again: one "does not restore" line, fallback to the previous step, same
               result; and every step damaged: rc 1 and one error line.
  disk full    the workdir on a tmpfs sized to hold the first checkpoints only: rc 1 with one
               "checkpoint save ... failed" line; the workdir, copied to a normal disk, resumes
               to the same result (skipped when tmpfs cannot be mounted, e.g. not root).

It prints a table (case, trials, identical/recovered, notes); --out also writes it as Markdown
with the command, the machine and per-trial details. Exit status 0 only if every check passed.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import logging
import math
import os
import pathlib
import platform
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time


def _largest_array_file(step_dir: str) -> str:
    files = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_*", "d", "*"))
    if not files:
        raise FileNotFoundError(f"no OCDBT data files under {step_dir}/state")
    return max(files, key=os.path.getsize)


def _truncate(step_dir):
    path = _largest_array_file(step_dir)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _overwrite_with(data_fn):
    def damage(step_dir):
        path = _largest_array_file(step_dir)
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.write(data_fn(size))
    return damage


def _remove(*parts):
    def damage(step_dir):
        os.remove(os.path.join(step_dir, *parts))
    return damage


def _garble_data_state(step_dir):
    for path in glob.glob(os.path.join(step_dir, "data", "process_*.json")):
        with open(path, "w") as f:
            f.write("{garbled")


CORRUPTIONS = {
    "array_file_truncated": _truncate,
    "array_file_zeroed": _overwrite_with(lambda n: b"\0" * n),
    "array_file_overwritten": _overwrite_with(os.urandom),
    "state_metadata_removed": _remove("state", "_METADATA"),
    "data_state_garbled": _garble_data_state,
    "manifest_removed": _remove("state", "manifest.ocdbt"),
}


def corrupt(step_dir: str, kind: str) -> None:
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; valid: {sorted(CORRUPTIONS)}")
    CORRUPTIONS[kind](step_dir)


# ------------------------------------------------------------------------------------------------
# The harness (run as a script); the names above are what tests import.

ROOT = pathlib.Path(__file__).resolve().parents[1]
# One CPU device (the tests' setting: fastest compile); unbuffered, so every line arrives when printed.
CHILD_ENV = {**os.environ, "XLA_FLAGS": "", "PYTHONUNBUFFERED": "1"}
# The trainer's lines the checks read (mmjax.train, mmjax.checkpoint, mmjax.errors).
STEP_LINE = re.compile(r"^step (\d+)/(\d+) ")
SAVED_LINE = re.compile(r"^SIGTERM: saved step (\d+) in ", re.M)
STOPPED_LINE = re.compile(r"^SIGTERM: stopped after step (\d+) ", re.M)
RESUMED_LINE = re.compile(r"^resumed from step (\d+)", re.M)
SET_ASIDE_LINE = re.compile(r"^checkpoint step (\d+) does not restore \((.+)\); moved to (\S+), trying the previous one$")
SAVE_FAILED_LINE = re.compile(r"^error: checkpoint save of step (\d+) failed \((.*)\); step (\d+) is the last committed")
ATTEMPT_TIMEOUT_S = 300  # a start-up + 30 tiny steps take ~15 s; beyond this the attempt counts as hung
PAGE = 4096  # tmpfs allocates whole pages


@dataclasses.dataclass(frozen=True)
class Run:
    """The trainer command every case runs (the same for a start and each restart)."""
    steps: int
    every: int

    def command(self, workdir, workers: int = 0) -> list[str]:
        cmd = [sys.executable, "-m", "mmjax.main", f"--config=configs/clip_digits.py:model=tiny,steps={self.steps}",
               f"--workdir={workdir}", f"--config.checkpoint.every_steps={self.every}", "--config.tensorboard=False"]
        return cmd + ([f"--config.data.num_workers={workers}"] if workers else [])

    def shown(self, workdir="W", workers: int = 0) -> str:
        return shlex.join(["python", *self.command(workdir, workers)[1:]])


# --------------------------------------------------------------------------- child processes

class Child:
    """One trainer process in its own session (so its Grain workers share its process group), its
    stdout+stderr read line by line in a thread (the signal moments wait on step lines)."""

    def __init__(self, cmd: list[str]):
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1, start_new_session=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def last_step(self) -> int | None:
        """The last `step s/N` line printed so far (None: still starting up)."""
        for line in reversed(self.lines):
            if m := STEP_LINE.match(line):
                return int(m.group(1))
        return None

    def wait_for_step(self, at_least: int | None = None, timeout: float = ATTEMPT_TIMEOUT_S) -> int | None:
        """Blocks until a step line >= at_least (any step line if None) is printed; None if the
        process ended (or the timeout passed) first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                step = self.last_step()
                if step is not None and (at_least is None or step >= at_least):
                    return step
                if not self._reader.is_alive() or time.monotonic() > deadline:
                    return None
                self._changed.wait(0.05)

    def sleep(self, seconds: float) -> None:
        """Sleeps, but no longer than the process lives."""
        try:
            self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pass

    def send(self, sig: signal.Signals, group: bool) -> bool:
        """Sends `sig` to the trainer or its whole process group; False if it had already exited."""
        if self.proc.poll() is not None:
            return False
        try:
            (os.killpg if group else os.kill)(self.proc.pid, sig)
            return True
        except ProcessLookupError:
            return False

    def finish(self) -> tuple[int, str, int]:
        """(exit code, output, processes it left behind in its group: they are killed)."""
        try:
            rc = self.proc.wait(timeout=ATTEMPT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            rc = self.proc.wait()
            self.lines.append(f"[harness: killed after {ATTEMPT_TIMEOUT_S} s]")
        self._reader.join()
        return rc, "\n".join(self.lines), self._reap_group()

    def _reap_group(self) -> int:
        # A SIGKILL to the trainer alone leaves its worker processes to the scheduler; count and end them.
        left = _group_members(self.proc.pid)
        if left:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(left)


def _group_members(pgid: int) -> list[int]:
    members = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields after "pid (comm)": state ppid pgrp
            members.append(int(stat.split("/")[2]))
    return members


def run_to_end(cmd: list[str]) -> tuple[int, str]:
    rc, out, _ = Child(cmd).finish()
    return rc, out


def tracebacks(output: str) -> int:
    return output.count("Traceback (most recent call last)")


def last_words(output: str) -> str:
    """The run's `error:` line, else its last line: what a person would read first."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    said = [line for line in lines if line.startswith("error:")] or lines[-1:]
    return f"output: {said[-1][:300]!r}" if said else "no output"


# --------------------------------------------------------------------------- the reference and comparisons

@dataclasses.dataclass
class Reference:
    workdir: str
    losses: dict[int, float]
    state: object
    seconds: float


def losses_by_step(workdir) -> tuple[dict[int, float], list[int]]:
    """{step: train/loss} and the steps that appear more than once in metrics.jsonl."""
    from mmjax.metrics import read_metrics
    rows = [r for r in read_metrics(str(workdir)) if "train/loss" in r]
    steps = [r["step"] for r in rows]
    return {r["step"]: r["train/loss"] for r in rows}, sorted({s for s in steps if steps.count(s) > 1})


def final_state(workdir):
    """(step, whole train state) of the latest committed checkpoint, read-only."""
    import orbax.checkpoint as ocp
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        step = manager.latest_step()
        return step, manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    finally:
        manager.close()


def state_differences(a, b) -> list[str]:
    """Leaf paths where two states differ (structure, dtype or any bit of any value)."""
    import jax
    import numpy as np
    la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    if [p for p, _ in la] != [p for p, _ in lb]:
        return ["tree structure"]
    return [jax.tree_util.keystr(p) for (p, x), (_, y) in zip(la, lb)
            if np.asarray(x).dtype != np.asarray(y).dtype or not np.array_equal(np.asarray(x), np.asarray(y))]


def differences_from(ref: Reference, workdir, run: Run) -> list[str]:
    """Why `workdir`'s finished run is not bitwise the reference ([] when it is)."""
    losses, twice = losses_by_step(workdir)
    problems = [f"steps logged twice: {twice}"] if twice else []
    if sorted(losses) != list(range(1, run.steps + 1)):
        problems.append(f"logged steps {sorted(losses)} != 1..{run.steps}")
    changed = [s for s in ref.losses if s in losses and losses[s] != ref.losses[s]]
    if changed:
        problems.append(f"loss differs at steps {changed[:8]}")
    step, state = final_state(workdir)
    if step != run.steps:
        problems.append(f"latest checkpoint is step {step}, not {run.steps}")
    elif diff := state_differences(ref.state, state):
        problems.append(f"final state differs in {len(diff)} leaves, e.g. {diff[:3]}")
    return problems


def make_reference(run: Run, scratch: str) -> Reference:
    workdir = os.path.join(scratch, "reference")
    started = time.monotonic()
    rc, out = run_to_end(run.command(workdir))
    if rc != 0:
        sys.exit(f"the reference run failed (rc {rc}):\n{out[-3000:]}")
    losses, _ = losses_by_step(workdir)
    return Reference(workdir, losses, final_state(workdir)[1], time.monotonic() - started)


# --------------------------------------------------------------------------- random signal trials

@dataclasses.dataclass(frozen=True)
class Interruption:
    """One signal to send in one attempt. `when`: "startup" (u x 8 s after the start, often before the
    first step), "delay" (u x 2 s after the first step line: in the loop, or during the final
    evaluation), "step" (right after a random step line), "checkpoint" (right after a checkpoint step's
    line, with its save in flight)."""
    sig: str
    when: str
    u: float
    group: bool

    def describe(self) -> str:
        return f"{self.sig} to {'group' if self.group else 'pid'}, {self.when}"


@dataclasses.dataclass(frozen=True)
class TrialPlan:
    index: int
    workers: int
    interruptions: tuple[Interruption, ...]


def plan_trial(seed: int, index: int) -> TrialPlan:
    """Trial `index`'s plan depends only on (seed, index): `--trial K` replays it alone."""
    rng = random.Random(f"{seed}-{index}")
    workers = 2 if rng.random() < 0.4 else 0
    interruptions = []
    for i in range(rng.choice([1, 1, 2, 2, 3])):
        # The first signal alternates between trials so that both kinds are always well represented.
        sig = ("SIGKILL", "SIGTERM")[index % 2] if i == 0 else rng.choice(["SIGKILL", "SIGTERM"])
        when = rng.choices(["startup", "delay", "step", "checkpoint"], weights=[1, 3, 3, 3])[0]
        interruptions.append(Interruption(sig, when, rng.random(), group=bool(workers) and rng.random() < 0.6))
    return TrialPlan(index, workers, tuple(interruptions))


def deliver(child: Child, intr: Interruption, run: Run) -> dict:
    """Waits for the interruption's moment and sends it; returns what happened."""
    if intr.when == "startup":
        child.sleep(intr.u * 8)
    else:
        first = child.wait_for_step()
        if first is not None and intr.when == "delay":
            child.sleep(intr.u * 2.0)
        elif first is not None:
            due = [s for s in range(first, run.steps) if intr.when == "step" or s % run.every == 0]
            target = due[int(intr.u * len(due))] if due else first
            child.wait_for_step(target)
            if intr.when == "checkpoint":  # the save starts just after the step's line: land while it writes
                child.sleep((intr.u * len(due)) % 1 * 0.1)
    at_step = child.last_step()
    sent = child.send(getattr(signal, intr.sig), intr.group)
    return {"signal": intr.describe(), "at_step": at_step, "sent": sent}


def judge_attempt(record: dict, rc: int, out: str, run: Run) -> tuple[str, str]:
    """("ok" | "differs (legitimate)" | "ANOMALY", what happened) for one interrupted attempt.

    A SIGTERM before the loop installs its handler (start-up, restore, compile of a resumed run)
    kills the process the default way (rc -15, nothing saved); one after the last step's stop check
    (final save and evaluation) is ignored and the run finishes (rc 0). Both are expected and
    recorded as such; anything else that is not the documented behaviour is an anomaly.
    """
    at, sig = record["at_step"], record["signal"].split()[0]
    where = "before step 1 of this attempt" if at is None else f"after step {at} was printed"
    if not record["sent"]:
        return ("ok", f"run finished (rc {rc}) before the signal") if rc == 0 else ("ANOMALY", f"rc {rc}, no signal")
    if sig == "SIGKILL":
        if rc == -signal.SIGKILL:
            return "ok", f"killed {where}"
        if rc == 0 and at == run.steps:
            return "differs (legitimate)", "the run exited 0 before the SIGKILL landed"
        return "ANOMALY", f"SIGKILL {where}: rc {rc}"
    saved, stopped = SAVED_LINE.search(out), STOPPED_LINE.search(out)
    if rc == 143 and saved and stopped and saved.group(1) == stopped.group(1):
        return "ok", f"sent {where}: rc 143, saved step {saved.group(1)}"
    if rc == -signal.SIGTERM and at is None and not saved:
        return "differs (legitimate)", f"sent {where}, before the handler: rc -15, nothing saved"
    if rc == 0 and at is not None and at >= run.steps - 1 and not saved:
        return "differs (legitimate)", f"sent {where}, after the last stop check: ignored, rc 0"
    return "ANOMALY", f"SIGTERM {where}: rc {rc}, saved line {'yes' if saved else 'no'}; {last_words(out)}"


def run_trial(plan: TrialPlan, run: Run, ref: Reference, scratch: str) -> dict:
    """Starts the run, interrupts it as planned, restarts it until rc 0, compares with the reference."""
    workdir = os.path.join(scratch, f"trial{plan.index:02d}")
    cmd = run.command(workdir, plan.workers)
    attempts, started = [], time.monotonic()
    pending = list(plan.interruptions)
    while len(attempts) < len(plan.interruptions) + 3:  # a scheduler's patience
        child = Child(cmd)
        record = deliver(child, pending.pop(0), run) if pending else None
        rc, out, orphans = child.finish()
        attempt = {"rc": rc, "orphans": orphans, "tracebacks": tracebacks(out),
                   "shm_leak": "leaked shared_memory" in out}
        if record:
            attempt |= record
            attempt["verdict"], attempt["what"] = judge_attempt(record, rc, out, run)
        elif rc != 0:
            attempt["verdict"], attempt["what"] = "ANOMALY", f"uninterrupted attempt: rc {rc}; {last_words(out)}"
        attempts.append(attempt)
        if rc == 0:
            break
    problems = differences_from(ref, workdir, run) if attempts[-1]["rc"] == 0 else ["never exited 0"]
    return {"plan": plan, "attempts": attempts, "problems": problems, "seconds": time.monotonic() - started,
            "workdir": workdir, "identical": not problems,
            "as_documented": all(a.get("verdict", "ok") != "ANOMALY" for a in attempts)}


def summarize_signals(trials: list[dict]) -> dict:
    sent = [a for t in trials for a in t["attempts"] if a.get("sent")]
    count = lambda pred: sum(1 for a in sent if pred(a))  # noqa: E731
    notes = [f"{count(lambda a: a['signal'].startswith('SIGKILL'))} SIGKILL + "
             f"{count(lambda a: a['signal'].startswith('SIGTERM'))} SIGTERM sent "
             f"({count(lambda a: 'to group' in a['signal'])} to the process group with 2 Grain workers, "
             f"{count(lambda a: a['signal'].endswith('checkpoint'))} with a save in flight); "
             f"{sum(len(t['attempts']) for t in trials)} attempts",
             f"SIGTERM rc 143 + saved line: {count(lambda a: 'rc 143, saved' in a['what'])}; "
             f"legitimately different: {count(lambda a: a['verdict'].startswith('differs'))}; "
             f"anomalies: {count(lambda a: a['verdict'] == 'ANOMALY')}"]
    orphans = sum(a["orphans"] for t in trials for a in t["attempts"])
    if orphans:
        notes.append(f"{orphans} worker processes outlived a SIGKILLed trainer (ended by the harness)")
    noisy = sum(1 for t in trials for a in t["attempts"] if a["tracebacks"])
    if noisy:
        notes.append(f"{noisy} attempts printed a Python traceback")
    leaks = sum(1 for t in trials for a in t["attempts"] if a["shm_leak"])
    if leaks:
        notes.append(f"{leaks} attempts ended with Python's resource_tracker warning of leaked shared_memory")
    ok = sum(t["identical"] for t in trials)
    documented = sum(t["as_documented"] for t in trials)
    return {"case": "random SIGKILL/SIGTERM", "trials": len(trials),
            "result": f"{ok}/{len(trials)} identical" + ("" if documented == len(trials) else
                                                          f", {len(trials) - documented} with anomalies"),
            "passed": ok == documented == len(trials), "notes": "; ".join(notes)}


# --------------------------------------------------------------------------- checkpoint corruption

def committed_steps(workdir) -> list[int]:
    return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def corruption_case(kind: str, run: Run, ref: Reference, scratch: str) -> dict:
    """The finished reference with its latest step damaged `kind`'s way, run again: it must set the step
    aside in one line, resume from the previous one and end bitwise as the reference."""
    workdir = os.path.join(scratch, f"corrupt-{kind}")
    shutil.copytree(ref.workdir, workdir)
    *_, previous, latest = committed_steps(workdir)
    corrupt(os.path.join(workdir, "checkpoints", str(latest)), kind)
    rc, out = run_to_end(run.command(workdir))
    reports = [m for line in out.splitlines() if (m := SET_ASIDE_LINE.match(line))]
    resumed = RESUMED_LINE.search(out)
    problems = [] if rc == 0 else [f"rc {rc}: {out[-300:]}"]
    if len(reports) != 1 or reports[0].group(1) != str(latest):
        problems.append(f"{len(reports)} set-aside lines (want one, for step {latest})")
    if "does not restore" in out and not reports:
        problems.append("a 'does not restore' line of another form")
    if not os.path.isdir(os.path.join(workdir, "checkpoints_set_aside", str(latest))):
        problems.append(f"checkpoints_set_aside/{latest} missing")
    if not resumed or int(resumed.group(1)) != previous:
        problems.append(f"did not resume from step {previous}")
    if n := tracebacks(out):
        problems.append(f"{n} tracebacks printed")
    if rc == 0:
        problems += differences_from(ref, workdir, run)
    cause = reports[0].group(2) if reports else ""
    return {"case": f"corruption: {kind}", "trials": 1, "passed": not problems,
            "result": "recovered, identical" if not problems else "NOT recovered",
            "notes": "; ".join(problems) or f"step {latest} set aside ({cause}); resumed from {previous}"}


def all_damaged_case(run: Run, ref: Reference, scratch: str) -> dict:
    """Every committed step damaged (a different kind each): rc 1, one error line, no traceback."""
    workdir = os.path.join(scratch, "corrupt-all")
    shutil.copytree(ref.workdir, workdir)
    steps = committed_steps(workdir)
    for step, kind in zip(steps, CORRUPTIONS):
        corrupt(os.path.join(workdir, "checkpoints", str(step)), kind)
    rc, out = run_to_end(run.command(workdir))
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    reports = [line for line in out.splitlines() if SET_ASIDE_LINE.match(line)]
    problems = [] if rc == 1 else [f"rc {rc}"]
    if len(errors) != 1 or not errors[0].startswith("error: no committed checkpoint restores"):
        problems.append(f"error lines: {errors}")
    if len(reports) != len(steps):
        problems.append(f"{len(reports)} set-aside lines for {len(steps)} damaged steps")
    if n := tracebacks(out):
        problems.append(f"{n} tracebacks printed")
    return {"case": f"corruption: all {len(steps)} steps damaged", "trials": 1, "passed": not problems,
            "result": "rc 1, one error line" if not problems else "NOT as documented",
            "notes": "; ".join(problems) or f"steps {steps} set aside; {errors[0][:110]}..."}


# --------------------------------------------------------------------------- disk full

def pages(path: str) -> int:
    """tmpfs pages the files under `path` take."""
    return sum(math.ceil(os.path.getsize(os.path.join(d, f)) / PAGE) or 1
               for d, _, files in os.walk(path) for f in files)


def mount_tmpfs(where: str, size_bytes: int) -> str | None:
    """Mounts a tmpfs of `size_bytes` at `where`; the reason if that is not permitted here."""
    os.makedirs(where, exist_ok=True)
    if shutil.which("mount") is None:
        return "no mount command"
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", where],
                          capture_output=True, text=True)
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"mount rc {proc.returncode}")


def disk_full_case(run: Run, ref: Reference, scratch: str) -> dict:
    """The run on a filesystem with room for its metrics and 2.5 checkpoint steps (Orbax also saves
    the first step): the third save fails. The run must stop with rc 1 and one line naming that step
    and the last committed one; that step, copied to a normal disk, must resume to the reference."""
    step_pages = pages(os.path.join(ref.workdir, "checkpoints", str(committed_steps(ref.workdir)[-1])))
    small_files = pages(ref.workdir) - pages(os.path.join(ref.workdir, "checkpoints")) + 16  # + logs
    size = int((2.5 * step_pages + small_files) * PAGE)
    mount = os.path.join(scratch, "tmpfs")
    reason = mount_tmpfs(mount, size)
    case = {"case": "disk full (tmpfs)", "trials": 1}
    if reason:
        print(f"skipped: cannot mount tmpfs ({reason})", flush=True)
        return case | {"passed": True, "result": "skipped", "notes": f"cannot mount tmpfs ({reason})"}
    copy = os.path.join(scratch, "diskfull-copy")
    try:
        rc, out = run_to_end(run.command(os.path.join(mount, "run")))
        leftover = [d.split(".")[0] for d in os.listdir(os.path.join(mount, "run", "checkpoints")) if "tmp" in d]
        committed = committed_steps(os.path.join(mount, "run"))
        shutil.copytree(os.path.join(mount, "run"), copy)
    finally:
        subprocess.run(["umount", mount], check=False)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    failed = SAVE_FAILED_LINE.match(errors[-1]) if errors else None
    problems = [] if rc == 1 else [f"rc {rc}"]
    if len(errors) != 1 or not failed:
        problems.append(f"error lines: {[e[:160] for e in errors]}")
    else:
        named, last = int(failed.group(1)), int(failed.group(3))
        if last != max(committed):
            problems.append(f"names step {last} as the last committed; committed: {committed}")
        if leftover and str(named) not in leftover:
            problems.append(f"names the save of step {named} as failed, but the partial save left on disk is "
                            f"step {', '.join(leftover)}'s (its error: {failed.group(2)[:120]})")
    if n := tracebacks(out):
        problems.append(f"{n} tracebacks printed besides the error line")
    rc2, out2 = run_to_end(run.command(copy))
    resumed = RESUMED_LINE.search(out2)
    unlike = differences_from(ref, copy, run) if rc2 == 0 else [f"rc {rc2}; {last_words(out2)}"]
    recovered = not unlike
    if unlike:
        problems.append(f"the copy did not resume to the reference: {'; '.join(unlike)}")
    notes = (f"tmpfs {size // 1024} KiB (a step: {step_pages * PAGE // 1024} KiB); committed {committed}; "
             f"copied to disk: resumed from step {resumed.group(1) if resumed else '?'}, "
             f"{'identical' if recovered else 'NOT identical'}")
    return case | {"passed": not problems, "result": "restorable, identical" if recovered else "NOT recovered",
                   "notes": "; ".join([notes] + problems)}


# --------------------------------------------------------------------------- report

def table(rows: list[dict]) -> str:
    lines = ["| case | trials | identical / recovered | pass | notes |", "| --- | ---: | --- | --- | --- |"]
    lines += [f"| {r['case']} | {r['trials']} | {r['result']} | {'yes' if r['passed'] else '**NO**'} | "
              f"{r['notes'].replace('|', '/')} |" for r in rows]
    return "\n".join(lines)


def trial_details(trials: list[dict]) -> str:
    lines = ["| trial | workers | attempts: signal, moment -> rc, what happened | s | identical |",
             "| ---: | ---: | --- | ---: | --- |"]
    for t in trials:
        steps = []
        for a in t["attempts"]:
            what = f"{a['signal']} -> rc {a['rc']} ({a['verdict']}: {a['what']})" if "signal" in a else f"rerun -> rc {a['rc']}"
            if a["orphans"]:
                what += f", {a['orphans']} orphaned workers"
            if a["tracebacks"]:
                what += f", {a['tracebacks']} tracebacks"
            steps.append(what.replace("|", "/"))
        ident = "yes" if t["identical"] else f"**NO**: {'; '.join(t['problems'])}"
        lines.append(f"| {t['plan'].index} | {t['plan'].workers} | {'<br>'.join(steps)} | {t['seconds']:.0f} | {ident} |")
    return "\n".join(lines)


def trial_line(t: dict) -> str:
    attempts = " / ".join(f"{a.get('signal', 'rerun')} -> {a['rc']}" for a in t["attempts"])
    verdict = "identical" if t["identical"] else "NOT identical: " + "; ".join(t["problems"])
    return (f"trial {t['plan'].index}: {attempts}: {verdict}{'' if t['as_documented'] else ' (ANOMALY)'} "
            f"[{t['seconds']:.0f} s]")


def machine() -> str:
    from importlib import metadata
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("jax", "orbax-checkpoint", "grain"))
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {versions}, {platform.platform()}"


def write_markdown(path: str, args, run: Run, rows, trials, seconds: float, ref: Reference) -> None:
    text = f"""# Fault injection: preemption, checkpoint corruption, disk full

Date: {datetime.date.today().isoformat()}. Machine: {machine()}. Total {seconds / 60:.1f} min
(reference run {ref.seconds:.0f} s).

Command: `{shlex.join(['python', 'tools/faults.py', *sys.argv[1:]])}`

Each case runs `{run.shown()}` (one CPU device, `XLA_FLAGS=`; trials with workers add
`--config.data.num_workers=2`) and compares with one unbroken run of it: train/loss of every step
(metrics.jsonl, each step exactly once) and every leaf of the final checkpoint's state (params,
optimiser, step, guard) with `np.array_equal`. A restart is the same command again.

{table(rows)}

## Signal trials (seed {args.seed})

Moments: `startup` = a random time after the start (often before step 1), `delay` = a random time
up to 2 s after the first step line (in the loop or in the final evaluation), `step` = right after
a random step line, `checkpoint` = right after a checkpoint step's line, its save in flight. `to
group` = os.killpg on the trainer's session (it and its Grain workers). Replay one trial's plan with
`python tools/faults.py --seed {args.seed} --trial K --skip-corruption --skip-disk-full`.

{trial_details(trials)}
"""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


# --------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20, help="random SIGKILL/SIGTERM trials (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the trials' plans (default 0)")
    p.add_argument("--trial", type=int, action="append", help="run only this trial index (repeatable)")
    p.add_argument("--steps", type=int, default=30, help="train steps of every run (default 30)")
    p.add_argument("--every", type=int, default=5, help="checkpoint.every_steps (default 5)")
    p.add_argument("--skip-corruption", action="store_true")
    p.add_argument("--skip-disk-full", action="store_true")
    p.add_argument("--out", help="also write the results as Markdown here (e.g. benchmarks/results/faults.md)")
    p.add_argument("--keep", action="store_true", help="keep the workdirs (failed cases' are always kept)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["XLA_FLAGS"] = ""  # this process only reads checkpoints, on one CPU device
    logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax's notes on opening checkpoints read-only
    run = Run(args.steps, args.every)
    scratch = tempfile.mkdtemp(prefix="mmjax-faults-")
    started = time.monotonic()
    print(f"workdirs under {scratch}; each run: {run.shown()}", flush=True)
    ref = make_reference(run, scratch)
    print(f"reference: {len(ref.losses)} steps in {ref.seconds:.0f} s", flush=True)

    trials = []
    for index in args.trial or range(args.trials):
        trials.append(run_trial(plan_trial(args.seed, index), run, ref, scratch))
        print(trial_line(trials[-1]), flush=True)
    rows = [summarize_signals(trials)] if trials else []
    if not args.skip_corruption:
        for kind in CORRUPTIONS:
            rows.append(corruption_case(kind, run, ref, scratch))
            print(f"{rows[-1]['case']}: {rows[-1]['result']} ({rows[-1]['notes']})", flush=True)
        rows.append(all_damaged_case(run, ref, scratch))
        print(f"{rows[-1]['case']}: {rows[-1]['result']} ({rows[-1]['notes']})", flush=True)
    if not args.skip_disk_full:
        rows.append(disk_full_case(run, ref, scratch))
        print(f"{rows[-1]['case']}: {rows[-1]['result']} ({rows[-1]['notes']})", flush=True)

    seconds = time.monotonic() - started
    print("\n" + table(rows) + f"\n\ntotal {seconds / 60:.1f} min", flush=True)
    if args.out:
        write_markdown(args.out, args, run, rows, trials, seconds, ref)
        print(f"wrote {args.out}")
    passed = all(r["passed"] for r in rows)
    if args.keep or not passed:
        print(f"workdirs kept in {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
