"""Lazily loaded module attributes (PEP 562), so that importing a package stays cheap."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable


def lazy_attributes(module: str, lazy: dict[str, str], exported: Iterable[str]) -> tuple[Callable, Callable]:
    """``__getattr__`` and ``__dir__`` for package ``module``.

    Args:
        module: the package's ``__name__``.
        lazy: attribute name -> module that defines it, imported on first access
            (the value is then stored in the package, so later accesses are direct).
        exported: the package's ``__all__``.
    """
    exported = list(exported)

    def __getattr__(name: str):
        source = lazy.get(name)
        if source is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        setattr(sys.modules[module], name, value)
        return value

    def __dir__():
        return sorted(set(vars(sys.modules[module])) | set(exported))

    return __getattr__, __dir__
