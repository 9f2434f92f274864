"""Names to networks: :func:`resolve_spec` and :func:`build_model` (torch only).

A model is a torchvision classification model name (``"resnet50"``), a timm model
(``"timm:resnet10t"``) or the user's own architecture, ``"package.module:callable"``
(:mod:`cnncodes.architectures`). Weights are one of

- a torchvision weights name: ``"DEFAULT"``, ``"IMAGENET1K_V1"`` or ``"ResNet50_Weights.IMAGENET1K_V1"``,
  read offline from ``$TORCH_HOME/hub/checkpoints``;
- for a timm model, timm's pretrained weights: ``"DEFAULT"``, a tag (``"c3_in1k"``) or the full
  name (``"resnet10t.c3_in1k"``), read offline from where timm keeps them (the Hugging Face hub
  cache, or ``$TORCH_HOME/hub/checkpoints``);
- ``"none"``: random initialisation from ``seed``;
- a path to a checkpoint file (a state_dict, or a dict holding one and maybe its
  ``preprocessing``); its identity is its SHA-256 (:mod:`cnncodes.checkpoints`).

``weights=None`` means ``"DEFAULT"`` for a torchvision or timm model and "as the callable builds
it" for the user's own architecture.

Resolution is cheap: :func:`resolve_spec` builds the architecture on the ``meta`` device (no memory,
no initialisation) to fingerprint it and name its layers; :func:`build_model` loads real weights only
when images actually have to go through the network.

This module is the front of the model side, and keeps every name it has always exported
(``from cnncodes.models import X``; files saved before :mod:`cnncodes.spec` name
``cnncodes.models.ModelSpec``). Each job has its own module: :mod:`cnncodes.architectures`
(names, building, fingerprints), :mod:`cnncodes.checkpoints` (weights files),
:mod:`cnncodes.preprocessing` (preprocessing resolution) and :mod:`cnncodes.layers` (layer names,
extractors, shapes).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from ..errors import UsageError
from ..params import is_int
from ..params import is_int as _is_int  # noqa: F401 - an old name of this module
from ..spec import (
    MODEL_PARAMS,
    PREPROCESSING_IMPLS,
    PREPROCESSING_KEYS,
    ModelError,
    ModelSpec,
    Preprocessing,
    Weights,
    WeightsError,
    check_model_kwargs,
    describe_preprocessing,
    file_sha256,
    is_timm_name,
)
from ..utils.memo import memoize
from .architectures import (
    _arch_id,
    _check_model_name,
    _construct,
    _identity_or_raise,
    _is_callable_name,
    _meta_model,
    _parse_named_weights,
    _timm,
)

# Not in __all__, but imported from this module before it was split: still importable here.
from .architectures import model_identity as model_identity
from .checkpoints import (
    WeightsUnavailableError,
    check_weights_file,
    checkpoint_preprocessing,
    fetch_named_weights,
    fetch_timm_weights,
    load_state,
    load_timm_pretrained,
    read_checkpoint,
    refuse_weights_kwargs,
    state_fingerprint,
)
from .layers import (
    PENULTIMATE,
    LayerError,
    LayerInfo,
    build_extractor,
    meta_for_spec,
    module_names,
    node_names,
    probe_layers,
    resolve_layers,
)
from .layers import layer_shapes as layer_shapes  # as model_identity above
from .pooling import POOLINGS, code_size
from .preprocessing import (
    declared_preprocessing,
    default_preprocessing_note,
    resolve_preprocessing,
    timm_preprocessing,
    warn_default_preprocessing,
)

# The old private names this facade re-exported before the split (code written then imports
# them from here): aliases of the public names of checkpoints, layers and preprocessing.
_checkpoint_preprocessing = checkpoint_preprocessing
_fetch_named_weights = fetch_named_weights
_fetch_timm_weights = fetch_timm_weights
_load_state = load_state
_load_timm_pretrained = load_timm_pretrained
_read_checkpoint = read_checkpoint
_state_fingerprint = state_fingerprint
_meta_for_spec = meta_for_spec
_probe = probe_layers
_declared_preprocessing = declared_preprocessing
_timm_preprocessing = timm_preprocessing

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


def _looks_like_path(weights):
    return (
        os.sep in weights
        or "/" in weights
        or weights.endswith((".pth", ".pt", ".th", ".bin", ".ckpt", ".tar"))
        or os.path.exists(weights)
    )


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
    model_kwargs=None,
):
    """Resolve names to a :class:`ModelSpec`, without loading any weights.

    Parameters
    ----------
    model : str
        A torchvision model name, ``"timm:NAME"`` or ``"package.module:callable"``.
    weights : str or path-like, optional
        See the module docstring. ``None`` means ``"DEFAULT"`` for torchvision and timm models.
    seed : int
        Seed of the random initialisation (``weights="none"``, or parameters a checkpoint lacks).
    resize, crop, mean, std, interpolation : optional
        Overrides of the model's own preprocessing (see :func:`resolve_preprocessing`).
    impl : {"pil", "torch"}
        Which implementation preprocesses the images (see :class:`Preprocessing`); part of the
        cache key.
    model_kwargs : dict, optional
        Keyword arguments of the model's builder (the torchvision or timm builder, or the
        user's callable), e.g. ``{"num_classes": 5}`` for a checkpoint fine-tuned on 5 classes.
        Values are JSON scalars (int, float, str, bool, None). Part of the architecture's
        identity and of the cache key when given.

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
    is its weights' ``transforms()``; a timm model's is its pretrained config
    (``timm.data.resolve_model_data_config``, resize = crop / ``crop_pct``), from ``"weights"``
    when those pretrained weights are used, else from ``"model"``.
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
    kwargs = check_model_kwargs(model_kwargs, model)
    refuse_weights_kwargs(kwargs, model)  # weights come from weights= only (and offline)
    if not is_int(seed):
        raise UsageError(f"seed={seed!r}: expected an int")
    seed = int(seed)
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise WeightsError(
            f"weights={weights!r}: expected a weights name, 'none', or a checkpoint file path"
        )
    weights = os.fspath(weights) if weights is not None else None
    resolved, enum = _resolve_weights(model, weights, seed)
    meta = _meta_model(model, resolved.name if enum is not None else None, kwargs)
    if resolved is None:
        resolved = Weights("callable", sha256=_built_state_id(model, seed, kwargs))
    pre = resolve_preprocessing(
        **_own_preprocessing(model, meta, resolved, enum),
        resize=resize,
        crop=crop,
        mean=mean,
        std=std,
        interpolation=interpolation,
        impl=impl,
    )
    arch_id = _arch_id(model, resolved.name, kwargs)
    spec = ModelSpec(model, resolved.argument, resolved.identity, arch_id, seed, pre, kwargs)
    warn_default_preprocessing(spec)  # a checkpoint normalised as ImageNet's is never silent
    return spec


