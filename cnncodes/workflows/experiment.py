"""Experiments on codes: a recipe's grid search with held-out evaluation.

This is what ``cnncodes fit`` runs; the command line only parses, prints and writes files.
Everything here works on image paths and labels and returns plain objects (DataFrames, dicts),
so the same experiment is one call from Python:

>>> result = run_experiment(train.paths, train.labels, "linear_probe",
...                         overrides={"model": "resnet18"}, test_size=0.25)  # doctest: +SKIP
>>> result.metrics["test"]["accuracy"]  # doctest: +SKIP
0.93

The network runs once per image and configuration: :func:`~cnncodes.search.warm_cache`
extracts every training code the grid will ask for before the search starts (with a progress
bar), so the folds and candidates, and the refit, only read the cache; held-out images go
through the network once, for the best candidate only.

The split, metrics and tables are :mod:`cnncodes.evaluation`'s; using the fitted model
afterwards (predictions, moved weights) is :mod:`cnncodes.fitted`'s. Their public names are
importable from here too, where they used to live.

Recipes are looked up in :mod:`cnncodes.recipes` (the bundled ones of :mod:`pipelines` register
themselves there); this module never imports :mod:`pipelines`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field

from ..errors import UsageError
from ..estimators import steps as _runs

# Moved to cnncodes.fitted; importable from here as before (`as` marks the re-exports).
from ..estimators.fitted import RUNTIME_PARAMS as RUNTIME_PARAMS
from ..estimators.fitted import predict_images, set_runtime, verify_model
from ..estimators.fitted import relocate_weights as relocate_weights
from ..extraction.ray_engine import joblib_on_ray, ray_session
from ..utils.jsonable import jsonable
from . import recipes
from .evaluation import (
    _layer_label,
    classification_metrics,
    cv_table,
    held_out_metrics,
    layer_table,
)
from .parallel import parallel_search
from .rundata import (
    check_on_error,
    data_config,
    library_versions,
    prepare_data,
    renamed_seed,
    report_duplicates,
)

__all__ = [
    "ExperimentResult",
    "classification_metrics",
    "cv_table",
    "describe_layers",
    "layer_table",
    "predict_images",
    "resolve_and_describe",
    "run_experiment",
    "run_locally",
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
        images (see :func:`~cnncodes.evaluation.classification_metrics`), or None;
        ``"duplicates"``: images whose content repeats, by SHA-256 (``test_in_train``: test
        images that are training images, None without a test set; ``within_train``: training
        images repeating another).
    table : pandas.DataFrame
        Every candidate, best first (see :func:`~cnncodes.evaluation.cv_table`).
    layers : pandas.DataFrame or None
        The best score of every layer, when the grid sweeps ``cnncodes__layer`` over more than one
        value (see :func:`~cnncodes.evaluation.layer_table`).
    config : dict
        Everything needed to rerun the experiment (JSON-ready).
    skipped : dict
        ``{"train": [...], "test": [...]}``: unreadable images left out (``on_error="skip"``).
    extraction : dict
        What :func:`~cnncodes.search.warm_cache` did (``computed``, ``cached``, ...).
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


def describe_layers(plan):
    """One line on the layers of a run (``config["layer"]``): swept, concatenated or one."""
    candidates = plan["candidates"]
    if len(candidates) > 1:
        return f"layers swept, one candidate each: {', '.join(map(_layer_label, candidates))}"
    (only,) = candidates
    if isinstance(only, (list, tuple)) and len(only) > 1:
        return f"codes: concatenation of {' + '.join(map(str, only))}"
    return f"layer: {_layer_label(only)}"


def run_locally(estimator):
    """Set a fitted model's engine back to local: where codes were computed was the run's
    choice, so the saved model extracts locally wherever it is used (Ray need not be there)."""
    return set_runtime(estimator, engine="local", ray_address=None)


# ----------------------------------------------------------------------------- fit


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
        raise UsageError(
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
            raise UsageError("layer=[]: give at least one layer name")
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
    pipe, grid = recipes.build(recipe_module, overrides)
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

    from ..utils.progress import Progress

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
    random_state=0,
    on_error="raise",
    progress=None,
    log=None,
    layer_mode=None,
    seed=None,
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
        Instead of ``test``: hold out this stratified fraction of ``paths`` (seeded by
        ``random_state``).
    cv : int
        Folds of the stratified cross-validation (lowered to the smallest class size).
    scoring : str, optional
        The search's scoring (default: accuracy).
    n_jobs : int, optional
        Parallel fits of the search (the codes are extracted once beforehand, in this process):
        threads reading the warm cache for a CNNCodes pipeline, loky processes for another
        network step (:mod:`cnncodes.workflows.parallel`); progress is shown either way.
    random_state : int
        Seed of the split and of the folds' shuffle (``cnncodes fit --random-state``).
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
    seed : int, optional
        Deprecated name of ``random_state`` (a FutureWarning).

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
    check_on_error(on_error)
    seed = renamed_seed(seed, random_state, "run_experiment")  # the split's and the folds'
    data = prepare_data(paths, labels, test=test, test_size=test_size, seed=seed)
    recipe_module = recipes.get(recipe) if isinstance(recipe, (str, os.PathLike)) else recipe
    recipe_name = os.fspath(recipe) if isinstance(recipe, (str, os.PathLike)) else recipe.__name__

    overrides = dict(overrides or {})
    overrides["on_error"] = on_error
    # Also None: the recipes' CNNCodes default to progress=False, which would keep a log silent.
    overrides.setdefault("progress", progress)
    pipe, grid, layer_mode = _apply_overrides(recipe_module, overrides, layer_mode)
    step, prefix = _runs.network_step(pipe)  # a FineTune recipe: the FineTune itself
    layer_plan = {"mode": layer_mode, "candidates": _grid_layers(grid) or [step.layer]}
    log(describe_layers(layer_plan))
    resolve_and_describe(step, data.paths, log)  # a bad model, layer or parameter fails here
    cache_dir = step.cache_dir
    # engine="ray": one Ray session for the run (every extraction, then the search's fits).
    on_ray = getattr(step, "engine", "local") == "ray"
    session = ray_session(step.ray_address) if on_ray else contextlib.nullcontext()
    with session, _cache_for_the_run(pipe, prefix, log):
        extraction, skipped = _warm(pipe, data, grid, log)
        duplicates = report_duplicates(data, log)
        # The search itself only reads codes: no progress bars for each fold.
        shown = step.progress
        pipe.set_params(**{f"{prefix}progress": False})
        search, folds = _search(pipe, grid, data, cv, scoring, n_jobs, seed, progress, on_ray, log)
        best = search.best_estimator_
        metrics = _search_metrics(search, folds, scoring, duplicates)
        if data.test_paths is not None:
            with _showing_progress(best, prefix, shown):
                metrics["test"], skipped["test"] = _evaluate(best, data, on_error, duplicates, log)
        else:
            # No held-out images: describe the best candidate by its cross-validated predictions.
            metrics["cv"]["predictions"] = _cv_predictions(best, data, folds)
        run = {"recipe": recipe_name, "overrides": overrides, "param_grid": grid, "seed": seed}
        config = _experiment_config(run, folds, scoring, data, search, duplicates, layer_plan)
        # The model keeps the cache setting the user gave, not the run's temporary folder.
        for estimator in (best, pipe):
            estimator.set_params(**{f"{prefix}cache_dir": cache_dir})
        if on_ray:
            run_locally(best)
        return ExperimentResult(
            search=search,
            estimator=best,
            recipe=recipe_name,
            metrics=metrics,
            table=cv_table(search),
            layers=layer_table(search) if _sweeps_layers(grid) else None,
            config=config,
            skipped=skipped,
            extraction=extraction,
            seconds=time.perf_counter() - started,
        )


def _experiment_config(run, folds, scoring, data, search, duplicates, layer_plan):
    """Everything needed to rerun the experiment (JSON-ready); ``run`` holds its ``recipe``,
    ``overrides``, ``param_grid`` and ``seed``."""
    best = search.best_estimator_
    return {
        "recipe": run["recipe"],
        "overrides": jsonable({k: v for k, v in run["overrides"].items() if k != "progress"}),
        "param_grid": jsonable(run["param_grid"]),
        "cv": {"n_splits": int(folds.get_n_splits()), "shuffle": True, "seed": run["seed"]},
        "scoring": scoring or "accuracy",
        "split": data.split,
        **data_config(data.paths, data.labels, data.test_paths, data.test_labels),
        "best_params": jsonable(search.best_params_),
        "duplicates": duplicates,
        "layer": jsonable(layer_plan),
        # The network, its preprocessing (and where each value came from), its layers.
        **jsonable(_runs.describe_network(best)),
        "versions": library_versions(),
        "platform": platform.platform(),
        "argv": list(sys.argv),
    }


# ----------------------------------------------------------------------------- phases


def resolve_and_describe(step, paths, log):
    """Resolve the network step's model before any image is read (a bad model, layer or
    parameter fails here) and note its preprocessing in ``log``; returns its ModelSpec."""
    spec = _runs.resolve_network(step, paths)
    log(f"preprocessing: {spec.preprocessing.describe()}")
    return spec


def _warm(pipe, data, grid, log):
    """Extract every training code the grid needs (once); leave out unreadable training images
    (``on_error="skip"``). Returns ``(extraction summary, {"train": skipped, "test": []})``."""
    # Only the training images: the test images are transformed once, by the winner alone.
    log(f"codes: extracting what the grid needs for {len(data.paths)} training images (once)")
    extraction = _runs.warm(pipe, data.paths, grid)
    skipped = {"train": extraction.pop("skipped"), "test": []}
    runs = extraction["runs"]
    per = f" over {runs} passes of the images (one per setting other than the layer and pooling)"
    log(
        f"codes: {extraction['computed']} image codes computed, {extraction['cached']} "
        f"from the cache{per if runs > 1 else ''}; {extraction['configurations']} "
        "configuration(s) of layer and settings"
    )
    if skipped["train"]:
        # on_error="skip": the warm pass was the screening; the images go with their labels.
        data.drop_train({s.index for s in skipped["train"]})
        log(f"left out {len(skipped['train'])} unreadable train image(s)")
        if not data.paths:
            raise UsageError("no readable training images")
    return extraction, skipped


def _search(pipe, grid, data, cv, scoring, n_jobs, seed, progress, on_ray, log):
    """The fitted grid search (refitted on every training image) and its folds."""
    from sklearn.model_selection import GridSearchCV, ParameterGrid

    folds = recipes.make_cv(data.labels, n_splits=cv, seed=seed, log=log)
    n_candidates = len(ParameterGrid(grid))
    log(
        f"grid search: {n_candidates} candidate(s) x {folds.get_n_splits()} folds "
        f"on {len(data.paths)} images, {len(set(data.labels))} classes"
    )
    fits = n_candidates * folds.get_n_splits()
    # On Ray, the fits are Ray tasks reading the warm cache (n_jobs None: every CPU of the
    # cluster); a bar in this process cannot count them.
    backend = joblib_on_ray() if on_ray else contextlib.nullcontext()
    if on_ray or n_jobs in (None, 1):
        counting = _fit_progress(pipe, scoring, fits, progress, -1 if on_ray else n_jobs)
    else:
        # Threads reading the warm cache (loky processes for other steps), fits counted.
        step = _runs.network_step(pipe)[0]
        counting = parallel_search(pipe, step, data.paths, scoring, fits, progress, n_jobs)
    with counting as scorer:
        search = GridSearchCV(
            pipe, grid, cv=folds, scoring=scorer, n_jobs=n_jobs, refit=True, error_score="raise"
        )
        with backend:
            search.fit(data.paths, data.labels)
    return search, folds


def _search_metrics(search, folds, scoring, duplicates):
    """``metrics`` of a search: its score, best parameters, duplicates; ``test`` still None."""
    from sklearn.model_selection import ParameterGrid

    return {
        "scoring": scoring or "accuracy",
        "cv": {
            "best_score": float(search.best_score_),
            "best_std": float(search.cv_results_["std_test_score"][search.best_index_]),
            "n_splits": int(folds.get_n_splits()),
            "n_candidates": len(ParameterGrid(search.param_grid)),
        },
        "best_params": jsonable(search.best_params_),
        "duplicates": duplicates,
        "test": None,
    }


def _cv_predictions(best, data, folds):
    """:func:`classification_metrics` of the best candidate's cross-validated predictions."""
    from sklearn.model_selection import cross_val_predict

    predicted = cross_val_predict(best, data.paths, data.labels, cv=folds)
    classes = [str(c) for c in best.classes_]
    return classification_metrics(data.labels, predicted, labels=classes)


