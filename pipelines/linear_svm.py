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
from sklearn.svm import LinearSVC

from cnncodes import SignedPower

from ._common import codes_step, grid_values, post_steps, split_options, stack_views

__all__ = [
    "LAYER",
    "OPTIONS",
    "build",
    "DEFAULT_CS",
    "DEFAULT_L2",
    "DEFAULT_POWERS",
    "DEFAULT_WHITEN",
]

#: Layers given by the user (``--layer`` a ``--layer`` b) are concatenated into one code.
LAYER = "concat"

#: The recipe's own options of ``build(**overrides)`` (besides CNNCodes parameters).
OPTIONS = ("Cs", "powers", "l2", "whiten")

DEFAULT_CS = np.logspace(-4, 4, 9)
DEFAULT_POWERS = (1.0, 0.5)
#: L2 normalisation always (Razavian et al. 2014); PCA-whitening off: in front of the L2 step or
#: behind it, it did not raise the SVM's scores on real MobileNetV2 codes (bench/RESULTS.md).
DEFAULT_L2 = (True,)
DEFAULT_WHITEN = (None,)


def build(**overrides):
    """The L2-normalised linear SVM pipeline and its grid.

    Parameters
    ----------
    **overrides
        CNNCodes parameters (``model``, ``weights``, ``layer``, ...) and the recipe options
        ``Cs`` (``clf__C``, default :data:`DEFAULT_CS`), ``powers`` (``power__alpha``,
        default :data:`DEFAULT_POWERS`; ``powers=[1.0]`` turns the power step off), ``l2``
        (L2 normalisation on, True, or off, False; default :data:`DEFAULT_L2`) and ``whiten``
        (PCA-whitening off, None, or the fraction of variance it keeps, in (0, 1); default
        :data:`DEFAULT_WHITEN`); several values of ``l2`` or ``whiten`` are searched.

    Returns
    -------
    pipeline : Pipeline
        Steps ``cnncodes``, ``power``, ``whiten`` (``"passthrough"`` when off), ``l2``, ``clf``.
    param_grid : dict

    Examples
    --------
    >>> pipe, grid = build(model="resnet18", weights="none", Cs=[1.0], powers=[1.0])
    >>> sorted(grid)
    ['clf__C', 'power__alpha']
    """
    codes, options = split_options("linear_svm", overrides, OPTIONS)
    post, post_grid = post_steps(options, DEFAULT_L2, DEFAULT_WHITEN)
    pipe = Pipeline(
        [
            ("cnncodes", codes_step(**codes)),
            ("power", SignedPower(alpha=1.0)),
            *post,
            ("clf", LinearSVC(dual=False, max_iter=10_000, random_state=0)),
        ]
    )
    grid = {
        **post_grid,
        "power__alpha": grid_values("powers", options.get("powers", DEFAULT_POWERS)),
        "clf__C": grid_values("Cs", options.get("Cs", DEFAULT_CS)),
    }
    return stack_views(pipe, grid, codes)
