"""Name -> constructor registries: how a config names a part (modality, dataset, encoder,
model kind, objective, evaluator) as a string.

A component registers itself where it is defined, so adding one is its own module plus one
decorator line; generic code looks it up by name and an unknown name fails listing the valid
ones. Registries are flat and hold plain objects (classes, functions, instances).
"""
from __future__ import annotations

from typing import Any, Iterator


class Registry:
    """A flat name -> object table with a `what` used in error messages ("objective", ...)."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, Any] = {}

    def register(self, name: str, obj: Any = None, *, replace: bool = False):
        """`registry.register("x", obj)`, or `@registry.register("x")` as a decorator.

        Registering a taken name fails unless `replace=True` (a test or a project overriding a
        built-in on purpose), so two components never silently share a name.
        """
        def add(value):
            if name in self._entries and not replace and self._entries[name] is not value:
                raise ValueError(f"{self.what} {name!r} is already registered ({self._entries[name]!r})")
            self._entries[name] = value
            return value
        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str, where: str = "") -> Any:
        """The entry registered as `name`; an unknown name fails naming `where` and the valid names."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            at = f" (in {where})" if where else ""
            raise ValueError(f"unknown {self.what} {name!r}{at}; valid names: {sorted(self._entries)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self):
        return sorted(self._entries.items())

    def __repr__(self) -> str:
        return f"Registry({self.what}: {', '.join(self.names())})"

