"""Faults around a run: damaged checkpoints, failed saves, changed configs on resume, non-finite
steps, a resume with nothing left to do. (SIGKILL / SIGTERM across restarts: test_train.py and
test_multihost.py; start-up validation and one-line CLI errors: test_validate.py; the long
random sweep: tools/faults.py.)"""
import os
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mmjax import checkpoint as ckpt_lib
from mmjax import metrics, parallel, run_identity, step as step_lib, train
from mmjax.data import pipeline
from mmjax.errors import ConfigError, RunError
from test_train import _losses, _tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import faults  # noqa: E402

STEPS, EVERY = 6, 2


def _config(**overrides):
    return _tiny_config(**{"total_steps": STEPS, "tensorboard": False, "checkpoint.every_steps": EVERY,
                           "checkpoint.keep": 5, **overrides})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run with committed checkpoints at steps 2, 4 and 6 (plus Orbax's first-step one)."""
    workdir = tmp_path_factory.mktemp("finished")
    final = train.train_and_evaluate(_config(), str(workdir), devices=jax.devices()[:1])
    return workdir, _losses(workdir), final


@pytest.fixture(scope="module")
def restore_parts(finished):
    """What restore_latest needs for the finished run's layout: abstract state and a train iterator."""
    config = _config()
    setup = step_lib.build(config)
    mesh = parallel.make_mesh(config.mesh, jax.devices()[:1])
    layout = step_lib.state_layout(setup, mesh, jax.random.key(0))
    train_iter = pipeline.make_train_iterator(config.data, global_batch_size=config.batch_size, seed=config.seed,
                                              tokenizer=setup.tokenizer, shard_index=0, shard_count=1)
    return ckpt_lib.abstract_like(layout.abstract, layout.shardings), train_iter


def _copy(workdir, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(workdir, dst)
    return dst


@pytest.mark.parametrize("kind", sorted(faults.CORRUPTIONS))
def test_a_damaged_step_is_set_aside_in_one_line_and_the_previous_one_restores(finished, restore_parts, tmp_path,
                                                                               kind):
    workdir = _copy(finished[0], tmp_path)
    faults.corrupt(str(workdir / "checkpoints" / str(STEPS)), kind)
    lines = []
    ckpt = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), every_steps=EVERY, keep=5)
    step, state = ckpt.restore_latest(*restore_parts, say=lambda *a, **k: lines.append(a[0]))
    ckpt.close()
    assert step == STEPS - EVERY and int(state["step"]) == step
    assert restore_parts[1].get_state()["next_index"] == step  # the data position came with it
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert lines[0].startswith(f"checkpoint step {STEPS} does not restore (") and "set_aside" in lines[0], lines[0]
    assert (workdir / "checkpoints_set_aside" / str(STEPS)).is_dir()  # kept for inspection, not deleted
    assert not (workdir / "checkpoints" / str(STEPS)).exists()


def test_with_no_restorable_step_the_run_stops_with_one_line(finished, restore_parts, tmp_path):
    workdir = _copy(finished[0], tmp_path)
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    kinds = sorted(faults.CORRUPTIONS)
    for i, s in enumerate(steps):
        faults.corrupt(str(workdir / "checkpoints" / str(s)), kinds[i % len(kinds)])
    ckpt = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), every_steps=EVERY, keep=5)
    with pytest.raises(RunError, match=r"no committed checkpoint restores \(set aside: .*\); inspect them") as e:
        ckpt.restore_latest(*restore_parts, say=lambda *a, **k: None)
    ckpt.close()
    assert "\n" not in str(e.value)
    assert sorted(int(p.name) for p in (workdir / "checkpoints_set_aside").iterdir()) == steps


def test_a_run_falls_back_past_damage_and_continues_bitwise(finished, tmp_path, capsys):
    """End to end: steps 6 and 4 damaged two ways; the run resumes at 2 and steps 3..6 repeat the
    unbroken run's losses bit for bit; metrics.jsonl holds each step once, the new ones as attempt 2."""
    original, losses, final = finished
    workdir = _copy(original, tmp_path)
    faults.corrupt(str(workdir / "checkpoints" / "6"), "array_file_truncated")
    faults.corrupt(str(workdir / "checkpoints" / "4"), "state_metadata_removed")
    again = train.train_and_evaluate(_config(), str(workdir), devices=jax.devices()[:1])
    out = capsys.readouterr().out
    assert out.count("does not restore") == 2 and "resumed from step 2" in out
    assert _losses(workdir) == losses
    assert again["zeroshot_top1"] == final["zeroshot_top1"]
    rows = [r for r in metrics.read_metrics(str(workdir)) if "train/loss" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["attempt"] for r in rows] == [1, 1, 2, 2, 2, 2]
    assert [a["start_step"] for a in run_identity.attempts(str(workdir))] == [0, 2]


def test_a_resume_at_the_last_step_evaluates_and_reports_no_throughput(finished, tmp_path):
    workdir = _copy(finished[0], tmp_path)
    final = train.train_and_evaluate(_config(), str(workdir), devices=jax.devices()[:1])
    assert final["steps"] == STEPS and "examples_per_sec" not in final
    assert final["zeroshot_top1"] == finished[2]["zeroshot_top1"]
    assert [r["step"] for r in metrics.read_metrics(str(workdir)) if "train/loss" in r] == list(range(1, STEPS + 1))


