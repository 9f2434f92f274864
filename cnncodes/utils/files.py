"""File plumbing shared by the package: printable paths, writer-named temporaries, atomic writes.

Standard library only (no torch, numpy or h5py), so that every module, the light commands of the
command line included, can use it.

Every file the package writes under a user's name (an ``--out`` file, a saved model, a cache's
``config.json``, a checkpoint, a report) goes through :func:`atomic_path`: a temporary file in the
same folder, ``fsync``-ed, renamed onto the name (``os.replace``), then the folder ``fsync``-ed,
so a kill or a full disk never leaves a truncated file under the name. The temporary file names
its writer (``<prefix><pid>@<host>-<random>``), so that whoever writes there next removes those
that killed runs left (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import stat
import time

from ..errors import UsageError

__all__ = [
    "STALE_GRACE_SECONDS",
    "atomic_path",
    "atomic_write_bytes",
    "display",
    "fsync_path",
    "remove_stale_temporaries",
    "temporary_path",
]

TMP_PREFIX = ".tmp-"

#: A temporary file of a writer that is gone is removed only once it is this old: its process id
#: is checked on this host, and the margin covers a writer the check cannot see (another pid
#: namespace under the same host name) while it still writes.
STALE_GRACE_SECONDS = 60.0


def display(path):
    """A path printable on any terminal or in any message (undecodable bytes shown as ``\\xNN``).

    Examples
    --------
    >>> display(b"caf\\xe9.jpg".decode("utf-8", "surrogateescape"))
    'caf\\\\xe9.jpg'
    """
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def file_format(path, formats, what=""):
    """The extension of ``path`` (lower case) if it is one of ``formats``; else a ValueError
    naming ``what`` (e.g. ``"--out "``) and the path, and listing the formats."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in formats:
        raise UsageError(
            f"{what}{os.fspath(path)!r}: unknown extension {ext or '(none)'!r}; use a name ending "
            f"in {', '.join(formats[:-1]) + ' or ' if len(formats) > 1 else ''}{formats[-1]}"
        )
    return ext


def fsync_path(path):
    """``fsync`` a file or a folder by name: a file's bytes, or a rename inside a folder,
    survive a power loss (h5py's ``flush()`` and Python's ``close()`` never fsync)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _host():
    """This machine's name as it goes into temporary file names (no ``-`` or ``@``)."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:64] or "unknown"


def temporary_path(folder, prefix=TMP_PREFIX, suffix=""):
    """A new temporary file path in ``folder`` that names its writer: ``<prefix><pid>@<host>-
    <random><suffix>``, so that :func:`remove_stale_temporaries` can tell when it is left over.

    Examples
    --------
    >>> name = os.path.basename(temporary_path("cache", suffix=".part"))
    >>> name.startswith(f".tmp-{os.getpid()}@") and name.endswith(".part")
    True
    """
    return os.path.join(folder, f"{prefix}{os.getpid()}@{_host()}-{secrets.token_hex(4)}{suffix}")


#: Any temporary file :func:`temporary_path` names, of any output: ``.tmp-<pid>@<host>-<hex>``
#: (the cache's) or ``.<name>.tmp-<pid>@<host>-<hex><suffix>`` (:func:`atomic_path`'s).
_ANY_TEMPORARY = re.compile(
    r"\.(?:.+\.)?" + re.escape(TMP_PREFIX[1:]) + r"(\d+)@([A-Za-z0-9_.]{1,64})-[0-9a-f]{1,32}"
    r"(?:\.[A-Za-z0-9]+)*"
)


def _writer(name, prefix):
    """``(pid, host)`` of a temporary file name; host None for names without one (older
    versions, written on this host); None for a name that is not a temporary file. ``prefix``
    None: a temporary file of any name, with its host (:data:`_ANY_TEMPORARY`)."""
    if prefix is None:
        match = _ANY_TEMPORARY.fullmatch(name)
        return None if match is None else (int(match.group(1)), match.group(2))
    if not name.startswith(prefix):
        return None
    head = name[len(prefix) :].split("-", 1)[0]
    pid, _, host = head.partition("@")
    if not pid.isdigit():
        return None
    return int(pid), host or None


