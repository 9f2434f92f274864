"""What :func:`~cnncodes.experiment.run_experiment` does differently for a fine-tuning recipe.

A code recipe builds a Pipeline whose ``cnncodes`` step makes the codes; a fine-tuning recipe
(``finetune_head``, ``finetune_top``) builds a :class:`~cnncodes.FineTune`, which reads the
images itself. Each function here takes either and does the one step of the experiment that
differs: find the step that holds the network's settings, resolve its network before any image
is read, warm the cache (and screen unreadable images) before the search, screen the test
images, and describe the network in the run's configuration.
"""

from __future__ import annotations

from .codes import CNNCodes
from .fitted import is_fine_tune
from .search import _find_codes_step, filter_readable, warm_cache

__all__ = ["describe_network", "network_step", "resolve_network", "screen_test", "warm"]


def network_step(estimator):
    """``(step, parameter prefix)``: the CNNCodes step of a pipeline, or the FineTune itself."""
    if is_fine_tune(estimator):
        return estimator, ""
    return _find_codes_step(estimator)


def resolve_network(step, paths):
    """The step's :class:`~cnncodes.ModelSpec`: a bad model, layer or parameter fails here,
    before any image is read."""
    if is_fine_tune(step):
        probe = step.__class__(**step.get_params())
        probe._check_params()
        return probe._resolve()[0]
    return CNNCodes(**step.get_params()).fit(paths[:1]).spec_


def _grid_values(param_grid, name, default):
    grids = [param_grid] if isinstance(param_grid, dict) else param_grid
    values = [v for g in grids for v in g.get(name, ())]
    return values or [default]


def warm(estimator, paths, param_grid):
    """Like :func:`~cnncodes.transformers.warm_cache`, for a pipeline or a FineTune.

    For a FineTune every image is decoded once (an unreadable one raises, or with
    ``on_error="skip"`` is reported in ``skipped``), and where a candidate trains only the head
    on the frozen network (``freeze="all"``, no augmentation) or starts it from a probe (LP-FT),
    the head layer's codes of the readable images are extracted once, so that every fold and
    candidate reads them from the cache.
    """
    if not is_fine_tune(estimator):
        return warm_cache(estimator, paths, param_grid)
    from ..extraction.extract import SkippedImage

    ft = estimator
    summary = {"runs": 0, "configurations": 0, "computed": 0, "cached": 0, "skipped": []}
    readable, skipped = _readable_images(paths)
    if skipped and ft.on_error == "raise":
        raise skipped[0][2]
    summary["skipped"] = [SkippedImage(i, p, e.reason) for i, p, e in skipped]
    kept = [paths[i] for i in readable]
    head_only = "all" in _grid_values(param_grid, "freeze", ft.freeze) and ft.augment == "none"
    probe = "probe" in _grid_values(param_grid, "init_head", ft.init_head)
    if kept and (head_only or probe):
        result = ft.__class__(**ft.get_params()).warm_codes(kept)
        summary.update(runs=1, configurations=1, computed=result.computed, cached=result.cached)
    return summary


def _readable_images(paths):
    from .finetune.data import readable

    return readable(paths)


def screen_test(best, paths, labels):
    """``(paths, labels, skipped)`` of the readable test images (``on_error="skip"``)."""
    if is_fine_tune(best):
        return filter_readable(paths, labels)
    return filter_readable(paths, labels, extractor=best)


def describe_network(best):
    """The fitted network's entries of the run's configuration: ``extractor`` (model, weights
    identity, preprocessing), ``preprocessing_source``, ``layers`` and, for codes of several
    views, ``views`` (the views and how they were reduced)."""
    step = network_step(best)[0]
    layers = [step.layer_] if is_fine_tune(step) else list(step.layers_)
    out = {
        "extractor": step.spec_.to_dict(),
        "preprocessing_source": dict(step.spec_.preprocessing.source),
        "layers": layers,
    }
    views = getattr(step, "views_", ["center"])
    if views != ["center"]:  # configurations of the centre crop alone read as before
        out["views"] = {"views": list(views), "reduce": step.view_reduce}
    return out
