"""JSON output: values made JSON-ready (numpy, tuples, NaN, paths), without heavy imports.

The command line prints JSON for every command, so this module imports numpy alone.
"""

import json
import os

import numpy as np

from .files import atomic_path

__all__ = ["jsonable", "skipped_json", "to_json_file"]


def jsonable(value):
    """``value`` made JSON-ready: numpy scalars and arrays, tuples, sets, NaN (None), other objects (repr)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((jsonable(v) for v in value), key=repr)
    if isinstance(value, np.ndarray):  # masked entries of cv_results_ become None
        value = value.tolist()
        return [jsonable(v) for v in value] if isinstance(value, list) else jsonable(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None  # JSON has no NaN or infinity
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def skipped_json(skipped):
    """Images left out (:class:`~cnncodes.extract.SkippedImage`) as ``[{"path", "reason"}]``."""
    return [{"path": s.path, "reason": s.reason} for s in skipped]


def to_json_file(data, path):
    """Write ``data`` (made JSON-ready) to ``path``, indented."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(jsonable(data), f, indent=1, sort_keys=False)
        f.write("\n")
