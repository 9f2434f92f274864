"""The errors cnncodes raises on purpose (torch-free): what the command line reports as usage.

Every error the library raises for a bad option, parameter, input file or dataset is a
:class:`UsageError` (also a :class:`ValueError`, as scikit-learn's conventions expect of an
estimator's bad parameter), or a subclass with more to say (:class:`~cnncodes.images.ImageLoadError`,
:class:`~cnncodes.networks.LayerError`, :class:`~cnncodes.spec.WeightsError`, ...). The command line
exits with status 2 and one line for these; any other exception is a bug (in cnncodes, or in a
recipe or model the user wrote): status 1, one line saying so, ``--debug`` for the traceback.

Examples
--------
>>> from cnncodes import CNNCodes
>>> try:
...     CNNCodes(pooling="mean").fit(["a.jpg"])
... except UsageError as exc:
...     print(type(exc).__name__, isinstance(exc, ValueError))
UsageError True
"""

from __future__ import annotations

__all__ = ["CNNCodesError", "InputTypeError", "UsageError"]


class CNNCodesError(Exception):
    """Base of every error cnncodes raises on purpose."""


class UsageError(CNNCodesError, ValueError):
    """A bad option, parameter, input file or dataset: the message says what was wrong and the fix."""


class InputTypeError(UsageError, TypeError):
    """An input of the wrong type (``X`` a single path, numbers where paths were expected, ...)."""
