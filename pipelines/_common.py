"""Shared pieces of the recipes: option handling and stratified cross-validation."""

from __future__ import annotations

import inspect
import numbers

import numpy as np
from sklearn.model_selection import StratifiedKFold

from cnncodes.transformers import CNNCodes

__all__ = ["CODES_PARAMS", "codes_step", "make_cv", "split_options"]

#: The CNNCodes parameters a recipe's ``build(**overrides)`` passes through, in signature order.
CODES_PARAMS = tuple(inspect.signature(CNNCodes).parameters)


def split_options(recipe, overrides, recipe_options):
    """Split ``build(**overrides)`` into (CNNCodes parameters, recipe options); refuse the rest."""
    codes = {k: v for k, v in overrides.items() if k in CODES_PARAMS}
    options = {k: v for k, v in overrides.items() if k in recipe_options}
    unknown = sorted(set(overrides) - set(codes) - set(options))
    if unknown:
        raise TypeError(
            f"{recipe}.build() got unknown option(s) {', '.join(map(repr, unknown))}. Recipe "
            f"options: {', '.join(recipe_options)}; CNNCodes parameters: {', '.join(CODES_PARAMS)}"
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


def make_cv(y, n_splits=5, seed=0):
    """Stratified K-fold cross-validation that adapts to the smallest class.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Class labels.
    n_splits : int, default=5
        The wanted number of folds; lowered to the size of the smallest class.
    seed : int, default=0
        Seed of the shuffle.

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
    if isinstance(n_splits, bool) or not isinstance(n_splits, numbers.Integral) or n_splits < 2:
        raise ValueError(f"n_splits={n_splits!r}: expected an int >= 2")
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y has shape {y.shape}; expected one label per image (1-D)")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        found = f"only the class {classes[0].item()!r}" if len(classes) else "no labels"
        raise ValueError(f"y has {found}: a classifier needs at least two classes")
    small = [
        (c.item() if isinstance(c, np.generic) else c, int(n))
        for c, n in zip(classes, counts)
        if n < 2
    ]
    if small:
        listing = ", ".join(f"{c!r} ({n} image)" for c, n in small)
        raise ValueError(
            f"class {small[0][0]!r} has only {small[0][1]} image; stratified cross-validation "
            f"needs at least 2 images per class (too small: {listing}). Add images or drop "
            "the class."
        )
    k = int(min(n_splits, counts.min()))
    return StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
