"""Preprocessing resolution: explicit argument > the checkpoint's own > the model's own > ImageNet.

Each key (``resize``, ``crop``, ``mean``, ``std``, ``interpolation``) is resolved on its own and
keeps where its value came from; the result is a :class:`cnncodes.spec.Preprocessing`, part of
the cache key. The model's own is its torchvision weights' ``transforms()``, a timm model's pretrained
data config (``timm.data.resolve_model_data_config``), or the ``preprocessing`` attribute of the
user's callable; the checkpoint's own is the ``preprocessing``
entry of a checkpoint file's dict (read by :mod:`cnncodes.checkpoints`).
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from collections.abc import Mapping

from ..errors import UsageError
from ..params import is_int
from ..spec import (
    INTERPOLATIONS,
    PREPROCESSING_IMPLS,
    PREPROCESSING_KEYS,
    ModelError,
    Preprocessing,
    WeightsError,
)
from .architectures import _is_callable_name, _load_callable

__all__ = [
    "MAX_SIDE",
    "PreprocessingWarning",
    "checked_preprocessing",
    "default_preprocessing_warning",
    "default_preprocessing_note",
    "resolve_preprocessing",
    "declared_preprocessing",
    "timm_preprocessing",
    "warn_default_preprocessing",
]

MAX_SIDE = 4096  # pixels; larger resize or crop values are mistakes (a 4096^2 batch of 32 is 6 GB)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class PreprocessingWarning(UserWarning):
    """A checkpoint file is used with the ImageNet default preprocessing because it carries none
    of its own (nor were values given): its network may have been trained otherwise (mean = std
    = 0.5 is common), and nothing else would say so."""


def _pair(value, name, allow_single):
    given = value
    if is_int(value):
        value = (value,)
    try:
        value = tuple(value)
    except TypeError:
        raise UsageError(f"{name}={given!r}: expected an int or (height, width)") from None
    if not value or len(value) > 2 or not all(is_int(v) for v in value):
        raise UsageError(f"{name}={given!r}: expected an int or (height, width)")
    value = tuple(int(v) for v in value)
    if any(v <= 0 for v in value):
        raise UsageError(f"{name}={given!r}: sizes must be positive")
    if any(v > MAX_SIDE for v in value):
        raise UsageError(f"{name}={given!r}: at most {MAX_SIDE} pixels a side")
    if len(value) == 1 and not allow_single:
        value = value * 2
    return value


def _triple(value, name):
    given = value
    if isinstance(value, numbers.Real):
        value = (value,) * 3
    try:
        value = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise UsageError(f"{name}={value!r}: expected a float or three floats (R, G, B)") from None
    if len(value) != 3:
        raise UsageError(f"{name}={value!r}: expected a float or three floats (R, G, B)")
    if not all(math.isfinite(v) for v in value):
        # NaN or infinity would make every code NaN (issue 23), silently.
        shown = value[0] if isinstance(given, numbers.Real) else value
        raise UsageError(f"{name}={shown!r}: values must be finite (not NaN or infinity)")
    return value


def _apply_preprocessing(base, values, label):
    """Validate ``values`` (argument forms) into ``base``; ``label(key)`` names each in errors."""
    if "resize" in values:
        base["resize"] = _pair(values["resize"], label("resize"), allow_single=True)
    if "crop" in values:
        crop = values["crop"]
        base["crop"] = (
            None if crop in (0, "none", "None") else _pair(crop, label("crop"), allow_single=False)
        )
    if "mean" in values:
        base["mean"] = _triple(values["mean"], label("mean"))
    if "std" in values:
        base["std"] = _triple(values["std"], label("std"))
        if any(s <= 0 for s in base["std"]):
            raise UsageError(f"{label('std')}={values['std']!r}: values must be positive")
    if "interpolation" in values:
        interpolation = values["interpolation"]
        if interpolation not in INTERPOLATIONS:
            raise UsageError(
                f"{label('interpolation')}={interpolation!r}: choose one of "
                f"{', '.join(INTERPOLATIONS)}"
            )
        base["interpolation"] = interpolation


def _check_declared(declared, where, error=ModelError):
    """Refuse a declaration that is not a dict of known, non-None keys (before any value check)."""
    if not isinstance(declared, Mapping):
        raise error(
            f"{where}={declared!r}: expected a dict with any of the keys "
            f"{', '.join(PREPROCESSING_KEYS)}"
        )
    unknown = [key for key in declared if key not in PREPROCESSING_KEYS]
    if unknown:
        raise error(
            f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; accepted keys: "
            f"{', '.join(PREPROCESSING_KEYS)}"
        )
    unset = [key for key in PREPROCESSING_KEYS if key in declared and declared[key] is None]
    if unset:
        raise error(
            f"{where}[{unset[0]!r}]=None: leave the key out to use the default"
            + (" (crop=0 or 'none' turns cropping off)" if unset[0] == "crop" else "")
        )


def resolve_preprocessing(
    weights_enum=None,
    *,
    declared=None,
    declared_by="model",
    checkpoint=None,
    checkpoint_path="checkpoint",
    pretrained=None,
    pretrained_origin="weights",
    resize=None,
    crop=None,
    mean=None,
    std=None,
    interpolation=None,
    impl="pil",
):
    """Preprocessing with a fixed precedence: explicit argument > the checkpoint's own > the
    model's own > ImageNet default.

    The checkpoint's own is the ``preprocessing`` entry of a checkpoint file's dict: what these
    weights were trained with, so it wins over what the architecture declares. The model's own
    preprocessing is that of its torchvision weights (``weights_enum.transforms()``) or, for the
    user's own architecture, the ``declared`` dict its callable carries as its
    ``preprocessing`` attribute (see :func:`cnncodes.models.resolve_spec`); the two never meet,
    since torchvision weights only apply to torchvision models. Each key is resolved on its own:
    an explicit ``crop`` keeps the model's ``mean``. Where each value came from is kept in
    :attr:`Preprocessing.source`.

    The ImageNet default is the standard evaluation transform: shorter side to 256, centre crop 224,
    bilinear, ImageNet mean and std. ``crop=0`` (or ``"none"``) turns cropping off, which requires
    ``resize`` to be ``(height, width)`` so that every image has the same size.

    Parameters
    ----------
    weights_enum : torchvision weights enum member, optional
        Named torchvision weights whose ``transforms()`` give the model's own preprocessing.
    declared : dict, optional
        Preprocessing declared by a user's callable: any of the keys ``resize``, ``crop``, ``mean``,
        ``std``, ``interpolation``, with the same value forms as the arguments below.
    declared_by : str
        Who declared it (``"package.module:callable"``), named in error messages.
    checkpoint : dict, optional
        The ``preprocessing`` entry of a checkpoint file, in the same forms.
    checkpoint_path : str
        The checkpoint file, named in error messages.
    pretrained : dict, optional
        A timm model's own preprocessing (:func:`timm_preprocessing`), in the same forms; it
        ranks with ``weights_enum``'s, below ``declared``.
    pretrained_origin : str
        The origin :attr:`Preprocessing.source` gives ``pretrained``'s values: ``"weights"``
        when these are the pretrained weights it describes, ``"model"`` otherwise.
    resize, crop, mean, std, interpolation : optional
        Explicit values; ``None`` leaves the key to the model or the default.
    impl : {"pil", "torch"}
        Which implementation preprocesses (see :class:`Preprocessing`). ``"torch"`` supports only
        the ``"bilinear"`` and ``"bicubic"`` interpolations.

    Raises
    ------
    ModelError
        ``declared`` is not a dict, has an unknown key, or a bad value (the message names
        ``declared_by``, the key and the value).
    WeightsError
        The same for ``checkpoint`` (the message names the file and the key).
    ValueError
        A bad explicit value, an unknown ``impl``, or an interpolation ``impl`` does not support.

    Examples
    --------
    >>> resolve_preprocessing(declared={"resize": 32, "crop": 32, "mean": 0.5}, std=0.25).std
    (0.25, 0.25, 0.25)
    >>> resolve_preprocessing(impl="torch").impl
    'torch'
    """
    if not isinstance(impl, str) or impl not in PREPROCESSING_IMPLS:
        raise UsageError(f"impl={impl!r}: choose one of {', '.join(PREPROCESSING_IMPLS)}")
    base, source = _model_base(weights_enum)
    own = []  # (values, where they are written, their origin, the error to raise)
    if pretrained is not None:
        own.append((pretrained, "timm's pretrained config", pretrained_origin, ModelError))
    if declared is not None:
        own.append((declared, f"{declared_by}.preprocessing", "model", ModelError))
    if checkpoint is not None:
        own.append((checkpoint, f"{checkpoint_path}['preprocessing']", "checkpoint", WeightsError))
    explicit = {
        "resize": resize,
        "crop": crop,
        "mean": mean,
        "std": std,
        "interpolation": interpolation,
    }
    explicit = {key: value for key, value in explicit.items() if value is not None}
    origin, given = _apply_in_order(base, source, own, explicit)
    _check_resolved(base, impl, origin, given)
    base["resize"] = tuple(base["resize"])
    return Preprocessing(**base, impl=impl, source=tuple(source.items()))


def _apply_in_order(base, source, own, explicit):
    """Apply each of ``own``'s values (checked), then the ``explicit`` ones, onto ``base``;
    ``(origin, given)``: per key, where its value was written and as what."""
    origin, given = {}, {}
    for values, where, name, error in own:
        _check_declared(values, where, error)
        try:
            _apply_preprocessing(base, values, lambda key, where=where: f"{where}[{key!r}]")
        except ValueError as exc:
            raise error(str(exc)) from None
        origin.update((key, f"{where}[{key!r}]") for key in values)
        given.update(values)
        source.update(dict.fromkeys(values, name))
    _apply_preprocessing(base, explicit, lambda key: key)
    origin.update((key, key) for key in explicit)
    given.update(explicit)
    source.update(dict.fromkeys(explicit, "explicit"))
    return origin, given


def _model_base(weights_enum):
    """The preprocessing values of ``weights_enum``'s ``transforms()`` (or the ImageNet
    default), and where each came from."""
    base = {
        "resize": (256,),
        "crop": (224, 224),
        "mean": _IMAGENET_MEAN,
        "std": _IMAGENET_STD,
        "interpolation": "bilinear",
    }
    if weights_enum is None:
        return base, dict.fromkeys(PREPROCESSING_KEYS, "ImageNet default")
    t = weights_enum.transforms()
    for attr, key in (("resize_size", "resize"), ("crop_size", "crop")):
        if getattr(t, attr, None) is not None:
            base[key] = tuple(getattr(t, attr))
    if len(base["crop"]) == 1:
        base["crop"] = base["crop"] * 2
    base["mean"] = tuple(getattr(t, "mean", base["mean"]))
    base["std"] = tuple(getattr(t, "std", base["std"]))
    interp = getattr(t, "interpolation", None)
    if interp is not None:
        base["interpolation"] = getattr(interp, "value", str(interp))
    return base, dict.fromkeys(PREPROCESSING_KEYS, "weights")


def _check_resolved(base, impl, origin, given):
    """Refuse resolved values that do not go together, naming where each was written
    (``origin``: key -> where; ``given``: key -> as what)."""
    if base["crop"] is None and len(base["resize"]) != 2:
        # Echo what was given (0 or "none"): None is only how "no crop" is stored.
        raise UsageError(
            f"{origin.get('crop', 'crop')}={given['crop']!r} (no centre crop) needs "
            f"{origin.get('resize', 'resize')}=(height, width) so all images share one size, not "
            f"resize={base['resize'][0]!r}"
        )
    if base["crop"] is not None:
        # Larger than the resized image, the crop would be padded with black.
        room = base["resize"] * 2 if len(base["resize"]) == 1 else base["resize"]
        if any(c > r for c, r in zip(base["crop"], room)):
            raise UsageError(
                f"{origin.get('crop', 'crop')}={base['crop']!r} is larger than "
                f"{origin.get('resize', 'resize')}={base['resize']!r}: the crop would be padded; "
                "make every crop side at most the resize"
            )
    supported = PREPROCESSING_IMPLS[impl]
    if base["interpolation"] not in supported:
        raise UsageError(
            f"{origin.get('interpolation', 'interpolation')}={base['interpolation']!r} is not "
            f"supported by impl={impl!r}; choose one of {', '.join(supported)} (or impl='pil')"
        )


def timm_preprocessing(config):
    """A timm data config (``timm.data.resolve_model_data_config``) in :func:`resolve_preprocessing`'s
    argument forms: resize = crop / ``crop_pct`` as timm's own eval transform does it (the shorter
    side for a square input, else both sides; both with ``crop_mode="squash"``).

    Examples
    --------
    >>> out = timm_preprocessing({"input_size": (3, 176, 176), "interpolation": "bicubic",
    ...     "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "crop_pct": 0.875})
    >>> out["resize"], out["crop"], out["interpolation"]
    ((201,), (176, 176), 'bicubic')
    """
    crop = tuple(int(v) for v in config["input_size"][-2:])
    crop_pct = config.get("crop_pct") or 1.0
    scaled = tuple(math.floor(v / crop_pct) for v in crop)
    square = crop[0] == crop[1] and config.get("crop_mode", "center") != "squash"
    out = {"crop": crop, "resize": scaled[:1] if square else scaled}
    for key in ("mean", "std"):
        values = tuple(float(v) for v in config[key])
        out[key] = values * 3 if len(values) == 1 else values
    interpolation = config.get("interpolation")
    # timm's "random" is a training augmentation; evaluation resizes bilinearly then.
    out["interpolation"] = interpolation if interpolation in INTERPOLATIONS else "bilinear"
    return out


def default_preprocessing_note(spec):
    """None: superseded by :class:`PreprocessingWarning`.

    This returned a note for callers to log when a checkpoint file's images were normalised
    with the ImageNet default. :func:`~cnncodes.models.resolve_spec` now warns instead
    (:func:`warn_default_preprocessing`; the command line shows it once, as
    ``cnncodes: warning: ...``, even with ``--quiet``), so a caller that still logs this note
    would repeat it; it is kept so that such code keeps working. The text is
    :func:`default_preprocessing_warning`'s.
    """
    del spec
    return None


def _shown(key, value):
    """A resolved value as the options take it: ``resize=256``, ``crop=224``, ``mean=(...)``."""
    if key in ("resize", "crop") and value is not None and len(set(value)) == 1:
        return f"{key}={value[0]}"
    return f"{key}={value!r}" if key in ("mean", "std") else f"{key}={','.join(map(str, value))}"


def default_preprocessing_warning(spec):
    """The :class:`PreprocessingWarning` text for ``spec``, or None: a checkpoint file whose mean
    or std is the ImageNet default (neither its own nor given), naming every value left to the
    default (mean, std, resize, crop) and how to give its own."""
    if spec.weights_spec.kind != "checkpoint":
        return None
    source = dict(spec.preprocessing.source)
    keys = [k for k in ("mean", "std", "resize", "crop") if source.get(k) == "ImageNet default"]
    if "mean" not in keys and "std" not in keys:
        # The normalisation was chosen (the file's own, or given): the default input size is
        # then a choice too, and the fix the warning proposes has been made.
        return None
    pre = spec.preprocessing
    used = ", ".join(_shown(key, getattr(pre, key)) for key in keys)
    has_some = "checkpoint" in source.values()
    options = " ".join(
        f"--{key} {'M' if key == 'mean' else 'S' if key == 'std' else 'N'}" for key in keys
    )
    return (
        f"{spec.weights} "
        + ("gives no " + ", ".join(keys) if has_some else "carries no preprocessing of its own")
        + f", so the ImageNet default is used: {used}. If its network was trained otherwise "
        f"(mean = std = 0.5 is common), give {options} on every command, or write them into the "
        f"file once: cnncodes weights set-preprocessing {spec.weights} OUT.pth {options} (a new "
        "file, with a new SHA-256: codes cached for this one are not reused)"
    )


def warn_default_preprocessing(spec):
    """Warn (:class:`PreprocessingWarning`) when ``spec``'s checkpoint file is normalised with
    the ImageNet default. The warning is raised from one line, so Python's default filter
    shows it once per checkpoint file and process however often the file is resolved."""
    message = default_preprocessing_warning(spec)
    if message:
        warnings.warn(message, PreprocessingWarning, stacklevel=1)


def checked_preprocessing(values):
    """``values`` (any of the preprocessing keys, in the arguments' forms; None: not given)
    checked, in the plain forms a checkpoint's ``preprocessing`` entry stores (lists, ints,
    floats, str; crop 0 for no crop), so that ``weights_only=True`` loads them."""
    given = {key: value for key, value in values.items() if value is not None}
    unknown = [key for key in given if key not in PREPROCESSING_KEYS]
    if unknown:
        raise UsageError(f"unknown preprocessing key(s) {', '.join(map(repr, unknown))}")
    base = {}
    _apply_preprocessing(base, given, lambda key: key)
    return {
        key: (0 if value is None else list(value)) if key != "interpolation" else value
        for key, value in base.items()
    }


def declared_preprocessing(model):
    """The ``preprocessing`` attribute of a user's callable, or ``None`` (torchvision models)."""
    if not _is_callable_name(model):
        return None
    obj = _load_callable(model)
    declared = getattr(obj, "preprocessing", None)
    if isinstance(obj, type) and (inspect.isroutine(declared) or isinstance(declared, property)):
        # A class whose instances have a preprocessing *method* declares nothing.
        return None
    return declared
