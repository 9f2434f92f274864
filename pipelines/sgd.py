"""Larger labelled sets (thousands of images and up): a linear model trained by SGD.

Codes -> L2 normalisation (searched on and off) -> StandardScaler -> ``SGDClassifier`` (hinge
loss, i.e. a linear SVM; ``loss="log_loss"`` for probabilities), with the L2 strength ``alpha``
swept over seven decades, trained with an adaptive step (constant, divided by 5 when the loss
stalls) so every ``alpha`` converges. With
many images, L-BFGS and SVC fits grow slow, while SGD is linear in the number of images. This is
the linear option of scenarios 1 and 3 at scale; for large sets the field's stronger choice is
fine-tuning (scenarios 2 and 4), which is outside cnncodes, and these codes remain its baseline.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ._common import codes_step, grid_values, post_steps, split_options, stack_views

__all__ = ["LAYER", "OPTIONS", "build", "DEFAULT_ALPHAS", "DEFAULT_L2", "DEFAULT_WHITEN"]

#: Layers given by the user (``--layer`` a ``--layer`` b) are concatenated into one code.
LAYER = "concat"

#: The recipe's own options of ``build(**overrides)`` (besides CNNCodes parameters).
OPTIONS = ("alphas", "loss", "random_state", "l2", "whiten")

#: 1e-6 ... 10: with the adaptive step, smaller alphas all fit alike (no regularisation to speak
#: of), while on standardised MobileNetV2 codes the best alphas were 0.3 to 10.
DEFAULT_ALPHAS = np.logspace(-6, 1, 8)

#: L2 normalisation on and off, the search choosing: on real MobileNetV2 codes of sign-language
#: digits it raised the CV score by 0.006 and the held-out accuracy by 0.012, on hymenoptera it
#: lowered both, and the search picked the better one on each (bench/RESULTS.md,
#: "Post-processing"). PCA-whitening off: it raised neither.
DEFAULT_L2 = (False, True)
DEFAULT_WHITEN = (None,)


def build(**overrides):
    """The SGD pipeline and its grid.

    Parameters
    ----------
    **overrides
        CNNCodes parameters and the recipe options ``alphas`` (``clf__alpha``, default
        :data:`DEFAULT_ALPHAS`), ``loss`` (default ``"hinge"``), ``random_state`` (default 0),
        ``l2`` (L2 normalisation on, True, or off, False; default :data:`DEFAULT_L2`) and
        ``whiten`` (PCA-whitening off, None, or the fraction of variance it keeps, in (0, 1);
        default :data:`DEFAULT_WHITEN`); several values of ``l2`` or ``whiten`` are searched.

    Returns
    -------
    pipeline : Pipeline
        Steps ``cnncodes``, ``whiten``, ``l2`` (``"passthrough"`` when off), ``scale``, ``clf``.
    param_grid : dict

    Examples
    --------
    >>> pipe, grid = build(model="resnet18", weights="none", loss="log_loss")
    >>> pipe.named_steps["clf"].loss, len(grid["clf__alpha"]), grid["l2"]
    ('log_loss', 8, ['passthrough', Normalizer()])
    """
    codes, options = split_options("sgd", overrides, OPTIONS)
    # scikit-learn's default "optimal" step, 1 / (alpha * (t + t0)), is huge for the small alphas
    # of the sweep: on hymenoptera's MobileNetV2 codes alpha=1e-7 still bounced at max_iter
    # (ConvergenceWarning). A constant step on standardised codes, divided by 5 whenever the
    # loss stalls ("adaptive"), converged for every alpha in a few dozen epochs and scored higher.
    clf = SGDClassifier(
        loss=options.get("loss", "hinge"),
        penalty="l2",
        learning_rate="adaptive",
        eta0=0.01,
        max_iter=2000,
        tol=1e-3,
        random_state=options.get("random_state", 0),
    )
    post, post_grid = post_steps(options, DEFAULT_L2, DEFAULT_WHITEN)
    pipe = Pipeline(
        [("cnncodes", codes_step(**codes)), *post, ("scale", StandardScaler()), ("clf", clf)]
    )
    alphas = grid_values("alphas", options.get("alphas", DEFAULT_ALPHAS))
    return stack_views(pipe, {**post_grid, "clf__alpha": alphas}, codes)
