"""ml_collections configs: variant strings and command-line overrides, validated.

A config file's `get_config(arg)` takes a variant string such as
"loss=sigmoid,model=tiny"; `--config.a.b=value` then overrides single fields.
Both fail at start-up, before any work, when a key is unknown (listing the
valid keys at that level) or a value has the wrong type (naming the type).
"""
from __future__ import annotations

import ast
import difflib
from typing import Any, Iterable

import ml_collections


def _unknown(key: str, valid: Iterable[str], where: str) -> ValueError:
    valid = sorted(valid)
    hint = difflib.get_close_matches(key, valid, n=1)
    guess = f" (did you mean {hint[0]!r}?)" if hint else ""
    return ValueError(f"unknown config key {key!r} in {where}{guess}; valid keys: {valid}")


def parse_value(key: str, raw: str, current: Any) -> Any:
    """The string `raw` as a value of `current`'s type; a mismatch names the key and type."""
    def fail():
        return ValueError(f"config {key}={raw!r}: expected {type(current).__name__} (current value {current!r})")
    if isinstance(current, ml_collections.ConfigDict):
        raise ValueError(f"config {key} is a group of fields ({sorted(current.keys())}); set those instead")
    if isinstance(current, bool):
        if raw.lower() not in ("true", "false", "1", "0"):
            raise fail()
        return raw.lower() in ("true", "1")
    if isinstance(current, str):
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise fail() from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
        value = type(current)(value)
    if current is not None and type(value) is not type(current):
        raise fail()
    return value


def parse_variant(arg: str | None, defaults: dict[str, Any], choices: dict[str, tuple] | None = None) -> ml_collections.ConfigDict:
    """'a=1,b=x' -> ConfigDict of `defaults` updated; unknown keys or values fail listing the valid ones."""
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep:
            raise ValueError(f"bad config variant {item!r}: expected key=value; valid keys: {sorted(defaults)}")
        if key not in defaults:
            raise _unknown(key, defaults, "the config variant")
        out[key] = parse_value(key, raw.strip(), defaults[key])
    for key, valid in (choices or {}).items():
        if out[key] not in valid:
            raise ValueError(f"config variant {key}={out[key]!r}; valid: {list(valid)}")
    return ml_collections.ConfigDict(out)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
    """Applies 'a.b=value' strings (from `--config.a.b=value`) to `config` in place."""
    for item in overrides:
        path, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"bad override {item!r}: expected --config.<key>=<value>")
        *parents, leaf = path.split(".")
        node, where = config, "config"
        for part in parents:
            if part not in node:
                raise _unknown(part, node.keys(), where)
            node, where = node[part], f"{where}.{part}"
            if not isinstance(node, ml_collections.ConfigDict):
                raise ValueError(f"{where} is a value, not a group; cannot set {path!r}")
        if leaf not in node:
            raise _unknown(leaf, node.keys(), where)
        with node.ignore_type():  # our own parse_value has already checked the type
            node[leaf] = parse_value(path, raw, node[leaf])


def split_overrides(argv: list[str], prefix: str = "--config.") -> tuple[list[str], list[str]]:
    """argv -> (argv without `--config.a.b=v` flags, ['a.b=v', ...]) in order."""
    rest, overrides = [], []
    for arg in argv:
        (overrides.append(arg[len(prefix):]) if arg.startswith(prefix) else rest.append(arg))
    return rest, overrides
