"""cnncodes: CNN codes from frozen pretrained networks, cached, for scikit-learn."""

import importlib

__version__ = "0.1.0"

# Public names and the module each lives in. They are imported on first use (PEP 562), so that
# `import cnncodes.cache`, `cnncodes --version` and `cnncodes cache info` do not pay the seconds
# that importing torch, torchvision and scikit-learn takes (bench/RESULTS.md, section 6), and a
# torch-free module such as cnncodes.spec imports without them.
_EXPORTS = {
    "CNNCodes": "transformers",
    "SignedPower": "transformers",
    "SkippedImagesError": "transformers",
    "SkippedImagesWarning": "transformers",
    "ViewStack": "viewstack",
    "filter_readable": "search",
    "warm_cache": "search",
    "FineTune": "finetune",
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
    "extract_views": "extract",
    "ImageLoadError": "images",
    "load_image": "images",
    "LayerError": "layers",
    "LayerInfo": "layers",
    "ModelError": "spec",
    "ModelSpec": "spec",
    "WeightsError": "spec",
    "WeightsUnavailableError": "checkpoints",
    "build_model": "models",
    "list_layers": "layers",
    "resolve_spec": "models",
}
_SUBMODULES = (
    "advise",
    "architectures",
    "cache",
    "checkpoints",
    "cli",
    "compare",
    "datasets",
    "demo",
    "demo_data",
    "evaluation",
    "experiment",
    "export",
    "extract",
    "finetune",
    "fitted",
    "images",
    "layers",
    "models",
    "persistence",
    "pooling",
    "preprocessing",
    "readthrough",
    "recipes",
    "report",
    "search",
    "spec",
    "transformers",
    "verify",
    "views",
    "viewstack",
)

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})
