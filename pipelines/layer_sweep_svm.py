"""Scenario 3 (small dataset, very different from the pretraining data): sweep the layers.

Codes from several depths, early to top, x pooling -> L2 normalisation -> ``SVC`` with a linear
and an RBF kernel, ``C`` (and ``gamma``) swept. On data far from ImageNet the top layer is too
specialised to the source task; features from earlier in the network transfer better (CS231n's
scenario 3; Razavian et al. 2014 and Head2Toe found the best depth depends on the task), so the
layer is a hyperparameter chosen by cross-validation like ``C``. Which depths exist depends on the
model: pass ``layers=[...]`` (see ``cnncodes.list_layers``), or let :func:`default_layers` pick the
stage outputs of common torchvision families. :func:`layer_table` reports the best score of every
layer and the best layer.

The search runs the network once per image (all its layers and poolings come from one pass; the
cache serves every other fold and candidate); a candidate that only differs in ``C`` or the kernel costs
no extraction at all. Vector layers (``flatten``) are not swept over poolings, which would leave
them unchanged.
"""

from __future__ import annotations

import re

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

from cnncodes import list_layers
from cnncodes.errors import UsageError
from cnncodes.workflows.evaluation import layer_table

from ._common import codes_step, grid_values, post_steps, split_options, stack_views

__all__ = [
    "LAYER",
    "OPTIONS",
    "build",
    "default_layers",
    "layer_table",
    "DEFAULT_CS",
    "DEFAULT_GAMMAS",
    "DEFAULT_L2",
    "DEFAULT_WHITEN",
]

#: Layers given by the user (``--layer`` a ``--layer`` b) are swept: one candidate each.
LAYER = "sweep"

#: The recipe's own options of ``build(**overrides)`` (besides CNNCodes parameters).
OPTIONS = ("layers", "poolings", "Cs", "gammas", "kernels", "l2", "whiten")
DEFAULT_CS = np.logspace(-2, 4, 7)
#: For L2-normalised codes squared distances lie in [0, 4]; "scale" is 1 / (n_features * var).
DEFAULT_GAMMAS = ("scale", 0.1, 1.0, 10.0)
DEFAULT_POOLINGS = ("avg", "max")
#: L2 normalisation always (the gammas above assume it); PCA-whitening off: it did not raise the
#: sweep's scores on real MobileNetV2 codes (bench/RESULTS.md, "Post-processing").
DEFAULT_L2 = (True,)
DEFAULT_WHITEN = (None,)

# Stage outputs (strides 4, 8, 16, 32) of torchvision families, early to top.
_STAGES = (
    (r"(resnet|resnext|wide_resnet)\d", ["layer1", "layer2", "layer3", "layer4"]),
    # MobileNetV2's block outputs are 24-96-channel linear bottlenecks (Sandler et al. 2018):
    # narrow and not rectified. Each block's 1x1 expansion (conv + BN + ReLU6) carries the same
    # stage 6x wider after a ReLU; features.18 is the 1280-channel top. At strides 4, 8 and 16
    # the expansion's codes scored 0.02-0.06 higher in cross-validation than the bottleneck's
    # on hymenoptera and sign-language digits (bench/RESULTS.md).
    (
        r"mobilenet_v2$",
        ["features.4.conv.0", "features.7.conv.0", "features.14.conv.0", "features.18"],
    ),
    (r"mobilenet_v3_large$", ["features.3", "features.6", "features.12", "features.16"]),
    (r"mobilenet_v3_small$", ["features.1", "features.3", "features.8", "features.12"]),
    (r"efficientnet_b\d$", ["features.2", "features.3", "features.5", "features.8"]),
    (r"convnext_", ["features.1", "features.3", "features.5", "features.7"]),
    (
        r"densenet\d",
        ["features.transition1", "features.transition2", "features.transition3", "features.norm5"],
    ),
)


def default_layers(model):
    """Stage outputs, early to top, of a torchvision model family.

    One layer per stride (4, 8, 16, 32). For MobileNetV2 these are the expansions that open the
    next stage (144, 192, 576 channels, after ReLU6) and the 1280-channel top, not the 24-96-channel
    linear bottlenecks that end each stage.

    Raises
    ------
    ValueError
        For other models: name the layers yourself (``layers=[...]``).

    Examples
    --------
    >>> default_layers("resnet50")
    ['layer1', 'layer2', 'layer3', 'layer4']
    >>> default_layers("mobilenet_v2")
    ['features.4.conv.0', 'features.7.conv.0', 'features.14.conv.0', 'features.18']
    """
    for pattern, layers in _STAGES:
        if isinstance(model, str) and re.match(pattern, model):
            return list(layers)
    raise UsageError(
        f"layer_sweep_svm has no default layers for model={model!r}: pass layers=[...] "
        f"(early to top; list them with cnncodes.list_layers({model!r}) or "
        f"`cnncodes layers {model}`)"
    )


