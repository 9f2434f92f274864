"""Codes of images through the store, on an engine: :mod:`.extract` (:func:`extract_codes`,
:func:`extract_views`) over the engines (:mod:`.engines`: local, Ray), the runtime, decoding,
folding, the forward loop, the Ray cluster's pipeline (:mod:`.ray_engine`), and the cache's
verification (:mod:`.verify`).
"""

from ..utils.lazy import lazy_face

_EXPORTS = {
    "CPU_FORWARD_BATCH": "extract",
    "ExtractionResult": "extract",
    "PRECISIONS": "extract",
    "SkippedImage": "extract",
    "code_config": "extract",
    "exact_fp32": "extract",
    "extract_codes": "extract",
    "extract_views": "extract",
    "preprocess": "extract",
    "preprocess_bytes": "extract",
    "resolve_device": "extract",
    "resolve_precision": "extract",
    "spec_from_config": "extract",
    "ENGINES": "engines",
    "Engine": "engines",
    "ExtractionJob": "engines",
    "LocalEngine": "engines",
    "RayEngine": "engines",
    "engine_for": "engines",
    "cluster_device": "ray_engine",
    "joblib_on_ray": "ray_engine",
    "ray_session": "ray_engine",
    "require_ray": "ray_engine",
    "run_on_ray": "ray_engine",
    "TOLERANCES": "verify",
    "config_summary": "verify",
    "recheck_codes": "verify",
    "verify_cache": "verify",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
