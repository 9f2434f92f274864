"""Model names to networks: torchvision names, ``timm:NAME``, ``package.module:callable``,
fingerprints (torch only).

A model is a torchvision classification model name (``"resnet50"``, ``"mobilenet_v2"``, ...), a
timm model (``"timm:resnet10t"``, the optional ``timm`` extra), or the user's own architecture
given as ``"package.module:callable"`` returning an ``nn.Module``; such a callable may declare the
preprocessing its network expects in a ``preprocessing`` attribute (see
:func:`cnncodes.models.resolve_spec`). ``timm:`` is a reserved prefix, never a module's name
(:func:`cnncodes.spec.is_callable_form`).

Named torchvision weights (``"DEFAULT"``, ``"IMAGENET1K_V1"``, ``"ResNet50_Weights.IMAGENET1K_V1"``)
are parsed here, next to the model names: torchvision's builders take constructor arguments from
the weights' metadata (the number of classes, ...), so the architecture depends on the weights'
name. Their files are :mod:`cnncodes.checkpoints`' work.

Resolution is cheap: the architecture is built on the ``meta`` device (no memory, no
initialisation) to fingerprint it and name its layers, memoised on :func:`model_identity`.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import inspect
import json
import marshal
import os
import sys
import sysconfig

import torch
import torchvision
from torch import nn

from ..spec import TIMM_PREFIX, ModelError, WeightsError, is_callable_form, is_timm_name
from ..utils.memo import memoize

__all__ = ["arch_id", "build_architecture", "model_identity"]


def _is_callable_name(model):
    """Meant as ``package.module:callable``, well formed or not (unlike
    :func:`cnncodes.spec.is_model_callable`): a malformed one gets the callable's error."""
    return is_callable_form(model)


def _timm():
    """The timm package, or a ModelError saying how to install it."""
    try:
        import timm
    except ImportError as exc:
        raise ModelError(
            f"timm models need the timm package ({exc}): pip install 'cnncodes[timm]' "
            "(or pip install timm)"
        ) from None
    return timm


def _timm_arch(model):
    """``"timm:resnet10t.c3_in1k"`` -> ``("resnet10t", "c3_in1k")``; the tag may be empty."""
    return _timm().models.split_model_name_tag(model[len(TIMM_PREFIX) :])


def _timm_pretrained_cfg(name):
    """timm's pretrained config of ``"arch"`` or ``"arch.tag"``, or None (an unknown tag)."""
    try:
        return _timm().models.get_pretrained_cfg(name)
    except RuntimeError:  # timm's "Invalid pretrained tag"
        return None


def _check_timm_name(model):
    timm = _timm()
    name = model[len(TIMM_PREFIX) :]
    arch, tag = timm.models.split_model_name_tag(name)
    if not arch or not timm.models.is_model(arch):
        names = timm.list_models()
        close = difflib.get_close_matches(arch, names, n=5, cutoff=0.5)
        hint = f" Did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise ModelError(
            f"model={model!r}: {arch!r} is not a timm model.{hint} See timm.list_models()."
        )
    if tag and _timm_pretrained_cfg(name) is None:
        raise ModelError(
            f"model={model!r}: timm has no pretrained tag {tag!r} for {arch!r}; choose one of "
            f"{', '.join(timm.list_pretrained(arch + '.*'))}, or leave the tag out"
        )


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


def _call_builder(model, kwargs=()):
    """Call the user's ``package.module:callable`` with ``kwargs`` (:attr:`ModelSpec.model_kwargs`)."""
    builder = _load_callable(model)
    try:
        inspect.signature(builder).bind(**dict(kwargs))
    except TypeError as exc:  # needs arguments (torch.nn:Linear, ...), or refuses one given
        if kwargs:
            raise _kwargs_refused(model, kwargs, exc) from None
        raise ModelError(
            f"model={model!r} cannot be called without arguments ({exc}): give a callable that "
            "builds the whole network by itself, e.g. a function in your own module, or its "
            "arguments (model_kwargs={...}, --model-arg KEY=VALUE)"
        ) from None
    except ValueError:  # no signature to inspect (some builtins): just try
        pass
    return _call_with_kwargs(model, builder, kwargs)


def _call_with_kwargs(model, builder, kwargs):
    """``builder(**kwargs)``; a keyword the builder (or a constructor it passes them to) does
    not take becomes a ModelError naming the model and the argument."""
    if not kwargs:
        return builder()
    try:
        return builder(**dict(kwargs))
    except TypeError as exc:
        raise _kwargs_refused(model, kwargs, exc) from None


def _kwargs_refused(model, kwargs, exc):
    given = ", ".join(f"{k}={v!r}" for k, v in kwargs)
    return ModelError(
        f"model={model!r} does not take model_kwargs {given} ({exc}); check the argument "
        "names of its builder"
    )


