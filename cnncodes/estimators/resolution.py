"""What a :class:`~cnncodes.CNNCodes` resolves its settings to, memoised in this process."""

from __future__ import annotations

import os

from ..errors import UsageError
from ..networks.architectures import model_identity
from ..networks.layers import layer_shapes, resolve_layers
from ..networks.models import spec_of
from ..networks.pooling import code_size
from ..spec import MODEL_PARAMS, file_stamp
from ..utils.memo import Memo

__all__ = ["resolve_configuration"]

_RESOLVED = Memo(256)


def _weights_key(weights):
    """Identity of ``weights`` for the resolution memo: a file by its change stamp."""
    if weights is None or not isinstance(weights, (str, os.PathLike)):
        return repr(weights)
    path = os.fspath(weights)
    try:
        return (os.path.abspath(path), *file_stamp(path)[1:])
    except OSError:
        return path


def resolve_configuration(est, layers):
    """``(spec, layers, code sizes)`` of an estimator's settings, memoised in this process.

    A grid search fits a fresh clone for every candidate and fold; resolving again each time
    (fingerprinting the architecture, tracing its graph) would cost more than reading the codes.
    A checkpoint file is keyed by its change stamp (:func:`cnncodes.spec.file_stamp`: size,
    mtime, ctime, inode), so a changed file is resolved anew, even one rewritten in place.
    """
    # The weights go into the key by their file's change stamp, not by their name.
    params = tuple(getattr(est, name) for name in MODEL_PARAMS if name != "weights")
    identity = model_identity(est.model) if isinstance(est.model, str) else None
    key = (repr(params), identity, _weights_key(est.weights), repr(layers), est.pooling)
    found = _RESOLVED.get(key)
    if found is not None:
        return found[0], list(found[1]), dict(found[2])
    spec = spec_of(est)
    resolved = resolve_layers(spec, layers)
    shapes = layer_shapes(spec, resolved)
    sizes = {}
    for name in resolved:
        try:
            sizes[name] = code_size(shapes[name], est.pooling)
        except ValueError as exc:
            raise UsageError(f"layer={name!r}: {exc}") from None
    _RESOLVED.put(key, (spec, tuple(resolved), dict(sizes)))
    return spec, resolved, sizes
