"""The scikit-learn side: the network-step contract (:mod:`.steps`: :class:`NetworkStep`,
:func:`network_step`), :class:`CNNCodes` (:mod:`.codes`), :class:`SignedPower`,
:class:`FineTune` (:mod:`.finetune`), :class:`ViewStack`, grid-search helpers (:mod:`.search`),
fitted models (:mod:`.fitted`), saving and trust (:mod:`.persistence`).
"""

from ..utils.lazy import lazy_face

_EXPORTS = {
    "CNNCodes": "codes",
    "SignedPower": "signedpower",
    "SkippedImagesError": "codes",
    "SkippedImagesWarning": "codes",
    "filter_readable": "search",
    "warm_cache": "search",
    "FineTune": "finetune",
    "FineTuneError": "finetune",
    "RUNTIME_PARAMS": "steps",
    "predict_images": "fitted",
    "relocate_weights": "fitted",
    "set_runtime": "fitted",
    "split_pipeline": "fitted",
    "verify_model": "fitted",
    "BUILTIN_MODEL_CALLABLES": "persistence",
    "FORMATS": "persistence",
    "ModelFileError": "persistence",
    "PROJECT_TYPES": "persistence",
    "UntrustedModelCodeError": "persistence",
    "UntrustedTypesError": "persistence",
    "load": "persistence",
    "model_callables": "persistence",
    "refused_model_code": "persistence",
    "save": "persistence",
    "NetworkStep": "steps",
    "describe_network": "steps",
    "network_step": "steps",
    "resolve_network": "steps",
    "screen_test": "steps",
    "warm": "steps",
    "ViewStack": "viewstack",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
