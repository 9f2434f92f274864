"""Grid searches over a pipeline with a :class:`~cnncodes.transformers.CNNCodes` step.

:func:`warm_cache` extracts, once, every code a search will ask for, so that its folds and
candidates (in any number of processes) only read the cache; :func:`filter_readable` drops
unreadable images together with their labels before a fit or a prediction (its codes land in
the cache too); :func:`_find_codes_step` finds the CNNCodes step of a (nested) Pipeline and the
prefix of its parameters.
"""

from __future__ import annotations

import numpy as np
from sklearn import clone
from sklearn.model_selection import ParameterGrid
from sklearn.utils import _safe_indexing

from ..errors import UsageError
from ..params import as_path_list
from ..store import cache as _cache
from .codes import CNNCodes

__all__ = ["filter_readable", "warm_cache"]


def _find_codes_step(estimator):
    """``(CNNCodes, parameter prefix)`` of ``estimator`` or of a step of a (nested) Pipeline."""
    if isinstance(estimator, CNNCodes):
        return estimator, ""
    steps = getattr(estimator, "steps", None)
    if steps is not None:
        for name, step in steps:
            try:
                found, prefix = _find_codes_step(step)
            except ValueError:
                continue
            return found, f"{name}__{prefix}"
    raise UsageError(
        f"{type(estimator).__name__} has no CNNCodes step: pass a CNNCodes, or a Pipeline "
        "containing one"
    )


def filter_readable(X, y=None, *, extractor=None):
    """Drop unreadable images together with their labels, so rows cannot misalign.

    Each image is screened by extracting its codes with ``extractor``'s configuration and
    ``on_error="skip"``: the codes land in the cache, so fitting or predicting afterwards reads
    them back instead of recomputing (with ``cache_dir=None`` they are computed again). Without
    an extractor, each image is only decoded (:func:`cnncodes.images.load_image`), which catches
    the same file errors but not preprocessing failures.

    Parameters
    ----------
    X : sequence of paths, 1-D array of str, or one-column DataFrame
    y : array-like of shape (n_images,), optional
        Labels, filtered with the same mask.
    extractor : CNNCodes or Pipeline, optional
        The estimator (fitted or not) whose codes will be used; a Pipeline's CNNCodes step is used.

    Returns
    -------
    X_kept : same kind as ``X``
        The readable images, in input order.
    y_kept : same kind as ``y``, or None
    skipped : list of SkippedImage
        ``(index, path, reason)`` of each image left out (``index`` refers to the input ``X``).

    Examples
    --------
    >>> X_ok, y_ok, skipped = filter_readable(paths, labels, extractor=pipe)  # doctest: +SKIP
    >>> pipe.fit(X_ok, y_ok)  # doctest: +SKIP
    """
    from ..extraction.extract import SkippedImage
    from ..images.load import ImageLoadError, load_image

    paths, _ = as_path_list(X)
    if y is not None and len(y) != len(paths):
        raise UsageError(f"X has {len(paths)} images but y has {len(y)} labels")
    if extractor is not None:
        step, _ = _find_codes_step(extractor)
        screen = clone(step).set_params(on_error="skip")
        if hasattr(step, "spec_"):
            # Fitted: keep exactly its resolved configuration.
            for attr in (
                "spec_",
                "layers_",
                "layer_sizes_",
                "n_features_out_",
                "n_features_in_",
                "views_",
            ):
                setattr(screen, attr, getattr(step, attr))
        else:
            screen.fit(paths)
        skipped = screen._extract(paths).skipped
    else:
        skipped = []
        for i, path in enumerate(paths):
            try:
                load_image(path)
            except ImageLoadError as exc:
                skipped.append(SkippedImage(i, path, exc.reason))
    if not skipped:
        return X, y, []
    bad = {s.index for s in skipped}
    kept = np.array([i for i in range(len(paths)) if i not in bad], dtype=np.int64)
    if isinstance(X, (list, tuple)):
        X_kept = type(X)(X[i] for i in kept)
    else:
        X_kept = _safe_indexing(X, kept)
    y_kept = None if y is None else _safe_indexing(y, kept)
    return X_kept, y_kept, skipped


def _codes_grid(param_grid, prefix):
    """The CNNCodes part of a parameter grid (dict or list of dicts) as a list of dicts."""
    grids = [param_grid] if isinstance(param_grid, dict) else list(param_grid)
    out = []
    for grid in grids:
        sub = {k[len(prefix) :]: v for k, v in grid.items() if k.startswith(prefix)}
        if prefix and prefix[:-2] in grid:
            raise UsageError(
                f"param_grid replaces the step {prefix[:-2]!r} itself; warm_cache only handles "
                f"grids over its parameters ({prefix}layer, {prefix}pooling, ...)"
            )
        out.append(sub)
    return out


