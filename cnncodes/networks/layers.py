"""Layers of a network: graph-node names, layer-name validation, extractors, output shapes.

Layers cross the API as torchvision's graph-node names (``"layer3"``, ``"avgpool"``,
``"features.7"``); a submodule's name names its output. :func:`build_extractor` cuts the graph
after the deepest requested layer (forward hooks where torch.fx cannot trace the model), and
shapes are computed on the ``meta`` device, without real compute. A timm model also answers to
``"forward_features"`` and ``"pre_logits"`` (:data:`TIMM_ALIASES`), resolved to the graph nodes
whose outputs are timm's ``forward_features(x)`` and ``forward_head(..., pre_logits=True)``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models import feature_extraction

from ..errors import UsageError
from ..spec import ModelSpec
from ..utils.memo import memoize
from .architectures import _meta_model, build_architecture

__all__ = [
    "PENULTIMATE",
    "TIMM_ALIASES",
    "LayerError",
    "LayerInfo",
    "build_extractor",
    "layer_shapes",
    "module_names",
    "node_names",
    "resolve_layers",
    "meta_for_spec",
    "probe_layers",
]

PENULTIMATE = "penultimate"
#: Layer names a timm model also answers to: its unpooled feature map (``forward_features``) and
#: its pooled codes before the classifier (``forward_head(x, pre_logits=True)``).
TIMM_ALIASES = ("forward_features", "pre_logits")


class LayerError(UsageError):
    """A layer name that is not a node of the model's graph, or whose output cannot be pooled."""


@dataclass(frozen=True)
class LayerInfo:
    """One graph node: its output shape (without the batch axis) and the code size per pooling."""

    name: str
    shape: tuple
    code_sizes: dict


def node_names(net):
    """Graph-node names of the eval-mode graph, in order, or ``None`` where FX cannot trace it.

    Besides the leaf nodes, a submodule's name (``"layer3"``, ``"features.7"``) names its output;
    it is listed right after its last node. These are the names :func:`resolve_layers` accepts
    (:func:`module_names` where the model cannot be traced).

    Examples
    --------
    >>> from torch import nn
    >>> node_names(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), nn.Flatten())))
    ['input', '0', '1.0', '1.1', '1']
    """
    try:
        nodes = feature_extraction.get_graph_node_names(net)[1]
    except Exception:  # FX raises many kinds of errors on untraceable Python control flow
        return None
    modules = [m for m in module_names(net) if m not in set(nodes)]
    out = []
    for i, node in enumerate(nodes):
        out.append(node)
        following = nodes[i + 1] if i + 1 < len(nodes) else ""
        closing = [
            m for m in modules if node.startswith(m + ".") and not following.startswith(m + ".")
        ]
        out.extend(sorted(closing, key=len, reverse=True))
    return out


def module_names(net):
    """The names of a network's submodules, in ``named_modules()`` order (the root left out).

    Examples
    --------
    >>> from torch import nn
    >>> module_names(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), nn.Flatten())))
    ['0', '1', '1.0', '1.1']
    """
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
            # A Linear subclass FX traces through (timm's) has nodes of its own before its name.
            first = next(i for i, n in enumerate(nodes) if n == last or n.startswith(last + "."))
            return nodes[first - 1]
    linear = [name for name, m in modules.items() if isinstance(m, nn.Linear)]
    names = module_names(net)
    if linear:
        idx = names.index(linear[-1])
        if idx > 0:
            return names[idx - 1]
    raise LayerError(
        "layer='penultimate' needs a model that ends in an nn.Linear; name a layer instead "
        "(see cnncodes.list_layers or `cnncodes layers MODEL`)"
    )


class _TimmPart(nn.Module):
    """What a timm model's ``forward_features`` (or, with ``pre_logits``, its
    ``forward_head(..., pre_logits=True)`` after it) computes, as a module FX can trace."""

    def __init__(self, net, pre_logits):
        super().__init__()
        self.net = net
        self.pre_logits = pre_logits

    def forward(self, x):
        x = self.net.forward_features(x)
        return self.net.forward_head(x, pre_logits=True) if self.pre_logits else x


