"""One in-process memo policy: a bounded, least-recently-used mapping, optionally stamped.

Every in-process memo of the package (code widths, open stores, shard indexes and codes, image
digests, checkpoint hashes, traced layers...) is a :class:`Memo`: a thread-safe dict with an
explicit bound on its entries (``maxsize``) and, optionally, on their total weight (``weigh`` and
``max_weight``: bytes of arrays, say), which drops the least recently used entries beyond either
bound. An entry may carry a *stamp*, what tells that its value still holds (for a file, its
:func:`file_stamp`): a lookup with another stamp drops the entry and misses, so a
changed file is recomputed. :func:`memoize` is the decorator form (``functools.lru_cache``'s
shape, on a :class:`Memo`). :func:`file_stamp` is the one stamp of a file every memo of a file's
content is keyed on (re-exported by :mod:`cnncodes.spec`), and :func:`file_sha256` a file's
memoised SHA-256.

Standard library only.

Examples
--------
>>> memo = Memo(2)
>>> memo.put("a", 1)
1
>>> memo.get("a", stamp=None), memo.get("a", stamp="other")  # a new stamp: dropped
(1, None)
>>> len(memo)
0
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
import threading

__all__ = ["Memo", "file_sha256", "file_stamp", "memoize"]

_ANY = object()  # get(): any stamp will do


def file_stamp(path, st=None) -> tuple:
    """What tells, without reading it, that a file is unchanged since it was last hashed.

    ``(path, size, mtime_ns, ctime_ns, inode, device)``: every in-process memo of a content hash
    (image digests, checkpoint SHA-256) is keyed on it. The ctime matters: a file rewritten in
    place with its mtime restored (``os.utime``, ``cp -p``, ``rsync -t``) keeps path, size,
    mtime and inode, but the kernel moves its ctime, which no user call can set back. ``st``: an
    ``os.stat`` result already at hand.
    """
    if st is None:
        st = os.stat(path)
    return (os.fsdecode(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class Memo:
    """A bounded LRU mapping whose entries may carry a stamp (see the module's docstring).

    Parameters
    ----------
    maxsize : int
        At most this many entries (the least recently used go first).
    weigh : callable, optional
        ``weigh(value) -> number``: with ``max_weight``, also bound the entries' total weight
        (the most recent entry is kept whatever its weight).
    max_weight : number, optional
        The bound on the total weight.
    """

    def __init__(self, maxsize, *, weigh=None, max_weight=None):
        if maxsize < 1:
            raise ValueError(f"maxsize={maxsize!r}: expected at least 1")
        self.maxsize = maxsize
        self.weigh = weigh
        self.max_weight = max_weight
        self.weight = 0
        self._data = collections.OrderedDict()  # key -> (stamp, value)
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._data)

    def __contains__(self, key):
        return key in self._data

    def get(self, key, default=None, *, stamp=_ANY):
        """The value of ``key``, or ``default``; given a ``stamp``, only if the entry has that
        stamp (an entry with another one is dropped)."""
        # Without the lock: the OrderedDict's own operations are atomic (a hit is the hot path).
        entry = self._data.get(key)
        if entry is None:
            return default
        if stamp is not _ANY and entry[0] != stamp:
            self.pop(key)
            return default
        try:
            self._data.move_to_end(key)
        except KeyError:  # dropped by another thread meanwhile
            pass
        return entry[1]

    def stamped(self, key):
        """``(stamp, value)`` of ``key``, or None; a peek that leaves the order alone (to hand
        entries to another process, which checks the stamps itself)."""
        return self._data.get(key)

    def put(self, key, value, *, stamp=None):
        """Remember ``value`` under ``key`` (and ``stamp``); returns ``value``."""
        with self._lock:
            if key in self._data:
                self._drop(key)
            self._data[key] = (stamp, value)
            if self.weigh is not None:
                self.weight += self.weigh(value)
            while len(self._data) > self.maxsize or self._too_heavy():
                self._drop(next(iter(self._data)))
        return value

    def get_or_compute(self, key, compute, *, stamp=_ANY):
        """The value of ``key`` (with ``stamp``), else ``compute()``, remembered. ``compute``
        runs outside the lock: two threads may both compute a missing value."""
        found = self.get(key, _ANY, stamp=stamp)
        if found is not _ANY:
            return found
        return self.put(key, compute(), stamp=None if stamp is _ANY else stamp)

    def for_file(self, path, compute, st=None):
        """``compute()``, memoised for ``path`` while the file is unchanged (same
        :func:`file_stamp`; ``st``: an ``os.stat`` result already at hand)."""
        return self.get_or_compute(path, compute, stamp=file_stamp(path, st))

    def pop(self, key, default=None):
        """Forget ``key``; its value, or ``default``."""
        with self._lock:
            if key not in self._data:
                return default
            return self._drop(key)

    def clear(self):
        """Forget everything."""
        with self._lock:
            self._data.clear()
            self.weight = 0

    def _too_heavy(self):
        return self.max_weight is not None and self.weight > self.max_weight and len(self) > 1

    def _drop(self, key):
        _, value = self._data.pop(key)
        if self.weigh is not None:
            self.weight -= self.weigh(value)
        return value


def memoize(maxsize):
    """Decorator: memoise a function of hashable arguments in a :class:`Memo` of ``maxsize``.

    Like ``functools.lru_cache(maxsize)``; the wrapper has ``memo`` (the :class:`Memo`) and
    ``cache_clear()``. Exceptions are not memoised.

    Examples
    --------
    >>> @memoize(8)
    ... def square(x):
    ...     return x * x
    >>> square(3), len(square.memo)
    (9, 1)
    """

    def decorate(func):
        memo = Memo(maxsize)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            key = (args, tuple(sorted(kwargs.items()))) if kwargs else args
            return memo.get_or_compute(key, lambda: func(*args, **kwargs))

        wrapper.memo = memo
        wrapper.cache_clear = memo.clear
        return wrapper

    return decorate


def file_sha256(path):
    """SHA-256 hex digest of a file, memoised on its :func:`file_stamp`.

    A file rewritten in place, even with its size and mtime kept, is hashed again (its ctime
    moved), so a checkpoint's new bytes are never taken for the old ones.
    """
    return _file_sha256(file_stamp(path))


@memoize(64)
def _file_sha256(stamp):
    path = stamp[0]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
