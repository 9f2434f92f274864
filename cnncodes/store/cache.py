"""The on-disk store of CNN codes: immutable HDF5 shards, content-addressed (h5py and numpy only).

Layout::

    <cache_dir>/
      <config_key>/                 one folder per configuration (model, weights, layer, pooling, ...)
        config.json                 the configuration, human- and machine-readable
        <time>-<pid>-<rand>.h5      immutable shards: datasets "keys" (n,) and "codes" (n, d)
        .tmp-<pid>@<host>-<rand>    a file being written (removed by the next writer or
                                    `cnncodes cache verify` once its process is gone)

A row's key is the SHA-256 of the image file's bytes, so the same picture under two names is
extracted once and a rewritten file is recomputed. A configuration's key is the SHA-256 of its
canonical JSON, which holds everything that changes the numbers and nothing that does not.

Why shards (measured with SIGKILL on h5py 3.16 / HDF5 2.0): a single appendable HDF5 file was
silently damaged by a kill during ``flush`` (1 in 86 kills: rows that read back as 0.0, attributes
unreadable, yet the file opened without error), and HDF5's own locking blocks even readers. Here
every shard is written to a temporary file, ``fsync``-ed, then renamed into place (``os.replace``)
and the folder ``fsync``-ed: a kill loses at most the rows not yet committed and never exposes a
partial shard. Writers never touch an existing shard, so any number of processes can extract into
one cache at once; a row computed twice is simply stored twice and read once.
:meth:`CodeStore.compact` merges small shards under an advisory lock.

Only files this module wrote are read: a shard must be a regular file (not a link) with exactly the
expected datasets, hard links only, no external or virtual storage, and attributes naming this
configuration. Anything else is warned about and ignored, never followed.

The read-through cache over these stores, which extraction talks to, is
:class:`cnncodes.readthrough.CodeCache`.

Plain h5py reads everything::

    import h5py, json
    with h5py.File(shard) as f:
        keys, codes = f["keys"][:], f["codes"][:]
        config = json.loads(f.attrs["config"])
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import operator
import os
import secrets
import stat
import time
import warnings

import h5py
import numpy as np

from ..errors import InputTypeError, UsageError
from ..spec import FORMAT_VERSION, config_key, file_stamp
from ..utils.files import (
    STALE_GRACE_SECONDS,
    fsync_path,
    remove_stale_temporaries,
    temporary_path,
)
from ..utils.files import TMP_PREFIX as _TMP_PREFIX
from ..utils.memo import Memo
from .configs import CacheWarning, folder_config, write_config_json
from .locks import COMPACT_LOCK as _COMPACT_LOCK
from .locks import same_file, shared_write_lock, touch_last_use

__all__ = [
    "FORMAT_VERSION",
    "CacheWarning",
    "CodeStore",
    "config_key",
    "resolve_cache_dir",
    "list_configs",
    "remove_stale_temporaries",
    "temporary_path",
    "DEFAULT_CACHE_DIR",
    "STALE_GRACE_SECONDS",
]

DEFAULT_CACHE_DIR = "cache"
_SHARD_FORMAT = "cnncodes-shard"
_KEY_DTYPE = "S64"


def resolve_cache_dir(cache_dir="auto"):
    """Where codes are cached: ``None`` turns caching off; ``"auto"`` reads ``$CNNCODES_CACHE``,
    else ``./cache``; anything else is a folder path.

    Examples
    --------
    >>> resolve_cache_dir(None) is None
    True
    """
    if cache_dir is None or cache_dir is False:
        return None
    if isinstance(cache_dir, str) and cache_dir == "auto":
        cache_dir = os.environ.get("CNNCODES_CACHE") or DEFAULT_CACHE_DIR
    if not isinstance(cache_dir, (str, os.PathLike)):
        raise InputTypeError(
            f"cache_dir={cache_dir!r}: expected 'auto', None (no cache) or a folder path"
        )
    if not os.fspath(cache_dir):
        raise UsageError(
            "cache_dir='': expected a folder path ('.' for the current folder), "
            "'auto' or None (no cache)"
        )
    path = os.path.abspath(os.fspath(cache_dir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"cache_dir={os.fspath(cache_dir)!r} exists and is not a folder")
    return path


# Shards are immutable, so what was read from one stays true for as long as the file exists:
# path -> ``((keys, width) or None, verified)``, stamped with the shard's file_stamp.
_SHARD_INDEX = Memo(16384)

# Codes of shards read whole in this process, keyed like _SHARD_INDEX (a grid search reads the same
# codes for every fold and candidate; see bench/RESULTS.md). Small shards only, bounded in total
# bytes, least recently used dropped first. Read-only arrays: callers get copies (fancy indexing).
_HOLD_MAX_SHARD_BYTES = 64 * 2**20
_HOLD_MAX_BYTES = 128 * 2**20
_SHARD_CODES = Memo(4096, weigh=lambda codes: codes.nbytes, max_weight=_HOLD_MAX_BYTES)


#: Fresh listings a reader tries when concurrent compactions keep removing the shards it listed.
_RACE_RETRIES = 50


def _back_off(attempt):
    time.sleep(min(0.05, 0.001 * (attempt + 1)))


def _stat_key(path):
    try:
        return file_stamp(path, os.lstat(path))
    except OSError:
        return None


def _held_codes(path):
    return _SHARD_CODES.get(path, stamp=_stat_key(path))


def _hold_codes(path, st, codes):
    if codes.nbytes > _HOLD_MAX_SHARD_BYTES:
        return
    codes.flags.writeable = False
    _SHARD_CODES.put(path, codes, stamp=file_stamp(path, st))


class CodeStore:
    """The codes of one configuration in a cache folder.

    Parameters
    ----------
    root : str
        The cache folder (see :func:`resolve_cache_dir`).
    config : dict
        JSON-serialisable description of everything that changes the codes.

    Examples
    --------
    >>> import tempfile
    >>> store = CodeStore(tempfile.mkdtemp(), {"model": "demo"})
    >>> _ = store.write(["ab" * 32], np.ones((1, 3), np.float32))
    >>> store.read(["ab" * 32]).shape
    (1, 3)
    """

    def __init__(self, root, config):
        self.root = os.fspath(root)
        self.config = config
        self.key = config_key(config)
        self.path = os.path.join(self.root, self.key)
        self._config_json = json.dumps(config, sort_keys=True, indent=1)
        self._swept = False
        self._built = None  # (shard paths, their entries, the index they make)

    # -- layout ------------------------------------------------------------------------------

    def ensure_writable(self):
        """Check now that codes can be stored, so that none is computed for a cache that cannot
        take them; raises ``OSError`` naming the folder.

        The configuration's folder itself is made by the first :meth:`write`: a run that fails
        before it commits anything (missing weights, say) leaves no empty configuration behind.
        """
        folder = self.path if os.path.isdir(self.path) else self.root
        try:
            os.makedirs(folder, exist_ok=True)
            probe = temporary_path(folder)
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            os.unlink(probe)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot write to the cache folder {self.root} ({exc.strerror or exc}): choose "
                "a writable cache folder (cache_dir=..., --cache-dir), or keep no codes "
                "(cache_dir=None, --no-cache)",
            ) from None

    def _ensure_dir(self):
        if not os.path.isdir(self.path):
            os.makedirs(self.path, exist_ok=True)
            fsync_path(self.root)
        if not os.path.isfile(os.path.join(self.path, "config.json")):
            write_config_json(self.path, self.config)

    def shard_paths(self):
        """Committed shard files, oldest first (temporary files are never listed)."""
        try:
            names = os.listdir(self.path)
        except (FileNotFoundError, NotADirectoryError):  # nothing stored (yet)
            return []
        return [
            os.path.join(self.path, n)
            for n in sorted(names)
            if n.endswith(".h5") and not n.startswith(_TMP_PREFIX)
        ]

    # -- reading -----------------------------------------------------------------------------

    def _validate(self, f, path):
        """Raise ``ValueError`` unless ``f`` is a shard this module wrote for this configuration."""
        if set(f.keys()) != {"keys", "codes"}:
            raise UsageError(f"unexpected members {sorted(f.keys())}")
        for name in ("keys", "codes"):
            link = f.get(name, getlink=True)
            if not isinstance(link, h5py.HardLink):
                raise UsageError(f"{name!r} is a {type(link).__name__}, not a plain dataset")
            dset = f[name]
            if not isinstance(dset, h5py.Dataset) or dset.external or dset.is_virtual:
                raise UsageError(f"{name!r} uses external or virtual storage")
        attrs = f.attrs
        if attrs.get("format") != _SHARD_FORMAT or attrs.get("format_version") != FORMAT_VERSION:
            raise UsageError("not a cnncodes shard of this format version")
        if attrs.get("config_key") != self.key:
            raise UsageError("belongs to another configuration")
        keys, codes = f["keys"], f["codes"]
        if keys.dtype != np.dtype(_KEY_DTYPE) or keys.ndim != 1:
            raise UsageError("malformed 'keys' dataset")
        if codes.dtype != np.float32 or codes.ndim != 2 or codes.shape[0] != keys.shape[0]:
            raise UsageError("malformed 'codes' dataset")

    def _open(self, path):
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):  # lstat: a symlink is not a regular file
            raise UsageError("not a regular file")
        try:
            f = h5py.File(path, "r", locking=False)
        except OSError:
            if not os.path.lexists(path):  # removed by a concurrent compaction meanwhile
                raise FileNotFoundError(errno.ENOENT, "shard removed", path) from None
            raise
        try:
            self._validate(f, path)
        except BaseException:
            f.close()
            raise
        return f, st

    def _shard_keys(self, path, verify=True):
        """Keys and code width of one shard, memoised; ``None`` for a shard that must be ignored.

        ``verify``: check the shard's checksum first (once per process and file; see
        :data:`_VERIFY_MAX_BYTES`). ``info`` lists without it, reading only the keys.
        """
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        memo = _SHARD_INDEX.get(path, stamp=file_stamp(path, st))
        if memo is not None and (memo[1] or not verify):
            return memo[0]  # None for a shard already found bad (warned about once)
        try:
            f, st = self._open(path)
            with f:
                key_array = f["keys"][:]
                width = f["codes"].shape[1]
                if verify:
                    _verify(f, path, st, key_array)
            keys = [k.decode() for k in key_array]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as exc:
            warnings.warn(f"ignoring cache file {path}: {exc}", CacheWarning, stacklevel=3)
            _SHARD_INDEX.put(path, (None, True), stamp=file_stamp(path, st))
            return None
        entry = (keys, width)
        _SHARD_INDEX.put(path, (entry, verify), stamp=file_stamp(path, st))
        return entry

    def index(self):
        """``{key: (shard_path, row)}`` over all valid shards (the newest shard wins a duplicate)."""
        for attempt in range(_RACE_RETRIES):
            out, vanished = self._index()
            if not vanished:
                break
            # A concurrent compaction removed a listed shard after committing the merged one,
            # which a fresh listing shows.
            _back_off(attempt)
        return out

    def _index(self):
        paths = self.shard_paths()
        entries = [self._shard_keys(path) for path in paths]
        built = self._built  # the same shards, each unchanged (its memoised entry): not rebuilt
        if built is not None and built[0] == paths and all(map(operator.is_, built[1], entries)):
            return built[2], False
        out, widths, vanished = {}, set(), False
        for path, entry in zip(paths, entries):
            if entry is None:
                vanished = vanished or not os.path.lexists(path)
                continue
            keys, w = entry
            if widths and w not in widths:
                warnings.warn(
                    f"ignoring cache file {path}: {w} features, others have {min(widths)}",
                    CacheWarning,
                    stacklevel=2,
                )
                continue
            widths.add(w)
            out.update(zip(keys, zip(itertools.repeat(path), range(len(keys)))))
        if not vanished and len({e[1] for e in entries if e is not None}) < 2:
            self._built = (paths, entries, out)
        return out, vanished

    def contains(self, keys):
        """Boolean array: which of ``keys`` are stored."""
        idx = self.index()
        return np.array([k in idx for k in keys], dtype=bool)

    def read(self, keys, out=None, rows=None, index=None):
        """Codes of ``keys`` (all must be stored), as float32 ``(len(keys), d)``.

        With ``out`` (and optionally ``rows``, the target rows of ``out``), fill it in place instead.
        ``index``: what :meth:`index` just returned, to spare listing the shards again (a shard
        removed since by a concurrent compaction makes it list them anew).
        """
        touch_last_use(self.path)  # at most once a minute: the "last use" prune goes by
        for attempt in range(_RACE_RETRIES):
            idx = self.index() if index is None else index
            index = None
            try:
                return self._read(idx, keys, out, rows)
            except FileNotFoundError:
                # A concurrent compaction removed a shard after committing the merged one: a
                # fresh listing has every row. Only a reader starved through many compactions
                # in a row gets here again; it backs off so the compactor can finish.
                if attempt == _RACE_RETRIES - 1:
                    raise
                _back_off(attempt)

    def _read(self, idx, keys, out, rows):
        missing = [k for k in keys if k not in idx]
        if missing:
            raise KeyError(f"{len(missing)} codes are not in the cache (first: {missing[0]})")
        by_shard = {}
        for i, key in enumerate(keys):
            path, row = idx[key]
            by_shard.setdefault(path, []).append((row, i))
        result = None
        for path, pairs in by_shard.items():
            src = np.array([r for r, _ in pairs])
            dst = np.array([i for _, i in pairs])
            held = _held_codes(path)
            if held is not None:
                block = held[src]
                if out is None and result is None:
                    result = np.empty((len(keys), block.shape[1]), np.float32)
                target = out if out is not None else result
                target[dst if rows is None else np.asarray(rows)[dst]] = block
                continue
            f, st = self._open(path)
            with f:
                dset = f["codes"]
                if len(pairs) * 4 >= dset.shape[0]:
                    whole = dset[...]
                    _hold_codes(path, st, whole)
                    block = whole[src]
                else:
                    order = np.argsort(src)
                    uniq, inverse = np.unique(src[order], return_inverse=True)
                    block = np.empty((len(src), dset.shape[1]), np.float32)
                    block[order] = dset[uniq][inverse]
            if out is None and result is None:
                result = np.empty((len(keys), block.shape[1]), np.float32)
            target = out if out is not None else result
            target[dst if rows is None else np.asarray(rows)[dst]] = block
        if out is not None:
            return out
        return result if result is not None else np.empty((0, 0), np.float32)

    # -- writing -----------------------------------------------------------------------------

    def write(self, keys, codes):
        """Commit rows as a new immutable shard; returns its path. Crash-safe and concurrent-safe."""
        codes = np.ascontiguousarray(codes, dtype=np.float32)
        if codes.ndim != 2 or codes.shape[0] != len(keys):
            raise UsageError(f"codes of shape {codes.shape} do not match {len(keys)} keys")
        if not len(keys):
            return None
        with shared_write_lock(self.path, self._ensure_dir):  # see store/locks.py
            return self._write(keys, codes)

    def _write(self, keys, codes):
        if not self._swept:  # once per store and process: what killed writers left behind
            self._swept = True
            self.remove_stale_temporaries()
        name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.h5"
        final = os.path.join(self.path, name)
        tmp = temporary_path(self.path, suffix=".part")
        key_array = np.array([k.encode() for k in keys], dtype=_KEY_DTYPE)
        try:
            with h5py.File(tmp, "w", locking=False) as f:
                f.create_dataset("keys", data=key_array)
                f.create_dataset("codes", data=codes)
                f.attrs["format"] = _SHARD_FORMAT
                f.attrs["format_version"] = FORMAT_VERSION
                f.attrs["config_key"] = self.key
                f.attrs["config"] = self._config_json
                f.attrs["created"] = time.time()
                f.attrs["checksum"] = _checksum(key_array, [codes])
            fsync_path(tmp)  # h5py's flush() never fsyncs
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        fsync_path(self.path)
        return final

    @contextlib.contextmanager
    def _compact_lock(self, blocking):
        lock = os.path.join(self.path, _COMPACT_LOCK)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder was pruned meanwhile: nothing to merge
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    yield False
                    return
                raise
            yield same_file(lock, fd)  # False: the folder was pruned while we waited
        finally:
            os.close(fd)

    def compact(self, min_shards=2, blocking=False):
        """Merge all shards into one (duplicates dropped); returns the number of shards merged.

        Readers are never disturbed: the merged shard is committed before the old ones are removed.
        Another process already compacting makes this a no-op unless ``blocking``.
        """
        if not self.shard_paths():  # nothing to merge; and no folder made for nothing
            return 0
        with self._compact_lock(blocking) as locked:
            if not locked:
                return 0
            self.remove_stale_temporaries()
            paths = [p for p in self.shard_paths() if self._shard_keys(p) is not None]
            if len(paths) < min_shards:
                return 0
            idx = {}
            for path in paths:
                for row, key in enumerate(self._shard_keys(path)[0]):
                    idx.setdefault(key, (path, row))
            keys = list(idx)
            codes = self._read(idx, keys, None, None)
            self.write(keys, codes)
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                _SHARD_INDEX.pop(path, None)
                _SHARD_CODES.pop(path, None)
            fsync_path(self.path)
            return len(paths)

    def remove_stale_temporaries(self):
        """Delete the temporary files of killed writers in this configuration's folder (see
        :func:`remove_stale_temporaries`); returns their paths."""
        return remove_stale_temporaries(self.path, grace=STALE_GRACE_SECONDS)

    # -- inspection --------------------------------------------------------------------------

    def info(self):
        """Counts and sizes: ``{"key", "config", "rows", "unique", "features", "shards", "bytes"}``."""
        paths = self.shard_paths()
        rows, width, size, keys = 0, None, 0, set()
        for path in paths:
            # Keys only: summing up a large cache must not read every code (cache verify does).
            entry = self._shard_keys(path, verify=False)
            with contextlib.suppress(FileNotFoundError):
                size += os.path.getsize(path)
            if entry is None:
                continue
            rows += len(entry[0])
            keys.update(entry[0])
            width = entry[1] if width is None else width
        return {
            "key": self.key,
            "config": self.config,
            "rows": rows,
            "unique": len(keys),
            "features": width,
            "shards": len(paths),
            "bytes": size,
        }

    def check_shards(self):
        """Integrity of every shard: a list of ``(path, problem or None)``."""
        report = []
        for path in self.shard_paths():
            try:
                f, _ = self._open(path)
                with f:
                    keys, codes = f["keys"][:], f["codes"][:]
                    stored = f.attrs.get("checksum")
                if stored != _checksum(keys, [codes]):
                    raise UsageError("checksum mismatch: the file was altered after it was written")
                if not np.isfinite(codes).all():
                    raise UsageError("holds non-finite codes")
                report.append((path, None))
            except FileNotFoundError:
                continue  # merged away by a concurrent compaction
            except (OSError, ValueError, KeyError) as exc:
                report.append((path, str(exc)))
        return report


def _checksum(keys, blocks):
    """SHA-256 of a shard's keys and its codes, given as consecutive blocks of rows."""
    digest = hashlib.sha256(np.ascontiguousarray(keys).tobytes())
    for block in blocks:
        digest.update(np.ascontiguousarray(block, dtype=np.float32).tobytes())
    return digest.hexdigest()