def _check_model_name(model):
    if not isinstance(model, str) or not model:
        raise ModelError(
            f"model={model!r}: expected a torchvision model name such as 'resnet50', "
            "'timm:NAME' or 'package.module:callable'"
        )
    if is_timm_name(model):
        return _check_timm_name(model)
    if _is_callable_name(model):
        return
    names = _torchvision_names()
    if model not in names:
        close = difflib.get_close_matches(model, names, n=5, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ModelError(
            f"model={model!r} is not a torchvision classification model.{hint} "
            "See torchvision.models.list_models(), give a timm model as 'timm:NAME', or your "
            "own architecture as 'package.module:callable'."
        )


def _weights_enum(model):
    return torchvision.models.get_model_weights(model)


def _parse_timm_weights(model, weights):
    """``DEFAULT`` / ``c3_in1k`` / ``resnet10t.c3_in1k`` -> timm's full pretrained name
    (``"resnet10t.c3_in1k"``), whose pretrained config names the weights and their file."""
    timm = _timm()
    arch, tag = _timm_arch(model)
    if weights == "DEFAULT":
        chosen = tag
    else:
        other, _, chosen = weights.rpartition(".")
        if other and other != arch:
            raise WeightsError(
                f"weights={weights!r} are for another model: {model!r} takes the pretrained "
                f"weights of {arch!r} ({', '.join(timm.list_pretrained(arch + '.*'))})"
            )
        if tag and chosen != tag:
            raise WeightsError(
                f"weights={weights!r} contradict the tag of model={model!r}: give the tag once"
            )
    cfg = _timm_pretrained_cfg(f"{arch}.{chosen}" if chosen else arch)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        available = timm.list_pretrained(arch + ".*")
        raise WeightsError(
            f"weights={weights!r}: timm has no pretrained weights of that name for {arch!r}; "
            f"choose DEFAULT or one of {', '.join(available) or '(none)'}, 'none', or a "
            "checkpoint file path"
        )
    return f"{arch}.{cfg.tag}" if cfg.tag else arch


def _parse_named_weights(model, weights):
    """``DEFAULT`` / ``IMAGENET1K_V1`` / ``ResNet50_Weights.IMAGENET1K_V1`` -> the enum member;
    for a timm model, the full name of timm's pretrained weights (:func:`_parse_timm_weights`)."""
    if is_timm_name(model):
        return _parse_timm_weights(model, weights)
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


def _construct(model, weights_enum, seed, kwargs=()):
    """Build the architecture with a deterministic random initialisation.

    For a timm model ``weights_enum`` is the full pretrained name (:func:`_parse_timm_weights`)
    or None: its pretrained config sets the constructor's arguments (the number of classes).
    ``kwargs`` (:attr:`ModelSpec.model_kwargs`) go to the builder, over those of the weights.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if is_timm_name(model):
            arch, tag = _timm_arch(model)
            name = weights_enum or (f"{arch}.{tag}" if tag else arch)
            create = functools.partial(_timm().create_model, name, pretrained=False)
            net = _call_with_kwargs(model, create, kwargs)
        elif _is_callable_name(model):
            net = _call_builder(model, kwargs)
        else:
            own = _arch_kwargs(model, weights_enum)
            build = functools.partial(torchvision.models.get_model, model, weights=None)
            net = _call_with_kwargs(model, build, tuple({**own, **dict(kwargs)}.items()))
    if not isinstance(net, nn.Module):
        raise ModelError(f"model={model!r} returned {type(net).__name__}, not a torch.nn.Module")
    return net.eval()


def build_architecture(model, weights_name, seed, kwargs=()):
    """The architecture ``model`` builds for the named weights ``weights_name`` (or None), with
    its deterministic random initialisation from ``seed``; no weights are loaded (a fitted
    estimator that holds its own weights loads them into it)."""
    enum = _parse_named_weights(model, weights_name) if weights_name else None
    return _construct(model, enum, seed, kwargs)


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


def _meta_model(model, weights_name, kwargs=()):
    """The architecture on the meta device: no memory, no initialisation; for names and shapes."""
    return _meta_model_memo(_identity_or_raise(model), weights_name, kwargs)


def _identity_or_raise(model):
    identity = model_identity(model)
    if identity is None:
        _load_callable(model)  # raises the ModelError that says why
    return identity


@memoize(32)
def _meta_model_memo(identity, weights_name, kwargs=()):
    model = identity[0]
    enum = _parse_named_weights(model, weights_name) if weights_name else None
    try:
        with torch.device("meta"):
            return _construct(model, enum, 0, kwargs)
    except (NotImplementedError, RuntimeError):
        # Some builders compute with tensors (regnet's block widths), which meta cannot do.
        return _construct(model, enum, 0, kwargs).to("meta")


def _arch_fingerprint(net, kwargs=()):
    digest = hashlib.sha256(repr(net).encode())
    for name, t in list(net.state_dict().items()):
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    if kwargs:
        # Arguments that leave modules and shapes alone may still change what forward() does.
        digest.update(b"kwargs\0" + json.dumps(dict(kwargs), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def arch_id(model, weights_name, kwargs=()):
    """:attr:`ModelSpec.arch_id`: the modules, names and shapes of the network; for the user's
    own architecture also what its ``forward()`` computes (``"<modules>+<code>"``).

    ``repr`` and parameter shapes alone miss an edit of ``forward()`` (``relu(x)`` to
    ``relu(x) * 2``): the cache would serve the old codes. Torchvision names keep the plain
    form, so their caches stay valid; their code changes only with a torchvision upgrade.
    """
    return _arch_id_memo(_identity_or_raise(model), weights_name, kwargs)


_arch_id = arch_id  # its name before it was public


@memoize(32)
def _arch_id_memo(identity, weights_name, kwargs=()):
    net = _meta_model_memo(identity, weights_name, kwargs)
    modules = _arch_fingerprint(net, kwargs)
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
