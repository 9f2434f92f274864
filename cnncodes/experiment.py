"""Experiments on codes: a recipe's grid search with held-out evaluation, and predictions.

This is what ``cnncodes fit`` and ``cnncodes predict`` run; the command line only parses,
prints and writes files. Everything here works on image paths and labels and returns plain
objects (DataFrames, dicts), so the same experiment is one call from Python:

>>> result = run_experiment(train.paths, train.labels, "linear_probe",
...                         overrides={"model": "resnet18"}, test_size=0.25)  # doctest: +SKIP
>>> result.metrics["test"]["accuracy"]  # doctest: +SKIP
0.93

The network runs once per image and configuration: :func:`~cnncodes.transformers.warm_cache`
extracts every training code the grid will ask for before the search starts (with a progress
bar), so the folds and candidates, and the refit, only read the cache; held-out images go
through the network once, for the best candidate only.

Recipes are looked up in :mod:`cnncodes.recipes` (the bundled ones of :mod:`pipelines` register
themselves there); this module never imports :mod:`pipelines`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import __version__, recipes
from ._json import jsonable
from .datasets import DatasetWarning
from .models import ModelError, default_preprocessing_note, resolve_spec
from .transformers import CNNCodes, _find_codes_step, filter_readable, warm_cache

__all__ = [
    "ExperimentResult",
    "classification_metrics",
    "cv_table",
    "layer_table",
    "predict_images",
    "run_experiment",
    "set_runtime",
    "verify_model",
]


@dataclass
class ExperimentResult:
    """The outcome of :func:`run_experiment`.

    Attributes
    ----------
    search : GridSearchCV
        The fitted search (``cv_results_``, ``best_params_``, ``best_estimator_``).
    estimator : Pipeline
        The best pipeline, refitted on all training images: the model to save.
    recipe : str
        The recipe's name (or the path of the recipe file).
    metrics : dict
        ``"cv"``: the best candidate's mean and std cross-validated score, plus metrics of its
        cross-validated predictions when there is no test set; ``"test"``: metrics on the held-out
        images (see :func:`classification_metrics`), or None; ``"duplicates"``: images whose
        content repeats, by SHA-256 (``test_in_train``: test images that are training images,
        None without a test set; ``within_train``: training images repeating another).
    table : pandas.DataFrame
        Every candidate, best first (see :func:`cv_table`).
    layers : pandas.DataFrame or None
        The best score of every layer, when the grid sweeps ``cnncodes__layer`` over more than one
        value (see :func:`layer_table`).
    config : dict
        Everything needed to rerun the experiment (JSON-ready).
    skipped : dict
        ``{"train": [...], "test": [...]}``: unreadable images left out (``on_error="skip"``).
    extraction : dict
        What :func:`~cnncodes.transformers.warm_cache` did (``computed``, ``cached``, ...).
    seconds : float
    """

    search: object
    estimator: object
    recipe: str
    metrics: dict
    table: object
    layers: object
    config: dict
    skipped: dict = field(default_factory=dict)
    extraction: dict = field(default_factory=dict)
    seconds: float = 0.0


# ----------------------------------------------------------------------------- helpers


def _short_param(name):
    """``cnncodes__layer`` -> ``layer``, ``clf__C`` -> ``C`` (for tables)."""
    return name.split("__")[-1]


def _describe_layers(plan):
    """One line on the layers of a run (``config["layer"]``): swept, concatenated or one."""
    candidates = plan["candidates"]
    if len(candidates) > 1:
        return f"layers swept, one candidate each: {', '.join(map(_layer_label, candidates))}"
    (only,) = candidates
    if isinstance(only, (list, tuple)) and len(only) > 1:
        return f"codes: concatenation of {' + '.join(map(str, only))}"
    return f"layer: {_layer_label(only)}"


def _data_fingerprint(paths, labels):
    """SHA-256 of the (path, label) list: tells whether a rerun saw the same images."""
    h = hashlib.sha256()
    for i, path in enumerate(paths):
        label = "" if labels is None else str(labels[i])
        h.update(os.fsencode(path) + b"\0" + label.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def _versions():
    import h5py
    import sklearn
    import torch
    import torchvision

    return {
        "cnncodes": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
    }


def _duplicates(train, test):
    """Images whose content (SHA-256) repeats: ``test_in_train``, test images that are also
    training images (a leak into the test score; None without a test set), and
    ``within_train``, training images repeating an earlier one (they can land in a training
    and a validation fold at once)."""
    from .images import file_digests

    listed = [d for d in file_digests(train) if isinstance(d, str)]
    seen = set(listed)
    shared = None
    if test is not None:
        shared = sum(1 for d in file_digests(test) if isinstance(d, str) and d in seen)
    return {"test_in_train": shared, "within_train": len(listed) - len(seen)}


def _check_labelled(paths, labels, name):
    if labels is None:
        raise ValueError(
            f"{name}: the images have no labels; use class sub-folders or a manifest with a "
            "'label' column"
        )
    if len(labels) != len(paths):
        raise ValueError(f"{name}: {len(paths)} images but {len(labels)} labels")


# ----------------------------------------------------------------------------- metrics


def classification_metrics(y_true, y_pred, labels=None):
    """Accuracy, balanced accuracy, per-class precision/recall/support and the confusion matrix.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
    labels : list, optional
        Class order of the per-class entries and the confusion matrix (default: the sorted union).

    Returns
    -------
    dict
        ``n``, ``accuracy``, ``balanced_accuracy``, ``per_class`` (``{label: {"precision",
        "recall", "f1", "support"}}``), ``labels`` and ``confusion_matrix`` (rows: true class,
        columns: predicted class, in ``labels`` order).

    Examples
    --------
    >>> m = classification_metrics(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    >>> m["accuracy"], m["balanced_accuracy"], m["per_class"]["b"]["precision"]
    (0.75, 0.75, 0.6666666666666666)
    """
    import warnings

    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if labels is None:
        labels = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    labels = list(labels)
    with warnings.catch_warnings():
        # A class never predicted has no precision (reported as 0) - not worth a warning here.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, zero_division=0
        )
    present = support > 0
    balanced = float(np.mean(recall[present])) if present.any() else float("nan")
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced,
        "per_class": {
            str(label): {
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(s),
            }
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
        "labels": [str(label) for label in labels],
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def cv_table(search):
    """Every candidate of a fitted search, best first.

    Columns: ``rank``, one column per parameter that varies between candidates (named by its
    last ``__`` part, e.g. ``layer``, ``C``), ``mean``, ``std`` (of the cross-validated test
    score) and ``fit_seconds`` (mean per fold). Parameter values keep their type (a ``C`` stays
    a float, so JSON output stays numeric); a list of layers is joined with ``+``; a parameter
    a candidate does not have is None.
    """
    import pandas as pd

    results = search.cv_results_
    params = results["params"]
    names = []
    for p in params:
        for k in p:
            if k not in names:
                names.append(k)
    varying = [
        k for k in names if len({repr(p.get(k, "-")) for p in params}) > 1 or len(params) == 1
    ]
    rows = []
    for i, p in enumerate(params):
        row = {"rank": int(results["rank_test_score"][i])}
        for k in varying:
            v = p.get(k)
            if isinstance(v, (list, tuple)):
                v = "+".join(map(str, v))
            row[_short_param(k)] = v
        row["mean"] = float(results["mean_test_score"][i])
        row["std"] = float(results["std_test_score"][i])
        row["fit_seconds"] = float(results["mean_fit_time"][i])
        rows.append(row)
    # Object columns: pandas would otherwise turn ints into floats next to a missing value.
    table = pd.DataFrame(rows, dtype=object)
    table = table.astype({"rank": int, "mean": float, "std": float, "fit_seconds": float})
    return table.sort_values(["rank", "mean"], ascending=[True, False], kind="stable").reset_index(
        drop=True
    )


def _layer_label(layer):
    """A layer, or a multi-layer entry joined with ``+`` (as in :func:`cv_table`)."""
    return layer if isinstance(layer, str) else "+".join(map(str, layer))


def layer_table(search, param="cnncodes__layer"):
    """The best cross-validated score of every swept layer, and which layer won.

    Parameters
    ----------
    search : fitted GridSearchCV (or any search with ``cv_results_`` and ``best_params_``)
    param : str, default="cnncodes__layer"
        The grid parameter holding the layer.

    Returns
    -------
    pandas.DataFrame
        One row per layer, in sweep order: ``layer``, ``mean_test_score``, ``std_test_score``
        (of that layer's best candidate), ``params`` (that candidate's other parameters) and
        ``best`` (True for the layer of ``search.best_params_``).

    Examples
    --------
    >>> search.fit(paths, labels)  # doctest: +SKIP
    >>> print(layer_table(search).to_string(index=False))  # doctest: +SKIP
    """
    import pandas as pd

    results = getattr(search, "cv_results_", None)
    if results is None:
        raise ValueError("layer_table needs a fitted search (it has no cv_results_)")
    column = f"param_{param}"
    if column not in results:
        swept = [k[len("param_") :] for k in results if k.startswith("param_")]
        raise ValueError(
            f"the search did not sweep {param!r}; it swept {', '.join(swept) or 'nothing'}"
        )
    rows = {}
    for i, params in enumerate(results["params"]):
        if param not in params:
            continue
        label = _layer_label(params[param])
        score = results["mean_test_score"][i]
        row = rows.get(label)
        better = row is None or (
            np.isfinite(score)
            and (not np.isfinite(row["mean_test_score"]) or score > row["mean_test_score"])
        )
        if better:
            rows[label] = {
                "layer": label,
                "mean_test_score": float(score),
                "std_test_score": float(results["std_test_score"][i]),
                "params": {k: v for k, v in params.items() if k != param},
            }
    best = _layer_label(search.best_params_[param]) if param in search.best_params_ else None
    table = pd.DataFrame(
        list(rows.values()), columns=["layer", "mean_test_score", "std_test_score", "params"]
    )
    table["best"] = table["layer"] == best
    return table


# ----------------------------------------------------------------------------- fit


def _split(paths, labels, test_size, seed):
    from sklearn.model_selection import train_test_split

    if not 0 < test_size < 1:
        raise ValueError(f"test_size={test_size!r}: expected a fraction between 0 and 1")
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    n_test = int(np.ceil(test_size * len(paths)))
    if n_test < len(classes):
        raise ValueError(
            f"test_size={test_size}: {n_test} test image(s) cannot hold one of each of the "
            f"{len(classes)} classes; use a larger fraction or a separate test set"
        )
    small = [str(c) for c, n in zip(classes, counts) if n < 3]
    if small:
        raise ValueError(
            f"test_size={test_size}: class(es) {', '.join(map(repr, small))} have fewer than 3 "
            "images, too few to hold one out and still cross-validate; add images or give a "
            "separate test set"
        )

    def too_few(n_train):
        return ValueError(
            f"test_size={test_size}: leaves {n_train} training image(s) for {len(classes)} "
            "classes, fewer than 2 of some class; cross-validation needs at least 2 of each: "
            "hold out a smaller fraction"
        )

    if len(paths) - n_test < 2 * len(classes):
        raise too_few(len(paths) - n_test)
    idx = np.arange(len(paths))
    train_idx, test_idx = train_test_split(
        idx, test_size=test_size, stratify=labels, random_state=seed
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    left, left_counts = np.unique(labels[train_idx], return_counts=True)
    if len(left) < len(classes) or left_counts.min() < 2:
        raise too_few(len(train_idx))
    return (
        [paths[i] for i in train_idx],
        labels[train_idx].tolist(),
        [paths[i] for i in test_idx],
        labels[test_idx].tolist(),
    )


def _apply_overrides(recipe_module, overrides, layer_mode=None):
    """Build the recipe with ``overrides``: CNNCodes parameters and the recipe's options.

    ``layer`` given by the user (a name or a list) means what ``layer_mode`` says, by default
    what the recipe declares (:func:`cnncodes.recipes.layer_mode`): ``"sweep"``, each layer is
    a candidate (the recipe's own ``layers`` option when it has one, else the grid's
    ``cnncodes__layer``); ``"concat"``, one candidate whose code concatenates the layers'.
    ``pooling`` given by the user takes over a grid that sweeps it (the recipe's ``poolings``
    option when it has one). Returns ``(pipeline, param_grid, layer_mode)``.
    """
    overrides = dict(overrides or {})
    options = tuple(getattr(recipe_module, "OPTIONS", ()))
    if layer_mode is None:
        layer_mode = recipes.layer_mode(recipe_module)
    elif layer_mode not in recipes.LAYER_MODES:
        raise ValueError(
            f"layer_mode={layer_mode!r}: expected 'sweep' (each layer a candidate) or 'concat' "
            "(one code concatenating the layers), or None for the recipe's own"
        )
    user_layers = overrides.pop("layer", None)
    user_pooling = overrides.pop("pooling", None)
    if isinstance(user_layers, str):
        user_layers = [user_layers]
    candidates = None
    if user_layers is not None:
        user_layers = list(user_layers)
        if not user_layers:
            raise ValueError("layer=[]: give at least one layer name")
        joined = user_layers[0] if len(user_layers) == 1 else user_layers
        candidates = user_layers if layer_mode == "sweep" else [joined]
        if "layers" in options:
            overrides["layers"] = candidates
        else:
            overrides["layer"] = candidates[0]
    if user_pooling is not None:
        if "poolings" in options:
            overrides["poolings"] = [user_pooling]
        else:
            overrides["pooling"] = user_pooling
    pipe, grid = recipe_module.build(**overrides)
    grids = [grid] if isinstance(grid, dict) else [dict(g) for g in grid]
    for g in grids:
        if candidates is not None and "layers" not in options:
            if layer_mode == "sweep" or "cnncodes__layer" in g:
                g["cnncodes__layer"] = list(candidates)
        if user_pooling is not None and "cnncodes__pooling" in g and "poolings" not in options:
            g["cnncodes__pooling"] = [user_pooling]
    return pipe, (grids if isinstance(grid, list) else grids[0]), layer_mode


class _CountingScorer:
    """A scorer that advances a progress bar: it is called once per fitted fold."""

    def __init__(self, scorer, bar):
        self.scorer = scorer
        self.bar = bar

    def __call__(self, estimator, X, y):
        score = self.scorer(estimator, X, y)
        self.bar.update(1)
        return score


@contextlib.contextmanager
def _fit_progress(estimator, scoring, fits, progress, n_jobs):
    """The scoring to search with: ``scoring`` itself, or (for a sequential search with a
    progress bar) a scorer that counts the fits. Parallel workers cannot share a bar."""
    if progress is False or n_jobs not in (None, 1):
        yield scoring
        return
    from sklearn.metrics import check_scoring

    from ._progress import Progress

    # A bar on a terminal, a line every few seconds in a log file.
    with Progress(fits, "grid search", "fits", "fit", progress) as bar:
        yield _CountingScorer(check_scoring(estimator, scoring=scoring), bar)


@contextlib.contextmanager
def _cache_for_the_run(pipe, prefix, log):
    """Without a cache (``cache_dir=None``), a temporary one while the block runs.

    A grid search without a cache would push every image through the network once per fold and
    candidate; with this, once per configuration, as with a cache. It is removed on exit, even
    after an error.
    """
    if pipe.get_params()[f"{prefix}cache_dir"] is not None:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="cnncodes-run-") as folder:
        log(
            "codes: no cache (cache_dir=None, --no-cache): a temporary cache keeps this run's "
            "codes, so each image goes through the network once per configuration; it is "
            "removed at the end"
        )
        pipe.set_params(**{f"{prefix}cache_dir": folder})
        yield


def _grid_layers(param_grid):
    """The distinct values of ``cnncodes__layer`` in the grid, in order."""
    grids = [param_grid] if isinstance(param_grid, dict) else param_grid
    values = []
    for g in grids:
        for v in g.get("cnncodes__layer", ()):
            if v not in values:
                values.append(v)
    return values


def _sweeps_layers(param_grid):
    return len(_grid_layers(param_grid)) > 1


def run_experiment(
    paths,
    labels,
    recipe="linear_probe",
    *,
    overrides=None,
    test=None,
    test_size=None,
    cv=5,
    scoring=None,
    n_jobs=None,
    seed=0,
    on_error="raise",
    progress=None,
    log=None,
    layer_mode=None,
):
    """Run a recipe's grid search on labelled images and evaluate the best pipeline.

    Parameters
    ----------
    paths, labels : sequences
        The training images (all of them, when ``test_size`` splits off the test images).
    recipe : str or module
        A recipe name (:func:`cnncodes.recipes.available`), the path of a recipe ``.py`` file,
        or a module with ``build(**overrides)``.
    overrides : dict, optional
        CNNCodes parameters and recipe options passed to ``build``. ``layer`` (a name or a
        list) replaces the recipe's layers as ``layer_mode`` says; ``pooling`` replaces what
        the recipe sweeps.
    test : (paths, labels), optional
        Held-out images to evaluate the best pipeline on.
    test_size : float, optional
        Instead of ``test``: hold out this stratified fraction of ``paths`` (seeded by ``seed``).
    cv : int
        Folds of the stratified cross-validation (lowered to the smallest class size).
    scoring : str, optional
        The search's scoring (default: accuracy).
    n_jobs : int, optional
        Parallel fits of the search (the codes are extracted once beforehand, in this process).
    seed : int
        Seed of the split and of the folds' shuffle.
    on_error : {"raise", "skip"}
        Unreadable images stop the run, or are left out (with their labels) and reported.
    progress : bool or None
        Progress bar while images go through the network (None: on a terminal).
    log : callable, optional
        Receives one-line notes on what is happening.
    layer_mode : {"sweep", "concat"}, optional
        What a list of layers in ``overrides["layer"]`` means: ``"sweep"``, each is a candidate
        of the search; ``"concat"``, one code concatenating them. Default: what the recipe
        declares (its ``LAYER``; :func:`cnncodes.recipes.layer_mode`), ``"sweep"`` for
        ``layer_sweep_svm``, ``"concat"`` for the others. ``config["layer"]`` says which applied
        and the layers it gave.

    Returns
    -------
    ExperimentResult

    Raises
    ------
    ValueError
        Unlabelled images, a class with fewer than 2 training images, bad ``test_size``, unknown
        recipe, bad parameters; :class:`~cnncodes.images.ImageLoadError` for an unreadable image
        with ``on_error="raise"``.
    """
    log = log or (lambda line: None)
    started = time.perf_counter()
    if test is not None and test_size is not None:
        raise ValueError("give either test (held-out images) or test_size (a fraction), not both")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error={on_error!r}: choose 'raise' or 'skip'")
    paths = [os.fspath(p) for p in paths]
    _check_labelled(paths, labels, "training data")
    labels = [str(label) for label in labels]
    if len(set(labels)) < 2:
        found = f"only the class {labels[0]!r}" if labels else "no images"
        raise ValueError(
            f"training data: {found}; a classifier needs at least two classes (two class "
            "sub-folders, or two labels in the manifest)"
        )
    recipe_module = recipes.get(recipe) if isinstance(recipe, (str, os.PathLike)) else recipe
    recipe_name = os.fspath(recipe) if isinstance(recipe, (str, os.PathLike)) else recipe.__name__

    split = None
    if test_size is not None:
        paths, labels, test_paths, test_labels = _split(paths, labels, test_size, seed)
        split = {"test_size": test_size, "seed": seed}
    elif test is not None:
        test_paths, test_labels = [os.fspath(p) for p in test[0]], test[1]
        _check_labelled(test_paths, test_labels, "test data")
        test_labels = [str(label) for label in test_labels]
    else:
        test_paths = test_labels = None

    overrides = dict(overrides or {})
    overrides["on_error"] = on_error
    # Also None: the recipes' CNNCodes default to progress=False, which would keep a log silent.
    overrides.setdefault("progress", progress)
    pipe, grid, layer_mode = _apply_overrides(recipe_module, overrides, layer_mode)
    step, prefix = _find_codes_step(pipe)
    layer_plan = {"mode": layer_mode, "candidates": _grid_layers(grid) or [step.layer]}
    log(_describe_layers(layer_plan))
    # Fail on a bad model, layer or parameter before any image is read.
    spec = CNNCodes(**step.get_params()).fit(paths[:1]).spec_
    log(f"preprocessing: {spec.preprocessing.describe()}")
    note = default_preprocessing_note(spec)
    if note:
        log(note)
    cache_dir = step.cache_dir
    with _cache_for_the_run(pipe, prefix, log):
        # Only the training images: the test images are transformed once, by the winner alone.
        log(f"codes: extracting what the grid needs for {len(paths)} training images (once)")
        extraction = warm_cache(pipe, paths, grid)
        skipped = {"train": extraction.pop("skipped"), "test": []}
        runs = extraction["runs"]
        per = f" over {runs} passes of the images (one per setting other than the layer)"
        log(
            f"codes: {extraction['computed']} image codes computed, {extraction['cached']} "
            f"from the cache{per if runs > 1 else ''}; {extraction['configurations']} "
            "configuration(s) of layer and settings"
        )
        if skipped["train"]:
            # on_error="skip": the warm pass was the screening; the images go with their labels.
            bad = {s.index for s in skipped["train"]}
            labels = [label for i, label in enumerate(labels) if i not in bad]
            paths = [path for i, path in enumerate(paths) if i not in bad]
            log(f"left out {len(bad)} unreadable train image(s)")
            if not paths:
                raise ValueError("no readable training images")

        duplicates = _duplicates(paths, test_paths)
        overlap = duplicates["test_in_train"] or 0
        if overlap:
            warnings.warn(
                f"{overlap} test image(s) are also training images (same file content): "
                "the test score overstates accuracy on new images",
                DatasetWarning,
                stacklevel=2,
            )
        if duplicates["within_train"]:
            log(
                f"note: {duplicates['within_train']} training image(s) repeat another's content: "
                "cross-validated scores may overstate accuracy on new images"
            )
        folds = recipes.make_cv(labels, n_splits=cv, seed=seed)
        # The search itself only reads codes: no progress bars for each fold.
        shown = step.progress
        pipe.set_params(**{f"{prefix}progress": False})

        from sklearn.model_selection import GridSearchCV, ParameterGrid, cross_val_predict

        n_candidates = len(ParameterGrid(grid))
        log(
            f"grid search: {n_candidates} candidate(s) x {folds.get_n_splits()} folds "
            f"on {len(paths)} images, {len(set(labels))} classes"
        )
        fits = n_candidates * folds.get_n_splits()
        with _fit_progress(pipe, scoring, fits, progress, n_jobs) as scorer:
            search = GridSearchCV(
                pipe, grid, cv=folds, scoring=scorer, n_jobs=n_jobs, refit=True, error_score="raise"
            )
            search.fit(paths, labels)
        best = search.best_estimator_
        classes = [str(c) for c in best.classes_]

        metrics = {
            "scoring": scoring or "accuracy",
            "cv": {
                "best_score": float(search.best_score_),
                "best_std": float(search.cv_results_["std_test_score"][search.best_index_]),
                "n_splits": int(folds.get_n_splits()),
                "n_candidates": int(n_candidates),
            },
            "best_params": jsonable(search.best_params_),
            "duplicates": duplicates,
            "test": None,
        }
        if test_paths is not None:
            log(f"codes: {len(test_paths)} test images, for the best candidate only")
            # These go through the network: the bar is back while they do.
            best.set_params(**{f"{prefix}progress": shown})
            try:
                if on_error == "skip":
                    # Screened by the winner itself: its codes are the ones predict reads.
                    test_paths, test_labels, skipped["test"] = filter_readable(
                        test_paths, test_labels, extractor=best
                    )
                    if skipped["test"]:
                        log(f"left out {len(skipped['test'])} unreadable test image(s)")
                    if not test_paths:
                        raise ValueError("no readable test images")
                predicted = best.predict(test_paths)
            finally:
                best.set_params(**{f"{prefix}progress": False})
            metrics["test"] = classification_metrics(test_labels, predicted, labels=classes)
            metrics["test"]["overlap_with_training"] = overlap
            unseen = sorted(set(test_labels) - set(classes))
            if unseen:
                metrics["test"]["unseen_classes"] = unseen
                log(f"test images of class(es) never seen in training: {', '.join(unseen)}")
        else:
            # No held-out images: describe the best candidate by its cross-validated predictions.
            predicted = cross_val_predict(search.best_estimator_, paths, labels, cv=folds)
            metrics["cv"]["predictions"] = classification_metrics(labels, predicted, labels=classes)

        layers = None
        if _sweeps_layers(grid):
            layers = layer_table(search)

        best_codes = _find_codes_step(best)[0]
        config = {
            "recipe": recipe_name,
            "overrides": jsonable({k: v for k, v in overrides.items() if k != "progress"}),
            "param_grid": jsonable(grid),
            "cv": {"n_splits": int(folds.get_n_splits()), "shuffle": True, "seed": seed},
            "scoring": scoring or "accuracy",
            "split": split,
            "train": {
                "n_images": len(paths),
                "classes": {c: labels.count(c) for c in sorted(set(labels))},
                "sha256": _data_fingerprint(paths, labels),
            },
            "test": None
            if test_paths is None
            else {
                "n_images": len(test_paths),
                "sha256": _data_fingerprint(test_paths, test_labels),
            },
            "best_params": jsonable(search.best_params_),
            "duplicates": duplicates,
            "layer": jsonable(layer_plan),
            "extractor": jsonable(best_codes.spec_.to_dict()),
            # Where each preprocessing value came from: explicit, checkpoint, model, ...
            "preprocessing_source": dict(best_codes.spec_.preprocessing.source),
            "layers": list(best_codes.layers_),
            "versions": _versions(),
            "platform": platform.platform(),
            "argv": list(sys.argv),
        }
        # The model keeps the cache setting the user gave, not the run's temporary folder.
        for estimator in (best, pipe):
            estimator.set_params(**{f"{prefix}cache_dir": cache_dir})
        return ExperimentResult(
            search=search,
            estimator=best,
            recipe=recipe_name,
            metrics=metrics,
            table=cv_table(search),
            layers=layers,
            config=config,
            skipped=skipped,
            extraction=extraction,
            seconds=time.perf_counter() - started,
        )


# ----------------------------------------------------------------------------- predict


#: CNNCodes parameters that change how codes are computed but never their values (nor the cache
#: key): the only ones :func:`set_runtime` changes on a fitted model.
RUNTIME_PARAMS = ("batch_size", "num_workers", "device", "cache_dir", "progress")


def set_runtime(estimator, **params):
    """Set the runtime parameters of a fitted pipeline's extractor; returns ``estimator``.

    Only :data:`RUNTIME_PARAMS` may change on a fitted model (batch size, workers, device,
    cache folder, progress): what it computes stays exactly what it was fitted with. A fitted
    :class:`~cnncodes.finetune.FineTune` takes the same parameters itself.

    Examples
    --------
    >>> set_runtime(pipe, batch_size=64, device="cpu")  # doctest: +SKIP
    """
    unknown = sorted(set(params) - set(RUNTIME_PARAMS))
    if unknown:
        raise ValueError(
            f"set_runtime: {', '.join(map(repr, unknown))} would change the model's codes; "
            f"only {', '.join(RUNTIME_PARAMS)} may change on a fitted model"
        )
    estimator = getattr(estimator, "best_estimator_", estimator)
    if _as_fine_tune(estimator) is not None:  # the network is the estimator: same parameters
        return estimator.set_params(**params)
    _, prefix = _find_codes_step(estimator)
    estimator.set_params(**{f"{prefix}{k}": v for k, v in params.items()})
    return estimator


def relocate_weights(estimator, path):
    """Point a fitted pipeline's extractor at its checkpoint file in a new place.

    A saved model records the checkpoint's absolute path and SHA-256; on another machine, or
    after the file moved, give its new path here. The file must have the SHA-256 the model was
    fitted with, so the codes (and the cache, keyed by content) stay exactly the same.

    A fitted :class:`~cnncodes.finetune.FineTune` holds its fine-tuned weights itself and never
    reads the checkpoint it started from: it is returned unchanged.

    Raises
    ------
    cnncodes.models.WeightsError
        The file is missing or has other contents (both SHA-256 named).
    ValueError
        The model was not fitted with a checkpoint file.

    Examples
    --------
    >>> model = persistence.load("model.skops")  # doctest: +SKIP
    >>> relocate_weights(model, "/data/weights/finetuned.pth")  # doctest: +SKIP
    """
    import dataclasses

    from sklearn.utils.validation import check_is_fitted

    if _as_fine_tune(getattr(estimator, "best_estimator_", estimator)) is not None:
        return estimator
    step, _ = _find_codes_step(getattr(estimator, "best_estimator_", estimator))
    check_is_fitted(step)
    spec = step.spec_
    if spec.weights_spec.kind != "checkpoint":
        raise ValueError(
            f"weights={os.fspath(path)!r}: this model was fitted with {spec.weights_id}, not a "
            "checkpoint file, so there is no file to relocate"
        )
    path = spec.weights_spec.verify(path)
    step.weights = path
    step.spec_ = dataclasses.replace(spec, weights=path)
    return estimator


def verify_model(estimator):
    """Check that a fitted pipeline's extractor can be rebuilt exactly as it was fitted.

    A checkpoint file must still have the SHA-256 it had at fit time, and the architecture (for
    the user's own, also the code its ``forward()`` runs) and preprocessing that its names
    resolve to today must equal the fitted ones (a user's model code or a library upgrade can
    change them). A model saved by an older cnncodes, whose fingerprint did not cover
    ``forward()``, is accepted while its modules match, with a warning. Nothing is loaded but
    file hashes and the architecture on the meta device.

    Raises
    ------
    cnncodes.models.WeightsError
        The checkpoint is missing or changed (both SHA-256 are named).
    cnncodes.models.ModelError
        The architecture or preprocessing differs (both are named).
    ValueError
        The estimator has no fitted CNNCodes step.

    A fitted :class:`~cnncodes.finetune.FineTune` holds its weights and preprocessing itself:
    only its architecture is checked (its weights must still fit the network its name builds).
    """
    from sklearn.utils.validation import check_is_fitted

    if _as_fine_tune(estimator) is not None:
        from .models import _arch_id

        check_is_fitted(estimator, "state_dict_")
        fitted = estimator.spec_
        now = _arch_id(fitted.model, fitted.weights_spec.name)
        if now != fitted.arch_id:
            raise ModelError(
                f"{fitted.model} no longer builds the architecture this fine-tuned model was "
                f"trained on (fingerprint {fitted.arch_id} at fit time, {now} now; its modules "
                "or its forward() code changed); fine-tune again"
            )
        return
    step, _ = _find_codes_step(estimator)
    check_is_fitted(step)
    step._verify_weights()
    fitted = step.spec_
    weights = fitted.weights if fitted.weights_spec.kind != "callable" else None
    now = resolve_spec(
        fitted.model,
        weights,
        seed=fitted.seed,
        resize=step.resize,
        crop=step.crop,
        mean=step.mean,
        std=step.std,
        interpolation=step.interpolation,
        impl=getattr(step, "impl", "pil"),
    )
    legacy = "+" not in fitted.arch_id and now.arch_id.partition("+")[0] == fitted.arch_id
    if legacy and now.arch_id != fitted.arch_id:
        # Saved before forward() was part of the fingerprint: its modules still match.
        warnings.warn(
            f"this model was saved by an older cnncodes, whose fingerprint of {fitted.model} "
            "did not cover its forward() code: an edit of forward() since the fit cannot be "
            "detected (its codes are read from the cache as they were); refit to be sure",
            stacklevel=2,
        )
    elif now.arch_id != fitted.arch_id:
        raise ModelError(
            f"{fitted.model} no longer builds the architecture this model was fitted with "
            f"(fingerprint {fitted.arch_id} at fit time, {now.arch_id} now; its modules or "
            "its forward() code changed); refit"
        )
    if now.weights_id != fitted.weights_id:
        raise ModelError(
            f"{fitted.model} weights are now {now.weights_id}, but the model was fitted with "
            f"{fitted.weights_id}; refit, or restore the original weights"
        )
    if now.preprocessing != fitted.preprocessing:
        raise ModelError(
            f"{fitted.model} preprocessing is now {now.preprocessing.to_dict()}, but the model "
            f"was fitted with {fitted.preprocessing.to_dict()}; refit"
        )


def _as_fine_tune(estimator):
    """``estimator`` if it is a :class:`~cnncodes.finetune.FineTune`, else None (without
    importing the fine-tuning package, whose skorch is optional: a loaded one imported it)."""
    module = sys.modules.get("cnncodes.finetune.estimator")
    return estimator if module is not None and isinstance(estimator, module.FineTune) else None


def _fine_tune_scores(model, paths, proba, on_error):
    """What :func:`_scores` gives, and the unreadable images, for a FineTune: it predicts from
    the image files itself, in one pass. Every file is decoded first, so an unreadable one stops
    the run naming it (or is left out) before any batch goes through the network."""
    from .images import ImageLoadError

    readable, _, skipped = filter_readable(paths)
    if skipped and on_error == "raise":
        raise ImageLoadError(skipped[0].path, skipped[0].reason)
    errors = {s.index: s.reason for s in skipped}
    if not readable:
        return [], [], None, "none", errors
    p = model.predict_proba(readable)
    predicted = model.classes_[p.argmax(axis=1)]
    return predicted, p.max(axis=1), (p if proba else None), "probability", errors


def _split_pipeline(estimator):
    """(feature part, classifier) of a Pipeline, so the codes are made once for all outputs."""
    steps = getattr(estimator, "steps", None)
    if steps is not None and len(steps) > 1:
        return estimator[:-1], estimator[-1]
    return None, estimator


def _scores(clf, X, proba):
    """(predicted labels, score of the predicted class, probabilities or None, score kind)."""
    predicted = clf.predict(X)
    if hasattr(clf, "predict_proba"):
        p = clf.predict_proba(X)
        return predicted, p.max(axis=1), (p if proba else None), "probability"
    if hasattr(clf, "decision_function"):
        d = np.asarray(clf.decision_function(X), dtype=np.float64)
        # Binary classifiers give one value, positive for classes_[1]: its size is the margin.
        return predicted, (np.abs(d) if d.ndim == 1 else d.max(axis=1)), None, "decision"
    return predicted, np.full(len(predicted), np.nan), None, "none"


def _codes_for_prediction(estimator, features, step, paths, on_error):
    """(classifier input for the readable images, {index: reason} of the unreadable ones).

    When the CNNCodes step opens the pipeline (the recipes' shape), each image goes through the
    network once, unreadable ones dropped on the way; otherwise they are screened first with
    :func:`filter_readable` (the screening's codes land in the cache, if there is one).
    """
    leading = features is not None and features.steps[0][1] is step
    if on_error == "skip" and leading:
        step.set_params(on_error="skip")  # the caller restores it
        result = step._extract(paths)
        errors = {s.index: s.reason for s in result.skipped}
        X = np.asarray(result.concatenated(), dtype=np.float32)
        if not len(X):
            return X, errors
        for _name, transformer in features.steps[1:]:
            if transformer is not None and transformer != "passthrough":
                X = transformer.transform(X)
        return X, errors
    errors = {}
    if on_error == "skip":
        paths, _, skipped = filter_readable(paths, extractor=estimator)
        errors = {s.index: s.reason for s in skipped}
    if not paths:
        return np.empty((0, 0)), errors
    return (paths if features is None else features.transform(paths)), errors


def predict_images(estimator, paths, *, labels=None, proba=False, on_error="raise"):
    """Predict the class of each image, one row per input image.

    Parameters
    ----------
    estimator : fitted Pipeline with a CNNCodes step, or fitted FineTune
        Or a fitted search (GridSearchCV, ...) over one: its ``best_estimator_`` is used. A
        :class:`~cnncodes.finetune.FineTune` predicts from the images itself (its own weights:
        the checkpoint it started from is not needed).
    paths : sequence of image paths
    labels : sequence, optional
        True labels (a labelled folder): added as ``true_label``.
    proba : bool
        Add one ``proba_<class>`` column per class (classifiers with ``predict_proba`` only).
    on_error : {"raise", "skip"}
        ``"skip"``: an unreadable image gets a row with an empty ``label`` and its ``error``.

    Returns
    -------
    pandas.DataFrame
        ``path``, ``label`` (predicted), ``score`` (probability of the predicted class, or the
        classifier's decision value), ``score_kind``, optionally ``true_label``, ``proba_*`` and,
        with ``on_error="skip"``, ``error``.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error={on_error!r}: choose 'raise' or 'skip'")
    paths = [os.fspath(p) for p in paths]
    estimator = getattr(estimator, "best_estimator_", estimator)
    features, clf = _split_pipeline(estimator)
    if proba and not hasattr(clf, "predict_proba"):
        raise ValueError(
            f"the model's classifier ({type(clf).__name__}) gives no probabilities; predict "
            "without proba (a decision score is reported instead)"
        )
    verify_model(estimator)
    classes = [str(c) for c in estimator.classes_]
    if _as_fine_tune(estimator) is not None:
        predicted, score, probabilities, kind, errors = _fine_tune_scores(
            estimator, paths, proba, on_error
        )
        return _prediction_table(paths, labels, proba, on_error, classes, errors,
                                 predicted, score, probabilities, kind)  # fmt: skip
    step, prefix = _find_codes_step(estimator)
    previous = step.on_error
    estimator.set_params(**{f"{prefix}on_error": "raise"})
    try:
        X, errors = _codes_for_prediction(estimator, features, step, paths, on_error)
        if len(X):
            predicted, score, probabilities, kind = _scores(clf, X, proba)
        else:
            predicted, score, probabilities, kind = [], [], None, "none"
    finally:
        estimator.set_params(**{f"{prefix}on_error": previous})
    return _prediction_table(paths, labels, proba, on_error, classes, errors,
                             predicted, score, probabilities, kind)  # fmt: skip


def _prediction_table(paths, labels, proba, on_error, classes, errors, predicted, score,
                      probabilities, kind):  # fmt: skip
    """:func:`predict_images`' DataFrame: one row per input path, in order."""
    import pandas as pd

    rows = []
    k = 0
    for i, path in enumerate(paths):
        row = {"path": path}
        if i in errors:
            row.update(label=None, score=np.nan, score_kind=kind)
        else:
            row.update(label=str(predicted[k]), score=float(score[k]), score_kind=kind)
            if probabilities is not None:
                row.update({f"proba_{c}": float(v) for c, v in zip(classes, probabilities[k])})
            k += 1
        if labels is not None:
            row["true_label"] = str(labels[i])
        if on_error == "skip":
            row["error"] = errors.get(i)
        rows.append(row)
    columns = ["path", "label", "score", "score_kind"]
    if labels is not None:
        columns.append("true_label")
    if proba:
        columns += [f"proba_{c}" for c in classes]
    if on_error == "skip":
        columns.append("error")
    return pd.DataFrame(rows, columns=columns)