def _pid_alive(pid):
    if pid <= 0:
        return True  # os.kill would signal a process group: never take such a name as dead
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


#: A report's earlier folder put aside while the new one is renamed in (``.<name>.old.tmp-...``,
#: see :mod:`cnncodes.workflows.report`): while ``<name>`` is absent it is the only copy.
_ASIDE = re.compile(r"\.(.+)\.old" + re.escape(TMP_PREFIX))


def _last_modified(path):
    """The latest modification time of the folder ``path`` and of everything in it."""
    latest = os.lstat(path).st_mtime
    for parent, folders, names in os.walk(path):
        for name in folders + names:
            with contextlib.suppress(FileNotFoundError):
                latest = max(latest, os.lstat(os.path.join(parent, name)).st_mtime)
    return latest


def _remove_stale(folder, name, grace, now):
    """Remove the dead writer's temporary ``name`` of ``folder`` if it is past ``grace``: a
    file, or a folder (a report's in the making, or its earlier one put aside) with all it
    holds; True if removed."""
    path = os.path.join(folder, name)
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        if now - st.st_mtime <= grace:
            return False
        os.unlink(path)
        return True
    if not stat.S_ISDIR(st.st_mode) or now - _last_modified(path) <= grace:
        return False  # a link or a device is never a writer's temporary
    aside = _ASIDE.match(name)
    if aside and not os.path.lexists(os.path.join(folder, aside.group(1))):
        return False  # killed between its two renames: the report lives on only here
    shutil.rmtree(path, ignore_errors=True)  # another process may remove it meanwhile
    return not os.path.lexists(path)


def remove_stale_temporaries(folder, prefix=TMP_PREFIX, grace=None):
    """Delete the temporaries in ``folder`` that killed writers left behind; their paths.

    A temporary (see :func:`temporary_path`) is removed when its name says it was written on this
    host by a process that no longer exists, and it was last modified more than ``grace`` seconds
    ago (default :data:`STALE_GRACE_SECONDS`). A file, or a folder, such as a report's in the
    making (``.<name>.tmp-...``), with everything in it: all of it last modified that long ago.
    A live writer's temporaries, those of other hosts sharing the folder, and a report's earlier
    folder put aside (``.<name>.old.tmp-...``) while ``<name>`` is absent are left alone.
    ``prefix`` None: the temporaries of every name (any output's, the cache's), one listing of
    the folder.
    """
    grace = STALE_GRACE_SECONDS if grace is None else grace
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    host, now, removed = _host(), time.time(), []
    for name in names:
        writer = _writer(name, prefix)
        if writer is None or writer[1] not in (None, host) or _pid_alive(writer[0]):
            continue
        try:
            if _remove_stale(folder, name, grace, now):
                removed.append(os.path.join(folder, name))
        except FileNotFoundError:  # removed by another process meanwhile
            continue
    return removed


@contextlib.contextmanager
def atomic_path(path, prefix=None, suffix=""):
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path`` durably.

    The temporary file is ``fsync``-ed, renamed onto ``path`` and the folder ``fsync``-ed; on an
    error it is removed and ``path`` is left as it was. Its name is ``prefix`` (default
    ``.<name>.tmp-``) + writer + ``suffix`` (some writers choose the format by the suffix);
    temporaries that killed writers left in the folder, of any name, are removed first (one
    listing; :func:`remove_stale_temporaries`' rules: dead writer on this host, past the grace).

    Examples
    --------
    >>> with atomic_path("report.json") as tmp:  # doctest: +SKIP
    ...     with open(tmp, "w") as f:
    ...         f.write("{}")
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}{TMP_PREFIX}" if prefix is None else prefix
    remove_stale_temporaries(folder, prefix=None)
    tmp = temporary_path(folder, prefix, suffix)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_path(folder)


def atomic_write_bytes(path, data, prefix=None):
    """Write ``data`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path, prefix) as tmp, open(tmp, "wb") as f:
        f.write(data)
