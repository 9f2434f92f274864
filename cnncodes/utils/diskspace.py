"""Free space before a long run, and write failures that name their file after it.

A full disk shows as ``OSError(ENOSPC)`` from deep inside a writer (``json.dump``, ``torch.save``,
h5py), without the file's name: after a three-minute grid search, ``[Errno 28] No space left on
device`` says neither what was lost nor where. :func:`check_free_space` checks, before the run,
that the folder an output goes to is writable and has :data:`MIN_FREE_BYTES` free;
:func:`naming_write_failures` turns a failed write into a :class:`WriteError` that names the file
and says what failed.

Standard library only, like :mod:`cnncodes.utils.files`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil

from ..errors import UsageError
from .files import display

__all__ = ["MIN_FREE_BYTES", "WriteError", "check_free_space", "naming_write_failures"]

#: The free space an output folder must have before a run starts: enough for a report, a codes
#: file of a few thousand images or a small network's checkpoint (a larger one is still named if
#: its write fails).
MIN_FREE_BYTES = 64 * 2**20

_REASONS = {
    errno.ENOSPC: "the disk is full (ENOSPC, no space left on device)",
    errno.EDQUOT: "the disk quota is used up (EDQUOT)",
    errno.EFBIG: "the file is too large for its file system (EFBIG)",
    errno.EROFS: "the file system is read-only (EROFS)",
}


class WriteError(OSError):
    """A file that could not be written; its message names the file and the reason.

    An :class:`OSError` (the command line exits 1 with its message) with the original ``errno``
    and ``filename``.
    """

    def __str__(self):
        return self.strerror or super().__str__()


def _size(n):
    """``1.0 MiB``, ``2.5 GiB``: a byte count for a message."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _existing(folder):
    """``folder``, or its nearest ancestor that exists (a folder the run will create)."""
    folder = os.path.abspath(folder)
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


def check_free_space(folder, what, need=MIN_FREE_BYTES):
    """Raise :class:`~cnncodes.errors.UsageError` unless ``folder`` (or the nearest existing
    folder above it, for one still to be created) is writable and has ``need`` bytes free.

    ``what`` names the output in the message (``"--report results/"``). Checked before a long
    run, so that a full disk is found before the work, not after it.
    """
    where = _existing(folder)
    if not os.path.isdir(where):
        raise UsageError(f"{what}: {display(where)} is not a folder")
    if not os.access(where, os.W_OK | os.X_OK):
        raise UsageError(f"{what}: the folder {display(where)} is not writable")
    try:
        free = shutil.disk_usage(where).free
    except OSError:  # no answer from the file system: the write will tell
        return
    if free < need:
        raise UsageError(
            f"{what}: only {_size(free)} free on the disk of {display(where)} (at least "
            f"{_size(need)} needed for the results); free some space or write elsewhere, "
            "before the run rather than after it"
        )


def write_error(exc, path, what):
    """A :class:`WriteError` for ``exc``, raised while writing ``what`` to ``path``."""
    reason = _REASONS.get(exc.errno) or exc.strerror or str(exc) or type(exc).__name__
    return WriteError(exc.errno, f"could not write {what} {display(path)}: {reason}", path)


@contextlib.contextmanager
def naming_write_failures(path, what):
    """Turn an :class:`OSError` of the block into a :class:`WriteError` naming ``path``.

    Examples
    --------
    >>> with naming_write_failures("model.skops", "the model"):  # doctest: +SKIP
    ...     persistence.save(model, "model.skops")
    """
    try:
        yield
    except WriteError:
        raise
    except OSError as exc:
        raise write_error(exc, os.fspath(path), what) from exc
