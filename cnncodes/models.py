"""Names to networks: architectures, weights, preprocessing and layers (torch only).

A model is a torchvision classification model name (``"resnet50"``, ``"mobilenet_v2"``, ...) or the
user's own architecture given as ``"package.module:callable"`` returning an ``nn.Module``; such a
callable may declare the preprocessing its network expects in a ``preprocessing`` attribute
(see :func:`resolve_spec`).

Weights are one of

- a torchvision weights name: ``"DEFAULT"``, ``"IMAGENET1K_V1"`` or ``"ResNet50_Weights.IMAGENET1K_V1"``;
- ``"none"``: random initialisation from ``seed``;
- a path to a checkpoint file: a state_dict, or a dict holding one under ``state_dict``,
  ``model_state_dict``, ``model``, ``net`` or ``module``; ``module.`` (DataParallel) and ``_orig_mod.``
  (``torch.compile``) prefixes are stripped; loaded on the CPU with ``weights_only=True``; the file's
  identity is its SHA-256. Such a dict may also carry the preprocessing the weights were trained
  with under ``preprocessing`` (see :func:`resolve_spec`).

``weights=None`` means ``"DEFAULT"`` for a torchvision model and "as the callable builds it" for the
user's own architecture.

Nothing here downloads at import or resolution time. Torchvision weights are read from
``$TORCH_HOME/hub/checkpoints`` (checked against the hash in their published file name and loaded with
``weights_only=True``, unlike torchvision's own loader). Nothing is fetched from the internet
unless ``CNNCODES_DOWNLOAD=1`` is set (then a missing file is downloaded the way torchvision does
it); otherwise :class:`WeightsUnavailableError` says where to put the file, its URL, and how to
pass a local checkpoint instead.

Resolution is cheap: :func:`resolve_spec` builds the architecture on the ``meta`` device (no memory,
no initialisation) to fingerprint it and name its layers; :func:`build_model` loads real weights only
when images actually have to go through the network.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import inspect
import marshal
import numbers
import os
import re
import sys
import sysconfig
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models import feature_extraction

from .pooling import POOLINGS, code_size
from .spec import (
    INTERPOLATIONS,
    PREPROCESSING_IMPLS,
    PREPROCESSING_KEYS,
    ModelError,
    ModelSpec,
    Preprocessing,
    Weights,
    WeightsError,
    describe_preprocessing,
    file_sha256,
)

__all__ = [
    "ModelSpec",
    "Preprocessing",
    "PREPROCESSING_KEYS",
    "PREPROCESSING_IMPLS",
    "LayerInfo",
    "ModelError",
    "WeightsError",
    "WeightsUnavailableError",
    "LayerError",
    "resolve_spec",
    "resolve_preprocessing",
    "resolve_layers",
    "build_model",
    "build_extractor",
    "list_layers",
    "file_sha256",
    "describe_preprocessing",
    "default_preprocessing_note",
    "PENULTIMATE",
]

PENULTIMATE = "penultimate"
_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
_PREFIXES = ("module.", "_orig_mod.")
MAX_SIDE = 4096  # pixels; larger resize or crop values are mistakes (a 4096^2 batch of 32 is 6 GB)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailableError(WeightsError):
    """Named torchvision weights that are neither on disk nor downloadable (offline)."""


class LayerError(ValueError):
    """A layer name that is not a node of the model's graph, or whose output cannot be pooled."""


@dataclass(frozen=True)
class LayerInfo:
    """One graph node: its output shape (without the batch axis) and the code size per pooling."""

    name: str
    shape: tuple
    code_sizes: dict


# ----------------------------------------------------------------------------- architectures


def _is_callable_name(model):
    return ":" in model


