"""The recipe registry: recipe names -> modules, recipe files by path, and ``make_cv``.

A recipe is a module (or any object) with ``build(**overrides) -> (pipeline, param_grid)``;
optionally ``OPTIONS``, the names of its own options, and ``LAYER``, what a list of layers given
by the user means for it (:data:`LAYER_MODES`): ``"sweep"``, each layer is a candidate of the
grid search, or ``"concat"``, the layers' codes are concatenated into one code.

Imports flow one way: the recipes in the top-level :mod:`pipelines` package are built from
cnncodes' public API and register themselves here (:func:`register`); nothing in cnncodes imports
:mod:`pipelines` except :func:`_load_bundled`, the one edge, which imports it once, on the first
look-up, so that the bundled recipes are there without anyone importing them first. Registering
is cheap: a recipe is named by its module's dotted path and imported when it is first asked for,
so listing the recipes (``cnncodes fit --help``) loads neither torch nor scikit-learn.

Examples
--------
>>> from cnncodes import recipes
>>> recipes.available()
['finetune_head', 'finetune_top', 'layer_sweep_svm', 'linear_probe', 'linear_svm', 'sgd']
>>> recipes.layer_mode("layer_sweep_svm"), recipes.layer_mode("linear_probe")
('sweep', 'concat')
>>> recipes.get("linear_probe").__name__
'pipelines.linear_probe'
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import numbers
import os
import sys
from dataclasses import dataclass

from ..errors import InputTypeError, UsageError

__all__ = [
    "LAYER_MODES",
    "available",
    "build",
    "get",
    "layer_mode",
    "load",
    "make_cv",
    "register",
]

#: What a list of layers given by the user means for a recipe (its ``LAYER`` attribute).
LAYER_MODES = ("sweep", "concat")

#: The package whose import registers the bundled recipes (see :func:`_load_bundled`).
BUNDLED_PACKAGE = "pipelines"


@dataclass(frozen=True)
class _Entry:
    target: object  # a module, or the dotted name of one, imported on first use
    layer: str


_REGISTRY: dict[str, _Entry] = {}
_bundled_loaded = False


def _check_layer_mode(value, where):
    if value not in LAYER_MODES:
        raise UsageError(f"{where}={value!r}: expected one of {', '.join(map(repr, LAYER_MODES))}")
    return value


def register(name, recipe, *, layer=None):
    """Make ``recipe`` available by ``name`` (to :func:`get`, ``cnncodes fit --pipeline``).

    Parameters
    ----------
    name : str
        The recipe's name.
    recipe : module or str
        The recipe, or the dotted name of its module (imported when first asked for, so that
        registering costs nothing).
    layer : {"sweep", "concat"}, optional
        What a list of layers given by the user means for this recipe (see the module
        docstring). Default: for a module, what it declares (:func:`layer_mode`); for a dotted
        name, ``"concat"``. A module that declares ``LAYER`` must declare the same.

    Raises
    ------
    ValueError
        A bad name or layer mode, or ``name`` already registered for another recipe.

    Examples
    --------
    >>> register("linear_probe", "pipelines.linear_probe")  # already there: no change
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise UsageError(f"name={name!r}: a recipe name is a Python identifier, e.g. 'my_probe'")
    if not isinstance(recipe, str) and not callable(getattr(recipe, "build", None)):
        raise UsageError(
            f"recipe={recipe!r}: expected a module defining build(**overrides), or its dotted name"
        )
    if layer is None:
        layer = "concat" if isinstance(recipe, str) else layer_mode(recipe)
    entry = _Entry(recipe, _check_layer_mode(layer, "layer"))
    known = _REGISTRY.get(name)
    if known is not None and known != entry:
        raise UsageError(
            f"recipe {name!r} is already registered ({known.target!r}, layer={known.layer!r}); "
            "choose another name"
        )
    _REGISTRY[name] = entry


def _load_bundled():
    """Import :mod:`pipelines` once, whose ``__init__`` registers the bundled recipes.

    This is the only place in cnncodes that imports it. A cnncodes without that package (it is
    installed alongside) simply has no bundled recipes.
    """
    global _bundled_loaded
    if _bundled_loaded:
        return
    _bundled_loaded = True
    try:
        importlib.import_module(BUNDLED_PACKAGE)
    except ModuleNotFoundError as exc:
        if exc.name != BUNDLED_PACKAGE:
            _bundled_loaded = False  # a broken install: say so on every look-up, not once
            raise
    except BaseException:
        _bundled_loaded = False
        raise


def available():
    """Names of the registered recipes (the bundled ones and any :func:`register` added), sorted.

    Examples
    --------
    >>> "linear_probe" in available()
    True
    """
    _load_bundled()
    return sorted(_REGISTRY)


def _looks_like_file(name):
    return name.endswith(".py") or os.sep in name or "/" in name


def get(name):
    """A recipe module by name (``"linear_probe"``) or by the path of a user's ``.py`` file.

    Raises
    ------
    ValueError
        An unknown name (the message lists the recipes and the closest match).

    Examples
    --------
    >>> get("sgd").build(model="resnet18", weights="none")[0].steps[-1][0]
    'clf'
    """
    if isinstance(name, os.PathLike):
        return load(name)
    if not isinstance(name, str) or not name:
        raise UsageError(f"recipe={name!r}: expected a recipe name or a path to a .py file")
    if _looks_like_file(name):
        return load(name)
    entry = _entry(name)
    module = entry.target
    if isinstance(module, str):
        module = importlib.import_module(module)
    declared = getattr(module, "LAYER", entry.layer)
    if declared != entry.layer:
        raise UsageError(
            f"recipe {name!r} is registered with layer={entry.layer!r} but its module "
            f"{module.__name__} declares LAYER = {declared!r}; make them agree"
        )
    return module


