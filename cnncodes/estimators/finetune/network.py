"""The fine-tuned network: a pretrained trunk cut at ``layer``, pooling, and a new head.

``freeze`` names the graph node up to which (inclusive) the trunk stays as it was trained: its
parameters get no gradient and its modules stay in eval mode, so BatchNorm running statistics
and dropout are those of the pretrained network (``requires_grad=False`` alone would leave
BatchNorm updating its statistics in train mode: the known trap).

Where the graph can be cut at ``freeze`` (nothing computed before it is used after it other
than its own output, as at a block boundary), :func:`split_at` builds the *tail*: the trainable
part as a module of its own, fed with the frozen part's activations. Fine-tuning then reads those
activations from the code cache instead of recomputing them every epoch.
"""

from __future__ import annotations

import difflib

import torch
import torch.fx
from torch import nn
from torchvision.models import feature_extraction

from ...networks.layers import LayerError, module_names, node_names
from ...networks.pooling import pool

FREEZE_ALL = "all"
FREEZE_NONE = "none"


def _graph_leaves(net):
    try:
        return feature_extraction.get_graph_node_names(net)[1]
    except Exception:  # FX raises many kinds of errors on untraceable Python control flow
        return None


def _leaf(name, leaves):
    """The FX node whose output is ``name``'s: itself, or a submodule's last node."""
    if name in leaves:
        return name
    inside = [n for n in leaves if n.startswith(name + ".")]
    return inside[-1] if inside else name


def check_freeze(freeze, net, model):
    """``freeze`` validated against the network's node names (closest names when unknown)."""
    if freeze in (FREEZE_ALL, FREEZE_NONE):
        return freeze
    nodes = node_names(net)
    valid = nodes if nodes is not None else module_names(net)
    if not isinstance(freeze, str) or freeze not in valid:
        close = difflib.get_close_matches(str(freeze), valid, n=6, cutoff=0.4)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise LayerError(
            f"freeze={freeze!r} is not a node of {model}.{hint} Give a node name (list them with "
            f"`cnncodes layers {model}`), 'all' (train only the new head) or 'none' (train "
            "everything)"
        )
    return freeze


class _Out(nn.Module):
    """A feature extractor with one output, returned as a tensor instead of a dict."""

    def __init__(self, extractor, key):
        super().__init__()
        self.extractor = extractor
        self.key = key

    def forward(self, x):
        return self.extractor(x)[self.key]


class _Hooked(nn.Module):
    """The output of a named submodule, for networks FX cannot trace (runs the whole forward)."""

    def __init__(self, net, layer):
        super().__init__()
        self.net = net
        self.layer = layer

    def forward(self, x):
        found = {}
        handle = self.net.get_submodule(self.layer).register_forward_hook(
            lambda _m, _i, out: found.setdefault("out", out)
        )
        try:
            self.net(x)
        finally:
            handle.remove()
        return found["out"]


def build_trunk(net, layer, freeze):
    """``(trunk, frozen_modules)``: ``net`` cut after ``layer``, and the modules up to ``freeze``.

    The trunk's parameter names are the original network's (``features.3.conv.0.0.weight``), so
    its state_dict merges back into a full checkpoint of the architecture.
    """
    leaves = _graph_leaves(net)
    if leaves is None:
        trunk = _Hooked(net, layer)
        order = module_names(net)
        if freeze == FREEZE_ALL:
            frozen = order
        elif freeze == FREEZE_NONE:
            frozen = []
        else:
            last = order.index(freeze)
            inside = [m for m in order if m.startswith(freeze + ".")]
            if inside:
                last = max(last, order.index(inside[-1]))
            frozen = order[: last + 1]
        return trunk, [net.get_submodule(m) for m in frozen]
    graph = feature_extraction.create_feature_extractor(
        net, return_nodes={_leaf(layer, leaves): "out"}
    )
    trunk = _Out(graph, "out")
    if freeze == FREEZE_NONE:
        return trunk, []
    if freeze == FREEZE_ALL:
        return trunk, [m for _, m in trunk.named_modules() if m is not trunk]
    # The modules called up to the freeze node, in the order of the traced graph.
    tracing = feature_extraction.create_feature_extractor(
        net, return_nodes={_leaf(freeze, leaves): "freeze"}
    )
    frozen = []
    for node in tracing.graph.nodes:
        if node.op == "call_module":
            frozen.append(tracing.get_submodule(node.target))
    names = {id(m): n for n, m in net.named_modules()}
    frozen = [net.get_submodule(names[id(m)]) for m in frozen if id(m) in names]
    return trunk, frozen


def split_at(net, freeze, layer):
    """The part of ``net`` from ``freeze``'s output to ``layer``'s, as a module; or None.

    None where the graph cannot be cut there: the network is not traceable, or a value computed
    before ``freeze`` is used after it (a skip connection across the cut).
    """
    leaves = _graph_leaves(net)
    if leaves is None:
        return None
    start, end = _leaf(freeze, leaves), _leaf(layer, leaves)
    if start == end:
        return nn.Identity()
    both = feature_extraction.create_feature_extractor(
        net, return_nodes={start: "start", end: "end"}
    )
    output = next(n for n in both.graph.nodes if n.op == "output")
    outputs = output.args[0]
    cut, last = outputs["start"], outputs["end"]
    order = list(both.graph.nodes)
    if order.index(last) < order.index(cut):
        return None
    before = set(order[: order.index(cut) + 1])
    tail = torch.fx.Graph()
    env = {cut: tail.placeholder("x")}
    for node in order[order.index(cut) + 1 :]:
        if node.op == "output":
            break
        uses = node.all_input_nodes
        crossing = [u for u in uses if u in before and u is not cut and u.op != "get_attr"]
        if crossing:
            return None
        for u in uses:
            if u not in env and u.op == "get_attr":
                env[u] = tail.node_copy(u, lambda n: env[n])
        env[node] = tail.node_copy(node, lambda n: env[n])
        if node is last:
            break
    tail.output(env[last])
    module = torch.fx.GraphModule(both, tail)
    module.graph.eliminate_dead_code()
    module.delete_all_unused_submodules()
    module.recompile()
    return module


def make_head(head, n_inputs, n_classes, hidden_units, dropout):
    """The new classifier: linear, or one hidden ReLU layer (an MLP); dropout before the output."""
    if head == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(n_inputs, n_classes))
    return nn.Sequential(
        nn.Linear(n_inputs, hidden_units),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden_units, n_classes),
    )


class FineTuneNet(nn.Module):
    """``trunk`` (images, or cached activations for a tail), then pooling, then ``head``.

    ``frozen`` modules keep their parameters and stay in eval mode whatever ``train()`` says. With
    ``train_bn=False`` every BatchNorm layer of the trunk stays in eval mode too: it normalises
    with the pretrained running statistics (which never change) while its scale and shift train.
    """

    def __init__(self, trunk, head, pooling, frozen=(), train_bn=True):
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.pooling = pooling
        self._frozen = list(frozen)
        for module in self._frozen:
            module.requires_grad_(False)
        if not train_bn:
            self._frozen += [
                m for m in trunk.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            ]

    def train(self, mode=True):
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    def forward(self, x):
        return self.head(pool(self.trunk(x), self.pooling))
