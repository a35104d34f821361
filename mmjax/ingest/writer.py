"""Writing: one shard per task, resumably, and the TFDS metadata over every split in the out dir.

`convert_shard` is the whole per-shard job (read, verify, serialise, write) as a pure top-level
function of a picklable task, so multiprocessing and Beam run it unchanged. A shard is written
under a temporary name in `<out>/.ingest/<split>/` (where TFDS never looks), renamed into place
when complete, and only then is its `ShardResult` JSON written (also tmp + rename): a result
file therefore always means a whole shard, and a rerun skips exactly the shards that have one.

The driver keeps `<out>/.ingest/<split>/plan.json` (dataset name, features, a fingerprint of the
inputs): a rerun with the same inputs resumes, different inputs need --overwrite, and a second
split must agree on the name and features (ClassLabel names included). `finalize` then writes
dataset_info.json + features.json from the results of all splits (explicit shard lengths, so no
TensorFlow is needed) and `ingest_report_<split>.json` listing every skipped member.
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import hashlib
import json
import os
import re
import shutil

from mmjax.ingest import checks, sources
from mmjax.ingest.spec import FeatureSpec, ShardResult, ShardTask, UsageError, features_for, to_example

FILE_FORMAT = "array_record"
TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"  # TFDS's default shard file name
STATE_DIR = ".ingest"
_NAME = re.compile(r"^[a-zA-Z]\w*$")  # what TFDS accepts as a dataset name
_SPLIT = re.compile(r"^\w+$")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def default_name(out: str) -> str:
    """The out dir's base name as a TFDS dataset name (`.../laion-400m/1.0.0` -> "laion_400m")."""
    path = os.path.abspath(out)
    base = os.path.basename(path)
    if _VERSION.match(base):
        base = os.path.basename(os.path.dirname(path))
    name = re.sub(r"_+", "_", re.sub(r"\W", "_", base.lower())).strip("_")
    return name if _NAME.match(name) else f"ds_{name}" if name else "dataset"


def shard_path(out: str, name: str, split: str, index: int, num_shards: int) -> str:
    return os.path.join(out, f"{name}-{split}.{FILE_FORMAT}-{index:05d}-of-{num_shards:05d}")


def make_tasks(units, spec: FeatureSpec, out: str, name: str, split: str) -> list[ShardTask]:
    if not _NAME.match(name):
        raise UsageError(f"--name {name!r} is not a valid TFDS dataset name (a letter, then letters, digits or _)")
    if not _SPLIT.match(split):
        raise UsageError(f"--split {split!r} must be letters, digits or _")
    out = os.path.abspath(out)
    state = os.path.join(out, STATE_DIR, split)
    tasks = []
    for i, (source, inputs) in enumerate(units):
        path = shard_path(out, name, split, i, len(units))
        tasks.append(ShardTask(source, tuple(inputs), spec, split, i, len(units), path,
                               os.path.join(state, os.path.basename(path) + ".json")))
    return tasks


# ------------------------------------------------------------------ the per-shard job

