"""Ready-made recipes: one (Pipeline, param_grid) pair per transfer scenario.

Each recipe is a module with ``build(**overrides) -> (pipeline, param_grid)``. ``overrides`` are
:class:`~cnncodes.CNNCodes` parameters (``model``, ``weights``, ``layer``, ``cache_dir``, ...)
plus the recipe's own options (its grids). The pipeline's first step is named ``"cnncodes"`` and
its classifier ``"clf"``; the fine-tuning recipes build a :class:`~cnncodes.FineTune` instead,
which takes the image paths itself (their overrides are FineTune parameters). A recipe's
``LAYER`` says what a list of layers given to ``cnncodes fit --layer`` (or ``run_experiment``)
means for it: ``"sweep"``, one candidate per layer, or ``"concat"``, one code concatenating them.

========================  ==========  ======  ================================================
recipe                    scenario    LAYER   what
========================  ==========  ======  ================================================
``linear_probe``          1           concat  top-layer codes, StandardScaler, L-BFGS logistic
                                              regression
``linear_svm``            1           concat  (signed power,) L2-normalised codes, LinearSVC
``layer_sweep_svm``       3           sweep   codes from several depths x pooling, SVC linear
                                              and RBF
``sgd``                   1/3, large  concat  (L2-normalised codes,) SGDClassifier,
                                              regularisation sweep
``finetune_head``         2/4         concat  FineTune, ``freeze="all"``: a new head trained on
                                              the frozen network's cached codes, ``lr`` swept
``finetune_top``          2/4         concat  FineTune of the last blocks and a new head,
                                              ``lr`` x freeze depth
========================  ==========  ======  ================================================

This package sits above cnncodes and uses only its public API: importing it registers the
recipes with :mod:`cnncodes.recipes` (by module name; each is imported when first asked for),
and :func:`get`, :func:`available`, :func:`load` and :func:`make_cv` are that registry's.

Examples
--------
>>> import pipelines
>>> pipelines.available()
['finetune_head', 'finetune_top', 'layer_sweep_svm', 'linear_probe', 'linear_svm', 'sgd']
>>> pipe, grid = pipelines.get("linear_probe").build(model="resnet18", weights="none")
>>> [name for name, _ in pipe.steps]
['cnncodes', 'whiten', 'l2', 'scale', 'clf']
"""

from __future__ import annotations

from cnncodes.workflows.recipes import available, get, load, make_cv, register

__all__ = ["available", "get", "load", "make_cv"]

# What --layer means for each (the module's LAYER says the same; cnncodes.recipes.get checks).
# Registered by name, so that listing them (cnncodes fit --help) imports no recipe.
for _name, _layer in (
    ("finetune_head", "concat"),
    ("finetune_top", "concat"),
    ("layer_sweep_svm", "sweep"),
    ("linear_probe", "concat"),
    ("linear_svm", "concat"),
    ("sgd", "concat"),
):
    register(_name, f"{__name__}.{_name}", layer=_layer)
del _name, _layer
