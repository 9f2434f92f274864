"""Shared pieces of the recipes: option handling (and ``make_cv``, from cnncodes.recipes)."""

from __future__ import annotations

import inspect

import numpy as np

from cnncodes import CNNCodes
from cnncodes.recipes import make_cv

__all__ = ["CODES_PARAMS", "codes_step", "make_cv", "split_options"]

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
