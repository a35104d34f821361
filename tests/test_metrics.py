"""Seeing a run: metrics.jsonl across resumes, TensorBoard purge, W&B sink, device memory,
compile time, the profiler window."""
import glob
import json
import os
import struct
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import metrics, profiling


def _log(workdir, resume_step, rows, **kw):
    logger = metrics.MetricLogger(str(workdir), tensorboard=False, resume_step=resume_step, **kw)
    for step, values in rows:
        logger.write(step, values)
    logger.close()
    return logger


def test_resume_drops_replayed_rows_and_numbers_attempts(tmp_path):
    _log(tmp_path, None, [(0, {"eval/acc": 0.1}), (1, {"train/loss": 3.0}), (2, {"train/loss": 2.0}),
                          (2, {"eval/acc": 0.2}), (3, {"train/loss": 1.0})])
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "train/lo')  # killed mid-line
    # Resumed from the checkpoint at step 2: steps 3.. are logged again by attempt 2.
    logger = _log(tmp_path, 2, [(3, {"train/loss": 1.5}), (4, {"train/loss": 1.2})])
    assert logger.attempt == 2
    rows = metrics.read_metrics(str(tmp_path))
    assert [(r["step"], r["attempt"]) for r in rows] == [(0, 1), (1, 1), (2, 1), (2, 1), (3, 2), (4, 2)]
    assert rows[3]["eval/acc"] == 0.2 and rows[4]["train/loss"] == 1.5
    lines = open(tmp_path / "metrics.jsonl").read().splitlines()
    assert all(json.loads(line) for line in lines) and not os.path.exists(tmp_path / "metrics.jsonl.tmp")

    # A restart from scratch (no checkpoint yet) replays everything: attempt 3 alone remains.
    _log(tmp_path, None, [(0, {"eval/acc": 0.1})])
    assert [(r["step"], r["attempt"]) for r in metrics.read_metrics(str(tmp_path))] == [(0, 3)]
    _log(tmp_path, 0, [(1, {"train/loss": 2.0})], attempt=7)  # the number run.jsonl gave this start
    assert [(r["step"], r["attempt"]) for r in metrics.read_metrics(str(tmp_path))] == [(0, 3), (1, 7)]


