"""Advisory locks of a configuration's folder, and its cheap "last use" stamp.

Two ``flock`` files live in each configuration's folder:

``.compact.lock``
    held exclusively by :meth:`~cnncodes.store.cache.CodeStore.compact` while it merges shards.
``.write.lock``
    held *shared* by every writer while it commits a shard (any number at once), and
    *exclusively* by :func:`cnncodes.store.prune.prune` / :func:`~cnncodes.store.prune.clear`
    for the instant it renames the folder away. A writer that took its shared lock on a folder
    that was renamed meanwhile notices (the lock file at the folder's path is no longer the one
    it holds), makes the folder anew and commits there: it never commits into a folder being
    deleted, so the codes it reports as stored are stored.

Last use: :func:`touch_last_use` sets the modification time of ``.last-use`` in the folder, at
most once a minute per folder and process (a warm read costs one dict look-up); writing a shard is
a use too, so :func:`last_used` is the newest of that stamp, the shards and ``config.json``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time

COMPACT_LOCK = ".compact.lock"
WRITE_LOCK = ".write.lock"
LAST_USE = ".last-use"

#: Seconds between two updates of a folder's ``.last-use`` by one process.
TOUCH_EVERY = 60.0

_TOUCHED = {}  # folder -> time.monotonic() of this process's last touch
_LOCK_RETRIES = 100


def same_file(path, fd):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (held.st_ino, held.st_dev)


@contextlib.contextmanager
def shared_write_lock(folder, ensure_dir):
    """Hold ``folder``'s write lock shared while the caller commits a shard into ``folder``.

    ``ensure_dir()`` makes the folder (and its ``config.json``) where it is missing; it is called
    again whenever a prune renamed the folder away between making it and locking it.
    """
    path = os.path.join(folder, WRITE_LOCK)
    for _ in range(_LOCK_RETRIES):
        try:
            ensure_dir()  # a prune may rename the folder away while this writes config.json
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # pruned while making the folder, or before the lock
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if same_file(path, fd):
                yield
                return
        finally:
            os.close(fd)  # releases the lock
    raise OSError(errno.EBUSY, f"{folder} keeps being removed while codes are committed to it")


@contextlib.contextmanager
def exclusive_locks(folder):
    """Try to take ``folder``'s compaction and write locks exclusively, without waiting.

    Yields ``True`` while both are held (no writer is committing, no compaction is running,
    and none can start on this folder until the locks are released), ``False`` if either is
    taken, ``None`` if the folder is gone.
    """
    with contextlib.ExitStack() as stack:
        for name in (COMPACT_LOCK, WRITE_LOCK):
            path = os.path.join(folder, name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                yield None
                return
            stack.callback(os.close, fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                yield False
                return
            if not same_file(path, fd):  # the folder was replaced meanwhile
                yield None
                return
        yield True


def touch_last_use(folder):
    """Record that ``folder``'s codes were read now: at most once a minute per process, never
    making a folder that is gone, silently where the cache is read-only."""
    now = time.monotonic()
    last = _TOUCHED.get(folder)
    if last is not None and now - last < TOUCH_EVERY:
        return
    _TOUCHED[folder] = now
    path = os.path.join(folder, LAST_USE)
    try:
        try:
            os.utime(path)
        except FileNotFoundError:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
    except OSError:  # folder removed by a prune, read-only cache: the stamp is only a hint
        pass


def last_used(folder):
    """When ``folder``'s codes were last read or written (seconds since the epoch; ``None`` for a
    folder that is gone): the newest of ``.last-use``, the shards and ``config.json``."""
    newest = None
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return None
    for entry in entries:
        if entry.name in (LAST_USE, "config.json") or entry.name.endswith(".h5"):
            with contextlib.suppress(OSError):
                mtime = entry.stat(follow_symlinks=False).st_mtime
                newest = mtime if newest is None else max(newest, mtime)
    return newest
