"""The network-step contract: what :class:`~cnncodes.CNNCodes` and :class:`~cnncodes.FineTune`
both offer their callers.

A network step resolves a network from names, computes or reads codes through the cache, checks
its checkpoint, screens unreadable images, warms the cache before a grid search, describes its
network in a run's configuration, and takes new runtime settings once fitted.
:class:`NetworkStep` declares these methods; :func:`network_step` finds the step in an estimator
(the step itself, a (nested) Pipeline or a fitted search) by this contract, so that no caller
asks which estimator it holds.

The module functions (:func:`resolve_network`, :func:`warm`, :func:`screen_test`,
:func:`describe_network`) are what :func:`~cnncodes.experiment.run_experiment` calls for a
recipe's estimator, whatever it is: each finds the step and asks it.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError
from ..networks.pooling import check_pooling
from ..params import ENGINES, ON_ERROR, PRECISIONS, Choice, Int, check_engine
from ..store.cache import resolve_cache_dir

__all__ = [
    "NETWORK_STEP_CHECKS",
    "RUNTIME_PARAMS",
    "NetworkStep",
    "describe_network",
    "network_step",
    "resolve_network",
    "screen_test",
    "step_grid",
    "warm",
]

#: Parameters that change where and how fast a network step runs but never what it computes
#: (nor a cache key): the only ones :meth:`NetworkStep.set_runtime` changes on a fitted model.
RUNTIME_PARAMS = (
    "batch_size",
    "num_workers",
    "device",
    "cache_dir",
    "progress",
    "engine",
    "ray_address",
)


def _check_progress(value, name):
    if value is not None and not isinstance(value, (bool, np.bool_)):
        raise UsageError(f"{name}={value!r}: expected True, False or None")


#: The rules of the parameters every network step takes, as ``{name: rule}``
#: (:func:`cnncodes.params.check_params`); each estimator adds its own.
NETWORK_STEP_CHECKS = {
    "pooling": lambda value, name: check_pooling(value),
    "on_error": Choice(*ON_ERROR),
    "precision": Choice(*PRECISIONS),
    "batch_size": Int(1),
    "num_workers": Int(0, allow_none=True),
    "progress": _check_progress,
    "engine": Choice(*ENGINES),
    "ray_address": lambda value, name: check_engine("local", value),
    "cache_dir": lambda value, name: resolve_cache_dir(value),
}


_PARAM_NAMES = {}  # class -> its parameter names


class NetworkStep:
    """Mixin: the contract of an estimator whose input is image paths and that runs a network.

    Subclasses implement :meth:`network_spec`, :meth:`extract`, :meth:`verify_weights`,
    :meth:`verify`, :meth:`warm`, :meth:`screen`, :meth:`describe` and, where they hold their
    own weights, set ``holds_weights = True`` and override :meth:`relocate_weights`.
    :meth:`set_runtime` is shared. :meth:`network_spec`, :meth:`warm` and :meth:`screen` work
    before ``fit`` (from the parameters); :meth:`extract`, :meth:`verify_weights`,
    :meth:`verify`, :meth:`relocate_weights` and :meth:`describe` need a fitted step.

    Examples
    --------
    >>> from cnncodes import CNNCodes
    >>> step = CNNCodes("resnet18", weights="none", layer="layer4", cache_dir=None)
    >>> step.network_spec().model
    'resnet18'
    >>> step.set_runtime(batch_size=8).batch_size
    8
    """

    #: True when the fitted step holds its network's weights itself (it never reads the
    #: checkpoint file it started from).
    holds_weights = False

    @classmethod
    def _get_param_names(cls):
        """scikit-learn's parameter names (from ``__init__``'s signature), read once per class:
        a grid search clones the step for every fit, and ``inspect.signature`` was most of a
        clone's time (bench/RESULTS.md, section 14)."""
        names = _PARAM_NAMES.get(cls)
        if names is None:
            names = _PARAM_NAMES[cls] = tuple(super()._get_param_names())
        return list(names)

    def network_spec(self):
        """The :class:`~cnncodes.ModelSpec` that ``fit`` resolves from the current parameters.

        Every parameter is checked and names are resolved (a bad model, layer or parameter
        fails here), without reading an image or loading weights.
        """
        raise NotImplementedError

    def extract(self, paths):
        """The :class:`~cnncodes.ExtractionResult` of the codes this fitted step reads, through
        the code cache."""
        raise NotImplementedError

    def verify_weights(self):
        """Refuse a checkpoint file that changed since fit (a no-op where none is read)."""
        raise NotImplementedError

    def verify(self):
        """Check that the fitted step's network is rebuilt today exactly as it was fitted."""
        raise NotImplementedError

    def relocate_weights(self, path):
        """Point the fitted step at its checkpoint file in a new place; returns ``self``."""
        return self

    def warm(self, paths, param_grid=None):
        """Extract into the cache, once, the codes a grid search over this step will read.

        ``param_grid`` is a grid over this step's own parameters (dict or list of dicts, names
        without a pipeline prefix; see :func:`step_grid`). Returns a summary dict: ``runs``,
        ``configurations``, ``computed``, ``cached`` and ``skipped`` (SkippedImage list).
        """
        raise NotImplementedError

    def screen(self, X, y=None):
        """``(X_kept, y_kept, skipped)``: the images this step can read, with their labels."""
        raise NotImplementedError

    def describe(self):
        """The fitted network's entries of a run's configuration (see
        :func:`describe_network`)."""
        raise NotImplementedError

    def set_runtime(self, **params):
        """Set runtime parameters (:data:`RUNTIME_PARAMS` only); returns ``self``.

        What the fitted step computes stays exactly what it was fitted with.
        """
        unknown = sorted(set(params) - set(RUNTIME_PARAMS))
        if unknown:
            raise UsageError(
                f"set_runtime: {', '.join(map(repr, unknown))} would change the model's codes; "
                f"only {', '.join(RUNTIME_PARAMS)} may change on a fitted model"
            )
        return self.set_params(**params)


