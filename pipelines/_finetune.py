"""Shared pieces of the fine-tuning recipes: the :class:`~cnncodes.FineTune` they build."""

from __future__ import annotations

import inspect

from cnncodes import FineTune
from cnncodes.errors import UsageError

from ._common import grid_values, split_options

__all__ = ["FINETUNE_PARAMS", "DEFAULT_LRS", "finetune_estimator", "lr_grid"]

#: The FineTune parameters a fine-tuning recipe's ``build(**overrides)`` passes through.
FINETUNE_PARAMS = tuple(inspect.signature(FineTune).parameters)

#: Three decades of AdamW learning rate for the new head; the pretrained layers that train get
#: a tenth of it (FineTune's ``trunk_lr`` default).
DEFAULT_LRS = (1e-3, 1e-2, 1e-1)


def finetune_estimator(recipe, overrides, options, defaults):
    """``(FineTune, recipe options)``: ``defaults`` under the user's FineTune parameters."""
    params, chosen = split_options(recipe, overrides, options, FINETUNE_PARAMS, "FineTune")
    layer = params.get("layer")
    if isinstance(layer, (list, tuple)) and len(layer) > 1:
        raise UsageError(
            f"layer={list(layer)!r}: {recipe} cuts the network at one layer, whose codes feed "
            "the new head; give one (codes of several layers concatenate only in code recipes)"
        )
    if isinstance(layer, (list, tuple)):
        params["layer"] = layer[0]
    return FineTune(**{**defaults, **params}), chosen


def lr_grid(chosen, default=DEFAULT_LRS):
    """The grid's ``lr`` values: the recipe option ``lrs``, else ``default``."""
    return grid_values("lrs", chosen.get("lrs", default))