@contextlib.contextmanager
def _showing_progress(best, prefix, shown):
    """The best model shows its progress bar (``shown``) while test images go through it."""
    best.set_params(**{f"{prefix}progress": shown})
    try:
        yield
    finally:
        best.set_params(**{f"{prefix}progress": False})


def _evaluate(best, data, on_error, duplicates, log):
    """``(held-out metrics, skipped test images)`` of the best candidate on the test images."""
    log(f"codes: {len(data.test_paths)} test images, for the best candidate only")
    test_paths, test_labels, skipped = data.test_paths, data.test_labels, []
    if on_error == "skip":
        # Screened by the winner itself: its codes are the ones predict reads.
        test_paths, test_labels, skipped = _runs.screen_test(best, test_paths, test_labels)
        if skipped:
            log(f"left out {len(skipped)} unreadable test image(s)")
        if not test_paths:
            raise UsageError("no readable test images")
        data.test_paths, data.test_labels = test_paths, test_labels
    classes = [str(c) for c in best.classes_]
    metrics = held_out_metrics(
        test_labels, best.predict(test_paths), classes, duplicates["test_in_train"] or 0
    )
    unseen = metrics.get("unseen_classes")
    if unseen:
        log(f"test images of class(es) never seen in training: {', '.join(unseen)}")
    return metrics, skipped