def _entry(name):
    _load_bundled()
    if name not in _REGISTRY:
        names = sorted(_REGISTRY)
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UsageError(
            f"unknown recipe {name!r}.{hint} Available: {', '.join(names) or 'none'}; or give "
            "the path of a .py file that defines build(**overrides) -> (pipeline, param_grid)"
        )
    return _REGISTRY[name]


def layer_mode(recipe):
    """What a list of layers given by the user means for ``recipe``: ``"sweep"`` or ``"concat"``.

    ``recipe`` is a registered name (answered without importing the recipe), a recipe file's
    path or a recipe module. A module says so with ``LAYER``; one that does not, is ``"sweep"``
    when it takes a ``layers`` option (the layers it sweeps), else ``"concat"``.

    Examples
    --------
    >>> layer_mode("layer_sweep_svm")
    'sweep'
    """
    if isinstance(recipe, str) and not _looks_like_file(recipe):
        return _entry(recipe).layer
    if isinstance(recipe, (str, os.PathLike)):
        recipe = load(recipe)
    declared = getattr(recipe, "LAYER", None)
    if declared is None:
        return "sweep" if "layers" in tuple(getattr(recipe, "OPTIONS", ())) else "concat"
    return _check_layer_mode(declared, f"{getattr(recipe, '__name__', 'recipe')}.LAYER")


def load(path):
    """Load a recipe from a user's ``.py`` file that defines ``build(**overrides)``.

    The file is executed: load only files you trust. The same file loads as the same module.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise UsageError(f"recipe file not found: {path}")
    if not path.endswith(".py"):
        raise UsageError(f"recipe file {path} is not a .py file")
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
        raise UsageError(
            f"recipe file {path} defines no build(**overrides) -> (pipeline, param_grid)"
        )
    return module


def build(recipe, overrides):
    """``recipe.build(**overrides)``, after checking that ``build`` takes every option given.

    A ``build(**overrides)`` checks its options itself (the bundled recipes raise
    :class:`~cnncodes.errors.InputTypeError` for unknown ones); a ``build`` with named
    parameters only is checked here, so that an option it does not take is a usage error that
    names it, not a ``TypeError`` from inside the call.
    """
    import inspect

    name = getattr(recipe, "__name__", "recipe")
    try:
        signature = inspect.signature(recipe.build)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check
        signature = None
    if signature is not None:
        params = signature.parameters.values()
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            takes = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            unknown = sorted(set(overrides) - set(takes))
            if unknown:
                raise InputTypeError(
                    f"{name}.build() got unknown option(s) {', '.join(map(repr, unknown))}; it "
                    f"takes {', '.join(takes) or 'no options'}"
                )
    return recipe.build(**overrides)


def make_cv(y, n_splits=None, seed=0, log=None):
    """Stratified K-fold cross-validation that adapts to the smallest class.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels.
    n_splits : int, optional
        The wanted number of folds (default 5); lowered to the size of the smallest class.
    seed : int, default=0
        Seed of the shuffle.
    log : callable, optional
        Told, in one line, when the folds are fewer than ``n_splits`` and why. Without it, a
        :class:`UserWarning` says so when ``n_splits`` was given (the default 5 adapts quietly).

    Returns
    -------
    StratifiedKFold
        Shuffled, with ``min(n_splits, smallest class count)`` folds.

    Raises
    ------
    ValueError
        Fewer than two classes, or a class with fewer than two images (named in the message).

    Examples
    --------
    >>> make_cv(["ant", "ant", "ant", "bee", "bee"]).get_n_splits()
    2
    """
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    asked, n_splits = n_splits, 5 if n_splits is None else n_splits
    if isinstance(n_splits, bool) or not isinstance(n_splits, numbers.Integral) or n_splits < 2:
        raise UsageError(f"n_splits={n_splits!r}: expected an int >= 2")
    y = np.asarray(y)
    if y.ndim != 1:
        raise UsageError(f"y has shape {y.shape}; expected one label per image (1-D)")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        found = f"only the class {classes[0].item()!r}" if len(classes) else "no labels"
        raise UsageError(f"y has {found}: a classifier needs at least two classes")
    small = [
        (c.item() if isinstance(c, np.generic) else c, int(n))
        for c, n in zip(classes, counts)
        if n < 2
    ]
    if small:
        listing = ", ".join(f"{c!r} ({n} image)" for c, n in small)
        raise UsageError(
            f"class {small[0][0]!r} has only {small[0][1]} image; stratified cross-validation "
            f"needs at least 2 images per class (too small: {listing}). Add images or drop "
            "the class."
        )
    k = int(min(n_splits, counts.min()))
    if k < n_splits:
        smallest = classes[int(np.argmin(counts))]
        smallest = smallest.item() if isinstance(smallest, np.generic) else smallest
        line = (
            f"cross-validation: {k} folds, not the {n_splits} asked for: the smallest class, "
            f"{smallest!r}, has {k} images, and every fold needs one image of each class"
        )
        if log is None and asked is not None:
            import warnings

            warnings.warn(line, UserWarning, stacklevel=2)
        elif log is not None:
            log(line)
    return StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