def _resolve_weights(model, weights, seed):
    """``(Weights or None, the named weights' enum or None)`` of :func:`resolve_spec`'s
    ``weights`` (None: a callable's own, identified once it is built)."""
    if weights is None and _is_callable_name(model):
        # The callable decides its own weights: identify them by content (exact, built once).
        return None, None
    if weights is None or (weights.lower() != "none" and not _looks_like_path(weights)):
        enum = _parse_named_weights(model, "DEFAULT" if weights is None else weights)
        if is_timm_name(model):
            return Weights("timm", name=enum), enum
        return Weights("torchvision", name=f"{type(enum).__name__}.{enum.name}"), enum
    if weights.lower() == "none":
        return Weights("none", seed=seed), None
    path = check_weights_file(weights)
    return Weights("checkpoint", file=path, sha256=file_sha256(path)), None


def _own_preprocessing(model, meta, resolved, enum):
    """:func:`resolve_preprocessing`'s arguments for the model's own preprocessing: its
    weights', its declaration's, its checkpoint's (``meta``: the network on the meta device)."""
    declared, declared_by = declared_preprocessing(model), model
    own = getattr(meta, "preprocessing", None)
    if declared is None and isinstance(own, Mapping) and _is_callable_name(model):
        # Declared on the network the callable returns (a submodule of that name is not this).
        declared, declared_by = own, f"{model}()"
    checkpoint = None
    if resolved.kind == "checkpoint":
        checkpoint = checkpoint_preprocessing(resolved.file, resolved.identity)
    pretrained = None
    if is_timm_name(model):
        pretrained = timm_preprocessing(_timm().data.resolve_model_data_config(meta))
        enum = None  # timm's weights give no torchvision transforms()
    return {
        "weights_enum": enum,
        "pretrained": pretrained,
        "pretrained_origin": "weights" if resolved.kind == "timm" else "model",
        "declared": declared,
        "declared_by": declared_by,
        "checkpoint": checkpoint,
        "checkpoint_path": resolved.file,
    }


