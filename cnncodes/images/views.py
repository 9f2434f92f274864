"""Views of an image (centre, mirrored, corner crops, random resized crops): names and geometry.

A *view* is the last step of preprocessing: which part of the resized image becomes the
network's input. It is one string, held by :attr:`cnncodes.spec.Preprocessing.view`, so every
view's codes are cached under their own configuration:

- ``"center"``: the centre crop (what preprocessing always did; the default);
- ``"flip"``: the centre crop, mirrored left to right;
- ``"crop:tl"``, ``"crop:tr"``, ``"crop:bl"``, ``"crop:br"``: a corner crop of the crop size
  (torchvision's ``FiveCrop``; its fifth, the centre, is ``"center"``), and ``"crop:tl+flip"``,
  ... their mirrors (``TenCrop``);
- ``"rrc:SEED:I"``: the I-th random resized crop (torchvision ``RandomResizedCrop``'s default
  scale (0.08, 1) and ratio (3/4, 4/3) of the resized image, scaled to the crop size, then
  mirrored with probability 1/2), drawn from a generator seeded by ``(SEED, I, the image's
  SHA-256)``: an image's I-th crop is the same whatever the batch, order or process.

A *set of views* is what estimators and the command line take (``views=``, ``--views``), and
:func:`expand_views` turns it into view strings: ``"center"``, ``"flip"`` (centre and mirror),
``"five_crop"``, ``"ten_crop"``, or a count N of random resized crops. Torch-free: the decoders
(:mod:`cnncodes.extraction.decode`) ask :func:`view_box` where to cut. Importing it costs
nothing (numpy is imported where crops are drawn), so the command line lists these names.
"""

from __future__ import annotations

import math
import numbers

from ..errors import UsageError
from ..spec import CORNERS, check_view

__all__ = [
    "CORNERS",
    "VIEW_REDUCES",
    "VIEW_SETS",
    "check_view",
    "check_view_reduce",
    "expand_views",
    "reduce_views",
    "view_box",
]

#: The corner crops of torchvision's ``FiveCrop``, by view name; the fifth is ``"center"``.
#: Named sets of views (a positive int is the other form: that many random resized crops).
VIEW_SETS = {
    "center": ("center",),
    "flip": ("center", "flip"),
    "five_crop": ("center", *(f"crop:{c}" for c in CORNERS)),
    "ten_crop": (
        "center",
        *(f"crop:{c}" for c in CORNERS),
        "flip",
        *(f"crop:{c}+flip" for c in CORNERS),
    ),
}
#: How the codes of an image's views become its row: ``"mean"`` or ``"max"`` (2-D codes), or
#: ``"stack"`` (3-D, ``(n_images, n_views, n_features)``, for :class:`cnncodes.ViewStack`).
VIEW_REDUCES = ("mean", "max", "stack")
#: Upper bound on a count of random crops (each is a full pass of every image).
MAX_RANDOM_VIEWS = 1000

# torchvision RandomResizedCrop's defaults.
_SCALE = (0.08, 1.0)
_RATIO = (3 / 4, 4 / 3)


def _is_count(value):
    # numpy ints are Integral (a grid written with np.arange); bools, numpy's too, are not counts.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def expand_views(views, view_seed=0, name="views"):
    """The view strings of a set of views, in order (their codes come in this order).

    Parameters
    ----------
    views : {"center", "flip", "five_crop", "ten_crop"}, int or list of str
        A named set, N >= 1: N random resized crops ``"rrc:{view_seed}:{i}"``, or a list of
        view strings (taken as they are).
    view_seed : int
        The seed of the random crops (an int >= 0).
    name : str
        The parameter's name in error messages (``"--views"`` on the command line).

    Examples
    --------
    >>> expand_views("flip")
    ['center', 'flip']
    >>> expand_views(2, view_seed=7)
    ['rrc:7:0', 'rrc:7:1']
    """
    if _is_count(views):
        if not 1 <= views <= MAX_RANDOM_VIEWS:
            raise UsageError(
                f"{name}={views!r}: a count of random resized crops must be between 1 and "
                f"{MAX_RANDOM_VIEWS}; or choose one of {', '.join(map(repr, VIEW_SETS))}"
            )
        if not _is_count(view_seed) or view_seed < 0:
            raise UsageError(f"view_seed={view_seed!r}: expected an int >= 0")
        return [f"rrc:{int(view_seed)}:{i}" for i in range(int(views))]
    if isinstance(views, str) and views in VIEW_SETS:
        return list(VIEW_SETS[views])
    if isinstance(views, (list, tuple)) and views and all(isinstance(v, str) for v in views):
        try:
            return [check_view(v) for v in views]
        except ValueError as exc:
            raise UsageError(f"{name}={views!r}: {exc}") from None
    raise UsageError(
        f"{name}={views!r}: choose one of {', '.join(map(repr, VIEW_SETS))}, or an int N >= 1 "
        "(N random resized crops, seeded by view_seed)"
    )


