"""Config values checked at start-up, before anything compiles or a workdir is made (mmjax.main).

`check(config, workdir)` raises `ConfigError` listing every problem found, one line each naming
the field and its valid range or choices:

    config.batch_size=0: must be an integer > 0
    config.optim.lr=inf: must be a finite number > 0
    config.objective.name='infonce': unknown objective; valid: ['bind', 'cwcl', ...]
    config.model.towers.image.patch_size=5 does not divide config.data.image.shape[0]=28

Keys and types are mmjax.config_utils' job (locked configs, typed overrides); this checks values:
sizes and steps (RULES), names against the registries (`_choices`), patch sizes against the
inputs they cut (`_tower_problems`), and the paths a run reads or writes. Optional groups a config
lacks are skipped. Only registries are imported: nothing touches a device or compiles.
"""
from __future__ import annotations

import difflib
import math
import os
from typing import Any, Callable

from mmjax import accumulate, optim
from mmjax.data.datasets import DATASETS
from mmjax.data.example import ON_BAD_INPUT
from mmjax.data.modalities import MODALITIES
from mmjax.data.tokenizer import TOKENIZERS
from mmjax.errors import ConfigError
from mmjax.evals import EVALUATORS
from mmjax.models.registry import ENCODERS, MODELS
from mmjax.objectives import OBJECTIVES
from mmjax.parallel import MESH_AXES

GUARD_MODES = ("skip", "stop")  # config.guard.non_finite
WANDB_MODES = ("online", "offline", "disabled")  # config.wandb.mode
NO_EVAL = "none"  # config.evals.<name>.type that turns an evaluation off

_MISSING = object()
Rule = tuple[str, Callable[[Any], bool]]  # (what the value must be, test)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


