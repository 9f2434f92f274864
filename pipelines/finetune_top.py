"""Scenarios 2 and 4: fine-tune the last blocks of the network, and a new head.

The network is frozen up to a block near its top (``freeze``), the blocks after it and a new
linear head train together (AdamW with cosine decay; the pretrained blocks at a tenth of the
head's learning rate). The grid crosses the learning rate with two freeze depths, so the search
decides how much of the network to adapt. Augmentation is off by default (``augment="none"``),
which keeps it affordable on a CPU: where the graph can be cut at the freeze node and its
activations are small enough, they come from the code cache (computed once per image) and
only the trainable blocks run each epoch. Pass ``augment="crop-flip"`` for new views each epoch.

Default depths (:func:`default_freezes`): for ResNets ``layer3`` (all of ``layer4`` trains)
and ``layer4.0`` (the blocks after ``layer4``'s first); for MobileNetV2 ``features.13`` and
``features.16``; for any other network, the outputs of the blocks just before its last two
blocks that hold parameters (blocks: :func:`cnncodes.advise.block_outputs`, the outputs at the
shallowest naming depth with at least four spatial layers), so the last one or two of them train.
"""

from __future__ import annotations

import re

from cnncodes import build_model, list_layers, resolve_spec
from cnncodes.errors import UsageError
from cnncodes.workflows.advise import block_outputs

from ._common import grid_values
from ._finetune import finetune_estimator, lr_grid

__all__ = ["LAYER", "OPTIONS", "build", "default_freezes", "DEFAULT_LRS"]

#: One layer: the head's input (several --layer cannot be concatenated into a fine-tuned head).
LAYER = "concat"

#: The recipe's own options of ``build(**overrides)`` (besides FineTune parameters).
OPTIONS = ("lrs", "freezes")

#: Learning rates of the head; the pretrained blocks that train get a tenth of it.
DEFAULT_LRS = (1e-3, 1e-2)

# Freeze depths of torchvision families, earlier first: two block boundaries near the top.
_FREEZES = (
    (r"(resnet|resnext|wide_resnet)\d", ["layer3", "layer4.0"]),
    (r"mobilenet_v2$", ["features.13", "features.16"]),
)


def _module(net, name):
    try:
        return net.get_submodule(name)
    except AttributeError:  # the input, or a function's output (an addition, ...)
        return None


def default_freezes(model, **kwargs):
    """Two freeze depths near the top of ``model``, earlier first.

    A known family gets its table's depths; any other network, the outputs of the blocks just
    before its last two blocks that hold parameters (blocks as
    :func:`cnncodes.advise.block_outputs` finds them), so that one or two blocks train and a
    block without weights (a ReLU, a pooling) is never all that trains. Where the first such
    block opens the network, its depth is ``"none"`` (everything trains).

    ``kwargs`` are :func:`cnncodes.resolve_spec`'s shape settings (``seed``, ``resize``,
    ``crop``, ...). The network is built untrained (``weights="none"``): no checkpoint is read.

    Raises
    ------
    ValueError
        A network with fewer than two blocks holding parameters: name the depths yourself
        (``freezes=[...]``).

    Examples
    --------
    >>> default_freezes("resnet50")
    ['layer3', 'layer4.0']
    >>> default_freezes("efficientnet_b0")
    ['features.6', 'features.7']
    """
    for pattern, freezes in _FREEZES:
        if isinstance(model, str) and re.match(pattern, model):
            return list(freezes)
    spec = resolve_spec(model, "none", **kwargs)
    net = build_model(spec)
    modules = {name: _module(net, name) for name in block_outputs(list_layers(spec))}
    blocks = [name for name, module in modules.items() if module is not None]
    trained = [i for i, name in enumerate(blocks) if any(True for _ in modules[name].parameters())]
    if len(trained) < 2:
        raise UsageError(
            f"finetune_top finds {len(trained)} block(s) with parameters in model={model!r}, too "
            f"few to choose freeze depths; pass freezes=[...] (node names from `cnncodes layers "
            f"{model}`)"
        )
    return [blocks[i - 1] if i > 0 else "none" for i in trained[-2:]]


def build(**overrides):
    """A :class:`~cnncodes.FineTune` training the last blocks and a new head, and its grid.

    Parameters
    ----------
    **overrides
        FineTune parameters (``model``, ``weights``, ``layer``, ``epochs`` (default 10),
        ``augment`` (default ``"none"``), ``init_head`` (default ``"probe"``: LP-FT, the head
        starts as a logistic regression on the frozen codes), ``valid_size`` (default 0: the
        grid search's folds do the validation), ``cache_dir``, ...) and the recipe options
        ``lrs`` (values of ``lr``; default :data:`DEFAULT_LRS`) and ``freezes`` (freeze depths;
        default :func:`default_freezes`). A ``freeze`` given alone is the only depth tried.

    Returns
    -------
    estimator : FineTune
    param_grid : dict
        ``{"lr": lrs, "freeze": freezes}``.

    Examples
    --------
    >>> ft, grid = build(model="resnet18", weights="none")
    >>> grid
    {'lr': [0.001, 0.01], 'freeze': ['layer3', 'layer4.0']}
    """
    defaults = {"augment": "none", "valid_size": 0.0, "init_head": "probe"}
    estimator, chosen = finetune_estimator("finetune_top", overrides, OPTIONS, defaults)
    freezes = chosen.get("freezes")
    if freezes is None and "freeze" in overrides:
        freezes = [overrides["freeze"]]
    if freezes is None:
        shape = ("seed", "resize", "crop", "mean", "std", "interpolation", "model_kwargs")
        kwargs = {k: overrides[k] for k in shape if overrides.get(k) is not None}
        freezes = default_freezes(estimator.model, **kwargs)
    freezes = grid_values("freezes", freezes)
    estimator.set_params(freeze=freezes[0])
    return estimator, {"lr": lr_grid(chosen, DEFAULT_LRS), "freeze": freezes}