def _torchvision_names():
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _load_callable(model):
    """Import ``package.module:callable``."""
    module_name, _, attr = model.partition(":")
    if not module_name or not attr:
        raise ModelError(f"model={model!r}: expected 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"model={model!r}: cannot import module {module_name!r} ({exc})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"model={model!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"model={model!r}: {attr!r} is not callable")
    return obj


def _call_without_arguments(model):
    builder = _load_callable(model)
    try:
        inspect.signature(builder).bind()
    except TypeError as exc:  # needs arguments (torch.nn:Linear, ...)
        raise ModelError(
            f"model={model!r} cannot be called without arguments ({exc}): give a callable that "
            "builds the whole network by itself, e.g. a function in your own module"
        ) from None
    except ValueError:  # no signature to inspect (some builtins): just try
        pass
    return builder()


def _check_model_name(model):
    if not isinstance(model, str) or not model:
        raise ModelError(
            f"model={model!r}: expected a torchvision model name such as 'resnet50' or "
            "'package.module:callable'"
        )
    if _is_callable_name(model):
        return
    names = _torchvision_names()
    if model not in names:
        close = difflib.get_close_matches(model, names, n=5, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ModelError(
            f"model={model!r} is not a torchvision classification model.{hint} "
            "See torchvision.models.list_models(), or give your own architecture as "
            "'package.module:callable'."
        )


def _weights_enum(model):
    return torchvision.models.get_model_weights(model)


def _arch_kwargs(model, weights_enum):
    """Constructor arguments torchvision's own builders set when pretrained weights are used."""
    if weights_enum is None:
        return {}
    meta = weights_enum.meta
    kwargs = {}
    if "categories" in meta and meta["categories"] is not None:
        kwargs["num_classes"] = len(meta["categories"])
    if model in ("inception_v3", "googlenet"):
        kwargs.update(transform_input=True, aux_logits=True, init_weights=False)
    if model.startswith("vit_") and "min_size" in meta:
        kwargs["image_size"] = meta["min_size"][0]
    return kwargs


def _construct(model, weights_enum, seed):
    """Build the architecture with a deterministic random initialisation."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if _is_callable_name(model):
            net = _call_without_arguments(model)
        else:
            net = torchvision.models.get_model(
                model, weights=None, **_arch_kwargs(model, weights_enum)
            )
    if not isinstance(net, nn.Module):
        raise ModelError(f"model={model!r} returned {type(net).__name__}, not a torch.nn.Module")
    return net.eval()


def model_identity(model):
    """What the in-process memos key a model on: its name, and for ``package.module:callable``
    also the callable object itself and its declared ``preprocessing`` (a reloaded module or an
    edited declaration is resolved anew, not served from a memo). None if it cannot be imported.
    """
    if not isinstance(model, str) or not _is_callable_name(model):
        return (model, None, None)
    try:
        obj = _load_callable(model)
    except ModelError:
        return None
    declared = repr(getattr(obj, "preprocessing", None))
    try:
        hash(obj)
    except TypeError:  # an instance with __eq__ and no __hash__
        return (model, id(obj), declared)
    return (model, obj, declared)


def _meta_model(model, weights_name):
    """The architecture on the meta device: no memory, no initialisation; for names and shapes."""
    return _meta_model_memo(_identity_or_raise(model), weights_name)


def _identity_or_raise(model):
    identity = model_identity(model)
    if identity is None:
        _load_callable(model)  # raises the ModelError that says why
    return identity


@functools.lru_cache(maxsize=32)
def _meta_model_memo(identity, weights_name):
    model = identity[0]
    enum = _parse_named_weights(model, weights_name) if weights_name else None
    try:
        with torch.device("meta"):
            return _construct(model, enum, 0)
    except (NotImplementedError, RuntimeError):
        # Some builders compute with tensors (regnet's block widths), which meta cannot do.
        return _construct(model, enum, 0).to("meta")


def _arch_fingerprint(net):
    digest = hashlib.sha256(repr(net).encode())
    for name, t in list(net.state_dict().items()):
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    return digest.hexdigest()[:16]


def _arch_id(model, weights_name):
    """:attr:`ModelSpec.arch_id`: the modules, names and shapes of the network; for the user's
    own architecture also what its ``forward()`` computes (``"<modules>+<code>"``).

    ``repr`` and parameter shapes alone miss an edit of ``forward()`` (``relu(x)`` to
    ``relu(x) * 2``): the cache would serve the old codes. Torchvision names keep the plain
    form, so their caches stay valid; their code changes only with a torchvision upgrade.
    """
    return _arch_id_memo(_identity_or_raise(model), weights_name)


@functools.lru_cache(maxsize=32)
def _arch_id_memo(identity, weights_name):
    net = _meta_model_memo(identity, weights_name)
    modules = _arch_fingerprint(net)
    if not _is_callable_name(identity[0]):
        return modules
    return f"{modules}+{_code_fingerprint(net, identity[0])}"


def _code_fingerprint(net, model):
    """What a user's network computes: the code of its graph as traced by torch.fx (custom
    modules and helper functions are traced through, library layers are calls), or, where it
    cannot be traced, the source of its own classes, of the callable's module and of the user's
    modules these reach (:func:`_user_modules`)."""
    digest = hashlib.sha256()
    try:
        # The graph's Python code, as GraphModule.code, without building a GraphModule.
        code = torch.fx.Tracer().trace(net).python_code("self").src
    except Exception:  # FX raises many kinds of errors on untraceable Python control flow
        code = None
    if code is not None:
        digest.update(b"fx\0" + code.encode())
        return digest.hexdigest()[:16]
    digest.update(b"source\0")
    own = {
        cls
        for m in net.modules()
        for cls in type(m).__mro__
        if cls.__module__.partition(".")[0] not in ("torch", "torchvision", "builtins")
    }
    for cls in sorted(own, key=lambda c: (c.__module__, c.__qualname__)):
        digest.update(f"{cls.__module__}.{cls.__qualname__}\0".encode() + _source(cls))
    start = {model.partition(":")[0], *(cls.__module__ for cls in own)}
    for module in _user_modules(start):
        digest.update(f"{module.__name__}\0".encode() + _source(module))
    return digest.hexdigest()[:16]


def _user_modules(names, limit=256):
    """The modules named, and the user's modules their globals reach (``import helpers``,
    ``from helpers import act``), transitively: an untraceable ``forward()`` may call into any of
    them. Library code (the standard library, site-packages other than the user's own package)
    is left out; it changes only with an upgrade."""
    libraries = {
        os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "purelib", "platlib")
    }
    own_packages = {name.partition(".")[0] for name in names}

    def is_user(module):
        name = getattr(module, "__name__", "")
        if name.partition(".")[0] in own_packages:
            return True
        path = getattr(module, "__file__", None)
        if not path:
            return False  # built-in or namespace package: no source of its own
        path = os.path.realpath(path)
        return not any(path.startswith(lib + os.sep) for lib in libraries)

    found, todo = {}, [importlib.import_module(name) for name in sorted(names)]
    while todo and len(found) < limit:
        module = todo.pop()
        if module.__name__ in found:
            continue
        found[module.__name__] = module
        for value in list(vars(module).values()):
            if isinstance(value, type(module)):
                other = value
            else:
                other = sys.modules.get(getattr(value, "__module__", None) or "")
            if other is not None and other.__name__ not in found and is_user(other):
                todo.append(other)
    return [found[name] for name in sorted(found)]


def _source(obj):
    """The source text of a class or module; the bytecode of its functions if it has none."""
    try:
        return inspect.getsource(obj).encode()
    except (OSError, TypeError):  # defined in a REPL, or only compiled code shipped
        functions = [f for f in vars(obj).values() if hasattr(f, "__code__")]
        return b"".join(marshal.dumps(f.__code__) for f in functions)


# ----------------------------------------------------------------------------- weights


def _looks_like_path(weights):
    return (
        os.sep in weights
        or "/" in weights
        or weights.endswith((".pth", ".pt", ".th", ".bin", ".ckpt", ".tar"))
        or os.path.exists(weights)
    )


def _parse_named_weights(model, weights):
    """``DEFAULT`` / ``IMAGENET1K_V1`` / ``ResNet50_Weights.IMAGENET1K_V1`` -> the enum member."""
    if _is_callable_name(model):
        raise WeightsError(
            f"weights={weights!r}: named torchvision weights only apply to torchvision models, "
            f"not to {model!r}; pass a checkpoint file path, 'none', or leave weights unset"
        )
    enum = _weights_enum(model)
    members = [m.name for m in enum]
    cls_name, _, member = weights.rpartition(".")
    if cls_name and cls_name != enum.__name__:
        raise WeightsError(
            f"weights={weights!r} are for another model: {model!r} takes {enum.__name__} "
            f"({', '.join(['DEFAULT', *members])})"
        )
    if member == "DEFAULT":
        return enum.DEFAULT
    if member not in members:
        raise WeightsError(
            f"weights={weights!r} is not one of {enum.__name__}: "
            f"{', '.join(['DEFAULT', *members])}, 'none', or a checkpoint file path"
        )
    return enum[member]


def _hub_checkpoint_path(url):
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def _downloads_allowed():
    return os.environ.get("CNNCODES_DOWNLOAD", "").strip().lower() in ("1", "true", "yes")


def _fetch_named_weights(enum_member):
    """Path to the verified local file of torchvision weights.

    Nothing is fetched from the internet unless ``CNNCODES_DOWNLOAD=1`` is set: a missing file
    is a :class:`WeightsUnavailableError` that names the file, where it goes and its URL.
    """
    path = _hub_checkpoint_path(enum_member.url)
    match = re.search(r"-([a-f0-9]+)\.", os.path.basename(path))
    prefix = match.group(1) if match else None
    name = f"{type(enum_member).__name__}.{enum_member.name}"
    if not os.path.exists(path):
        where = (
            f"torchvision looks for them at {path} (set TORCH_HOME to change "
            f"{torch.hub.get_dir()}). Either copy the file {os.path.basename(path)} there (it is "
            f"published at {enum_member.url}), or pass a local checkpoint instead: "
            "weights='/path/to/checkpoint.pth' (--weights /path/to/checkpoint.pth)"
        )
        if not _downloads_allowed():
            raise WeightsUnavailableError(
                f"weights {name} are not on this machine.\n{where}, or set CNNCODES_DOWNLOAD=1 "
                "to let cnncodes download them."
            )
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            torch.hub.download_url_to_file(
                enum_member.url, path, hash_prefix=prefix, progress=False
            )
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise WeightsUnavailableError(
                f"weights {name} are not on this machine and could not be downloaded ({exc}).\n"
                f"{where}."
            ) from None
    if prefix and not file_sha256(path).startswith(prefix):
        raise WeightsError(
            f"{path} does not match the SHA-256 prefix {prefix!r} published for {name}: the file "
            "was altered or is incomplete; delete it and supply the original"
        )
    return path


def _unwrap_state_dict(obj, path):
    """Find the state_dict inside a checkpoint and strip wrapper prefixes."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _CHECKPOINT_KEYS:
            inner = obj.get(key)
            if (
                isinstance(inner, dict)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                obj = inner
                break
        else:
            raise WeightsError(
                f"{path}: no state_dict found; expected a dict of tensors, or one under "
                f"{', '.join(map(repr, _CHECKPOINT_KEYS))} (top-level keys: "
                f"{', '.join(map(repr, list(obj)[:8]))})"
            )
    out = {}
    for key, value in obj.items():
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def _load_checkpoint(path, mmap=False):
    """What a checkpoint file holds, loaded on the CPU with ``weights_only=True``."""
    try:
        if mmap:
            try:  # tensors stay on disk: only the plain entries are wanted
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:
                pass  # a legacy (pre-zip) file cannot be memory-mapped; load it whole
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {path}") from None
    except Exception as exc:  # unpickling raises many types; all mean "not a safe checkpoint"
        raise WeightsError(
            f"{path}: cannot be read as a checkpoint with weights_only=True ({exc}). cnncodes never "
            "loads checkpoints that need arbitrary code; save a plain state_dict with torch.save"
        ) from None


def _read_checkpoint(path):
    return _unwrap_state_dict(_load_checkpoint(path), path)


@functools.lru_cache(maxsize=16)
def _checkpoint_preprocessing(path, weights_id):
    """The ``preprocessing`` entry of a checkpoint dict, or None; memoised on the file's SHA-256
    (``weights_id``), so a grid search reads each file once."""
    obj = _load_checkpoint(path, mmap=True)
    if isinstance(obj, Mapping) and "preprocessing" in obj:
        return obj["preprocessing"]
    return None


def _load_state(net, state, source, model=None):
    own = net.state_dict()
    # Checkpoints saved before PyTorch 0.4.1 lack BatchNorm's num_batches_tracked; the modules
    # fill it in themselves and it never changes an eval-mode output.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(
                f"missing keys: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
            )
        if unexpected:
            parts.append(
                f"unexpected keys: {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}"
            )
        if wrong:
            parts.append(f"shape mismatches: {'; '.join(wrong[:5])}")
        raise WeightsError(
            f"{source} does not fit this architecture: {'; '.join(parts)}"
            + _head_hint(net, state, missing + unexpected + [w.split()[0] for w in wrong], model)
        )
    net.load_state_dict(state, strict=True)


def _head_hint(net, state, problems, model=None):
    """Advice when only the classifier head differs (a checkpoint fine-tuned on other classes)."""
    linears = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears or not problems:
        return ""
    head = linears[-1][0]
    if not all(key.rsplit(".", 1)[0] == head for key in problems):
        return ""
    weight = state.get(f"{head}.weight")
    classes = f"num_classes={weight.shape[0]}" if weight is not None and weight.ndim == 2 else ""
    name = model if isinstance(model, str) and not _is_callable_name(model) else "<name>"
    return (
        f". Only the classifier head {head!r} differs (a checkpoint fine-tuned on other classes?): "
        f"give the architecture with that head as your own callable, e.g. a function returning "
        f"torchvision.models.{name}({classes or 'num_classes=N'}), as --model module:function"
    )


def _state_fingerprint(net):
    digest = hashlib.sha256()
    for name, t in net.state_dict().items():
        digest.update(name.encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- preprocessing


def _is_int(value):
    """An integer, numpy's included (a grid written with np.arange), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _pair(value, name, allow_single):
    given = value
    if _is_int(value):
        value = (value,)
    try:
        value = tuple(value)
    except TypeError:
        raise ValueError(f"{name}={given!r}: expected an int or (height, width)") from None
    if not value or len(value) > 2 or not all(_is_int(v) for v in value):
        raise ValueError(f"{name}={given!r}: expected an int or (height, width)")
    value = tuple(int(v) for v in value)
    if any(v <= 0 for v in value):
        raise ValueError(f"{name}={given!r}: sizes must be positive")
    if any(v > MAX_SIDE for v in value):
        raise ValueError(f"{name}={given!r}: at most {MAX_SIDE} pixels a side")
    if len(value) == 1 and not allow_single:
        value = value * 2
    return value


def _triple(value, name):
    if isinstance(value, numbers.Real):
        value = (value,) * 3
    try:
        value = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: expected a float or three floats (R, G, B)") from None
    if len(value) != 3:
        raise ValueError(f"{name}={value!r}: expected a float or three floats (R, G, B)")
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
            raise ValueError(f"{label('std')}={values['std']!r}: values must be positive")
    if "interpolation" in values:
        interpolation = values["interpolation"]
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
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
    ``preprocessing`` attribute (see :func:`resolve_spec`); the two never meet, since torchvision
    weights only apply to torchvision models. Each key is resolved on its own: an explicit ``crop``
    keeps the model's ``mean``. Where each value came from is kept in
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
        raise ValueError(f"impl={impl!r}: choose one of {', '.join(PREPROCESSING_IMPLS)}")
    base = {
        "resize": (256,),
        "crop": (224, 224),
        "mean": _IMAGENET_MEAN,
        "std": _IMAGENET_STD,
        "interpolation": "bilinear",
    }
    origin, given = {}, {}  # where each value was written, and as what
    source = dict.fromkeys(PREPROCESSING_KEYS, "ImageNet default")
    if weights_enum is not None:
        source = dict.fromkeys(PREPROCESSING_KEYS, "weights")
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
    own = []  # (values, where they are written, their origin, the error to raise)
    if declared is not None:
        own.append((declared, f"{declared_by}.preprocessing", "model", ModelError))
    if checkpoint is not None:
        own.append((checkpoint, f"{checkpoint_path}['preprocessing']", "checkpoint", WeightsError))
    for values, where, name, error in own:
        _check_declared(values, where, error)
        try:
            _apply_preprocessing(base, values, lambda key, where=where: f"{where}[{key!r}]")
        except ValueError as exc:
            raise error(str(exc)) from None
        origin.update((key, f"{where}[{key!r}]") for key in values)
        given.update(values)
        source.update(dict.fromkeys(values, name))
    explicit = {
        "resize": resize,
        "crop": crop,
        "mean": mean,
        "std": std,
        "interpolation": interpolation,
    }
    explicit = {key: value for key, value in explicit.items() if value is not None}
    _apply_preprocessing(base, explicit, lambda key: key)
    origin.update((key, key) for key in explicit)
    given.update(explicit)
    source.update(dict.fromkeys(explicit, "explicit"))
    if base["crop"] is None and len(base["resize"]) != 2:
        # Echo what was given (0 or "none"): None is only how "no crop" is stored.
        raise ValueError(
            f"{origin.get('crop', 'crop')}={given['crop']!r} (no centre crop) needs "
            f"{origin.get('resize', 'resize')}=(height, width) so all images share one size, not "
            f"resize={base['resize'][0]!r}"
        )
    if base["crop"] is not None:
        # Larger than the resized image, the crop would be padded with black.
        room = base["resize"] * 2 if len(base["resize"]) == 1 else base["resize"]
        if any(c > r for c, r in zip(base["crop"], room)):
            raise ValueError(
                f"{origin.get('crop', 'crop')}={base['crop']!r} is larger than "
                f"{origin.get('resize', 'resize')}={base['resize']!r}: the crop would be padded; "
                "make every crop side at most the resize"
            )
    supported = PREPROCESSING_IMPLS[impl]
    if base["interpolation"] not in supported:
        raise ValueError(
            f"{origin.get('interpolation', 'interpolation')}={base['interpolation']!r} is not "
            f"supported by impl={impl!r}; choose one of {', '.join(supported)} (or impl='pil')"
        )
    base["resize"] = tuple(base["resize"])
    return Preprocessing(**base, impl=impl, source=tuple(source.items()))


def default_preprocessing_note(spec):
    """A note when a checkpoint file's images are normalised by the ImageNet default, or None.

    A checkpoint without a ``preprocessing`` entry may have been trained with other values
    (mean and std of 0.5, another input size) and nothing else says so.
    """
    if spec.weights_spec.kind != "checkpoint":
        return None
    source = dict(spec.preprocessing.source)
    # Not interpolation: bilinear is near universal, and a wrong one barely changes the codes.
    keys = [k for k in ("mean", "std", "resize", "crop") if source.get(k) == "ImageNet default"]
    if not keys:
        return None
    has_some = "checkpoint" in source.values()
    return (
        f"note: {spec.weights} "
        + ("gives no " + ", ".join(keys) if has_some else "carries no preprocessing of its own")
        + f", so {', '.join(keys)} {'is' if len(keys) == 1 else 'are'} the ImageNet default; "
        "if its network was trained otherwise, give "
        f"{' '.join('--' + k for k in keys)}, or save the checkpoint as "
        "{'state_dict': ..., 'preprocessing': {'mean': ..., 'std': ..., ...}}"
    )


def _declared_preprocessing(model):
    """The ``preprocessing`` attribute of a user's callable, or ``None`` (torchvision models)."""
    if not _is_callable_name(model):
        return None
    obj = _load_callable(model)
    declared = getattr(obj, "preprocessing", None)
    if isinstance(obj, type) and (inspect.isroutine(declared) or isinstance(declared, property)):
        # A class whose instances have a preprocessing *method* declares nothing.
        return None
    return declared


# ----------------------------------------------------------------------------- resolution


def resolve_spec(
    model,
    weights=None,
    *,
    seed=0,
    resize=None,
    crop=None,
    mean=None,
    std=None,
    interpolation=None,
    impl="pil",
):
    """Resolve names to a :class:`ModelSpec`, without loading any weights.

    Parameters
    ----------
    model : str
        A torchvision model name or ``"package.module:callable"``.
    weights : str or path-like, optional
        See the module docstring. ``None`` means ``"DEFAULT"`` for torchvision models.
    seed : int
        Seed of the random initialisation (``weights="none"``, or parameters a checkpoint lacks).
    resize, crop, mean, std, interpolation : optional
        Overrides of the model's own preprocessing (see :func:`resolve_preprocessing`).
    impl : {"pil", "torch"}
        Which implementation preprocesses the images (see :class:`Preprocessing`); part of the
        cache key.

    Notes
    -----
    Preprocessing is resolved key by key: an explicit argument, else the checkpoint's own, else
    the model's own, else the ImageNet evaluation transform. A checkpoint file that is a dict
    may carry what its weights were trained with (plain values, so ``weights_only=True`` loads
    it; the file's SHA-256 covers it)::

        torch.save({"state_dict": net.state_dict(),
                    "preprocessing": {"resize": 32, "crop": 32, "mean": 0.5, "std": 0.5}}, path)

    It wins over the architecture's declaration, since it describes these very weights; a bad
    entry raises :class:`WeightsError` naming the file and the key. A torchvision model's own
    is its weights' ``transforms()``.
    The user's own architecture declares its own with a ``preprocessing`` attribute on the
    callable (a function attribute, or a class attribute of an ``nn.Module`` class): a dict with
    any of the keys ``resize``, ``crop``, ``mean``, ``std``, ``interpolation``, in the forms the
    arguments take::

        def my_net():
            return MyNet()

        my_net.preprocessing = {"resize": 32, "crop": 32, "mean": 0.5, "std": 0.5}

    It is read at every resolution and becomes part of :attr:`ModelSpec.preprocessing`, hence of
    the cache key: changing it makes new codes instead of reusing stale ones. A declaration that
    is not such a dict, an unknown key, or a bad value raises :class:`ModelError` naming the
    callable and the key. (A class with a ``preprocessing`` *method* declares nothing.)

    Examples
    --------
    >>> spec = resolve_spec("resnet18", "none")
    >>> spec.weights_id, spec.preprocessing.crop
    ('none:seed=0', (224, 224))
    >>> spec = resolve_spec("cnncodes.demo_data:digits_net", "none", std=0.25)
    >>> spec.preprocessing.crop, spec.preprocessing.mean, spec.preprocessing.std
    ((32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    """
    _check_model_name(model)
    if not _is_int(seed):
        raise ValueError(f"seed={seed!r}: expected an int")
    seed = int(seed)
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise WeightsError(
            f"weights={weights!r}: expected a weights name, 'none', or a checkpoint file path"
        )
    weights = os.fspath(weights) if weights is not None else None
    enum = None
    if weights is None and _is_callable_name(model):
        # The callable decides its own weights: identify them by content (exact, built once).
        resolved = None
    elif weights is None or (weights.lower() != "none" and not _looks_like_path(weights)):
        enum = _parse_named_weights(model, "DEFAULT" if weights is None else weights)
        resolved = Weights("torchvision", name=f"{type(enum).__name__}.{enum.name}")
    elif weights.lower() == "none":
        resolved = Weights("none", seed=seed)
    else:
        path = os.path.abspath(weights)
        if not os.path.isfile(path):
            raise WeightsError(f"weights file not found: {weights}")
        resolved = Weights("checkpoint", file=path, sha256=file_sha256(path))
    meta = _meta_model(model, resolved.name if enum is not None else None)
    if resolved is None:
        resolved = Weights("callable", sha256=_built_state_id(model, seed))
    declared, declared_by = _declared_preprocessing(model), model
    own = getattr(meta, "preprocessing", None)
    if declared is None and isinstance(own, Mapping) and _is_callable_name(model):
        # Declared on the network the callable returns (a submodule of that name is not this).
        declared, declared_by = own, f"{model}()"
    checkpoint = None
    if resolved.kind == "checkpoint":
        checkpoint = _checkpoint_preprocessing(resolved.file, resolved.identity)
    pre = resolve_preprocessing(
        enum,
        declared=declared,
        declared_by=declared_by,
        checkpoint=checkpoint,
        checkpoint_path=resolved.file,
        resize=resize,
        crop=crop,
        mean=mean,
        std=std,
        interpolation=interpolation,
        impl=impl,
    )
    arch_id = _arch_id(model, resolved.name)
    return ModelSpec(model, resolved.argument, resolved.identity, arch_id, seed, pre)


def _built_state_id(model, seed):
    return _built_state_id_memo(_identity_or_raise(model), seed)


@functools.lru_cache(maxsize=8)
def _built_state_id_memo(identity, seed):
    return _state_fingerprint(_construct(identity[0], None, seed))


def build_model(spec):
    """The network of ``spec`` with its real weights, in eval mode, gradients off, on the CPU.

    A checkpoint file is re-verified against the SHA-256 in the spec, so a file that changed since
    the spec (or a saved pipeline) was made is refused rather than silently used.
    """
    weights = spec.weights_spec
    enum = _parse_named_weights(spec.model, weights.name) if weights.name else None
    net = _construct(spec.model, enum, spec.seed)
    if enum is not None:
        path = _fetch_named_weights(enum)
        _load_state(net, _read_checkpoint(path), path)
    elif weights.kind == "checkpoint":
        weights.verify()
        _load_state(net, _read_checkpoint(spec.weights), spec.weights, spec.model)
    elif weights.kind == "callable" and _state_fingerprint(net) != weights.sha256:
        raise WeightsError(
            f"{spec.model} now builds different weights than when this configuration was made"
        )
    net.requires_grad_(False)
    return net.eval()


# ----------------------------------------------------------------------------- layers


def _node_names(net):
    """Graph-node names of the eval-mode graph, or ``None`` where the model cannot be traced.

    Besides the leaf nodes, a submodule's name (``"layer3"``, ``"features.7"``) names its output;
    it is listed right after its last node.
    """
    try:
        nodes = feature_extraction.get_graph_node_names(net)[1]
    except Exception:  # FX raises many kinds of errors on untraceable Python control flow
        return None
    modules = [m for m in _module_names(net) if m not in set(nodes)]
    out = []
    for i, node in enumerate(nodes):
        out.append(node)
        following = nodes[i + 1] if i + 1 < len(nodes) else ""
        closing = [
            m for m in modules if node.startswith(m + ".") and not following.startswith(m + ".")
        ]
        out.extend(sorted(closing, key=len, reverse=True))
    return out


def _module_names(net):
    return [name for name, _ in net.named_modules() if name]


def _penultimate(net, nodes):
    """The input node of the model's last ``nn.Linear``: the classic "CNN codes" layer."""
    modules = dict(net.named_modules())
    last = None
    if nodes is not None:
        for name in nodes:
            if isinstance(modules.get(name), nn.Linear):
                last = name
        if last is not None:
            return nodes[nodes.index(last) - 1]
    linear = [name for name, m in modules.items() if isinstance(m, nn.Linear)]
    names = _module_names(net)
    if linear:
        idx = names.index(linear[-1])
        if idx > 0:
            return names[idx - 1]
    raise LayerError(
        "layer='penultimate' needs a model that ends in an nn.Linear; name a layer instead "
        "(see cnncodes.list_layers or `cnncodes layers MODEL`)"
    )


def _traceable(spec_or_net):
    net = spec_or_net
    if isinstance(spec_or_net, ModelSpec):
        net = _meta_for_spec(spec_or_net)
    return net


def _meta_for_spec(spec):
    return _meta_model(spec.model, spec.weights_spec.name)


def resolve_layers(spec, layers):
    """Validate layer names against the model's graph; expand ``"penultimate"``.

    Raises :class:`LayerError` naming the closest valid names for an unknown layer.
    """
    if isinstance(layers, str):
        layers = [layers]
    layers = list(layers)
    if isinstance(spec, ModelSpec) and all(isinstance(name, str) for name in layers):
        # Tracing the graph costs 20-300 ms; a grid search asks again for every fold.
        return list(_resolve_layers_memo(spec, tuple(layers)))
    return _resolve_layers(spec, layers)


@functools.lru_cache(maxsize=256)
def _resolve_layers_memo(spec, layers):
    return tuple(_resolve_layers(spec, list(layers)))


def _resolve_layers(spec, layers):
    if not layers:
        raise LayerError("layer: give at least one layer name")
    net = _traceable(spec)
    nodes = _node_names(net)
    valid = nodes if nodes is not None else _module_names(net)
    out = []
    for layer in layers:
        if not isinstance(layer, str) or not layer:
            raise LayerError(f"layer={layer!r}: expected a graph-node name such as 'layer4'")
        if layer == PENULTIMATE:
            layer = _penultimate(net, nodes)
        elif layer not in valid:
            close = difflib.get_close_matches(layer, valid, n=6, cutoff=0.4)
            hint = f" Closest: {', '.join(close)}." if close else ""
            model = spec.model if isinstance(spec, ModelSpec) else type(net).__name__
            raise LayerError(
                f"layer={layer!r} is not a node of {model}.{hint} "
                f"List them with cnncodes.list_layers({model!r}) or `cnncodes layers {model}`."
            )
        if layer in out:
            alias = f" ({PENULTIMATE!r} is {layer!r} here)" if PENULTIMATE in layers else ""
            raise LayerError(
                f"layer={list(layers)!r} names {layer!r} twice{alias}: each layer's codes "
                "would be repeated; list every layer once"
            )
        out.append(layer)
    return out


class _Stop(Exception):
    """Raised by a forward hook to skip the layers after the deepest requested one."""


class _HookExtractor(nn.Module):
    """Fallback for models FX cannot trace: forward hooks on named submodules, stopping early."""

    def __init__(self, net, layers):
        super().__init__()
        self.net = net
        self.layers = list(layers)
        self._modules_by_name = dict(net.named_modules())
        order = _module_names(net)
        self._last = max(self.layers, key=order.index)

    def forward(self, x):
        out = {}
        handles = []

        def hook_for(name):
            def hook(_module, _inputs, output):
                out[name] = output
                if len(out) == len(self.layers):
                    raise _Stop

            return hook

        for name in self.layers:
            handles.append(self._modules_by_name[name].register_forward_hook(hook_for(name)))
        try:
            self.net(x)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [name for name in self.layers if name not in out]
        if missing:
            raise LayerError(f"layers {missing} were not reached by the forward pass")
        return out


class _GraphExtractor(nn.Module):
    """A torchvision feature extractor that also answers to submodule names (``"layer3"``).

    FX returns one output per graph node, so a submodule's name is mapped to its last node.
    """

    def __init__(self, net, layers, leaves):
        super().__init__()
        self.alias = {}
        for name in layers:
            if name in leaves:
                self.alias[name] = name
            else:
                inside = [n for n in leaves if n.startswith(name + ".")]
                self.alias[name] = inside[-1] if inside else name
        nodes = list(dict.fromkeys(self.alias.values()))
        self.graph = feature_extraction.create_feature_extractor(net, return_nodes=nodes)

    def forward(self, x):
        out = self.graph(x)
        return {name: out[node] for name, node in self.alias.items()}


def build_extractor(net, layers):
    """A module returning ``{layer: activation}``; the graph is cut after the deepest layer."""
    layers = list(layers)
    try:
        leaves = feature_extraction.get_graph_node_names(net)[1]
    except Exception:  # not traceable by FX: fall back to forward hooks
        return _HookExtractor(net, layers).eval()
    return _GraphExtractor(net, layers, leaves).eval()


def _check_output(name, out):
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        kind = type(out).__name__ if not isinstance(out, torch.Tensor) else f"{out.dtype} tensor"
        raise LayerError(
            f"layer={name!r} outputs a {kind}, not a float tensor; choose another layer"
        )
    return out


def layer_shapes(spec, layers):
    """Output shape (without batch) of each layer, computed on the meta device (no real compute)."""
    return dict(_layer_shapes_memo(spec, tuple(layers)))


@functools.lru_cache(maxsize=256)
def _layer_shapes_memo(spec, layers):
    outputs = _probe(spec, _meta_for_spec(spec), layers)
    return {name: tuple(_check_output(name, outputs[name]).shape[1:]) for name in layers}


def _probe(spec, meta_net, layers):
    """Layer outputs for one dummy image: on the meta device (free), or, for a model whose
    forward branches on tensor values (impossible on meta), once on a real zero image."""
    h, w = spec.preprocessing.input_size
    with torch.no_grad():
        try:
            return build_extractor(meta_net, layers)(torch.empty(1, 3, h, w, device="meta"))
        except (RuntimeError, NotImplementedError):  # e.g. "cannot call .item() on meta tensors"
            named = spec.weights_spec.name
            enum = _parse_named_weights(spec.model, named) if named else None
            net = _construct(spec.model, enum, spec.seed)
            try:
                return build_extractor(net, layers)(torch.zeros(1, 3, h, w))
            except RuntimeError as exc:
                raise LayerError(
                    f"{spec.model} cannot run on a {h}x{w} input (resize/crop too small?): {exc}"
                ) from None


def list_layers(model, weights=None, **kwargs):
    """Every layer of a model with its output shape and code size under each pooling.

    Parameters
    ----------
    model : str or ModelSpec
        A model name (resolved with ``weights`` and ``kwargs`` as in :func:`resolve_spec`).

    Returns
    -------
    list of LayerInfo
        In graph order. Nodes whose output is not a float tensor are left out.

    Examples
    --------
    >>> [layer.name for layer in list_layers("resnet18", "none")][-3:]
    ['avgpool', 'flatten', 'fc']
    """
    spec = model if isinstance(model, ModelSpec) else resolve_spec(model, weights, **kwargs)
    net = _meta_for_spec(spec)
    nodes = _node_names(net)
    names = nodes if nodes is not None else _module_names(net)
    outputs = _probe(spec, net, names)
    infos = []
    for name in names:
        out = outputs.get(name)
        if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.ndim < 2:
            continue
        shape = tuple(out.shape[1:])
        sizes = {}
        for pooling in POOLINGS:
            try:
                sizes[pooling] = code_size(shape, pooling)
            except ValueError:
                sizes[pooling] = None
        infos.append(LayerInfo(name, shape, sizes))
    return infos
