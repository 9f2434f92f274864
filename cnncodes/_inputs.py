"""What the estimators take: image paths as ``X``, integer parameters and the model settings.

Every estimator that reads images checks them here, so they all accept the same forms of ``X``
and refuse the same mistakes with the same messages, naming the estimator (``who=``). The model
settings are the attributes :data:`cnncodes.spec.MODEL_PARAMS` names, resolved by
:func:`spec_of` from whichever estimator carries them.
"""

from __future__ import annotations

import numbers
import os

import numpy as np

from ._choices import ENGINES
from .models import resolve_spec
from .preprocessing import _is_int
from .spec import MODEL_PARAMS

#: The forms of ``X`` :func:`as_path_list` accepts, as its messages say them.
EXPECTED_X = (
    "a sequence of image file paths (str or os.PathLike), a 1-D array of str, or a one-column "
    "DataFrame of paths"
)


def _iter_once(X):
    """True for an iterator (a generator, ``map``, ...): reading it uses it up."""
    try:
        return iter(X) is X
    except TypeError:
        return False


def as_path_list(X, who="CNNCodes"):
    """Validate ``X`` as image paths; return ``(paths, feature_names_or_None)``.

    ``who`` is the estimator the messages name (``"CNNCodes"``, ``"FineTune"``, ...).
    """
    if isinstance(X, (str, bytes, os.PathLike)):
        raise TypeError(f"X={X!r} is a single path; {who} expects {EXPECTED_X}, e.g. [{X!r}]")
    names = None
    if hasattr(X, "columns") and hasattr(X, "iloc"):
        if X.ndim != 2 or X.shape[1] != 1:
            raise ValueError(
                f"X is a DataFrame with {X.shape[1]} columns {list(X.columns)!r}; {who} "
                "expects one column of image paths (select it, e.g. X[['path']])"
            )
        column = X.columns[0]
        if isinstance(column, str):
            names = np.asarray([column], dtype=object)
        values = X.iloc[:, 0].tolist()
    elif hasattr(X, "dtype") and hasattr(X, "shape"):
        arr = np.asarray(X) if not hasattr(X, "tocsr") else None
        if arr is None or arr.dtype.kind not in "OU":
            kind = "a sparse matrix" if arr is None else f"an array of dtype {arr.dtype}"
            raise TypeError(
                f"{who} expects {EXPECTED_X}; got {kind} of shape {X.shape}. Numeric "
                "features (for example precomputed codes) go straight to the classifier, "
                f"without the {who} step"
            )
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise ValueError(
                f"X has shape {arr.shape}; {who} expects one image path per row "
                "(a 1-D array, or a single column)"
            )
        values = arr.tolist()
    else:
        if _iter_once(X):
            raise TypeError(
                f"X is a {type(X).__name__}, which can be read only once; {who} expects "
                f"{EXPECTED_X} (e.g. list(X))"
            )
        try:
            values = list(X)
        except TypeError:
            raise TypeError(f"{who} expects {EXPECTED_X}; got {type(X).__name__}") from None
    if not values:
        raise ValueError(f"X is empty: {who} needs at least one image path")
    paths = []
    for i, value in enumerate(values):
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            raise TypeError(
                f"X[{i}]={value!r} is a {type(value).__name__}; {who} expects {EXPECTED_X}"
            )
        paths.append(value)
    return paths, names


def check_int(value, name, minimum, allow_none=False):
    """Refuse a parameter ``name`` that is not an int >= ``minimum`` (or None, if allowed)."""
    if value is None and allow_none:
        return
    if not _is_int(value) or value < minimum:
        accepted = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"{name}={value!r}: expected {accepted}")


def check_float(value, name, *, minimum=None, above=None, below=None, allow_none=False):
    """Refuse a parameter ``name`` that is not a finite real number within the bounds given
    (``minimum <= value``, ``above < value``, ``value < below``), or None if allowed."""
    if value is None and allow_none:
        return
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real)
    ok = ok and np.isfinite(float(value))
    ok = ok and (minimum is None or value >= minimum) and (above is None or value > above)
    ok = ok and (below is None or value < below)
    if not ok:
        if below is not None:
            bounds = f"in [{minimum}, {below})"
        else:
            bounds = f">= {minimum}" if minimum is not None else f"> {above}"
        accepted = f"a float {bounds}" + (" or None" if allow_none else "")
        raise ValueError(f"{name}={value!r}: expected {accepted}")


def check_choice(value, name, choices):
    """Refuse a parameter ``name`` that is not one of ``choices`` (``True`` is not ``1``)."""
    if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        raise ValueError(f"{name}={value!r}: choose one of {', '.join(map(repr, choices))}")


def check_engine(engine, ray_address):
    """Refuse an ``engine`` or ``ray_address`` that :func:`~cnncodes.extract.extract_codes` cannot
    take (checked without importing Ray)."""
    check_choice(engine, "engine", ENGINES)
    if ray_address is not None and not isinstance(ray_address, str):
        raise ValueError(
            f"ray_address={ray_address!r}: expected None (the running Ray session or a "
            "local one), 'auto' or 'HOST:PORT'"
        )


def spec_of(obj, **changes):
    """The :class:`~cnncodes.models.ModelSpec` of ``obj``'s model settings; no weights loaded.

    ``obj`` is anything carrying the attributes :data:`cnncodes.spec.MODEL_PARAMS` names (an
    estimator, parsed command-line options); ``changes`` replace some of them.

    Examples
    --------
    >>> from cnncodes.transformers import CNNCodes
    >>> spec_of(CNNCodes("resnet18", weights="none", resize=64, crop=56)).preprocessing.crop
    (56, 56)
    >>> spec_of(CNNCodes("resnet18", weights="none"), crop=32).preprocessing.crop
    (32, 32)
    """
    params = {name: changes.get(name, getattr(obj, name, None)) for name in MODEL_PARAMS}
    params.update(changes)
    return resolve_spec(**params)
