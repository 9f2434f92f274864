"""Grid searches over a pipeline with a network step (:class:`~cnncodes.CNNCodes` or
:class:`~cnncodes.FineTune`).

:func:`warm_cache` extracts, once, every code a search will ask for, so that its folds and
candidates (in any number of processes) only read the cache; :func:`filter_readable` drops
unreadable images together with their labels before a fit or a prediction (its codes land in
the cache too). Both ask the step through the network-step contract (:mod:`.steps`).
"""

from __future__ import annotations

import numpy as np
from sklearn.utils import _safe_indexing

from ..errors import UsageError
from ..params import as_path_list
from .steps import network_step, step_grid

__all__ = ["drop_skipped", "filter_readable", "screened", "unreadable_files", "warm_cache"]


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
    extractor : CNNCodes, FineTune or Pipeline, optional
        The estimator (fitted or not) whose network will read the images; its network step
        screens them (:meth:`~cnncodes.estimators.steps.NetworkStep.screen`: a FineTune, which
        decodes the files itself, only decodes them).

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
    if extractor is not None:
        return network_step(extractor)[0].screen(X, y)
    return screened(X, y, unreadable_files)


def unreadable_files(paths):
    """SkippedImage list of the ``paths`` that do not decode (:func:`cnncodes.images.load_image`)."""
    from ..extraction.extract import SkippedImage
    from ..images.load import ImageLoadError, load_image

    skipped = []
    for i, path in enumerate(paths):
        try:
            load_image(path)
        except ImageLoadError as exc:
            skipped.append(SkippedImage(i, path, exc.reason))
    return skipped


def screened(X, y, unreadable):
    """``(X_kept, y_kept, skipped)``, ``skipped`` being ``unreadable(paths)`` of ``X``'s paths."""
    paths, _ = as_path_list(X)
    if y is not None and len(y) != len(paths):
        raise UsageError(f"X has {len(paths)} images but y has {len(y)} labels")
    return drop_skipped(X, y, unreadable(paths))


def drop_skipped(X, y, skipped):
    """``(X_kept, y_kept, skipped)``: ``X`` and ``y`` without the rows of ``skipped``, of the
    same kinds as given (``X`` and ``y`` themselves when nothing was skipped)."""
    if not skipped:
        return X, y, []
    bad = {s.index for s in skipped}
    n = len(as_path_list(X)[0])
    kept = np.array([i for i in range(n) if i not in bad], dtype=np.int64)
    if isinstance(X, (list, tuple)):
        X_kept = type(X)(X[i] for i in kept)
    else:
        X_kept = _safe_indexing(X, kept)
    y_kept = None if y is None else _safe_indexing(y, kept)
    return X_kept, y_kept, list(skipped)


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
    step, prefix = network_step(estimator)
    paths, _ = as_path_list(X)
    return step.warm(paths, step_grid(param_grid, prefix))
