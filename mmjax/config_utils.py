"""Helpers for ml_collections configs: variant strings and start-up validation.

A config file's `get_config(arg)` takes a variant string such as
"loss=sigmoid,model=tiny"; `--config.x.y=v` flags then override single fields.
Configs are locked, so an unknown or misspelled override fails at start-up
with the valid keys listed, and a wrongly typed one fails with the type.
"""
from __future__ import annotations

from typing import Any

import ml_collections


def _cast(key: str, raw: str, default: Any):
    if isinstance(default, bool):
        if raw.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"config variant {key}={raw!r}: expected a bool")
        return raw.lower() in ("true", "1")
    try:
        return type(default)(raw)
    except ValueError as e:
        raise ValueError(f"config variant {key}={raw!r}: expected {type(default).__name__}") from e


def parse_variant(arg: str | None, defaults: dict[str, Any], choices: dict[str, tuple] | None = None) -> ml_collections.ConfigDict:
    """'a=1,b=x' -> ConfigDict of `defaults` updated; unknown keys or values fail listing the valid ones."""
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in defaults:
            raise ValueError(f"bad config variant {item!r}; valid keys: {sorted(defaults)} (as key=value,...)")
        out[key] = _cast(key, raw.strip(), defaults[key])
    for key, valid in (choices or {}).items():
        if out[key] not in valid:
            raise ValueError(f"config variant {key}={out[key]!r}; valid: {list(valid)}")
    return ml_collections.ConfigDict(out)
