"""A fitted FineTune's network, rebuilt from the weights it holds, and its logits: of images
through the whole network, or of the frozen part's cached activations through the part that
trained (the tail and the head)."""

from __future__ import annotations

import torch

from ...networks.architectures import build_architecture
from . import network
from .data import Images

__all__ = ["cached_logits", "predict_logits", "rebuild_module", "trained_part"]


def _network(spec, state_dict):
    net = build_architecture(spec.model, spec.weights_spec.name, spec.seed, spec.model_kwargs)
    net.load_state_dict({k: torch.as_tensor(v) for k, v in state_dict.items()})
    return net


def _head(head, head_state, n_classes, head_params):
    first = "0.weight" if head == "mlp" else "1.weight"
    n_inputs = int(head_state[first].shape[1])
    new_head = network.make_head(
        head, n_inputs, n_classes, head_params["hidden_units"], head_params["dropout"]
    )
    new_head.load_state_dict({k: torch.as_tensor(v) for k, v in head_state.items()})
    return new_head


def rebuild_module(spec, state_dict, layer, head, head_state, n_classes, pooling, **head_params):
    """The fine-tuned network (eval mode, on the CPU) from its ``state_dict`` and
    ``head_state`` (arrays by parameter name); ``head_params``: ``hidden_units``, ``dropout``."""
    trunk, _ = network.build_trunk(_network(spec, state_dict), layer, network.FREEZE_NONE)
    new_head = _head(head, head_state, n_classes, head_params)
    return network.FineTuneNet(trunk, new_head, pooling).eval()


def trained_part(spec, state_dict, layer, freeze, head, head_state, n_classes, pooling, **params):
    """The part of the fine-tuned network after the frozen one (eval mode, on the CPU): the head
    alone for ``freeze="all"`` (fed pooled codes of ``layer``), else the tail from ``freeze``'s
    output to ``layer`` (its trained weights from ``state_dict``), pooling and the head.

    Fed the frozen part's activations of the *pretrained* network (the code cache's), it gives
    the whole fine-tuned network's output: frozen layers keep their pretrained weights and
    BatchNorm statistics."""
    new_head = _head(head, head_state, n_classes, params)
    if freeze == network.FREEZE_ALL:
        return network.FineTuneNet(torch.nn.Identity(), new_head, pooling).eval()
    tail = network.split_at(_network(spec, state_dict), freeze, layer)
    return network.FineTuneNet(tail, new_head, pooling).eval()


def cached_logits(module, activations, *, batch_size, device, dtype, nhwc):
    """The logits of ``module`` (:func:`trained_part`) for the frozen part's ``activations``
    (an array, one row per image), as a float32 CPU tensor; arguments as for
    :func:`predict_logits`."""
    module = module.to(device)
    activations = torch.as_tensor(activations)
    out = []
    with torch.no_grad():
        for start in range(0, len(activations), int(batch_size)):
            x = activations[start : start + int(batch_size)].to(device)
            if nhwc and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out.append(module(x).float().cpu())
    module.cpu()
    return torch.cat(out)


def predict_logits(module, paths, preprocessing, *, batch_size, workers, device, dtype, nhwc):
    """The logits of ``module`` for the images ``paths``, as a float32 CPU tensor (``dtype``:
    the autocast dtype or None; ``nhwc``: feed channels-last tensors)."""
    module = module.to(device)
    loader = torch.utils.data.DataLoader(
        Images(paths, None, preprocessing), batch_size=int(batch_size), num_workers=workers
    )
    out = []
    with torch.no_grad():
        for x, _ in loader:
            x = x.to(device)
            if nhwc:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                out.append(module(x).float().cpu())
    module.cpu()
    return torch.cat(out)
