"""Scenarios 2 and 4, the cheap end: a new head trained on the frozen network (``freeze="all"``).

"Drop the final layers and add your own": the pretrained network stays as it is and only a new
linear head, on the codes of ``layer`` (default the input of the network's own classifier),
trains by gradient descent (AdamW, cosine decay), with its learning rate swept over three
decades. Augmentation is off by default (``augment="none"``): then the frozen network's codes
come from the code cache, computed once per image, and every candidate and fold of the grid
search trains the head on them in a fraction of a second per epoch. With ``augment="crop-flip"``
each epoch sees new views of the images, which needs the whole network every epoch.

It differs from ``linear_probe`` (the same codes, a logistic regression) in how the head is
trained: by the same loop that fine-tunes deeper layers (``finetune_top``), so the two compare
like for like, and the head can be an MLP (``head="mlp"``).
"""

from __future__ import annotations

from cnncodes.errors import UsageError

from ._finetune import DEFAULT_LRS, finetune_estimator, lr_grid

__all__ = ["LAYER", "OPTIONS", "build", "DEFAULT_LRS"]

#: One layer: the head's input (several --layer cannot be concatenated into a fine-tuned head).
LAYER = "concat"

#: The recipe's own options of ``build(**overrides)`` (besides FineTune parameters).
OPTIONS = ("lrs",)


def build(**overrides):
    """A :class:`~cnncodes.FineTune` training only a new head, and its grid.

    Parameters
    ----------
    **overrides
        FineTune parameters (``model``, ``weights``, ``layer``, ``pooling``, ``epochs`` (default
        10), ``augment`` (default ``"none"``), ``valid_size`` (default 0: the grid search's folds
        do the validation), ``cache_dir``, ...) and the recipe option ``lrs`` (values of ``lr``;
        default :data:`DEFAULT_LRS`). ``freeze`` is ``"all"``.

    Returns
    -------
    estimator : FineTune
        It takes image paths itself (there is no CNNCodes step).
    param_grid : dict
        ``{"lr": lrs}``.

    Examples
    --------
    >>> ft, grid = build(model="resnet18", weights="none")
    >>> ft.freeze, ft.augment, grid
    ('all', 'none', {'lr': [0.001, 0.01, 0.1]})
    """
    if overrides.get("freeze", "all") != "all":
        raise UsageError(
            f"freeze={overrides['freeze']!r}: finetune_head trains only the head (freeze='all'); "
            "use the finetune_top recipe to train the last blocks too"
        )
    defaults = {"freeze": "all", "augment": "none", "valid_size": 0.0}
    estimator, chosen = finetune_estimator("finetune_head", overrides, OPTIONS, defaults)
    return estimator, {"lr": lr_grid(chosen)}
