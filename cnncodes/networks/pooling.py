"""Pooling of layer activations into fixed-length code vectors (torch only).

A layer's output is one of:

- ``(N, C, H, W)`` spatial maps (convolutional layers): pooled over ``H, W``;
- ``(N, L, D)`` token sequences (transformer blocks): pooled over the ``L`` tokens;
- ``(N, D)`` flat vectors: passed through unchanged, whatever the pooling.

Poolings: ``avg``, ``max``, ``avgmax`` (average and maximum, concatenated), ``pyramid``
(a 1x1 average plus a 2x2 average grid, concatenated: ``5 * C`` values, spatial maps only) and
``flatten`` (every value, refused above :data:`MAX_FLATTEN_FEATURES`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..params import POOLINGS

MAX_FLATTEN_FEATURES = 65_536

__all__ = ["POOLINGS", "MAX_FLATTEN_FEATURES", "check_pooling", "code_size", "pool"]


def check_pooling(pooling):
    """Return ``pooling`` if it is a known pooling name, else raise ``ValueError``."""
    if pooling not in POOLINGS:
        raise UsageError(
            f"pooling={pooling!r} is not supported; choose one of {', '.join(POOLINGS)}"
        )
    return pooling


def code_size(shape, pooling):
    """Length of the code that ``pooling`` makes from one sample of shape ``shape``.

    ``shape`` excludes the batch dimension. Raises ``ValueError`` where the pooling cannot apply,
    so a bad combination fails before any image is read.

    Examples
    --------
    >>> code_size((512, 7, 7), "avgmax")
    1024
    >>> code_size((1000,), "avg")
    1000
    """
    check_pooling(pooling)
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        return shape[0]
    if len(shape) not in (2, 3):
        raise UsageError(
            f"cannot pool an output of shape {shape}: expected (C, H, W), (tokens, D) or (D,)"
        )
    channels = shape[0] if len(shape) == 3 else shape[1]
    if pooling in ("avg", "max"):
        return channels
    if pooling == "avgmax":
        return 2 * channels
    if pooling == "pyramid":
        if len(shape) != 3:
            raise UsageError(
                f"pooling='pyramid' needs a spatial (C, H, W) output, not shape {shape}; "
                "use 'avg', 'max' or 'avgmax'"
            )
        return 5 * channels
    size = math.prod(shape)
    if size > MAX_FLATTEN_FEATURES:
        raise UsageError(
            f"pooling='flatten' would make {size:,} features per image from an output of shape "
            f"{shape} (limit {MAX_FLATTEN_FEATURES:,}); use 'avg', 'max', 'avgmax' or 'pyramid', "
            "or choose a later, smaller layer"
        )
    return size


def pool(x, pooling):
    """Pool a batch of activations ``x`` into a 2-D float32 tensor ``(N, code_size)``.

    Examples
    --------
    >>> pool(torch.ones(2, 8, 4, 4), "pyramid").shape
    torch.Size([2, 40])
    """
    if x.ndim == 2:
        return x.float()
    code_size(tuple(x.shape[1:]), pooling)
    x = x.float()
    if pooling == "flatten":
        return x.flatten(1)
    if x.ndim == 3:
        # Tokens (N, L, D): reduce over the token axis.
        if pooling == "avg":
            return x.mean(1)
        if pooling == "max":
            return x.amax(1)
        return torch.cat([x.mean(1), x.amax(1)], 1)
    if pooling == "avg":
        return x.mean((2, 3))
    if pooling == "max":
        return x.amax((2, 3))
    if pooling == "avgmax":
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)
    grid = F.adaptive_avg_pool2d(x, 2).flatten(1)
    return torch.cat([x.mean((2, 3)), grid], 1)
