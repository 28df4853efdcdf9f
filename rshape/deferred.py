"""Deferred imports, so that the command line answers a recipe's mistakes before torch loads (1–1.5 s here).

Inside `with deferred_import("torch"):` a plain `import torch` binds a stand-in module; the first attribute read on it
(`torch.tensor`, `torch.float32`, ...) imports the real torch, and every later read is forwarded to it. When the
block ends the stand-in leaves `sys.modules`, so later imports get the real module. A submodule import
(`import torch.nn`) inside the block is refused by the stand-in: the modules that validation imports keep to
`import torch` (tests/test_cli.py checks that validation does not load torch).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any


class DeferredModule(ModuleType):
    """Stands in for a module that has not been imported; reading an attribute imports it."""

    def __getattr__(self, attr: str) -> Any:
        if attr == "__path__":  # a submodule import would run the package's __init__ twice
            raise AttributeError(f"{self.__name__} is deferred: import it before importing its submodules")
        return getattr(real_module(self.__name__), attr)


def real_module(name: str) -> ModuleType:
    """The imported module `name`, importing it now if only its stand-in is there."""
    module = sys.modules.get(name)
    if module is None or isinstance(module, DeferredModule):
        sys.modules.pop(name, None)
        module = importlib.import_module(name)
    return module


@contextmanager
def deferred_import(name: str) -> Iterator[None]:
    """Within the block, `import name` is free until the module is used (see the module docstring)."""
    spec = None if name in sys.modules else importlib.util.find_spec(name)
    if spec is None:
        yield
        return
    stand_in = DeferredModule(name)
    stand_in.__file__ = spec.origin  # inspect.getmodule reads it on every module
    stand_in.__spec__ = spec  # importlib.util.find_spec(name) answers as for the real module
    sys.modules[name] = stand_in
    try:
        yield
    finally:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
