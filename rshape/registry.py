"""Name → component tables. An unknown name lists the valid ones; a dotted path names user code."""

from __future__ import annotations

import importlib
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownName(KeyError):
    """A recipe named something no table holds."""

    def __str__(self) -> str:  # KeyError quotes its message; this one should read as a sentence
        return str(self.args[0])


class Registry(Generic[T]):
    """A table of named components of one kind (rewards, advantage estimators, tasks...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._table: dict[str, T] = {}

    def register(self, name: str):
        def add(obj: T) -> T:
            if name in self._table:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._table[name] = obj
            return obj

        return add

    def names(self) -> list[str]:
        return sorted(self._table)

    def defined_in(self, module: str) -> dict[str, T]:
        """The entries defined in one module (e.g. a reward family), by name."""
        return {n: obj for n, obj in self._table.items() if getattr(obj, "__module__", None) == module}

    def __contains__(self, name: str) -> bool:
        return name in self._table

    def get(self, name: str) -> T:
        if name in self._table:
            return self._table[name]
        if "." in name or ":" in name:
            return load_dotted(name)
        raise UnknownName(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")


def load_dotted(path: str) -> Any:
    """Import `package.module:attr` or `package.module.attr`."""
    module_name, _, attr = path.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise UnknownName(f"cannot import {path!r}: {exc}") from None