#: Shards whose codes take at most this many bytes are checked against their checksum the first
#: time this process lists them (a bit flip is ignored with a CacheWarning and recomputed, not
#: served); larger ones only by ``cnncodes cache verify`` (reading them whole would cost more than
#: the rows a call needs).
_VERIFY_MAX_BYTES = 256 * 2**20


def _verify(f, path, st, key_array):
    """Check an open shard's checksum (small enough shards); hold its codes if they are small."""
    dset = f["codes"]
    nbytes = dset.shape[0] * dset.shape[1] * 4
    if nbytes > _VERIFY_MAX_BYTES:
        return
    if nbytes <= _HOLD_MAX_SHARD_BYTES:
        codes = dset[...]
        blocks = [codes]
    else:  # read in runs of rows of about 16 MB
        codes = None
        step = max(1, (16 * 2**20) // max(1, dset.shape[1] * 4))
        blocks = (dset[start : start + step] for start in range(0, dset.shape[0], step))
    if f.attrs.get("checksum") != _checksum(key_array, blocks):
        raise UsageError("checksum mismatch: the file was altered after it was written")
    if codes is not None:
        _hold_codes(path, st, codes)  # read anyway: the next read of these codes needs no I/O


def list_configs(root, *, recover=False, report=None):
    """All configurations in a cache folder: ``[(CodeStore, info dict)]``, newest config first.

    Folders without a readable ``config.json`` written by cnncodes are skipped with a warning
    (silently where there is none). With ``recover=True``, a folder whose ``config.json`` is
    missing or damaged gets it back from what its shards record, with a warning that says so.
    A ``report`` dict receives ``"recovered"`` (those folders) and ``"unaccounted"``: every
    other folder not listed, as ``{"folder", "problem"}`` (not warned about then).
    """
    root = os.fspath(root)
    out = []
    try:
        names = sorted(os.listdir(root))
    except (FileNotFoundError, NotADirectoryError):
        return out
    if report is not None:
        report.setdefault("recovered", [])
        report.setdefault("unaccounted", [])
    for name in names:
        folder = os.path.join(root, name)
        if name.startswith(".") or not os.path.isdir(folder):
            continue
        config = folder_config(folder, recover, report)
        if config is not None:
            store = CodeStore(root, config)
            out.append((store, store.info()))
    return out
