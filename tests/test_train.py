"""The trainer end to end: 1 vs 8 devices, exact resume after SIGKILL, CLI config errors."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from mmjax import metrics, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "clip_digits.py")


def _tiny_config(**overrides):
    sys.path.insert(0, str(ROOT))
    from configs import clip_digits
    config = clip_digits.get_config("model=tiny")
    with config.unlocked():
        for key, value in overrides.items():
            node = config
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
    return config


def _losses(workdir) -> dict[int, float]:
    """Per-step train loss; for steps logged twice (a killed run and its resume) the last wins."""
    return {r["step"]: r["train/loss"] for r in metrics.read_metrics(str(workdir)) if "train/loss" in r}


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
    import jax
    workdir = tmp_path_factory.mktemp("one")
    final = train.train_and_evaluate(_tiny_config(total_steps=5, **{"checkpoint.every_steps": 100}), str(workdir),
                                     devices=jax.devices()[:1])
    return _losses(workdir), final


# Each strategy is the same math on a different layout: only reduction order may differ. FSDP and
# tensor parallelism are run together (their specs alone: test_parallel_optim.py), to keep the suite short.
STRATEGIES = {
    "data": {"mesh.data": 8},
    "fsdp_tensor": {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2, "sharding.fsdp_min_size": 0,
                    "sharding.tensor_parallel": True},
    # the loss with explicit collectives (shard_map, all_gather) inside the trainer's step
    "data_gathered_loss": {"mesh.data": 8, "objective.name": "softmax_gathered"},
}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_sharding_strategies_match_one_device(tmp_path, one_device_run, strategy):
    import jax
    l1, final1 = one_device_run
    overrides = {"total_steps": 5, "checkpoint.every_steps": 100, **STRATEGIES[strategy]}
    final8 = train.train_and_evaluate(_tiny_config(**overrides), str(tmp_path), devices=jax.devices()[:8])
    l8 = _losses(tmp_path)
    assert sorted(l1) == sorted(l8) == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([l8[s] for s in range(1, 6)], [l1[s] for s in range(1, 6)], rtol=0, atol=1e-5)
    assert l1[5] < l1[1]  # it trains
    assert final8["zeroshot_top1"] == pytest.approx(final1["zeroshot_top1"], abs=1e-3)


def _run_cli(workdir, *flags, env_extra=None):
    env = {**os.environ, "XLA_FLAGS": "", **(env_extra or {})}  # one CPU device: fastest compile
    cmd = [sys.executable, "-m", "mmjax.main", f"--config={CONFIG}:model=tiny,steps=12", f"--workdir={workdir}",
           "--config.checkpoint.every_steps=4", "--config.tensorboard=False", *flags]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _final_params(workdir):
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), item_names=("state",))
    step = manager.latest_step()
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    return step, state


def test_exact_resume_after_sigkill_and_sigterm(tmp_path):
    """Straight 12 steps == 9 steps and SIGKILL mid-save, restart, SIGTERM after step 10, restart:
    losses and params bitwise equal.
    The killed and resumed runs read their data with two worker processes, the straight one in
    its own process: the stream and its checkpointed position do not depend on the workers."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    p_straight = _run_cli(os.path.relpath(straight, ROOT))  # relative, as the README's `--workdir workdirs/...`
    # Killed right after step 9 while its save is in flight; step 8's checkpoint is committed.
    p_killed = _run_cli(killed, "--config.debug.sigkill_after_step=9", "--config.data.num_workers=2")
    out_straight, _ = p_straight.communicate(timeout=300)
    out_killed, _ = p_killed.communicate(timeout=300)
    assert p_straight.returncode == 0, out_straight
    assert p_killed.returncode == -9, out_killed
    assert "SIGKILL after step 9" in out_killed

    # A partial checkpoint such as a kill mid-write leaves: it must never be restored.
    partial = killed / "checkpoints" / "11.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\x00" * 16)

    # The resumed run is preempted (SIGTERM after step 10): it saves step 10 and exits 143 ...
    p_resumed = _run_cli(killed, "--config.data.num_workers=2", "--config.debug.sigterm_after_step=10")
    out_resumed, _ = p_resumed.communicate(timeout=300)
    assert p_resumed.returncode == 143, out_resumed
    resumed_from = int(out_resumed.split("resumed from step ")[1].split()[0])
    assert resumed_from in (8, 9), out_resumed  # 9 only if its in-flight save happened to commit
    assert not partial.exists()
    assert "SIGTERM: saved step 10 in " in out_resumed and "Traceback" not in out_resumed
    # ... and the next start continues from there.
    p_last = _run_cli(killed)
    out_last, _ = p_last.communicate(timeout=300)
    assert p_last.returncode == 0, out_last
    assert "resumed from step 10" in out_last
    rows = [r for r in metrics.read_metrics(str(killed)) if "train/loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 13))  # each step once, replayed rows replaced
    assert [r["attempt"] for r in rows][resumed_from:] == [2] * (10 - resumed_from) + [3, 3]

    ls, lk = _losses(straight), _losses(killed)
    assert sorted(ls) == list(range(1, 13))
    for s in range(resumed_from + 1, 13):
        assert lk[s] == ls[s], (s, lk[s], ls[s])  # bitwise, not approximately
    step_s, state_s = _final_params(straight)
    step_k, state_k = _final_params(killed)
    assert step_s == step_k == 12
    import jax
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(state_s)[0], jax.tree_util.tree_leaves(state_k)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
    final_line = out_straight.strip().splitlines()[-1]
    assert final_line.startswith("final: ") and " zeroshot_top1=" in final_line and " i2t_r1=" in final_line


@pytest.mark.parametrize("flag, message", [
    ("--config.optim.lrr=0.1", r"unknown config key 'lrr' in config.optim \(did you mean 'lr'\?\); "
                               r"valid keys: \['b1', 'b2', .*'lr', .*'weight_decay'\]"),
    ("--config.optimm.lr=0.1", r"unknown config key 'optimm' in config .*valid keys: \[.*'optim'"),
    ("--config.batch_size=abc", r"config batch_size='abc': expected int"),
    ("--config.optim.lr=fast", r"config optim.lr='fast': expected float"),
])
def test_cli_rejects_bad_config_keys(tmp_path, flag, message):
    proc = subprocess.run([sys.executable, "-m", "mmjax.main", f"--config={CONFIG}:model=tiny",
                           f"--workdir={tmp_path}", flag], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    import re
    assert re.search(message, proc.stderr, re.S), proc.stderr[-2000:]


def test_four_modality_binding_trains_with_modality_dropout(tmp_path):
    """bind_avdigits (tiny) end to end with half of audio/points/text dropped per example."""
    from configs import bind_avdigits
    import jax
    config = bind_avdigits.get_config("model=tiny,steps=4,drop=0.5")
    with config.unlocked():
        config.tensorboard = False
    final = train.train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:2])
    for m in ("image", "audio", "points"):
        assert 0.0 <= final[f"zeroshot_top1_{m}"] <= 1.0
    for pair in ("audio_image", "points_image", "audio_text", "image_text"):
        assert {f"r1_{pair}", f"class_r1_{pair}"} <= set(final)
    rows = [r for r in metrics.read_metrics(str(tmp_path)) if "train/loss" in r]
    assert len(rows) == 4 and all(np.isfinite(r["train/loss"]) for r in rows)
    assert {"train/image_audio/loss", "train/image_points/loss", "train/image_text/loss"} <= set(rows[-1])
