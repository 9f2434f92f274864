"""Ready-made recipes: one (Pipeline, param_grid) pair per transfer scenario.

Each recipe is a module with ``build(**overrides) -> (pipeline, param_grid)``. ``overrides`` are
:class:`~cnncodes.transformers.CNNCodes` parameters (``model``, ``weights``, ``layer``,
``cache_dir``, ...) plus the recipe's own options (its grids). The pipeline's first step is named
``"cnncodes"`` and its classifier ``"clf"``.

========================  ==========  ==========================================================
recipe                    scenario    what
========================  ==========  ==========================================================
``linear_probe``          1           top-layer codes, StandardScaler, L-BFGS logistic regression
``linear_svm``            1           (signed power,) L2-normalised codes, LinearSVC
``layer_sweep_svm``       3           codes from several depths x pooling, SVC linear and RBF
``sgd``                   1/3, large  SGDClassifier, regularisation sweep
========================  ==========  ==========================================================

Examples
--------
>>> import pipelines
>>> pipelines.available()
['layer_sweep_svm', 'linear_probe', 'linear_svm', 'sgd']
>>> pipe, grid = pipelines.get("linear_probe").build(model="resnet18", weights="none")
>>> [name for name, _ in pipe.steps]
['cnncodes', 'scale', 'clf']
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import sys

__all__ = ["available", "get", "load", "make_cv"]


def __getattr__(name):
    # make_cv needs scikit-learn (and the recipes torch): imported on first use, so that
    # `cnncodes --help`, which lists the recipes, starts without them.
    if name == "make_cv":
        from ._common import make_cv

        return make_cv
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_RECIPES = ("layer_sweep_svm", "linear_probe", "linear_svm", "sgd")


def available():
    """Names of the recipes shipped in this package, sorted."""
    return list(_RECIPES)


def _looks_like_file(name):
    return name.endswith(".py") or os.sep in name or "/" in name


def get(name):
    """A recipe module by name (``"linear_probe"``) or by the path of a user's ``.py`` file.

    Raises
    ------
    ValueError
        An unknown name (the message lists the recipes and the closest match).
    """
    if isinstance(name, os.PathLike):
        return load(name)
    if not isinstance(name, str) or not name:
        raise ValueError(f"recipe={name!r}: expected a recipe name or a path to a .py file")
    if _looks_like_file(name):
        return load(name)
    if name not in _RECIPES:
        close = difflib.get_close_matches(name, _RECIPES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown recipe {name!r}.{hint} Available: {', '.join(_RECIPES)}; or give the "
            "path of a .py file that defines build(**overrides) -> (pipeline, param_grid)"
        )
    return importlib.import_module(f"{__name__}.{name}")


def load(path):
    """Load a recipe from a user's ``.py`` file that defines ``build(**overrides)``.

    The file is executed: load only files you trust.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise ValueError(f"recipe file not found: {path}")
    if not path.endswith(".py"):
        raise ValueError(f"recipe file {path} is not a .py file")
    stem = os.path.splitext(os.path.basename(path))[0]
    module_name = f"cnncodes_recipe_{stem}_{hashlib.sha256(path.encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    if not callable(getattr(module, "build", None)):
        sys.modules.pop(module_name, None)
        raise ValueError(
            f"recipe file {path} defines no build(**overrides) -> (pipeline, param_grid)"
        )
    return module
