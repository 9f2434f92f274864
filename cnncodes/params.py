"""The names the API accepts and the checks of the values it takes (torch-free).

The choices are importable without torch, so the command line's ``--help`` lists them; every
estimator checks ``X`` (image paths) and its numbers here, so they all accept the same forms and
refuse the same mistakes with the same messages, naming the estimator (``who=``).
"""

from __future__ import annotations

import numbers
import os

import numpy as np

from .errors import InputTypeError, UsageError

#: How spatial maps become vectors (:mod:`cnncodes.pooling`).
POOLINGS = ("avg", "max", "avgmax", "pyramid", "flatten")
#: Extraction precisions (:func:`cnncodes.extract.resolve_precision`).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Extraction engines (:func:`cnncodes.extract.extract_codes`): this process, or a Ray cluster.
ENGINES = ("local", "ray")

#: Median images per class from which ``cnncodes advise`` counts a dataset as large (then
#: fine-tuning pays); here so that the command's help names it without importing torch.
SMALL_PER_CLASS = 1000
#: Fine-tuning's train-time augmentations (:mod:`cnncodes.finetune.data`).
AUGMENTS = ("crop-flip", "crop", "flip", "none")
#: Fine-tuning's new heads (:mod:`cnncodes.finetune.network`).
HEADS = ("linear", "mlp")
#: How fine-tuning starts its head: random, or LP-FT's logistic regression (``"probe"``).
INIT_HEADS = ("random", "probe")
#: What an unreadable image does: stop the run naming it, or leave it out (reported).
ON_ERROR = ("raise", "skip")
#: Whether fine-tuning reads the frozen part's activations from the code cache.
TRUNK_CACHE = ("auto", True, False)
#: Whether fine-tuning feeds convolutions NHWC tensors (``"auto"``: on a GPU).
CHANNELS_LAST = ("auto", True, False)


def is_int(value):
    """An integer, numpy's included (a grid written with np.arange), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


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
        raise InputTypeError(f"X={X!r} is a single path; {who} expects {EXPECTED_X}, e.g. [{X!r}]")
    names = None
    if hasattr(X, "columns") and hasattr(X, "iloc"):
        if X.ndim != 2 or X.shape[1] != 1:
            raise UsageError(
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
            raise InputTypeError(
                f"{who} expects {EXPECTED_X}; got {kind} of shape {X.shape}. Numeric "
                "features (for example precomputed codes) go straight to the classifier, "
                f"without the {who} step"
            )
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise UsageError(
                f"X has shape {arr.shape}; {who} expects one image path per row "
                "(a 1-D array, or a single column)"
            )
        values = arr.tolist()
    else:
        if _iter_once(X):
            raise InputTypeError(
                f"X is a {type(X).__name__}, which can be read only once; {who} expects "
                f"{EXPECTED_X} (e.g. list(X))"
            )
        try:
            values = list(X)
        except TypeError:
            raise InputTypeError(f"{who} expects {EXPECTED_X}; got {type(X).__name__}") from None
    if not values:
        raise UsageError(f"X is empty: {who} needs at least one image path")
    if all(type(value) is str for value in values):  # the usual case, checked fast
        return values, names
    paths = []
    for i, value in enumerate(values):
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            raise InputTypeError(
                f"X[{i}]={value!r} is a {type(value).__name__}; {who} expects {EXPECTED_X}"
            )
        paths.append(value)
    return paths, names


def check_int(value, name, minimum, allow_none=False):
    """Refuse a parameter ``name`` that is not an int >= ``minimum`` (or None, if allowed)."""
    if value is None and allow_none:
        return
    if not is_int(value) or value < minimum:
        accepted = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise UsageError(f"{name}={value!r}: expected {accepted}")


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
        raise UsageError(f"{name}={value!r}: expected {accepted}")


def check_choice(value, name, choices):
    """Refuse a parameter ``name`` that is not one of ``choices`` (``True`` is not ``1``)."""
    if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        raise UsageError(f"{name}={value!r}: choose one of {', '.join(map(repr, choices))}")


def check_engine(engine, ray_address):
    """Refuse an ``engine`` or ``ray_address`` that :func:`~cnncodes.extract.extract_codes` cannot
    take (checked without importing Ray)."""
    check_choice(engine, "engine", ENGINES)
    if ray_address is not None and not isinstance(ray_address, str):
        raise UsageError(
            f"ray_address={ray_address!r}: expected None (the running Ray session or a "
            "local one), 'auto' or 'HOST:PORT'"
        )


# -- parameter constraints, declared once per estimator ----------------------------------------
#
# An estimator declares ``_parameter_checks = {name: rule}`` (in the spirit of scikit-learn's
# ``_parameter_constraints``) and calls :func:`check_params` in ``fit``: every parameter is then
# refused with the same wording whichever estimator takes it. A rule is called with
# ``(value, name)`` and raises :class:`~cnncodes.errors.UsageError`.


class Choice:
    """Rule: one of ``choices`` (:func:`check_choice`)."""

    def __init__(self, *choices):
        self.choices = choices

    def __call__(self, value, name):
        check_choice(value, name, self.choices)

    def __repr__(self):
        return f"Choice{self.choices!r}"


class Int:
    """Rule: an int >= ``minimum`` (or None, if allowed; :func:`check_int`)."""

    def __init__(self, minimum, allow_none=False):
        self.minimum, self.allow_none = minimum, allow_none

    def __call__(self, value, name):
        check_int(value, name, self.minimum, allow_none=self.allow_none)

    def __repr__(self):
        return f"Int(minimum={self.minimum!r}, allow_none={self.allow_none!r})"


class Float:
    """Rule: a finite real number within bounds (:func:`check_float`)."""

    def __init__(self, **bounds):
        self.bounds = bounds

    def __call__(self, value, name):
        check_float(value, name, **self.bounds)

    def __repr__(self):
        return f"Float({self.bounds!r})"


def check_params(owner, checks):
    """Check every parameter of ``owner`` that ``checks`` (``{name: rule}``) names."""
    for name, rule in checks.items():
        rule(getattr(owner, name), name)
