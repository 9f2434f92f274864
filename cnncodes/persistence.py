"""Saving and loading fitted pipelines: joblib (trusted files only) or skops (safe by default).

A ``.joblib`` file is a pickle: loading it runs whatever code it holds, so load only files you
made or trust. A ``.skops`` file is loaded by :mod:`skops.io`, which refuses every type that is not
known to be safe; this module adds the project's own types (:data:`PROJECT_TYPES`) to skops' list,
and anything else must be named in ``trusted=`` explicitly.

A saved :class:`~cnncodes.transformers.CNNCodes` holds the SHA-256 of a checkpoint file it uses;
the file itself is not saved, and is re-verified whenever codes are made or read.
"""

from __future__ import annotations

import gzip
import lzma
import os
import pickle
import struct
import tempfile
import zipfile
import zlib

__all__ = ["FORMATS", "PROJECT_TYPES", "ModelFileError", "UntrustedTypesError", "load", "save"]

FORMATS = (".joblib", ".skops")

#: The project's types that a ``.skops`` file may contain without being named in ``trusted=``.
PROJECT_TYPES = (
    "cnncodes.models.ModelSpec",
    "cnncodes.models.Preprocessing",
    "cnncodes.transformers.CNNCodes",
    "cnncodes.transformers.SignedPower",
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
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in FORMATS:
        raise ValueError(
            f"{os.fspath(path)!r}: unknown file type {suffix or '(none)'!r}; use a name ending in "
            f"{' or '.join(FORMATS)}"
        )
    return suffix


def _type_name(t):
    if isinstance(t, str):
        return t
    if isinstance(t, type):
        return f"{t.__module__}.{t.__qualname__}"
    raise TypeError(f"trusted: expected type names (str) or types, got {t!r}")


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
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=kind, dir=folder)
    os.close(fd)
    try:
        if kind == ".joblib":
            import joblib

            joblib.dump(estimator, tmp)
        else:
            import skops.io

            skops.io.dump(estimator, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load(path, trusted=None):
    """Read an estimator written by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.joblib`` or ``.skops`` file.
    trusted : list of str or type, optional
        ``.skops`` only: further types to accept besides skops' safe ones and
        :data:`PROJECT_TYPES`.

    Returns
    -------
    object
        The estimator.

    Raises
    ------
    UntrustedTypesError
        A ``.skops`` file holds other types (they are listed; nothing was loaded).
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
    """
    kind = _format(path)
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
            return joblib.load(path)
        except Exception as exc:
            if _is_damage(exc):
                raise _damaged(path, exc) from exc
            raise
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
        return skops.io.load(path, trusted=list(untrusted))
    except Exception as exc:
        if _is_damage(exc):
            raise _damaged(path, exc) from exc
        raise
