"""Saving and loading fitted pipelines: joblib (trusted files only) or skops (safe by default).

A ``.joblib`` file is a pickle: loading it runs whatever code it holds, so load only files you
made or trust. A ``.skops`` file is loaded by :mod:`skops.io`, which refuses every type that is not
known to be safe; this module adds the project's own types (:data:`PROJECT_TYPES`) to skops' list,
and anything else must be named in ``trusted=`` explicitly.

Types are not the only code a model file can point at: a :class:`~cnncodes.transformers.CNNCodes`
built on the user's own architecture holds its ``"package.module:callable"`` name, which is
imported and called to rebuild the network. So that a file cannot choose code to run, :func:`load`
refuses a file naming such a callable unless the caller allows it (``trust_model_code=``; on the
command line ``cnncodes predict --trust-model-code``), in both formats and before anything is
imported. Torchvision model names need nothing, nor do the networks shipped inside cnncodes
(:data:`BUILTIN_MODEL_CALLABLES`). For a ``.joblib`` file this is a second gate, not a sandbox:
unpickling it has run its code already.

A saved :class:`~cnncodes.transformers.CNNCodes` holds the SHA-256 of a checkpoint file it uses;
the file itself is not saved, and is re-verified whenever codes are made or read.
"""

from __future__ import annotations

import gzip
import lzma
import os
import pickle
import struct
import sys
import types
import zipfile
import zlib

from ..errors import InputTypeError, UsageError
from ..networks.trust import (
    BUILTIN_MODEL_CALLABLES,
    UntrustedModelCodeError,
    check_trust_model_code,
    refused_model_code,
)
from ..spec import is_callable_form
from ..utils.files import atomic_path, file_format

__all__ = [
    "BUILTIN_MODEL_CALLABLES",
    "FORMATS",
    "PROJECT_TYPES",
    "ModelFileError",
    "UntrustedModelCodeError",
    "UntrustedTypesError",
    "load",
    "model_callables",
    "refused_model_code",
    "save",
]

FORMATS = (".joblib", ".skops")

#: The project's types that a ``.skops`` file may contain without being named in ``trusted=``.
PROJECT_TYPES = (
    "cnncodes.spec.ModelSpec",
    "cnncodes.spec.Preprocessing",
    # Where they lived before cnncodes.spec: files saved then name these (still importable).
    "cnncodes.models.ModelSpec",
    "cnncodes.models.Preprocessing",
    # Where the estimators lived before the package was layered (files saved then name these).
    "cnncodes.transformers.CNNCodes",
    "cnncodes.transformers.SignedPower",
    "cnncodes.viewstack.ViewStack",
    "cnncodes.finetune.estimator.FineTune",
    "cnncodes.estimators.codes.CNNCodes",
    "cnncodes.estimators.codes.SignedPower",  # where it lived until it got its own module
    "cnncodes.estimators.signedpower.SignedPower",
    "cnncodes.estimators.viewstack.ViewStack",
    "cnncodes.estimators.finetune.estimator.FineTune",
)


class UntrustedTypesError(UsageError):
    """A ``.skops`` file holds types that are neither skops' safe ones, the project's, nor trusted.

    Attributes
    ----------
    types : list of str
        The refused types, as ``"module.QualName"``.
    """

    def __init__(self, path, types):
        self.types = list(types)
        super().__init__(
            f"{path} holds types that are not trusted: {', '.join(self.types)}. Loading them could "
            "run arbitrary code. If you trust this file, pass them explicitly: "
            f"load({os.fspath(path)!r}, trusted={self.types!r})"
        )


class ModelFileError(UsageError):
    """A model file that cannot be read: corrupt, truncated, or not written by :func:`save`."""


# What joblib, pickle, zipfile and skops raise for damaged bytes: a truncated pickle (EOF, frame
# exhausted, short array data), junk (unknown opcodes, memo misses), a broken zip (bad central
# directory, CRC, missing member). Errors that are clear as they are stay unwrapped: OSError (cannot
# read), ImportError and AttributeError (code the file refers to is missing), MemoryError.
_DAMAGED = (
    pickle.UnpicklingError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    ValueError,
    NotImplementedError,  # zipfile: a damaged header naming an unknown compression method
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    gzip.BadGzipFile,
)


def _damaged(path, exc):
    """The :class:`ModelFileError` for a file whose reader failed with ``exc``."""
    if os.path.getsize(path) == 0:
        reason = "the file is empty"
    elif str(exc):
        reason = f"{type(exc).__name__}: {exc}"
    elif isinstance(exc, EOFError):
        reason = "EOFError: the data ends early"
    else:
        reason = type(exc).__name__
    return ModelFileError(
        f"{os.fspath(path)}: not a readable cnncodes model file (corrupt or truncated: {reason})"
    )


def _is_damage(exc):
    """Whether ``exc`` means damaged bytes (the project's own errors are explicit already)."""
    return isinstance(exc, _DAMAGED) and not type(exc).__module__.startswith("cnncodes.")


def _format(path):
    return file_format(path, FORMATS)


def _type_name(t):
    if isinstance(t, str):
        return t
    if isinstance(t, type):
        return f"{t.__module__}.{t.__qualname__}"
    raise InputTypeError(f"trusted: expected type names (str) or types, got {t!r}")