def test_resume_keeps_a_file_without_attempts_and_disabled_writes_nothing(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train/loss": 1.0}\n{"step": 2, "train/loss": 0.5}')
    assert _log(tmp_path, 2, [(3, {"train/loss": 0.25})]).attempt == 2  # older rows count as attempt 1
    assert [r["step"] for r in metrics.read_metrics(str(tmp_path))] == [1, 2, 3]
    before = (tmp_path / "metrics.jsonl").read_text()
    _log(tmp_path, 0, [(1, {"train/loss": 9.0})], enabled=False)  # another process: leaves the file alone
    assert (tmp_path / "metrics.jsonl").read_text() == before


def _tb_events(tb_dir):
    """The Event protos of every events file in `tb_dir` (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto import event_pb2
    events = []
    for path in sorted(glob.glob(os.path.join(tb_dir, "events.out.tfevents.*"))):
        data, pos = open(path, "rb").read(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            events.append((path, event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])))
            pos += 12 + n + 4
    return events


def test_resume_purges_replayed_tensorboard_steps(tmp_path):
    logger = metrics.MetricLogger(str(tmp_path), resume_step=None)
    for step in (1, 2, 3):
        logger.write(step, {"train/loss": float(step)})
    logger.close()
    assert not [e for _, e in _tb_events(tmp_path / "tb") if e.HasField("session_log")]  # first start: no purge
    logger = metrics.MetricLogger(str(tmp_path), resume_step=2)
    logger.write(3, {"train/loss": 30.0})
    logger.close()
    # TensorBoard drops earlier events from the step of a START session log on: steps > 2 here.
    starts = [e.step for _, e in _tb_events(tmp_path / "tb") if e.HasField("session_log")
              and e.session_log.status == e.session_log.START]
    assert starts == [3]


def test_wandb_missing_is_one_clear_error(tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ImportError, match=r"config.wandb.project is set but wandb is not installed: "
                                          r"pip install 'mmjax\[wandb\]'"):
        metrics.MetricLogger(str(tmp_path), enabled=False, wandb={"project": "p"})
    metrics.MetricLogger(str(tmp_path), enabled=False, wandb={"project": ""}).close()  # off: no import


def _wandb_history(run_file):
    """The history rows of a W&B offline run file (LevelDB-log framing of `Record` protos: 7-byte
    file header, 32 KiB blocks, 7-byte chunk headers). W&B ships no reader; this is test-only."""
    from wandb.proto import wandb_internal_pb2
    data, pos, buf, rows = open(run_file, "rb").read(), 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (n == 0 and kind == 0):  # block padding
            pos += left
            continue
        buf, pos = buf + data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record.FromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def test_wandb_sink_offline_keeps_one_run_across_resumes(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = {"project": "mmjax-test", "entity": "", "name": "tiny", "mode": "offline"}
    _log(tmp_path, None, [(1, {"train/loss": 0.75}), (2, {"train/loss": 0.5, "eval/r1": [0.1, 0.2]})],
         wandb=cfg, run_config={"seed": 0, "optim": {"lr": 1e-3}})
    run_id = (tmp_path / "wandb_run_id").read_text()
    time.sleep(1.1)  # offline run folders are named to the second: the resume must not land in the same one
    _log(tmp_path, 2, [(3, {"train/loss": 0.25})], wandb=cfg, run_config={"seed": 0})
    assert (tmp_path / "wandb_run_id").read_text() == run_id
    runs = sorted(glob.glob(str(tmp_path / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb")))
    assert runs, os.listdir(tmp_path / "wandb")
    history = [row for run in runs for row in _wandb_history(run)]
    assert [(r["_step"], r["train/loss"]) for r in history] == [(1, 0.75), (2, 0.5), (3, 0.25)]
    assert "eval/r1" not in history[1]  # scalars only, as in TensorBoard
    _log(tmp_path, None, [(1, {"train/loss": 0.5})], wandb=cfg)  # from scratch again: a new W&B run
    assert (tmp_path / "wandb_run_id").read_text() != run_id


class _FakeDevice:
    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def test_device_memory_is_empty_on_cpu_and_the_fullest_device_elsewhere(monkeypatch):
    assert jax.default_backend() == "cpu" and profiling.device_memory() == {}
    fake = [_FakeDevice({"bytes_in_use": 1e9, "peak_bytes_in_use": 5e9, "bytes_limit": 8e9}),
            _FakeDevice({"bytes_in_use": 2e9, "peak_bytes_in_use": 3e9}), _FakeDevice(None)]
    monkeypatch.setattr(jax, "local_devices", lambda: fake)
    assert profiling.device_memory() == {"mem/bytes_in_use_gb": 2.0, "mem/peak_bytes_in_use_gb": 5.0}


def test_timed_compile_returns_a_donating_compiled_step():
    step = jax.jit(lambda state, x: (state + x.sum(), {"mean": x.mean()}), donate_argnums=0)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
    state, x = jnp.zeros((2,)), jnp.ones((3,))
    with jax.set_mesh(mesh):
        compiled, seconds = profiling.timed_compile(step, state, x)
        new_state, out = compiled(state, x)
        new_state, out = compiled(new_state, x)
    assert seconds > 0
    np.testing.assert_allclose(new_state, [6.0, 6.0])
    assert float(out["mean"]) == 1.0
    assert state.is_deleted()  # donation kept: the state buffer was reused
    with pytest.raises((TypeError, ValueError)):  # never re-traces
        compiled(new_state, jnp.ones((4,)))


def _run_steps(workdir, profile_cfg, num_steps=5, first_step=0):
    """A toy loop shaped like the trainer's, from `first_step` (a resume); returns the steps it traced."""
    window = profiling.ProfileWindow(profile_cfg, str(workdir))
    step_fn = jax.jit(lambda s: s * 2.0 + 1.0, donate_argnums=0)
    state, traced = jnp.zeros((8,)), []
    for step in range(first_step, num_steps):
        window.step_started(step)
        if window.tracing:
            traced.append(step)
        state = step_fn(state)
        window.step_finished(step + 1, state)
    window.close()
    return traced


def test_profile_window_traces_the_chosen_steps_only(tmp_path):
    assert _run_steps(tmp_path / "on", {"start_step": 2, "num_steps": 2}) == [2, 3]
    traces = glob.glob(str(tmp_path / "on" / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
    assert _run_steps(tmp_path / "off", {"start_step": -1, "num_steps": 3}) == []
    assert not os.path.exists(tmp_path / "off" / "profile")
    assert _run_steps(tmp_path / "late", {"start_step": 1, "num_steps": 2}, first_step=3) == []  # resumed after it
    assert _run_steps(tmp_path / "mid", {"start_step": 1, "num_steps": 3}, first_step=2) == [2, 3]  # inside it
    # A window running past the end of the run is closed with it, its trace written.
    assert _run_steps(tmp_path / "end", {"start_step": 3, "num_steps": 10}) == [3, 4]
    assert glob.glob(str(tmp_path / "end" / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))
