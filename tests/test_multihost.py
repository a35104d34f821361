"""Two processes on localhost, one CPU device each, CPU collectives over gloo:
per-process Grain shards, a sharded train step, Orbax checkpoints written by
both, both killed mid-run, restarted, one preempted by SIGTERM (both save the same step),
restarted, and resumed exactly."""
import os
import pathlib
import signal
import socket
import subprocess
import sys

from mmjax import metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "clip_digits.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STEPS = 30  # enough that a SIGTERM early in a run reaches the preemption sync point before the end


def _run_pair(workdir, *flags, sigterm_process_1_at: str | None = None):
    """Starts processes 0 and 1 of one job; returns their (returncode, output). With
    `sigterm_process_1_at`, process 1 alone gets SIGTERM once process 0 prints a line starting so."""
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": ""}  # one CPU device per process
    procs = [subprocess.Popen(
        [sys.executable, "-m", "mmjax.main", f"--config={CONFIG}:model=tiny,steps={STEPS}", f"--workdir={workdir}",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
         "--config.checkpoint.every_steps=4", "--config.tensorboard=False", *flags],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    out0 = []
    for line in procs[0].stdout:  # process 0 reports; process 1 prints (almost) nothing
        out0.append(line)
        if sigterm_process_1_at and line.startswith(sigterm_process_1_at):
            procs[1].send_signal(signal.SIGTERM)
            sigterm_process_1_at = None
    return [(procs[0].wait(timeout=300), "".join(out0)), (procs[1].wait(timeout=300), procs[1].stdout.read())]


def _losses(workdir):
    return {r["step"]: r["train/loss"] for r in metrics.read_metrics(str(workdir)) if "train/loss" in r}


def test_two_processes_resume_exactly(tmp_path):
    straight = _run_pair(tmp_path / "straight")
    for rc, out in straight:
        assert rc == 0, out[-3000:]
    assert "over 2 cpu devices, 2 process(es)" in straight[0][1]
    killed = _run_pair(tmp_path / "killed", "--config.debug.sigkill_after_step=6")
    for rc, out in killed:
        assert rc == -9, out[-3000:]
    # A scheduler preempts one host only: both agree on a step (JAX's preemption sync point), save it, exit 143.
    preempted = _run_pair(tmp_path / "killed", sigterm_process_1_at="step 8/")
    for rc, out in preempted:
        assert rc == 143, out[-3000:]
    start = int(preempted[0][1].split("resumed from step ")[1].split()[0])
    assert start in (4, 6)
    saved = int(preempted[0][1].split("SIGTERM: saved step ")[1].split()[0])
    assert 8 <= saved < STEPS and f"stopped after step {saved} " in preempted[1][1]
    resumed = _run_pair(tmp_path / "killed")
    for rc, out in resumed:
        assert rc == 0, out[-3000:]
    assert f"resumed from step {saved}" in resumed[0][1]
    ls, lk = _losses(tmp_path / "straight"), _losses(tmp_path / "killed")
    assert sorted(ls) == sorted(lk) == list(range(1, STEPS + 1))
    assert all(lk[s] == ls[s] for s in range(start + 1, STEPS + 1)), (ls, lk)
    # same final params -> the same evaluation, to the last digit (throughput aside)
    def final_metrics(out):
        return [kv for kv in out.strip().splitlines()[-1].split() if not kv.startswith("examples_per_sec")]
    assert final_metrics(straight[0][1]) == final_metrics(resumed[0][1])
    assert not resumed[1][1].count("final:")  # only process 0 reports
    # each process checkpointed its own data-iterator position
    step_dir = tmp_path / "killed" / "checkpoints" / str(STEPS) / "data"
    assert {p.name for p in step_dir.iterdir()} >= {"process_0-of-2.json", "process_1-of-2.json"}