def _built_state_id(model, seed, kwargs=()):
    return _built_state_id_memo(_identity_or_raise(model), seed, kwargs)


@memoize(8)
def _built_state_id_memo(identity, seed, kwargs=()):
    return state_fingerprint(_construct(identity[0], None, seed, kwargs))


def build_model(spec):
    """The network of ``spec`` with its real weights, in eval mode, gradients off, on the CPU.

    A checkpoint file is re-verified against the SHA-256 in the spec, so a file that changed since
    the spec (or a saved pipeline) was made is refused rather than silently used.
    """
    weights = spec.weights_spec
    enum = _parse_named_weights(spec.model, weights.name) if weights.name else None
    if weights.kind == "timm":
        net = load_timm_pretrained(enum, fetch_timm_weights(enum), spec.seed, spec.model_kwargs)
    else:
        net = _construct(spec.model, enum, spec.seed, spec.model_kwargs)
    if weights.kind == "torchvision":
        path = fetch_named_weights(enum)
        load_state(net, read_checkpoint(path), path)
    elif weights.kind == "checkpoint":
        weights.verify()
        load_state(net, read_checkpoint(spec.weights), spec.weights, spec.model)
    elif weights.kind == "callable" and state_fingerprint(net) != weights.sha256:
        raise WeightsError(
            f"{spec.model} now builds different weights than when this configuration was made"
        )
    net.requires_grad_(False)
    return net.eval()


def spec_of(obj, **changes):
    """The :class:`~cnncodes.models.ModelSpec` of ``obj``'s model settings; no weights loaded.

    ``obj`` is anything carrying the attributes :data:`cnncodes.spec.MODEL_PARAMS` names (an
    estimator, parsed command-line options); ``changes`` replace some of them.

    Examples
    --------
    >>> from cnncodes import CNNCodes
    >>> spec_of(CNNCodes("resnet18", weights="none", resize=64, crop=56)).preprocessing.crop
    (56, 56)
    >>> spec_of(CNNCodes("resnet18", weights="none"), crop=32).preprocessing.crop
    (32, 32)
    """
    params = {name: changes.get(name, getattr(obj, name, None)) for name in MODEL_PARAMS}
    params.update(changes)
    return resolve_spec(**params)


def list_layers(model, weights=None, **kwargs):
    """Every layer of a model with its output shape and code size under each pooling.

    Parameters
    ----------
    model : str or ModelSpec
        A model name (resolved with ``weights`` and ``kwargs`` as in
        :func:`cnncodes.models.resolve_spec`).

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
    net = meta_for_spec(spec)
    nodes = node_names(net)
    names = nodes if nodes is not None else module_names(net)
    outputs = probe_layers(spec, net, names)
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