def _is_timm_net(net):
    return type(net).__module__.partition(".")[0] == "timm"


def _timm_alias(net, nodes, alias):
    """The graph node an alias of :data:`TIMM_ALIASES` stands for: the last node of the traced
    timm method, named by the outermost submodule it closes (``"layer4"``, not
    ``"layer4.1.act2"``), so that the alias and the name share their cached codes."""
    try:
        part = feature_extraction.get_graph_node_names(_TimmPart(net, alias == "pre_logits"))[1]
    except Exception:  # FX raises many kinds of errors on untraceable Python control flow
        part = None
    last = part[-1].removeprefix("net.") if part else None
    if nodes is None or last not in nodes:
        raise LayerError(
            f"layer={alias!r}: the graph of {type(net).__name__} cannot be traced, so its "
            f"{alias} output has no node name; name a layer instead (see cnncodes.list_layers "
            "or `cnncodes layers MODEL`)"
        )
    i = nodes.index(last)
    while i + 1 < len(nodes) and last.startswith(nodes[i + 1] + "."):
        i += 1
    return nodes[i]


def _traceable(spec_or_net):
    net = spec_or_net
    if isinstance(spec_or_net, ModelSpec):
        net = meta_for_spec(spec_or_net)
    return net


def meta_for_spec(spec):
    return _meta_model(spec.model, spec.weights_spec.name, spec.model_kwargs)


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


@memoize(256)
def _resolve_layers_memo(spec, layers):
    return tuple(_resolve_layers(spec, list(layers)))


def _resolve_layers(spec, layers):
    if not layers:
        raise LayerError("layer: give at least one layer name")
    net = _traceable(spec)
    nodes = node_names(net)
    valid = nodes if nodes is not None else module_names(net)
    out, aliases = [], {}  # aliases: the node -> the aliases given for it
    for layer in layers:
        given = layer
        if not isinstance(layer, str) or not layer:
            raise LayerError(f"layer={layer!r}: expected a graph-node name such as 'layer4'")
        if layer == PENULTIMATE:
            layer = _penultimate(net, nodes)
        elif layer in TIMM_ALIASES and layer not in valid and _is_timm_net(net):
            layer = _timm_alias(net, nodes, layer)
        elif layer not in valid:
            close = difflib.get_close_matches(layer, valid, n=6, cutoff=0.4)
            hint = f" Closest: {', '.join(close)}." if close else ""
            model = spec.model if isinstance(spec, ModelSpec) else type(net).__name__
            raise LayerError(
                f"layer={layer!r} is not a node of {model}.{hint} "
                f"List them with cnncodes.list_layers({model!r}) or `cnncodes layers {model}`."
            )
        if given != layer:
            aliases.setdefault(layer, []).append(given)
        if layer in out:
            named = aliases.get(layer, [])
            verb = "is" if len(named) == 1 else "are"
            alias = f" ({', '.join(map(repr, named))} {verb} {layer!r} here)" if named else ""
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
        order = module_names(net)
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


@memoize(256)
def _layer_shapes_memo(spec, layers):
    outputs = probe_layers(spec, meta_for_spec(spec), layers)
    return {name: tuple(_check_output(name, outputs[name]).shape[1:]) for name in layers}


def probe_layers(spec, meta_net, layers):
    """Layer outputs for one dummy image: on the meta device (free), or, for a model whose
    forward branches on tensor values (impossible on meta), once on a real zero image."""
    h, w = spec.preprocessing.input_size
    with torch.no_grad():
        try:
            return build_extractor(meta_net, layers)(torch.empty(1, 3, h, w, device="meta"))
        except (RuntimeError, NotImplementedError):  # e.g. "cannot call .item() on meta tensors"
            net = build_architecture(
                spec.model, spec.weights_spec.name, spec.seed, spec.model_kwargs
            )
            try:
                return build_extractor(net, layers)(torch.zeros(1, 3, h, w))
            except RuntimeError as exc:
                raise LayerError(
                    f"{spec.model} cannot run on a {h}x{w} input (resize/crop too small?): {exc}"
                ) from None
