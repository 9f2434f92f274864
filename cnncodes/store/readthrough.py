"""The read-through cache over :class:`~cnncodes.cache.CodeStore` s (h5py and numpy only).

:class:`CodeCache` is what extraction talks to: a read-through cache over the stores of the
configurations one call asks for. ``cached(keys, compute, widths)`` serves the stored codes and
calls ``compute`` once with the keys missing, committing what it delivers every few hundred rows,
so a killed or failing run keeps what it computed. ``CodeCache(None, ...)`` is the same object
with nothing behind it (like ``joblib.Memory(location=None)``): it computes every time and keeps
nothing. The shards, their index, compaction and crash safety are :mod:`cnncodes.cache`'s.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..utils.memo import Memo
from .cache import CodeStore, resolve_cache_dir

__all__ = ["COMPACT_ABOVE_SHARDS", "CachedCodes", "CodeCache"]


# Stores by (folder, configuration), per process: a grid search asks for the same codes once per
# fold and candidate, and a store remembers what it already checked (see bench/RESULTS.md).
_STORES = Memo(256)


def _shared_store(root, config):
    key = (root, json.dumps(config, sort_keys=True))
    return _STORES.get_or_compute(key, lambda: CodeStore(root, copy.deepcopy(config)))


class _NoStore:
    """The store behind ``CodeCache(None, ...)``: holds nothing and keeps nothing."""

    def __init__(self, config):
        self.config = config

    def index(self):
        return {}

    def shard_paths(self):
        return []

    def ensure_writable(self):
        pass


#: A configuration holding more shards than this after a call is compacted into one.
COMPACT_ABOVE_SHARDS = 64


@dataclass
class CachedCodes:
    """What :meth:`CodeCache.cached` returns.

    Attributes
    ----------
    codes : dict of str to ndarray
        Per configuration name, float32 codes of shape ``(len(keys), width)``, in the order of the
        keys asked for; rows of keys that ``compute`` did not deliver are zeros.
    hits : int
        Distinct keys served from the cache under every name (``compute`` never saw them).
    computed : int
        Distinct keys whose codes ``compute`` delivered.
    """

    codes: dict
    hits: int
    computed: int


class CodeCache:
    """Read-through cache of the codes of several configurations, keyed by content.

    Parameters
    ----------
    cache_dir : "auto", None or path
        The cache folder (see :func:`resolve_cache_dir`). None: no cache, the null object of
        this class (like ``joblib.Memory(location=None)``): :meth:`cached` computes every key
        every time and writes nothing.
    configs : dict of str to dict
        A name (a layer, say) for each configuration of codes a call serves together: codes of
        all of them come out of one ``compute``.

    Examples
    --------
    >>> import tempfile
    >>> cache = CodeCache(tempfile.mkdtemp(), {"avgpool": {"model": "demo"}})
    >>> def compute(missing, deliver):
    ...     deliver(missing, {"avgpool": np.ones((len(missing), 3), np.float32)})
    >>> cache.cached(["ab" * 32, "cd" * 32], compute, {"avgpool": 3}).computed
    2
    >>> cache.cached(["cd" * 32], compute, {"avgpool": 3}).hits
    1
    """

    def __init__(self, cache_dir, configs):
        root = resolve_cache_dir(cache_dir)
        self.root = root
        if root is None:
            self.stores = {name: _NoStore(config) for name, config in configs.items()}
        else:
            self.stores = {name: _shared_store(root, config) for name, config in configs.items()}

    def widths(self):
        """Stored code width per name, or None where any configuration holds no codes yet.

        Shards are only written for a valid configuration, with its code width, so a stored width
        spares the caller working it out (for a network, a graph trace).
        """
        widths = {}
        for name, store in self.stores.items():
            if not store.shard_paths():
                return None
            width = store.info()["features"]
            if width is None:
                return None
            widths[name] = width
        return widths

    def missing(self, keys):
        """The distinct ``keys`` not stored under every name, in the order first asked for.

        What :meth:`cached` would hand to ``compute``; an engine that stores codes itself asks
        this first, then :meth:`cached` serves them.
        """
        indexes = [store.index() for store in self.stores.values()]
        return [k for k in dict.fromkeys(keys) if not all(k in index for index in indexes)]

    def cached(self, keys, compute, widths, *, commit_rows=512, commit_seconds=5.0):
        """Codes of ``keys`` under every configuration: stored ones read, the others computed.

        Parameters
        ----------
        keys : sequence of str
            Content keys (64 hex digits), one per row of the result; a key may repeat.
        compute : callable
            ``compute(missing, deliver)``, called once, and only where keys are missing (under
            any name), with the distinct missing keys in the order first asked for. It calls
            ``deliver(keys, codes, stored_as=None)`` as codes are ready: ``codes`` maps every
            name to a float32 array of one row per key; ``stored_as``, the keys to store them
            under when they were made from other content than asked for (a file rewritten
            after it was hashed). A key never delivered keeps zero rows.
        widths : dict of str to int
            Code width per name.
        commit_rows, commit_seconds :
            Commit what ``compute`` delivered after this many rows or seconds, whichever comes
            first, and whenever ``compute`` returns or raises.

        Returns
        -------
        CachedCodes

        Raises
        ------
        OSError
            Before anything is computed, where codes are missing and the cache folder cannot
            take them.
        """
        groups = {}
        for row, key in enumerate(keys):
            groups.setdefault(key, []).append(row)
        out = {name: np.zeros((len(keys), widths[name]), np.float32) for name in self.stores}
        have = self._read_stored(groups, out)
        if any(have.values()):
            complete = set.intersection(*have.values())
            missing = [k for k in groups if k not in complete]
        else:
            missing = list(groups)
        computed = 0
        if missing:
            for name, store in self.stores.items():
                if len(have[name]) < len(groups):  # it will store codes
                    store.ensure_writable()
            pending = _Pending(self.stores, commit_rows, commit_seconds)
            delivery = _Delivery(self.stores, groups, out, have, pending)
            try:
                compute(missing, delivery)
            finally:
                pending.commit()
            computed = delivery.computed
        for store in self.stores.values():
            if len(store.shard_paths()) > COMPACT_ABOVE_SHARDS:
                store.compact()
        return CachedCodes(out, len(groups) - len(missing), computed)

    def _read_stored(self, groups, out):
        """Read the stored codes of the keys of ``groups`` (key -> its rows) into ``out``; per
        name, the set of keys found."""
        have = {}
        for name, store in self.stores.items():
            index = store.index()
            hits = [k for k in groups if k in index]
            have[name] = set(hits)
            if hits:
                try:
                    store.read(hits, out=out[name], rows=[groups[k][0] for k in hits], index=index)
                except KeyError:  # pruned meanwhile (cnncodes cache prune): computed anew
                    have[name] = set()
        if not any(have.values()):
            return have
        # The same content asked for in several rows (only where there are such keys).
        duplicates = [(k, rows) for k, rows in groups.items() if len(rows) > 1]
        for name, held in have.items():
            for key, (first, *rest) in duplicates:
                if key in held:
                    out[name][rest] = out[name][first]
        return have


class _Delivery:
    """The ``deliver`` that :meth:`CodeCache.cached` hands to ``compute``: codes into the rows
    of their keys, and the new ones onto the pending commits."""

    def __init__(self, stores, groups, out, have, pending):
        self.stores, self.groups, self.out = stores, groups, out
        self.have, self.pending = have, pending
        self.computed = 0

    def __call__(self, done, codes, stored_as=None):
        if set(codes) != set(self.stores):
            raise UsageError(
                f"compute delivered codes of {', '.join(map(repr, sorted(codes)))} only; "
                f"expected {', '.join(map(repr, self.stores))}"
            )
        stored_as = done if stored_as is None else stored_as
        for key in done:
            if key not in self.groups:
                raise UsageError(f"compute delivered codes for a key not asked for: {key!r}")
        for name, block in codes.items():
            target = self.out[name]
            for r, key in enumerate(done):
                target[self.groups[key]] = block[r]
            held = self.have[name]
            new = [r for r, key in enumerate(done) if key not in held]
            if new and not np.isfinite(block[new]).all():
                # The last guard: codes with NaN or infinity are never committed.
                raise UsageError(
                    f"compute delivered non-finite codes (NaN or infinity) of {name!r}; "
                    "they are not cached"
                )
            if new:
                self.pending.add(name, [stored_as[r] for r in new], block, new)
        self.computed += len(done)
        self.pending.step(len(done))


class _Pending:
    """Codes delivered but not yet committed, per store; committed every so often."""

    def __init__(self, stores, rows, seconds):
        self.stores = stores
        self.rows = rows
        self.seconds = seconds
        # A null store would only drop them: no copies held for it (flatten codes are large).
        self.buffer = {n: ([], []) for n, s in stores.items() if not isinstance(s, _NoStore)}
        self.count = 0
        self.last = time.monotonic()

    def add(self, name, keys, codes, rows):
        if name in self.buffer:
            buffered_keys, blocks = self.buffer[name]
            buffered_keys.extend(keys)
            blocks.append(codes[rows])

    def step(self, n):
        self.count += n
        if self.count >= self.rows or time.monotonic() - self.last >= self.seconds:
            self.commit()

    def commit(self):
        for name, (keys, blocks) in self.buffer.items():
            if keys:
                self.stores[name].write(keys, np.concatenate(blocks))
            self.buffer[name] = ([], [])
        self.count = 0
        self.last = time.monotonic()