POSITIVE: Rule = ("an integer > 0", lambda v: _int(v) and v > 0)
COUNT: Rule = ("an integer >= 0", lambda v: _int(v) and v >= 0)
EVERY: Rule = ("an integer >= 0 (0: off)", COUNT[1])
STEP_OR_OFF: Rule = ("a step >= 0, or -1 (off)", lambda v: _int(v) and v >= -1)
WORKERS: Rule = ("an integer >= 0, or -1 (one per CPU core but one)", STEP_OR_OFF[1])
MESH_AXIS: Rule = ("an integer > 0, or -1 (the devices the other axes leave)", lambda v: _int(v) and v != 0 and v >= -1)
RATE: Rule = ("a finite number > 0", lambda v: _number(v) and v > 0)
NON_NEGATIVE: Rule = ("a finite number >= 0", lambda v: _number(v) and v >= 0)
CLIP: Rule = ("a finite number >= 0 (0: off)", NON_NEGATIVE[1])
FRACTION: Rule = ("a number in [0, 1]", lambda v: _number(v) and 0 <= v <= 1)
DECAY: Rule = ("a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1)
IMAGE_SHAPE: Rule = ("(height, width, channels), integers > 0",
                     lambda v: isinstance(v, (tuple, list)) and len(v) == 3 and all(POSITIVE[1](x) for x in v))

RULES: tuple[tuple[str, Rule], ...] = (
    ("batch_size", POSITIVE), ("total_steps", POSITIVE), ("log_every_steps", POSITIVE),
    ("eval.batch_size", POSITIVE), ("eval.every_steps", EVERY),
    ("checkpoint.every_steps", POSITIVE), ("checkpoint.keep", POSITIVE), ("accumulation.steps", POSITIVE),
    ("optim.lr", RATE), ("optim.warmup_steps", COUNT), ("optim.weight_decay", NON_NEGATIVE),
    ("optim.grad_clip_norm", CLIP), ("optim.min_lr_ratio", FRACTION), ("optim.b1", DECAY), ("optim.b2", DECAY),
    ("optim.eps", RATE), ("guard.max_consecutive_skips", POSITIVE),
    ("profile.start_step", STEP_OR_OFF), ("profile.num_steps", POSITIVE),
    ("debug.sigkill_after_step", STEP_OR_OFF), ("debug.sigterm_after_step", STEP_OR_OFF),
    ("data.num_workers", WORKERS), ("data.num_threads", COUNT), ("data.prefetch_buffer_size", COUNT),
    ("data.image.shape", IMAGE_SHAPE), ("data.audio.num_frames", POSITIVE), ("data.audio.logmel.n_mels", POSITIVE),
    ("data.audio.logmel.sample_rate", POSITIVE), ("data.points.num_points", POSITIVE),
    ("data.text.max_len", POSITIVE),
    *((f"mesh.{axis}", MESH_AXIS) for axis in MESH_AXES),
)
# Every tower (model.towers.<m>, model.encoder, model.decoder) and MultiMAE's model.modalities.<m>.
TOWER_RULES = tuple((f, POSITIVE) for f in ("width", "depth", "num_heads", "mlp_dim", "patch_size", "patch_time",
                                             "patch_freq", "patch[0]", "patch[1]", "num_groups", "group_size",
                                             "pointnet_dim"))
# A patched modality's input grid (config fields), and the tower fields that cut it, in the same order.
GRID = {"image": ("data.image.shape[0]", "data.image.shape[1]"),
        "audio": ("data.audio.num_frames", "data.audio.logmel.n_mels")}
PATCH_FIELDS = (("patch_size", "patch_size"), ("patch_time", "patch_freq"), ("patch[0]", "patch[1]"))
# A point tower picks num_groups centres of group_size neighbours among the cloud's points.
POINT_GROUPS = (("num_groups", "data.points.num_points"), ("group_size", "data.points.num_points"))


def _choices() -> tuple[tuple[str, str, list[str]], ...]:
    """(field, what, valid names): read from the registries now, projects' own entries included."""
    return (("objective.name", "objective", OBJECTIVES.names()), ("data.name", "dataset", DATASETS.names()),
            ("model.kind", "model kind", MODELS.names()), ("optim.name", "optimizer", list(optim.OPTIMIZERS)),
            ("optim.schedule", "schedule", list(optim.SCHEDULES)),
            ("accumulation.mode", "accumulation mode", list(accumulate.MODES)),
            ("guard.non_finite", "guard mode", list(GUARD_MODES)), ("wandb.mode", "wandb mode", list(WANDB_MODES)),
            ("data.on_bad_input", "mode", list(ON_BAD_INPUT)),
            ("data.text.tokenizer", "tokenizer", sorted(TOKENIZERS)))


def get(config, path: str, default=_MISSING):
    """config at a dotted path, with `[i]` indexing a sequence ("data.image.shape[0]"); `default` if absent."""
    node = config
    for part in path.split("."):
        name, _, index = part.partition("[")
        if not hasattr(node, "keys") or name not in node:
            return default
        node = node[name]
        if index:
            try:
                node = node[int(index.rstrip("]"))]
            except (TypeError, IndexError):
                return default
    return node


def _range(config, path: str, rule: Rule) -> list[str]:
    value = get(config, path)
    what, ok = rule
    return [] if value is _MISSING or ok(value) else [f"config.{path}={value!r}: must be {what}"]


def _choice(config, path: str, what: str, valid: list[str]) -> list[str]:
    value = get(config, path)
    if value is _MISSING or value in valid:
        return []
    hint = difflib.get_close_matches(str(value), valid, n=1)
    guess = f" (did you mean {hint[0]!r}?)" if hint else ""
    return [f"config.{path}={value!r}: unknown {what}{guess}; valid: {valid}"]


def _towers(config) -> list[tuple[str, str]]:
    """(config path, modality) of every tower-like group; modality "" for a decoder."""
    model, out = config.get("model", {}), []
    for m in model.get("towers", {}):
        out.append((f"model.towers.{m}", m))
    for m in model.get("modalities", {}):  # MultiMAE
        out.append((f"model.modalities.{m}", m))
    if "encoder" in model and hasattr(model.encoder, "keys"):
        out.append(("model.encoder", model.get("modality", "")))
    if "decoder" in model and hasattr(model.decoder, "keys"):
        out.append(("model.decoder", ""))
    return out


def _tower_problems(config) -> list[str]:
    problems = []
    for path, modality in _towers(config):
        tower = get(config, path)
        problems += [p for field, rule in TOWER_RULES for p in _range(config, f"{path}.{field}", rule)]
        if "encoder" in tower:
            problems += _choice(config, f"{path}.encoder", "encoder", ENCODERS.names())
        width, heads = tower.get("width"), tower.get("num_heads")
        if POSITIVE[1](width) and POSITIVE[1](heads) and width % heads:
            problems.append(f"config.{path}.width={width} does not split into num_heads={heads} heads")
        bad: dict[str, list[str]] = {}  # tower field -> the input sizes it does not divide
        for fields in PATCH_FIELDS:
            for field, grid_path in zip(fields, GRID.get(modality, ())):
                patch, size = get(tower, field), get(config, grid_path)
                if POSITIVE[1](patch) and POSITIVE[1](size) and size % patch:
                    bad.setdefault(field, []).append(f"config.{grid_path}={size}")
        problems += [f"config.{path}.{field}={get(tower, field)} does not divide {' and '.join(sizes)}"
                     for field, sizes in bad.items()]
        for field, count_path in POINT_GROUPS if modality == "points" else ():
            value, count = get(tower, field), get(config, count_path)
            if POSITIVE[1](value) and POSITIVE[1](count) and value > count:
                problems.append(f"config.{path}.{field}={value} exceeds config.{count_path}={count}")
    return problems


def _name_problems(config) -> list[str]:
    """Names the registries hold: the fields of `_choices`, modalities, objective terms, evaluators."""
    problems = [p for path, what, valid in _choices() for p in _choice(config, path, what, valid)]
    for i, _ in enumerate(get(config, "data.modalities", ())):
        problems += _choice(config, f"data.modalities[{i}]", "modality", MODALITIES.names())
    for i, _ in enumerate(get(config, "objective.terms", ()) if get(config, "objective.name") == "sum" else ()):
        problems += _choice(config, f"objective.terms[{i}].name", "objective", OBJECTIVES.names())
    for name in config.get("evals", {}):
        problems += _choice(config, f"evals.{name}.type", "evaluator", EVALUATORS.names() + [NO_EVAL])
    mesh = config.get("mesh", {})
    if list(mesh.values()).count(-1) > 1:
        problems.append(f"config.mesh={dict(mesh)}: at most one axis may be -1")
    return problems


def _path_problems(config, workdir: str | None) -> list[str]:
    """Runs to start from must exist; a named dataset directory must hold the data; the workdir must be creatable."""
    problems = []
    for path in ("init_from.workdir", "model.reference.init_from"):
        value = get(config, path, "")
        if value and not os.path.isdir(value):
            problems.append(f"config.{path}={value!r}: no such directory (the workdir of a finished run)")
    if get(config, "data.name") in DATASETS:
        problems += DATASETS.get(config.data.name)(config.data).config_problems()
    if workdir and "://" not in workdir:  # remote filesystems (gs://) are left to the checkpointer
        path = os.path.abspath(workdir)
        existing = path
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if os.path.exists(path) and not os.path.isdir(path):
            problems.append(f"--workdir={workdir!r}: is a file, not a directory")
        elif not os.path.isdir(existing):
            problems.append(f"--workdir={workdir!r}: cannot be created: {existing} is a file")
        elif not os.access(existing, os.W_OK | os.X_OK):
            problems.append(f"--workdir={workdir!r}: {existing} is not writable")
    return problems


def problems(config, workdir: str | None = None) -> list[str]:
    """Every problem `check` would raise, one line each (empty if none)."""
    return ([p for path, rule in RULES for p in _range(config, path, rule)] + _tower_problems(config)
            + _name_problems(config) + _path_problems(config, workdir))


def check(config, workdir: str | None = None) -> None:
    """Raises ConfigError listing every problem with `config`'s values and `workdir`; creates nothing."""
    found = problems(config, workdir)
    if found:
        raise ConfigError(found)