def build(**overrides):
    """The layer-sweep pipeline and its grid.

    Parameters
    ----------
    **overrides
        CNNCodes parameters (``model``, ``weights``, ``cache_dir``, ...) and the recipe options

        - ``layers``: the depths to sweep, early to top (default :func:`default_layers`); an
          entry may itself be a list (multi-layer codes);
        - ``poolings``: default ``("avg", "max")``;
        - ``Cs``: ``clf__C`` (default :data:`DEFAULT_CS`);
        - ``gammas``: ``clf__gamma`` of the RBF kernel (default :data:`DEFAULT_GAMMAS`);
        - ``kernels``: default ``("linear", "rbf")``;
        - ``l2``: L2 normalisation on (True) or off (False), default :data:`DEFAULT_L2`;
        - ``whiten``: PCA-whitening off (None) or the fraction of variance it keeps, in (0, 1),
          default :data:`DEFAULT_WHITEN`.

        Several values of ``l2`` or ``whiten`` are searched, in every part of the grid.

    Returns
    -------
    pipeline : Pipeline
        Steps ``cnncodes``, ``whiten`` (``"passthrough"`` when off), ``l2``, ``clf``.
    param_grid : list of dict
        Per kernel, grids over ``cnncodes__layer`` x ``cnncodes__pooling``; layers whose output
        is a vector (``flatten``, a classifier's input: pooling leaves it unchanged) get only
        the first pooling, so no candidate is fitted or cached twice.

    Examples
    --------
    >>> pipe, grid = build(model="resnet18", weights="none", poolings=["avg"], kernels=["linear"])
    >>> grid[0]["cnncodes__layer"]
    ['layer1', 'layer2', 'layer3', 'layer4']
    """
    codes, options = split_options("layer_sweep_svm", overrides, OPTIONS)
    model = codes.get("model", "resnet50")
    layers = options.get("layers")
    layers = default_layers(model) if layers is None else grid_values("layers", layers)
    codes.setdefault("layer", layers[-1])
    poolings = grid_values("poolings", options.get("poolings", DEFAULT_POOLINGS))
    cs = grid_values("Cs", options.get("Cs", DEFAULT_CS))
    kernels = grid_values("kernels", options.get("kernels", ("linear", "rbf")))
    post, post_grid = post_steps(options, DEFAULT_L2, DEFAULT_WHITEN)
    pipe = Pipeline([("cnncodes", codes_step(**codes)), *post, ("clf", SVC())])
    grid = []
    for kernel in kernels:
        for group, group_poolings in _pooling_groups(codes, layers, poolings):
            part = {
                "cnncodes__layer": group,
                "cnncodes__pooling": group_poolings,
                **post_grid,
                "clf__kernel": [kernel],
                "clf__C": cs,
            }
            if kernel in ("rbf", "poly", "sigmoid"):
                part["clf__gamma"] = grid_values("gammas", options.get("gammas", DEFAULT_GAMMAS))
            grid.append(part)
    return stack_views(pipe, grid, codes)


def _flat_layers(codes):
    """Names of the model's layers whose output is a vector (pooling leaves those unchanged).

    The output's rank does not depend on the weights, so the architecture is probed with
    ``weights="none"`` on the meta device: no checkpoint is read, nothing is computed.
    """
    shape_params = ("seed", "resize", "crop", "mean", "std", "interpolation")
    kwargs = {k: codes[k] for k in shape_params if codes.get(k) is not None}
    infos = list_layers(codes.get("model", "resnet50"), "none", **kwargs)
    return {info.name for info in infos if len(info.shape) == 1}


def _pooling_groups(codes, layers, poolings):
    """``[(layers, poolings)]``: runs of consecutive layers, vector layers with one pooling.

    A vector (``flatten``, a classifier's input) comes out of every pooling unchanged, so
    sweeping poolings over it would fit and cache the same codes once per pooling. A multi-layer
    entry is pooled if any of its layers is spatial. Runs keep the sweep's order, early to top.
    """
    if len(poolings) == 1:
        return [(layers, poolings)]
    flat = _flat_layers(codes)
    groups = []
    for layer in layers:
        members = [layer] if isinstance(layer, str) else list(layer)
        wanted = poolings[:1] if all(m in flat for m in members) else poolings
        if groups and groups[-1][1] == wanted:
            groups[-1][0].append(layer)
        else:
            groups.append(([layer], wanted))
    return groups
