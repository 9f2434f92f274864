"""Scenario 1 (small dataset, similar to the pretraining data): the linear probe.

Top-layer codes -> StandardScaler -> L2-regularised multinomial logistic regression (L-BFGS,
``max_iter=1000``), with the inverse regularisation strength ``C`` swept over twelve decades.
This is the protocol the field uses to measure "a linear classifier on CNN codes" (CLIP: Radford
et al. 2021, appendix A.3; Kornblith, Shlens & Le 2019, "Do Better ImageNet Models Transfer
Better?"): the best ``C`` for the same ResNet-50 features spans more than five orders of magnitude
across datasets (0.0056 for VOC2007 to 1000 for Flowers; Ericsson et al. 2021, "How Well Do
Self-Supervised Models Transfer?"), so the sweep is the method, not a detail.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ._common import codes_step, grid_values, post_steps, split_options, stack_views

__all__ = ["LAYER", "OPTIONS", "build", "DEFAULT_CS", "DEFAULT_L2", "DEFAULT_WHITEN"]

#: Layers given by the user (``--layer`` a ``--layer`` b) are concatenated into one code.
LAYER = "concat"

#: The recipe's own options of ``build(**overrides)`` (besides CNNCodes parameters).
OPTIONS = ("Cs", "l2", "whiten", "view_sets")

#: One value per decade over [1e-6, 1e6]; pass ``Cs=np.logspace(-6, 6, 97)`` for a finer sweep.
DEFAULT_CS = np.logspace(-6, 6, 13)

#: Post-processing off by default: on real MobileNetV2 codes L2 normalisation moved the probe's
#: scores by a few images either way and PCA-whitening (either order) lowered them
#: (bench/RESULTS.md, "Post-processing").
DEFAULT_L2 = (False,)
DEFAULT_WHITEN = (None,)


def build(**overrides):
    """The linear-probe pipeline and its grid.

    Parameters
    ----------
    **overrides
        CNNCodes parameters (``model``, ``weights``, ``layer`` (default ``"penultimate"``),
        ``pooling``, ``cache_dir``, ``views``, ``view_reduce``, ...) and the recipe options
        ``Cs`` (values of ``clf__C``; default :data:`DEFAULT_CS`), ``l2`` (L2 normalisation on,
        True, or off, False; default :data:`DEFAULT_L2`), ``whiten`` (PCA-whitening off, None,
        or the fraction of variance it keeps, in (0, 1); default :data:`DEFAULT_WHITEN`) and
        ``view_sets``: sets of views to search over (``cnncodes__views``, e.g. ``["center",
        "ten_crop"]``; default: none, the centre crop or ``views``). Several values of ``l2`` or
        ``whiten`` are searched, e.g. ``whiten=[None, 0.99]``. Each view costs a forward pass of
        every image (ten crops: ten times the extraction), once: its codes are cached.

    Returns
    -------
    pipeline : Pipeline
        Steps ``cnncodes``, ``whiten``, ``l2`` (``"passthrough"`` when off), ``scale``, ``clf``.
    param_grid : dict
        ``{"clf__C": Cs}``, plus ``whiten`` and ``l2`` when they take several values.

    Examples
    --------
    >>> pipe, grid = build(model="resnet18", weights="none", Cs=[0.1, 1, 10])
    >>> grid
    {'clf__C': [0.1, 1, 10]}
    """
    codes, options = split_options("linear_probe", overrides, OPTIONS)
    post, post_grid = post_steps(options, DEFAULT_L2, DEFAULT_WHITEN)
    pipe = Pipeline(
        [
            ("cnncodes", codes_step(**codes)),
            *post,
            ("scale", StandardScaler()),
            ("clf", LogisticRegression(solver="lbfgs", max_iter=1000)),
        ]
    )
    grid = {**post_grid, "clf__C": grid_values("Cs", options.get("Cs", DEFAULT_CS))}
    if options.get("view_sets") is not None:
        grid["cnncodes__views"] = grid_values("view_sets", options["view_sets"])
    return stack_views(pipe, grid, codes)