def check_view_reduce(view_reduce, name="view_reduce"):
    """``view_reduce`` if it is one of :data:`VIEW_REDUCES`, else a ValueError naming it."""
    if not isinstance(view_reduce, str) or view_reduce not in VIEW_REDUCES:
        raise UsageError(
            f"{name}={view_reduce!r}: choose one of {', '.join(map(repr, VIEW_REDUCES))}"
        )
    return view_reduce


def view_box(view, size, crop, digest=None):
    """Where ``view`` cuts a resized image of ``size`` ``(height, width)``, for a ``crop``.

    Returns ``(top, left, height, width, flip)``: the region to take (scaled to ``crop`` for a
    random resized crop, else taken as is; it may reach outside the image, which pads with
    zeros as torchvision's crops do) and whether to mirror it. ``"center"`` is not handled here:
    it is torchvision's ``center_crop``, unchanged. ``digest``: the image's SHA-256 hex digest,
    which seeds a random resized crop.

    Examples
    --------
    >>> view_box("crop:br", (40, 50), (32, 32))
    (8, 18, 32, 32, False)
    >>> view_box("rrc:0:1", (40, 50), (32, 32), "ab" * 32) == view_box(
    ...     "rrc:0:1", (40, 50), (32, 32), "ab" * 32)
    True
    """
    height, width = size
    ch, cw = crop
    kind, _, rest = check_view(view).partition(":")
    if kind == "flip":
        # torchvision center_crop's rounding.
        return int(round((height - ch) / 2.0)), int(round((width - cw) / 2.0)), ch, cw, True
    if kind == "crop":
        corner, plus, _ = rest.partition("+")
        top = 0 if corner[0] == "t" else height - ch
        left = 0 if corner[1] == "l" else width - cw
        return top, left, ch, cw, bool(plus)
    if digest is None:
        raise UsageError(f"view={view!r}: a random resized crop needs the image's digest")
    import numpy as np

    seed, _, index = rest.partition(":")
    # SeedSequence mixes arbitrarily large ints: no Python hash() (salted per process).
    rng = np.random.default_rng([int(seed), int(index), int(digest, 16)])
    return (*_random_resized_box(rng, height, width), bool(rng.random() < 0.5))


def _random_resized_box(rng, height, width):
    """torchvision ``RandomResizedCrop.get_params`` with its default scale and ratio, on ``rng``."""
    area = height * width
    log_ratio = (math.log(_RATIO[0]), math.log(_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback, as torchvision's: the whole image, its aspect clamped to the ratio range.
    in_ratio = width / height
    if in_ratio < _RATIO[0]:
        w, h = width, int(round(width / _RATIO[0]))
    elif in_ratio > _RATIO[1]:
        h, w = height, int(round(height * _RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def reduce_views(codes, view_reduce):
    """Codes of shape ``(n_images, n_views, n_features)`` reduced as ``view_reduce`` says.

    ``"mean"`` and ``"max"`` give ``(n_images, n_features)`` (NaN rows stay NaN); ``"stack"``
    returns ``codes`` unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> reduce_views(np.array([[[1.0, 4.0], [3.0, 0.0]]]), "mean")
    array([[2., 2.]])
    """
    check_view_reduce(view_reduce)
    if view_reduce == "stack":
        return codes
    if codes.shape[1] == 1:
        return codes[:, 0]
    out = codes.mean(axis=1) if view_reduce == "mean" else codes.max(axis=1)
    return out.astype(codes.dtype, copy=False)
