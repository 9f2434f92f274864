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

    A list of ``(settings, layers, pooling, poolings)``, one per pass over the images:
    ``settings``, the step's parameters other than ``layer`` and ``pooling``; ``layers``
    (resolved names); ``pooling``, one every layer takes (to fit the step with); ``poolings``,
    the ``pooling`` of :func:`~cnncodes.extract.extract_codes` (a list, or per layer its own),
    every (layer, pooling) of which some candidate asks for. Candidates with the same settings
    share one pass, unless no pooling is common to all their layers (then one per set).
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
        shared = [
            p for p in next(iter(by_layer.values())) if all(p in v for v in by_layer.values())
        ]
        if shared:  # one pass; fitted with a pooling every layer takes
            plan.append((others, list(by_layer), shared[0], by_layer))
            continue
        runs = {}  # the poolings asked for -> the layers asking for them
        for layer, poolings in by_layer.items():
            runs.setdefault(tuple(poolings), []).append(layer)
        plan.extend((others, layers, p[0], list(p)) for p, layers in runs.items())
    return plan
