"""Removing configurations from a cache: :func:`prune` (by model, by age, to a size budget) and
:func:`clear`, safe while other processes read and write the cache.

A configuration is removed whole: under its compaction and write locks (taken without waiting;
see :mod:`.locks`) its folder is renamed to ``.trash-<key>-<random>`` in the cache folder, then
deleted. A configuration whose locks are held (a writer committing a shard, a compaction
running) is left alone and reported as ``busy``. A writer that starts after the rename makes the
folder anew; a reader whose shards vanish reads a miss and the read-through cache computes the
codes again. Trash left by a prune that was killed is deleted by the next prune or clear.

"Last use" is :func:`~cnncodes.store.locks.last_used`: the newest of the last read (stamped at
most once a minute), the last committed shard and the configuration's creation.
"""

from __future__ import annotations

import datetime
import os
import secrets
import shutil
import time

from ..errors import UsageError
from ..utils.files import fsync_path
from .cache import list_configs
from .locks import exclusive_locks, last_used

__all__ = ["clear", "config_usage", "prune", "TRASH_PREFIX"]

TRASH_PREFIX = ".trash-"


def _folder_bytes(folder):
    total = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def _view(config):
    preprocessing = config.get("preprocessing")
    if isinstance(preprocessing, dict):
        return preprocessing.get("view", "center")
    return config.get("view", "center")


def config_usage(store, info):
    """One configuration as a JSON-ready dict: what made it (model, layer, pooling, view), its
    rows, its bytes on disk (every file of its folder) and its last use (epoch seconds)."""
    config = info["config"]
    return {
        "key": store.key,
        "path": store.path,
        "model": config.get("model"),
        "layer": config.get("layer"),
        "pooling": config.get("pooling"),
        "view": _view(config),
        "rows": info["rows"],
        "bytes": _folder_bytes(store.path),
        "last_used": last_used(store.path),
    }


def _seconds(older_than):
    if older_than is None:
        return None
    if isinstance(older_than, datetime.timedelta):
        older_than = older_than.total_seconds()
    if isinstance(older_than, bool) or not isinstance(older_than, (int, float)) or older_than < 0:
        raise UsageError(f"older_than={older_than!r}: expected seconds >= 0 or a timedelta")
    return float(older_than)


def _remove_trash(root):
    try:
        names = os.listdir(root)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        if name.startswith(TRASH_PREFIX):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


#: Seconds a prune tries to take a busy configuration's locks before leaving it alone (writers
#: hold theirs for the milliseconds a shard's commit takes).
BUSY_WAIT = 1.0


def _remove(root, entry):
    """Remove one configuration's folder; ``"removed"``, ``"busy"`` or ``"gone"``."""
    deadline = time.monotonic() + BUSY_WAIT
    while True:
        outcome = _try_remove(root, entry)
        if outcome != "busy" or time.monotonic() >= deadline:
            return outcome
        time.sleep(0.01)


def _try_remove(root, entry):
    folder = entry["path"]
    with exclusive_locks(folder) as held:
        if held is None:
            return "gone"
        if not held:
            return "busy"
        trash = os.path.join(root, f"{TRASH_PREFIX}{entry['key']}-{secrets.token_hex(4)}")
        os.rename(folder, trash)  # atomic: readers and writers see the folder or nothing
        fsync_path(root)
    shutil.rmtree(trash, ignore_errors=True)
    return "removed"


def _select(entries, model, age, max_bytes, now):
    """``[(entry, reason)]`` to remove, in order: by model and age first, then least recently
    used first until the cache fits ``max_bytes``."""
    scope = [e for e in entries if model is None or e["model"] == model]
    chosen = []
    if age is not None:
        chosen = [(e, "older") for e in scope if (e["last_used"] or 0) < now - age]
    elif max_bytes is None:  # by model alone
        chosen = [(e, "model") for e in scope]
    if max_bytes is not None:
        taken = {e["key"] for e, _ in chosen}
        total = sum(e["bytes"] for e in entries if e["key"] not in taken)
        for e in sorted(scope, key=lambda e: e["last_used"] or 0):
            if total <= max_bytes:
                break
            if e["key"] not in taken:
                chosen.append((e, "size"))
                total -= e["bytes"]
    return chosen


def _run(root, chosen, entries, dry_run):
    report = {
        "cache_dir": root,
        "dry_run": dry_run,
        "removed": [],
        "busy": [],
        "bytes_before": sum(e["bytes"] for e in entries),
    }
    if not dry_run:
        _remove_trash(root)
    for entry, reason in chosen:
        outcome = "removed" if dry_run else _remove(root, entry)
        if outcome == "busy":
            report["busy"].append(entry)
        else:  # "gone": someone else removed it; it is not there any more either way
            report["removed"].append({**entry, "reason": reason})
    freed = sum(e["bytes"] for e in report["removed"])
    report["freed_bytes"] = freed
    report["bytes_after"] = report["bytes_before"] - freed
    report["kept"] = len(entries) - len(report["removed"])
    return report


def _entries(root):
    return [config_usage(store, info) for store, info in list_configs(root)]


def prune(cache_dir, *, model=None, older_than=None, max_bytes=None, dry_run=False, now=None):
    """Remove configurations from the cache folder ``cache_dir``: those of ``model`` (the
    configuration's ``model`` name), those not used for ``older_than`` (seconds or a
    ``timedelta``), and then the least recently used ones until the cache takes at most
    ``max_bytes``. Given together, the criteria combine: ``model`` narrows what may be
    removed, ``older_than`` removes the stale ones of those, ``max_bytes`` then removes more
    of them, least recently used first, as long as the whole cache is over budget.

    ``dry_run``: remove nothing, report what would go. Returns a dict: ``removed`` (one dict per
    configuration, as :func:`config_usage` with a ``reason``: ``"model"``, ``"older"`` or
    ``"size"``), ``busy`` (left alone: being written or compacted right now), ``kept``,
    ``bytes_before``, ``bytes_after``, ``freed_bytes``, ``cache_dir``, ``dry_run``.
    """
    age = _seconds(older_than)
    if max_bytes is not None and (isinstance(max_bytes, bool) or max_bytes < 0):
        raise UsageError(f"max_bytes={max_bytes!r}: expected a number of bytes >= 0")
    if model is None and age is None and max_bytes is None:
        raise UsageError(
            "prune needs model=, older_than= or max_bytes= (clear() removes everything)"
        )
    root = os.path.abspath(os.fspath(cache_dir))
    entries = _entries(root)
    now = time.time() if now is None else now
    return _run(root, _select(entries, model, age, max_bytes, now), entries, dry_run)


def clear(cache_dir, *, model=None, dry_run=False):
    """Remove every configuration of the cache folder ``cache_dir`` (only those of ``model``
    if given); the report is :func:`prune`'s. Folders that are not configurations are kept."""
    root = os.path.abspath(os.fspath(cache_dir))
    entries = _entries(root)
    chosen = [(e, "clear") for e in entries if model is None or e["model"] == model]
    return _run(root, chosen, entries, dry_run)