def network_step(estimator):
    """``(step, parameter prefix)``: the :class:`NetworkStep` of ``estimator``.

    ``estimator`` is a network step itself (prefix ``""``), a (nested) Pipeline holding one
    (prefix ``"name__"``), or a fitted search (the step of its ``best_estimator_``, the prefix
    relative to it).

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from cnncodes import CNNCodes
    >>> pipe = make_pipeline(CNNCodes("resnet18", weights="none"), LogisticRegression())
    >>> network_step(pipe)[1]
    'cnncodes__'
    """
    if isinstance(estimator, NetworkStep):
        return estimator, ""
    best = getattr(estimator, "best_estimator_", None)
    if best is not None:
        return network_step(best)
    for name, step in getattr(estimator, "steps", None) or ():
        try:
            found, prefix = network_step(step)
        except UsageError:
            continue
        return found, f"{name}__{prefix}"
    raise UsageError(
        f"{type(estimator).__name__} has no CNNCodes step and is not a FineTune: pass a "
        "CNNCodes or a FineTune, or a Pipeline containing one"
    )


def step_grid(param_grid, prefix):
    """The step's part of a parameter grid (dict or list of dicts), as a list of dicts whose
    names lack ``prefix``."""
    grids = [param_grid] if isinstance(param_grid, dict) else list(param_grid or [{}])
    out = []
    for grid in grids:
        if prefix and prefix[:-2] in grid:
            raise UsageError(
                f"param_grid replaces the step {prefix[:-2]!r} itself; warm_cache only handles "
                f"grids over its parameters ({prefix}layer, {prefix}pooling, ...)"
            )
        out.append({k[len(prefix) :]: v for k, v in grid.items() if k.startswith(prefix)})
    return out


def resolve_network(step, paths):
    """The step's :class:`~cnncodes.ModelSpec`: a bad model, layer or parameter fails here,
    before any image is read (``paths`` are not read)."""
    return step.network_spec()


def warm(estimator, paths, param_grid):
    """Warm the cache for a search over ``estimator`` (a pipeline or a network step): the
    step's :meth:`NetworkStep.warm` over its part of ``param_grid``."""
    step, prefix = network_step(estimator)
    return step.warm(paths, step_grid(param_grid, prefix))


def screen_test(best, paths, labels):
    """``(paths, labels, skipped)`` of the test images the fitted ``best`` can read."""
    return network_step(best)[0].screen(paths, labels)


def describe_network(best):
    """The fitted network's entries of the run's configuration: ``extractor`` (model, weights
    identity, preprocessing), ``preprocessing_source``, ``layers`` and, for codes of several
    views, ``views`` (the views and how they were reduced)."""
    return network_step(best)[0].describe()
