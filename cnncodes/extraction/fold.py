"""BatchNorm folded into the convolutions before it, for inference (exact up to rounding)."""

from __future__ import annotations

import copy

import torch


def _foldable(conv, bn, uses):
    """Whether ``bn(conv(x))`` may be replaced by one convolution (stock eval-mode modules, unshared)."""
    return (
        type(conv) is torch.nn.Conv2d
        and type(bn) is torch.nn.BatchNorm2d
        and not conv.training
        and not bn.training
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.running_var is not None
        and uses[id(conv)] == 1
        and uses[id(bn)] == 1
    )


def _fuse(conv, bn):
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    return fuse_conv_bn_eval(conv, bn).requires_grad_(False)


def _fold_sequential(seq, uses):
    """Fold ``Conv2d, BatchNorm2d`` neighbours inside a plain ``nn.Sequential`` (an FX leaf).

    Returns ``(module, folded)``: a shallow copy with the folded children where anything was folded
    (the original, which the caller's network still holds, is left untouched), else ``seq``.
    """
    plain = isinstance(seq, torch.nn.Sequential)
    if not plain or type(seq).forward is not torch.nn.Sequential.forward:
        return seq, 0
    children = dict(seq._modules)
    folded = 0
    for name, child in children.items():
        children[name], n = _fold_sequential(child, uses)
        folded += n
    names = list(children)
    for first, second in zip(names, names[1:]):
        conv, bn = children[first], children[second]
        if _foldable(conv, bn, uses):
            children[first], children[second] = _fuse(conv, bn), torch.nn.Identity()
            folded += 1
    if not folded:
        return seq, 0
    clone = copy.copy(seq)
    clone._modules = children
    return clone, folded


def _fold_batchnorm(extractor):
    """Fold every eval-mode ``BatchNorm2d`` into the ``Conv2d`` feeding it, in the FX graphs inside.

    Inference-only and exact up to float rounding (about 1e-7 relative): ``y = bn(conv(x))`` becomes
    one convolution with rescaled weights and a bias, which saves a full pass over every activation
    map (measured on 2 CPU cores: see bench/RESULTS.md). Pairs are folded where they are consecutive
    graph nodes, and inside plain ``nn.Sequential`` leaves (torchvision's ``Conv2dNormActivation``).
    A pair is left alone where the convolution's output is also used elsewhere (a requested layer),
    where either module is reachable more than once (shared weights) or is not exactly the stock
    torch class. Models without an FX graph (forward hooks) are left unchanged. Returns the number
    of pairs folded.
    """
    from torch import fx

    uses = {}
    for _, module in extractor.named_modules(remove_duplicate=False):
        uses[id(module)] = uses.get(id(module), 0) + 1
    folded = 0
    for gm in [m for m in extractor.modules() if isinstance(m, fx.GraphModule)]:
        modules = dict(gm.named_modules())
        calls = {}
        for node in gm.graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        changed = False
        for node in list(gm.graph.nodes):
            if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
                continue
            prev = node.args[0]
            if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
                continue
            conv, bn = modules.get(prev.target), modules.get(node.target)
            if calls[prev.target] != 1 or calls[node.target] != 1 or not _foldable(conv, bn, uses):
                continue
            parent, _, name = prev.target.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, name, _fuse(conv, bn))
            node.replace_all_uses_with(prev)
            gm.graph.erase_node(node)
            changed = True
            folded += 1
        if changed:
            gm.graph.lint()
            gm.delete_all_unused_submodules()
            gm.recompile()
        for target in calls:
            if target not in modules:
                continue
            module, n = _fold_sequential(modules[target], uses)
            if n:
                parent, _, name = target.rpartition(".")
                setattr(gm.get_submodule(parent) if parent else gm, name, module)
                folded += n
    return folded
