"""cnncodes: CNN codes from frozen pretrained networks, cached, for scikit-learn."""

import importlib

__version__ = "0.1.0"

# Public name -> the module defining it. They are imported on first use (PEP 562), so that
# `import cnncodes.cache`, `cnncodes --version` and `cnncodes cache info` do not pay the seconds
# that importing torch, torchvision and scikit-learn takes (bench/RESULTS.md, section 6).
_EXPORTS = {
    "CNNCodes": "transformers",
    "SignedPower": "transformers",
    "SkippedImagesError": "transformers",
    "SkippedImagesWarning": "transformers",
    "filter_readable": "transformers",
    "warm_cache": "transformers",
    "DatasetWarning": "datasets",
    "ImageDataset": "datasets",
    "load_dataset": "datasets",
    "ModelFileError": "persistence",
    "CodeStore": "cache",
    "list_configs": "cache",
    "resolve_cache_dir": "cache",
    "ExtractionResult": "extract",
    "SkippedImage": "extract",
    "extract_codes": "extract",
    "ImageLoadError": "images",
    "load_image": "images",
    "LayerError": "models",
    "LayerInfo": "models",
    "ModelError": "models",
    "ModelSpec": "models",
    "WeightsError": "models",
    "WeightsUnavailableError": "models",
    "build_model": "models",
    "list_layers": "models",
    "resolve_spec": "models",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        # Lets `from cnncodes import extract` fall back to importing the submodule.
        raise AttributeError(f"module 'cnncodes' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
