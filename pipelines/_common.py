"""Shared pieces of the recipes: option handling, the post-processing steps (and ``make_cv``)."""

from __future__ import annotations

import inspect
import numbers

import numpy as np
from sklearn.pipeline import Pipeline

from cnncodes import CNNCodes, ViewStack
from cnncodes.errors import InputTypeError, UsageError
from cnncodes.workflows.recipes import make_cv

__all__ = ["CODES_PARAMS", "codes_step", "make_cv", "post_steps", "split_options", "stack_views"]

#: The CNNCodes parameters a recipe's ``build(**overrides)`` passes through, in signature order.
CODES_PARAMS = tuple(inspect.signature(CNNCodes).parameters)


def split_options(recipe, overrides, recipe_options, params=CODES_PARAMS, kind="CNNCodes"):
    """Split ``build(**overrides)`` into (``kind``'s parameters, recipe options); refuse the rest.

    ``params`` are the names ``kind`` (the estimator the recipe builds its step from) takes.
    """
    codes = {k: v for k, v in overrides.items() if k in params}
    options = {k: v for k, v in overrides.items() if k in recipe_options}
    unknown = sorted(set(overrides) - set(codes) - set(options))
    if unknown:
        raise InputTypeError(
            f"{recipe}.build() got unknown option(s) {', '.join(map(repr, unknown))}. Recipe "
            f"options: {', '.join(recipe_options)}; {kind} parameters: {', '.join(params)}"
        )
    return codes, options


def codes_step(**params):
    """The recipe's first step: a :class:`~cnncodes.transformers.CNNCodes` with ``params``."""
    return CNNCodes(**params)


def grid_values(name, values):
    """A non-empty list of grid values for option ``name``."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        values = [values]
    values = list(values)
    if not values:
        raise UsageError(f"{name}: give at least one value")
    return [v.item() if isinstance(v, np.generic) else v for v in values]


def stack_views(pipe, grid, codes):
    """``(pipe, grid)`` for the CNNCodes parameters ``codes``: with ``view_reduce="stack"``, the
    steps after the codes go into a :class:`~cnncodes.ViewStack` (step ``"views"``), which
    trains on every view and predicts from their mean, and the grid's keys follow them
    (``clf__C`` -> ``views__estimator__clf__C``); otherwise both unchanged."""
    if codes.get("view_reduce") != "stack":
        return pipe, grid
    first, *rest = pipe.steps
    pipe = Pipeline([first, ("views", ViewStack(Pipeline(rest)))])

    def rename(part):
        return {
            (k if k.startswith(first[0] + "__") else f"views__estimator__{k}"): v
            for k, v in part.items()
        }

    return pipe, [rename(p) for p in grid] if isinstance(grid, list) else rename(grid)


def post_steps(options, l2=(True,), whiten=(None,)):
    """The recipe's post-processing steps ``l2`` and ``whiten``, and their part of the grid.

    ``l2``: values of the recipe option ``l2``, on (True: ``Normalizer(norm="l2")``) or off
    (False: ``"passthrough"``). ``whiten``: values of the option ``whiten``, off (None) or the
    fraction of variance kept by ``PCA(whiten=True)``. ``options`` overrides both defaults. A
    step with one value is set in the pipeline; with several, the grid swaps the step itself
    (``{"l2": ["passthrough", Normalizer()]}``), so that the grid stays one dict.

    Returns ``(steps, grid)``: ``[("whiten", ...), ("l2", ...)]`` and a dict.
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import Normalizer

    l2 = grid_values("l2", options.get("l2", l2))
    for value in l2:
        if not isinstance(value, (bool, np.bool_)):
            raise UsageError(
                f"l2={l2!r}: expected True (L2-normalise the codes), False, or both, e.g. "
                "[False, True]"
            )
    whiten = grid_values("whiten", options.get("whiten", whiten))
    for value in whiten:
        # A number of components could exceed the images of a small cross-validation fold
        # (PCA keeps at most min(n_samples, n_features)); a fraction of variance never does.
        ok = value is None or (
            isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral)
        )
        if not ok or (value is not None and not 0.0 < value < 1.0):
            raise UsageError(
                f"whiten={whiten!r}: expected None (no PCA-whitening) or the fraction of the "
                "codes' variance the whitening PCA keeps, a float in (0, 1), e.g. [None, 0.99]; "
                "a number of components is not accepted, since it could exceed the images of "
                "a cross-validation fold"
            )
    l2_steps = [Normalizer(norm="l2") if v else "passthrough" for v in l2]
    whiten_steps = [
        "passthrough" if v is None else PCA(n_components=v, whiten=True, random_state=0)
        for v in whiten
    ]
    # Whitening before L2 (Jegou & Chum 2012): the classifier sees unit vectors either way, which
    # layer_sweep_svm's RBF gammas assume. The other order scored no better (bench/RESULTS.md).
    steps = [("whiten", whiten_steps[0]), ("l2", l2_steps[0])]
    grid = {name: values for name, values in (("whiten", whiten_steps), ("l2", l2_steps))}
    return steps, {k: v for k, v in grid.items() if len(v) > 1}
