"""Which extractions a warm of a grid runs: :meth:`CNNCodes.warm <.codes.CNNCodes.warm>`'s plan.

Layers and poolings are chosen after the forward pass (pooling is applied to the activations),
so grid candidates that differ only in ``layer`` and ``pooling`` share one pass over the images.
"""

from __future__ import annotations

from sklearn.base import clone
from sklearn.model_selection import ParameterGrid

__all__ = ["warm_plan"]


def warm_plan(step, paths, grids):
    """The extractions that give every code the candidates of ``grids`` read.

    A list of ``(settings, layers, poolings)``: ``settings``, the step's parameters other than
    ``layer`` and ``pooling``; ``layers`` (resolved names) and ``poolings`` (a list), whose every
    pair is asked for by some candidate, all made by one pass over the images. Candidates with
    the same settings whose layers ask for different sets of poolings take one run per set.
    """
    groups = {}  # settings -> (those settings, {layer: [poolings asked for]})
    for params in ParameterGrid(grids):
        # Fitting resolves the layer names (aliases such as "penultimate"), reading no image.
        candidate = clone(step).set_params(**params).fit(paths)
        others = candidate.get_params()
        others.pop("layer")
        pooling = others.pop("pooling")
        _, by_layer = groups.setdefault(repr(sorted(others.items())), (others, {}))
        for layer in candidate.layers_:
            poolings = by_layer.setdefault(layer, [])
            if pooling not in poolings:
                poolings.append(pooling)
    plan = []
    for others, by_layer in groups.values():
        runs = {}  # the poolings asked for -> the layers asking for them
        for layer, poolings in by_layer.items():
            runs.setdefault(tuple(sorted(poolings)), []).append(layer)
        plan.extend((others, layers, list(poolings)) for poolings, layers in runs.items())
    return plan
