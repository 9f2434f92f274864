"""What a configuration folder of the cache holds: its ``config.json``, or else what its shards
say (h5py only).

Every shard records the configuration it belongs to (its ``config`` and ``config_key``
attributes), so a ``config.json`` deleted or damaged can be written again from them; ``cnncodes
cache verify`` does so (:func:`cnncodes.cache.list_configs` with ``recover=True``).
"""

from __future__ import annotations

import json
import os
import stat
import warnings

import h5py

from ..errors import UsageError
from ..spec import FORMAT_VERSION, config_key
from ..utils.files import TMP_PREFIX, atomic_write_bytes

__all__ = [
    "CacheWarning",
    "config_body",
    "config_from_shards",
    "folder_config",
    "read_config_json",
    "write_config_json",
]


class CacheWarning(UserWarning):
    """A cache file was unreadable or not one of ours; it is ignored and its rows recomputed."""


def config_body(key, config):
    """The bytes of a configuration's ``config.json``."""
    body = {"config_key": key, "format_version": FORMAT_VERSION, "config": config}
    return json.dumps(body, sort_keys=True, indent=1).encode()


def write_config_json(folder, config):
    """Write ``folder``'s ``config.json`` (atomically, replacing what is there)."""
    path = os.path.join(folder, "config.json")
    atomic_write_bytes(path, config_body(config_key(config), config), prefix=TMP_PREFIX)


def read_config_json(folder):
    """The configuration in ``folder``'s ``config.json``; raises ``OSError``, ``ValueError``,
    ``KeyError`` or ``TypeError`` saying what is wrong (missing, unreadable, another key)."""
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        body = json.load(f)
    config = body["config"]
    if config_key(config) != os.path.basename(folder):
        raise UsageError("its key does not match its folder")
    return config


def config_from_shards(folder):
    """The configuration the shards of ``folder`` record, where one's matches the folder's
    name (its key); else None. Regular files only, never links."""
    name = os.path.basename(folder)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    for shard in names:
        path = os.path.join(folder, shard)
        if not shard.endswith(".h5") or shard.startswith(TMP_PREFIX):
            continue
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            with h5py.File(path, "r", locking=False) as f:
                if f.attrs.get("config_key") != name:
                    continue
                config = json.loads(f.attrs["config"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(config, dict) and config_key(config) == name:
            return config
    return None


def folder_config(folder, recover, report):
    """The configuration of ``folder``, or None (warned about or reported, as it asks)."""
    missing = not os.path.isfile(os.path.join(folder, "config.json"))
    try:
        return read_config_json(folder)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = "no config.json" if missing else f"config.json: {exc}"
    config = config_from_shards(folder) if recover else None
    if config is not None:
        write_config_json(folder, config)
        warnings.warn(
            f"recovered the config.json of cache folder {folder} ({problem}) from its shards",
            CacheWarning,
            stacklevel=3,
        )
        if report is not None:
            report["recovered"].append(folder)
        return config
    if report is not None:
        if recover:
            problem += "; no shard of it says which configuration it holds"
        report["unaccounted"].append({"folder": folder, "problem": problem})
    elif not missing:
        warnings.warn(f"ignoring cache folder {folder}: {problem}", CacheWarning, stacklevel=3)
    return None
