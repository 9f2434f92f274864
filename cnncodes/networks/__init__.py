"""Names -> torch networks: architectures, checkpoints (weights files, offline), layers
(graph-node names, shapes, extractors), preprocessing, pooling; :mod:`.models` is the front
(:func:`resolve_spec`, :func:`build_model`). Testable without scikit-learn.
"""

from ..utils.lazy import lazy_face

_EXPORTS = {
    "model_identity": "architectures",
    "WeightsUnavailableError": "checkpoints",
    "LayerError": "layers",
    "LayerInfo": "layers",
    "PENULTIMATE": "layers",
    "TIMM_ALIASES": "layers",
    "build_extractor": "layers",
    "layer_shapes": "layers",
    "module_names": "layers",
    "node_names": "layers",
    "resolve_layers": "layers",
    "ModelError": "models",
    "ModelSpec": "models",
    "PREPROCESSING_IMPLS": "models",
    "PREPROCESSING_KEYS": "models",
    "Preprocessing": "models",
    "WeightsError": "models",
    "build_model": "models",
    "default_preprocessing_note": "models",
    "describe_preprocessing": "models",
    "file_sha256": "models",
    "list_layers": "models",
    "resolve_preprocessing": "models",
    "resolve_spec": "models",
    "MAX_FLATTEN_FEATURES": "pooling",
    "POOLINGS": "pooling",
    "check_pooling": "pooling",
    "code_size": "pooling",
    "pool": "pooling",
    "MAX_SIDE": "preprocessing",
    "PreprocessingWarning": "preprocessing",
    "BUILTIN_MODEL_CALLABLES": "trust",
    "UntrustedModelCodeError": "trust",
    "check_trust_model_code": "trust",
    "refused_model_code": "trust",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
