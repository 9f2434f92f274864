"""cnncodes: CNN codes from frozen pretrained networks, cached, for scikit-learn.

The package is layered; imports flow down only::

    cli -> workflows -> estimators -> extraction -> {networks, images, store} -> spec, params, utils

- :mod:`cnncodes.spec`: torch-free value types and the one cache key.
- :mod:`cnncodes.networks`: names -> torch networks (architectures, checkpoints, layers,
  preprocessing, pooling).
- :mod:`cnncodes.images`: image files -> RGB pixels, views, labelled datasets.
- :mod:`cnncodes.store`: the code store (shards, read-through, export, verification).
- :mod:`cnncodes.extraction`: codes of images through the store, on an engine (local, Ray).
- :mod:`cnncodes.estimators`: the network-step contract; CNNCodes, FineTune, ViewStack; search
  helpers, fitted models, persistence.
- :mod:`cnncodes.workflows`: experiments, comparison, advice, reports, the demo.
- :mod:`cnncodes.cli`: the command line, argument parsing over the workflows.

Public names are imported on first use (PEP 562), so that ``import cnncodes.store``,
``cnncodes --version`` and ``cnncodes cache info`` do not pay the seconds that importing torch,
torchvision and scikit-learn takes (bench/RESULTS.md, section 6).
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# Public names and the module each lives in.
_EXPORTS = {
    "CNNCodes": "estimators.codes",
    "SignedPower": "estimators.codes",
    "SkippedImagesError": "estimators.codes",
    "SkippedImagesWarning": "estimators.codes",
    "ViewStack": "estimators.viewstack",
    "filter_readable": "estimators.search",
    "warm_cache": "estimators.search",
    "FineTune": "estimators.finetune",
    "DatasetWarning": "images.datasets",
    "PreprocessingWarning": "networks.preprocessing",
    "ImageDataset": "images.datasets",
    "load_dataset": "images.datasets",
    "ModelFileError": "estimators.persistence",
    "CodeStore": "store.cache",
    "list_configs": "store.cache",
    "resolve_cache_dir": "store.cache",
    "ExtractionResult": "extraction.extract",
    "SkippedImage": "extraction.extract",
    "extract_codes": "extraction.extract",
    "extract_views": "extraction.extract",
    "ImageLoadError": "images.load",
    "load_image": "images.load",
    "LayerError": "networks.layers",
    "LayerInfo": "networks.layers",
    "ModelError": "spec",
    "ModelSpec": "spec",
    "WeightsError": "spec",
    "WeightsUnavailableError": "networks.checkpoints",
    "build_model": "networks.models",
    "list_layers": "networks.models",
    "resolve_spec": "networks.models",
    "rank": "workflows.rank",
    "CNNCodesError": "errors",
    "UsageError": "errors",
}

#: Modules that lived at the top of the package before it was layered (and files saved then,
#: documentation and users' code name them): each old name is the module it became, the same
#: object, so ``import cnncodes.cache`` and ``cnncodes.cache.CodeStore`` keep working.
MOVED = {
    "architectures": "networks.architectures",
    "checkpoints": "networks.checkpoints",
    "layers": "networks.layers",
    "preprocessing": "networks.preprocessing",
    "pooling": "networks.pooling",
    "models": "networks.models",
    "views": "images.views",
    "datasets": "images.datasets",
    "cache": "store.cache",
    "readthrough": "store.readthrough",
    "export": "store.export",
    "verify": "extraction.verify",
    "extract": "extraction.extract",
    "transformers": "estimators.codes",
    "viewstack": "estimators.viewstack",
    "finetune": "estimators.finetune",
    "search": "estimators.search",
    "fitted": "estimators.fitted",
    "persistence": "estimators.persistence",
    "experiment": "workflows.experiment",
    "evaluation": "workflows.evaluation",
    "compare": "workflows.compare",
    "advise": "workflows.advise",
    "demo": "workflows.demo",
    "demo_data": "workflows.demo_data",
    "report": "workflows.report",
    "recipes": "workflows.recipes",
}

_PACKAGES = (
    "cli",
    "errors",
    "estimators",
    "extraction",
    "images",
    "inputs",
    "networks",
    "params",
    "spec",
    "store",
    "utils",
    "workflows",
)

__all__ = [*_EXPORTS, "__version__"]


def moved_to(fullname):
    """The module a name of the old flat layout became (``"cnncodes.cache"`` ->
    ``"cnncodes.store.cache"``), or None for a name that did not move."""
    prefix, _, rest = fullname.partition(".")
    if prefix != __name__ or not rest:
        return None
    head, _, tail = rest.partition(".")
    if head not in MOVED:
        return None
    return f"{__name__}.{MOVED[head]}" + (f".{tail}" if tail else "")


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as the module it became (one module object, two names)."""

    def find_spec(self, fullname, path=None, target=None):
        if moved_to(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        # The import system returns whatever sys.modules holds under the name after this call.
        sys.modules[module.__name__] = importlib.import_module(moved_to(module.__name__))


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())  # before a stale folder of an old name


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in MOVED or name in _PACKAGES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_EXPORTS, *MOVED, *_PACKAGES})