def _search_grid(search, estimator):
    """The grid a search carries: ``param_grid``, or distributions that are all lists."""
    if search is not None and hasattr(search, "param_grid"):
        return search.param_grid
    distributions = getattr(search, "param_distributions", None)
    if distributions is not None:
        grids = [distributions] if isinstance(distributions, dict) else list(distributions)
        if all(isinstance(v, (list, tuple, np.ndarray)) for g in grids for v in g.values()):
            return distributions  # every value it can draw, as a grid
        raise UsageError(
            f"{type(search).__name__} draws from distributions that are not lists of values; "
            "pass param_grid= with the CNNCodes settings it may try (layer, pooling, ...)"
        )
    raise UsageError(
        f"param_grid is required for a {type(estimator).__name__} (only a search carries its "
        "own grid)"
    )


def warm_cache(estimator, X, param_grid=None):
    """Extract, once, every code that a grid search over ``estimator`` will ask for.

    A grid search with a warm cache never runs the network. Sequential searches warm the cache
    themselves (the first fold of each configuration computes, the rest read), but parallel
    workers (``n_jobs > 1``) starting on a cold cache can compute the same codes side by side;
    calling this first makes every worker read from the cache. Candidates that differ only
    in ``layer`` share one forward pass.

    On a Ray cluster: with ``CNNCodes(engine="ray")`` this extracts on the cluster; then fit the
    search inside ``joblib.parallel_backend("ray")`` (after ``ray.util.joblib.register_ray()``),
    and its fits run as Ray tasks that read the codes from the cache (a folder every node sees).

    Parameters
    ----------
    estimator : search, Pipeline or CNNCodes
        A search (GridSearchCV, HalvingGridSearchCV, RandomizedSearchCV over lists: its
        ``estimator`` and grid are used) or the estimator to search over.
    X : image paths
        All the images the search will see.
    param_grid : dict or list of dict, optional
        Required unless ``estimator`` is a search that carries its own; given with a search, it
        replaces the search's grid.

    Returns
    -------
    dict
        ``runs`` (extraction runs: settings that differ in more than the layer),
        ``configurations`` (cached code sets: runs x their layers), ``computed`` and ``cached``
        (images, summed over runs) and ``skipped`` (SkippedImage list of the first run).

    Examples
    --------
    >>> search = GridSearchCV(pipe, grid, n_jobs=4)  # doctest: +SKIP
    >>> warm_cache(search, paths)["computed"]  # doctest: +SKIP
    412
    """
    # A search over the estimator (GridSearchCV, HalvingGridSearchCV, RandomizedSearchCV, ...).
    search = estimator if hasattr(estimator, "estimator") and hasattr(estimator, "cv") else None
    if param_grid is None:
        param_grid = _search_grid(search, estimator)
    if search is not None:
        estimator = search.estimator
    step, prefix = _find_codes_step(estimator)
    paths, _ = as_path_list(X)
    if _cache.resolve_cache_dir(step.cache_dir) is None:
        raise UsageError(
            "warm_cache needs a cache, but cache_dir=None keeps nothing; set cache_dir "
            "('auto' or a folder)"
        )
    # Group candidate settings by everything except the layer: one forward pass each.
    groups = {}
    for grid in _codes_grid(param_grid, prefix):
        for params in ParameterGrid(grid):
            # Fitting resolves the layer names (aliases such as "penultimate"), reading no image.
            candidate = clone(step).set_params(**params).fit(paths)
            others = candidate.get_params()
            others.pop("layer")
            key = repr(sorted(others.items()))
            entry = groups.setdefault(key, (others, []))
            for name in candidate.layers_:
                if name not in entry[1]:
                    entry[1].append(name)
    summary = {"runs": 0, "configurations": 0, "computed": 0, "cached": 0, "skipped": None}
    for others, layers in groups.values():
        candidate = CNNCodes(layer=layers, **others).fit(paths)
        result = candidate._extract(paths)
        summary["runs"] += 1
        summary["configurations"] += len(candidate.layers_) * len(candidate.views_)
        summary["computed"] += result.computed
        summary["cached"] += result.cached
        if summary["skipped"] is None:
            summary["skipped"] = result.skipped
    summary["skipped"] = summary["skipped"] or []
    return summary
