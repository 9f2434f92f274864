"""Which ``package.module:callable`` models a file may make cnncodes import (torch-free).

A saved model or a cache folder's configuration can name the user's own architecture; rebuilding
it imports that module and calls that function, so a file could choose code to run. One rule for
every such place: :func:`refused_model_code`.
"""

from __future__ import annotations

import os

from ..errors import UsageError
from ..spec import is_callable_form, is_model_callable

__all__ = [
    "BUILTIN_MODEL_CALLABLES",
    "UntrustedModelCodeError",
    "check_trust_model_code",
    "refused_model_code",
]

#: ``package.module:callable`` models a loaded file may name without ``trust_model_code``: the
#: networks that ship inside cnncodes itself (an explicit list: the package holds other zero-argument
#: callables, such as the command line's ``main``, that are no networks).
BUILTIN_MODEL_CALLABLES = ("cnncodes.demo_data:digits_net",)


class UntrustedModelCodeError(UsageError):
    """A model file names ``package.module:callable`` models that the caller did not allow.

    Rebuilding their networks would import those modules and call those functions: code chosen
    by the file. Nothing was imported.

    Attributes
    ----------
    callables : list of str
        The refused names, as ``"package.module:callable"``.
    """

    def __init__(
        self, path, callables, *, what="A model file", command="cnncodes predict", call=None
    ):
        self.callables = list(callables)
        flags = " ".join(f"--trust-model-code {name}" for name in self.callables)
        if call is None:
            call = f"load({os.fspath(path)!r}, trust_model_code={self.callables!r})"
        super().__init__(
            f"{os.fspath(path)} names model code that would be imported and run to rebuild its "
            f"network: {', '.join(self.callables)}. {what} cannot choose code to run by "
            f"itself; if you trust this code, allow it: {flags} ({command}), or {call}"
        )


def check_trust_model_code(trust_model_code):
    """``True`` (trust every callable), or the set of allowed ``package.module:callable`` names."""
    if trust_model_code is True:
        return True
    if trust_model_code is False or trust_model_code is None:
        return set()
    names = [trust_model_code] if isinstance(trust_model_code, str) else trust_model_code
    try:
        names = list(names)
    except TypeError:
        names = [names]
    if not all(isinstance(n, str) and is_model_callable(n) for n in names):
        raise UsageError(
            f"trust_model_code={trust_model_code!r}: expected False, True (every callable the "
            "file names) or a list of 'package.module:callable' names, e.g. "
            "['mymodels:resnet20']"
        )
    return set(names)


def refused_model_code(callables, trust_model_code):
    """The ``package.module:callable`` names among ``callables`` that ``trust_model_code`` refuses.

    The one rule for every place that would import a model callable named by a file (a model
    file, a cache folder's configuration): :data:`BUILTIN_MODEL_CALLABLES` are always allowed,
    ``trust_model_code`` is False (nothing else), True (anything) or a list of names. Names
    without ``:`` (torchvision models) and ``timm:NAME`` (library code, like torchvision's) are
    never refused. Imports nothing.

    Examples
    --------
    >>> refused_model_code(["resnet18", "mymodels:resnet20"], False)
    ['mymodels:resnet20']
    >>> refused_model_code(["mymodels:resnet20"], ["mymodels:resnet20"])
    []
    >>> refused_model_code(["timm:resnet10t"], False)
    []
    """
    trust_model_code = check_trust_model_code(trust_model_code)
    if trust_model_code is True:
        return []
    allowed = set(BUILTIN_MODEL_CALLABLES) | trust_model_code
    return [n for n in callables if is_callable_form(n) and n not in allowed]