def convert_shard(task: ShardTask) -> ShardResult:
    """Converts one shard (or returns its recorded result if it is already done)."""
    if is_done(task):
        return _load_result(task.result_path)
    from array_record.python.array_record_module import ArrayRecordWriter

    features = features_for(task.spec)
    shard = os.path.basename(task.out_path)
    origin = task.inputs[0] if task.source in ("tar", "h5") else None
    os.makedirs(os.path.dirname(task.result_path), exist_ok=True)
    tmp = f"{task.result_path[:-len('.json')]}.tmp-{os.getpid()}"
    examples, skipped = 0, []
    writer = ArrayRecordWriter(tmp, "group_size:1")
    try:
        for raw in sources.read(task):
            try:
                if isinstance(raw, checks.Skip):
                    raise raw
                record = features.serialize_example(to_example(raw, task.spec))
            except checks.Skip as s:
                entry = {"shard": shard, "member": s.member or raw.member, "reason": s.reason, "detail": s.detail}
                skipped.append({**entry, "source": origin} if origin else entry)
                continue
            writer.write(record)
            examples += 1
        writer.close()
        os.replace(tmp, task.out_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    result = ShardResult(shard, task.index, examples, os.path.getsize(task.out_path), skipped)
    write_json(task.result_path, dataclasses.asdict(result))
    return result


def is_done(task: ShardTask) -> bool:
    return os.path.isfile(task.result_path) and os.path.isfile(task.out_path)


def write_json(path: str, value) -> None:
    """Atomic: a reader sees the old file or the whole new one, never a part."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, ensure_ascii=False)
    os.replace(tmp, path)


def _load_result(path: str) -> ShardResult:
    with open(path, encoding="utf-8") as f:
        return ShardResult(**json.load(f))


def _load_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ------------------------------------------------------------------ driver: plan, resume, finalize

def _plan_path(out: str, split: str) -> str:
    return os.path.join(out, STATE_DIR, split, "plan.json")


def _plans(out: str) -> dict[str, dict]:
    return {os.path.basename(os.path.dirname(p)): _load_json(p)
            for p in sorted(glob.glob(os.path.join(out, STATE_DIR, "*", "plan.json")))}


def prepare(tasks: list[ShardTask], out: str, name: str, split: str, spec: FeatureSpec, overwrite: bool) -> None:
    """Checks `out` and the other splits, records this split's plan; raises UsageError on a conflict."""
    out = os.path.abspath(out)
    try:
        os.makedirs(os.path.join(out, STATE_DIR), exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out} cannot be created: {e.strerror or e}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out} is not writable")
    fingerprint = hashlib.sha256(json.dumps([[t.source, t.inputs] for t in tasks]).encode()).hexdigest()
    plan = {"name": name, "split": split, "spec": spec.to_json(), "num_shards": len(tasks), "fingerprint": fingerprint}
    for other, theirs in _plans(out).items():
        if other == split:
            continue
        if theirs["name"] != name:
            raise UsageError(f"--out {out} holds dataset {theirs['name']!r} (split {other!r}); give --name "
                             f"{theirs['name']} to add split {split!r} to it, or use another --out")
        if theirs["spec"] != plan["spec"]:
            what = ("ClassLabel names" if theirs["spec"]["kind"] == spec.kind else "features")
            raise UsageError(f"split {split!r} and split {other!r} in {out} disagree on their {what} "
                             f"({_spec_summary(plan['spec'])} vs {_spec_summary(theirs['spec'])}); "
                             "give both the same --class-names FILE")
    mine = _plan_path(out, split)
    existing = _load_json(mine) if os.path.isfile(mine) else None
    stale = sorted(glob.glob(os.path.join(out, f"*-{glob.escape(split)}.{FILE_FORMAT}-*")))
    if existing == plan:
        return  # the same conversion: resume it
    if (existing is not None or stale) and not overwrite:
        why = "from other inputs or options" if existing else "by something other than mmjax.ingest"
        raise UsageError(f"--out {out} already holds split {split!r}, written {why}; pass --overwrite to "
                         "replace it, or use another --split / --out")
    for path in stale:
        os.remove(path)
    shutil.rmtree(os.path.dirname(mine), ignore_errors=True)
    os.makedirs(os.path.dirname(mine))
    write_json(mine, plan)


def _spec_summary(spec: dict) -> str:
    names = spec["class_names"]
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return f"{spec['kind']}, {len(names)} classes [{shown}]" if names else spec["kind"]


def pending(tasks: list[ShardTask]) -> list[ShardTask]:
    return [t for t in tasks if not is_done(t)]


def finalize(out: str, split: str) -> dict:
    """Writes the TFDS metadata over every split in `out` and this split's report; returns the report."""
    import tensorflow_datasets as tfds

    out = os.path.abspath(out)
    plans = _plans(out)
    split_infos, results = [], {}
    for name, plan in plans.items():
        found = []
        for i in range(plan["num_shards"]):
            path = shard_path(out, plan["name"], name, i, plan["num_shards"])
            result = os.path.join(out, STATE_DIR, name, os.path.basename(path) + ".json")
            if not (os.path.isfile(result) and os.path.isfile(path)):
                raise UsageError(f"split {name!r} in {out} is incomplete (shard {i} of {plan['num_shards']} not "
                                 "written): rerun its command to finish it")
            found.append(_load_result(result))
        results[name] = found
        split_infos.append(tfds.core.SplitInfo(name=name, shard_lengths=[r.examples for r in found],
                                               num_bytes=sum(r.num_bytes for r in found)))
    plan = plans[split]
    tfds.folder_dataset.write_metadata(
        data_dir=out, features=features_for(FeatureSpec.from_json(plan["spec"])), split_infos=split_infos,
        filename_template=TEMPLATE, check_data=False,
        description=f"Converted by `python -m mmjax.ingest` ({plan['spec']['kind']}).")
    skipped = [entry for r in results[split] for entry in r.skipped]
    report = {
        "split": split,
        "examples": sum(r.examples for r in results[split]),
        "shards": len(results[split]),
        "skipped": len(skipped),
        "skipped_by_reason": dict(sorted(collections.Counter(e["reason"] for e in skipped).items())),
        "reasons": {k: checks.REASONS[k] for k in sorted({e["reason"] for e in skipped})},
        "members": skipped,
    }
    write_json(report_path(out, split), report)
    return report


def report_path(out: str, split: str) -> str:
    return os.path.join(os.path.abspath(out), f"ingest_report_{split}.json")


def summary(report: dict, out: str) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in report["skipped_by_reason"].items())
    return (f"mmjax.ingest {report['split']}: {report['examples']} examples in {report['shards']} shards -> {out}; "
            f"skipped {report['skipped']}" + (f" ({reasons})" if reasons else "")
            + f"; report {report_path(out, report['split'])}")