def test_a_resume_that_would_compute_something_else_is_refused_naming_each_field(finished):
    changed = {"seed": 1, "batch_size": 64, "objective.name": "sigmoid", "model.towers.image.width": 48,
               # these may change: only the first four are named
               "total_steps": 9, "checkpoint.every_steps": 3, "data.num_workers": 1}
    with pytest.raises(ConfigError) as e:
        train.train_and_evaluate(_config(**changed), str(finished[0]))
    problems = e.value.problems
    assert [p.split(":")[0] for p in problems[:-1]] == [
        "config.batch_size", "config.model.towers.image.width", "config.objective.name", "config.seed"]
    assert problems[1] == f"config.model.towers.image.width: 32 in the run in {finished[0]}, 48 now", problems
    assert "resume refused" in problems[-1] and "allow_batch_size_change" in problems[-1]


def test_a_batch_size_change_continues_at_the_same_example():
    """resume.allow_batch_size_change: the position is kept in examples, so after 3 batches of 32
    a 48-row iterator yields stream rows 96..143; a position that is not a whole 48-row batch
    (5 batches of 32 = 160 examples) is refused."""
    config = _tiny_config()

    def iterator(batch_size):
        return pipeline.make_train_iterator(config.data, global_batch_size=batch_size, seed=0,
                                            tokenizer=step_lib.build(config).tokenizer, shard_index=0, shard_count=1)
    small = iterator(32)
    rows = [next(small)["image"] for _ in range(5)]  # stream rows 0..159
    small.set_state({"next_index": 3, "examples_seen": 96})
    big = iterator(48)
    big.set_state(small.get_state())
    np.testing.assert_array_equal(next(big)["image"], np.concatenate(rows)[96:144])
    with pytest.raises(ConfigError, match=r"config.batch_size=48: the checkpoint's data position, 160 examples"):
        big.set_state({"next_index": 5, "examples_seen": 160})


def test_non_finite_steps_stop_the_run_naming_the_step_and_no_checkpoint_holds_them(tmp_path):
    """lr=1e30 blows the params up at step 2 and the loss is non-finite from step 3; with
    guard.non_finite=stop the run ends there in one line and every checkpoint is finite."""
    config = _config(**{"optim.lr": 1e30, "guard.non_finite": "stop"})
    with pytest.raises(RunError, match=r"^step (\d+) had a non-finite loss or gradient norm; its update was not "
                                       r"applied .*config.guard.non_finite='stop'") as e:
        train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    bad_step = int(str(e.value).split()[1])
    rows = [r for r in metrics.read_metrics(str(tmp_path)) if "train/loss" in r]
    assert rows[-1]["step"] == bad_step and not np.isfinite(rows[-1]["train/loss"])
    assert rows[-1]["train/skipped_steps"] == 1 and all(np.isfinite(r["train/loss"]) for r in rows[:-1])
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), every_steps=EVERY, keep=5)
    assert ckpt.all_steps() and max(ckpt.all_steps()) < bad_step
    for s in ckpt.all_steps():
        state = ckpt.restore_state(s, None)
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"])), s
    ckpt.close()


def _mount_tmpfs(path, size: str):
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a small tmpfs here to fill it ({proc.stderr.strip()}); tools/faults.py has the case")


def test_a_failed_async_save_surfaces_at_once_and_the_last_commit_still_restores(finished, restore_parts, tmp_path):
    """Disk full mid-save (a tmpfs with room for one checkpoint): the error comes at the next
    check, in one line naming both steps, and the committed step restores."""
    source = ckpt_lib.Checkpointer(str(finished[0] / "checkpoints"), every_steps=EVERY, keep=5)
    state = source.restore_state(STEPS, restore_parts[0])
    source.close()
    size = sum(f.stat().st_size for f in (finished[0] / "checkpoints" / str(STEPS)).rglob("*") if f.is_file())
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, str(int(size * 1.3)))
    try:
        ckpt = ckpt_lib.Checkpointer(str(disk / "checkpoints"), every_steps=1, keep=5)
        assert ckpt.save(1, state, restore_parts[1], force=True)
        ckpt.wait()
        with pytest.raises(RunError) as e:
            # The disk fills while the save starts (an error now) or in its background commit.
            ckpt.save(2, state, restore_parts[1], force=True)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # as the trainer's loop: check_for_errors once per step
                ckpt.check_for_errors()
                time.sleep(0.05)
        message = str(e.value)
        assert "\n" not in message and message.startswith("checkpoint save of step 2 failed (")
        assert "No space left on device" in message and "step 1 is the last committed checkpoint" in message
        ckpt.close()
        again = ckpt_lib.Checkpointer(str(disk / "checkpoints"), every_steps=1, keep=5)
        step, _ = again.restore_latest(*restore_parts, say=lambda *a, **k: None)
        again.close()
        assert step == 1
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_retention_keeps_the_step_this_run_restored_from(finished, restore_parts, tmp_path):
    """keep=1 would delete every older step after a new save; the one the run resumed from (the
    one step known to restore) stays until a later start restores another."""
    workdir = _copy(finished[0], tmp_path)
    ckpt = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), every_steps=1, keep=1, async_save=False)
    step, state = ckpt.restore_latest(*restore_parts, say=lambda *a, **k: None)
    for later in (step + 1, step + 2):
        ckpt.save(later, state, restore_parts[1], force=True)
    ckpt.wait()
    assert ckpt.all_steps() == [step, step + 2]
    ckpt.close()
