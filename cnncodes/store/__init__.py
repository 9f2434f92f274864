"""The code store, openable without torch: immutable HDF5 shards (:mod:`.cache`), the
read-through cache over them (:mod:`.readthrough`) and export formats (:mod:`.export`).
"""

from ..utils.lazy import lazy_face

_EXPORTS = {
    "CacheWarning": "cache",
    "CodeStore": "cache",
    "DEFAULT_CACHE_DIR": "cache",
    "FORMAT_VERSION": "cache",
    "STALE_GRACE_SECONDS": "cache",
    "config_key": "cache",
    "list_configs": "cache",
    "remove_stale_temporaries": "cache",
    "resolve_cache_dir": "cache",
    "temporary_path": "cache",
    "CodesFile": "export",
    "FORMATS": "export",
    "PARQUET_LAYOUTS": "export",
    "check_format_available": "export",
    "read_codes": "export",
    "write_codes": "export",
    "clear": "prune",
    "config_usage": "prune",
    "prune": "prune",
    "COMPACT_ABOVE_SHARDS": "readthrough",
    "CachedCodes": "readthrough",
    "CodeCache": "readthrough",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
