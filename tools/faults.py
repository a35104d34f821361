"""Fault injection for mmjax runs: damage a committed checkpoint the ways disks and people do.

`corrupt(step_dir, kind)` applies one of CORRUPTIONS to a committed checkpoint step directory
(<workdir>/checkpoints/<step>). The trainer must set such a step aside and fall back to the
previous one (mmjax.checkpoint.Checkpointer.restore_latest); tests/test_reliability.py and the
harness below use the same cases.
"""
from __future__ import annotations

import glob
import os


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
