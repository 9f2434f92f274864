"""Scenario 1 (small dataset, similar to the pretraining data): L2-normalised codes, linear SVM.

Codes -> signed power normalisation (``power__alpha`` 1, i.e. none, or 0.5) -> L2 normalisation
-> ``LinearSVC``, with ``C`` swept over eight decades. Razavian et al. (2014) showed that
L2-normalised off-the-shelf codes with a linear SVM are a strong baseline on small datasets close to
ImageNet, and that signed power normalisation adds to it; the sweep decides whether it helps here.
LinearSVC (liblinear) stays fast with thousands of features and few images. It solves the primal
problem (``dual=False``, a Newton method): on a few near-collinear codes (the demo's 25 labelled
digits) the dual coordinate descent that ``dual="auto"`` picks when images are fewer than features
stopped at ``max_iter`` for ``C >= 100``, while the primal converges at every ``C`` of the sweep to
the same scores.
"""

from __future__ import annotations

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer
from sklearn.svm import LinearSVC

from cnncodes import SignedPower

from ._common import codes_step, grid_values, split_options, stack_views

__all__ = ["LAYER", "OPTIONS", "build", "DEFAULT_CS", "DEFAULT_POWERS"]

#: Layers given by the user (``--layer`` a ``--layer`` b) are concatenated into one code.
LAYER = "concat"

#: The recipe's own options of ``build(**overrides)`` (besides CNNCodes parameters).
OPTIONS = ("Cs", "powers")

DEFAULT_CS = np.logspace(-4, 4, 9)
DEFAULT_POWERS = (1.0, 0.5)


def build(**overrides):
    """The L2-normalised linear SVM pipeline and its grid.

    Parameters
    ----------
    **overrides
        CNNCodes parameters (``model``, ``weights``, ``layer``, ...) and the recipe options
        ``Cs`` (``clf__C``, default :data:`DEFAULT_CS`) and ``powers`` (``power__alpha``,
        default :data:`DEFAULT_POWERS`; ``powers=[1.0]`` turns the power step off).

    Returns
    -------
    pipeline : Pipeline
        Steps ``cnncodes``, ``power``, ``l2``, ``clf``.
    param_grid : dict

    Examples
    --------
    >>> pipe, grid = build(model="resnet18", weights="none", Cs=[1.0], powers=[1.0])
    >>> sorted(grid)
    ['clf__C', 'power__alpha']
    """
    codes, options = split_options("linear_svm", overrides, OPTIONS)
    pipe = Pipeline(
        [
            ("cnncodes", codes_step(**codes)),
            ("power", SignedPower(alpha=1.0)),
            ("l2", Normalizer(norm="l2")),
            ("clf", LinearSVC(dual=False, max_iter=10_000, random_state=0)),
        ]
    )
    grid = {
        "power__alpha": grid_values("powers", options.get("powers", DEFAULT_POWERS)),
        "clf__C": grid_values("Cs", options.get("Cs", DEFAULT_CS)),
    }
    return stack_views(pipe, grid, codes)
