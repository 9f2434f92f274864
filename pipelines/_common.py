"""Shared pieces of the recipes: option handling (and ``make_cv``, from cnncodes.recipes)."""

from __future__ import annotations

import inspect

import numpy as np
from sklearn.pipeline import Pipeline

from cnncodes import CNNCodes, ViewStack
from cnncodes.recipes import make_cv

__all__ = ["CODES_PARAMS", "codes_step", "make_cv", "split_options", "stack_views"]

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
        raise TypeError(
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
        raise ValueError(f"{name}: give at least one value")
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
