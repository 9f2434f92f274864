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

from ._files import atomic_path, file_format
from .spec import is_callable_form, is_model_callable

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
    "cnncodes.transformers.CNNCodes",
    "cnncodes.transformers.SignedPower",
    "cnncodes.viewstack.ViewStack",
    "cnncodes.finetune.estimator.FineTune",
)


class UntrustedTypesError(ValueError):
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


#: ``package.module:callable`` models a loaded file may name without ``trust_model_code``: the
#: networks that ship inside cnncodes itself (an explicit list: the package holds other zero-argument
#: callables, such as the command line's ``main``, that are no networks).
BUILTIN_MODEL_CALLABLES = ("cnncodes.demo_data:digits_net",)


class UntrustedModelCodeError(ValueError):
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


class ModelFileError(ValueError):
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
    raise TypeError(f"trusted: expected type names (str) or types, got {t!r}")


def _check_trust_model_code(trust_model_code):
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
        raise ValueError(
            f"trust_model_code={trust_model_code!r}: expected False, True (every callable the "
            "file names) or a list of 'package.module:callable' names, e.g. "
            "['mymodels:resnet20']"
        )
    return set(names)


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
            ("cnncodes.transformers", "CNNCodes"),
            ("cnncodes.finetune.estimator", "FineTune"),
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
    trust_model_code = _check_trust_model_code(trust_model_code)
    if trust_model_code is True:
        return []
    allowed = set(BUILTIN_MODEL_CALLABLES) | trust_model_code
    return [n for n in callables if is_callable_form(n) and n not in allowed]


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
        raise ValueError(f"cannot save to {path!r}: folder {folder} does not exist")
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
    trust_model_code = _check_trust_model_code(trust_model_code)
    if not os.path.isfile(path):
        raise ValueError(f"model file not found: {os.fspath(path)}")
    if kind == ".joblib":
        if trusted is not None:
            raise ValueError(
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