def model_callables(estimator):
    """Every ``package.module:callable`` model name held anywhere inside ``estimator``.

    Looks through Pipelines, searches (``estimator`` and ``best_estimator_``), meta-estimators
    and containers at any depth, at every :class:`~cnncodes.transformers.CNNCodes` (its ``model``
    parameter) and :class:`~cnncodes.spec.ModelSpec`; imports nothing.

    Returns
    -------
    list of str
        Sorted, without duplicates. Torchvision model names are not listed.

    Examples
    --------
    >>> from cnncodes.transformers import CNNCodes
    >>> model_callables([CNNCodes("resnet18"), {"step": CNNCodes("mymodels:resnet20")}])
    ['mymodels:resnet20']
    """
    # No CNNCodes or ModelSpec can exist unless their modules were imported (by the loader).
    kinds = tuple(
        getattr(sys.modules[module], name)
        for module, name in (
            ("cnncodes.estimators.codes", "CNNCodes"),
            ("cnncodes.estimators.finetune.estimator", "FineTune"),
            ("cnncodes.spec", "ModelSpec"),
        )
        if module in sys.modules
    )
    found, seen, stack = set(), set(), [estimator]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, complex, type(None))):
            continue
        seen.add(id(obj))
        if kinds and isinstance(obj, kinds):
            model = getattr(obj, "model", None)
            if is_callable_form(model):
                found.add(model)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif getattr(obj, "dtype", None) is not None and getattr(obj.dtype, "kind", "") == "O":
            stack.extend(obj.ravel().tolist())  # an object array (a search's cv_results_)
        elif not isinstance(obj, (type, types.ModuleType)) and hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return sorted(found)


def _gate_model_code(path, estimator, trust_model_code):
    refused = refused_model_code(model_callables(estimator), trust_model_code)
    if refused:
        raise UntrustedModelCodeError(path, refused)
    return estimator


def save(estimator, path):
    """Write a (fitted) estimator to ``path``: ``.joblib`` (joblib) or ``.skops`` (skops.io).

    The file is written to a temporary name and renamed into place, so an interrupted save never
    leaves a truncated file under ``path``.

    Parameters
    ----------
    estimator : object
        Usually a fitted Pipeline whose first step is a CNNCodes.
    path : str or os.PathLike
        Its suffix chooses the format.

    Returns
    -------
    str
        ``path``.

    Examples
    --------
    >>> save(search.best_estimator_, "model.skops")  # doctest: +SKIP
    'model.skops'
    """
    kind = _format(path)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"cannot save to {path!r}: folder {folder} does not exist")
    with atomic_path(path, suffix=kind) as tmp:
        if kind == ".joblib":
            import joblib

            joblib.dump(estimator, tmp)
        else:
            import skops.io

            skops.io.dump(estimator, tmp)
    return path


def load(path, trusted=None, trust_model_code=False):
    """Read an estimator written by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.joblib`` or ``.skops`` file.
    trusted : list of str or type, optional
        ``.skops`` only: further types to accept besides skops' safe ones and
        :data:`PROJECT_TYPES`.
    trust_model_code : bool or list of str, default=False
        Which ``"package.module:callable"`` models the file may name (their code is imported
        and run when the network is rebuilt): ``False``, none but torchvision names and
        :data:`BUILTIN_MODEL_CALLABLES`; a list, those too; ``True``, any.

    Returns
    -------
    object
        The estimator.

    Raises
    ------
    UntrustedTypesError
        A ``.skops`` file holds other types (they are listed; nothing was loaded).
    UntrustedModelCodeError
        The file names a model callable not allowed by ``trust_model_code`` (they are listed;
        none was imported).
    ModelFileError
        The file is corrupt or truncated (the message gives the reader's own reason).

    Warnings
    --------
    ``.joblib`` files are unpickled: loading one runs any code it contains. Load only files you
    created or trust; use ``.skops`` for files from elsewhere.

    Examples
    --------
    >>> pipe = load("model.skops")  # doctest: +SKIP
    >>> pipe.predict(["new.jpg"])  # doctest: +SKIP
    >>> pipe = load("own.skops", trust_model_code=["mymodels:resnet20"])  # doctest: +SKIP
    """
    kind = _format(path)
    trust_model_code = check_trust_model_code(trust_model_code)
    if not os.path.isfile(path):
        raise UsageError(f"model file not found: {os.fspath(path)}")
    if kind == ".joblib":
        if trusted is not None:
            raise UsageError(
                "trusted= applies to .skops files only; a .joblib file cannot be restricted "
                "(it is unpickled)"
            )
        import joblib

        try:
            estimator = joblib.load(path)
        except Exception as exc:
            if _is_damage(exc):
                raise _damaged(path, exc) from exc
            raise
        return _gate_model_code(path, estimator, trust_model_code)
    import skops.io

    allowed = set(PROJECT_TYPES) | {_type_name(t) for t in (trusted or ())}
    try:
        untrusted = skops.io.get_untrusted_types(file=path)
    except Exception as exc:
        if _is_damage(exc):
            raise _damaged(path, exc) from exc
        raise
    refused = sorted(t for t in untrusted if t not in allowed)
    if refused:
        raise UntrustedTypesError(path, refused)
    try:
        estimator = skops.io.load(path, trusted=list(untrusted))
    except Exception as exc:
        if _is_damage(exc):
            raise _damaged(path, exc) from exc
        raise
    return _gate_model_code(path, estimator, trust_model_code)
