"""A package's public face, imported on first use (PEP 562)."""

from __future__ import annotations

import importlib

__all__ = ["lazy_face"]


def lazy_face(package, exports):
    """``(__getattr__, __dir__)`` for ``package``, whose public names ``exports`` maps to the
    submodule defining each: a name's module is imported when the name is first used, so that
    importing one light submodule never pays for the heavy ones beside it.

    Examples
    --------
    >>> getattr_, dir_ = lazy_face("cnncodes.store", {"CodeStore": "cache"})
    >>> getattr_("CodeStore").__name__
    'CodeStore'
    """

    def __getattr__(name):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f"{package}.{exports[name]}")
        return getattr(module, name)

    def __dir__():
        return sorted(exports)

    return __getattr__, __dir__
