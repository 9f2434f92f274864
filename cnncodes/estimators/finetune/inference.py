"""A fitted FineTune's network, rebuilt from the weights it holds, and its logits of images."""

from __future__ import annotations

import torch

from ...networks.architectures import build_architecture
from . import network
from .data import Images

__all__ = ["predict_logits", "rebuild_module"]


def rebuild_module(spec, state_dict, layer, head, head_state, n_classes, pooling, **head_params):
    """The fine-tuned network (eval mode, on the CPU) from its ``state_dict`` and
    ``head_state`` (arrays by parameter name); ``head_params``: ``hidden_units``, ``dropout``."""
    net = build_architecture(spec.model, spec.weights_spec.name, spec.seed, spec.model_kwargs)
    net.load_state_dict({k: torch.as_tensor(v) for k, v in state_dict.items()})
    trunk, _ = network.build_trunk(net, layer, network.FREEZE_NONE)
    first = "0.weight" if head == "mlp" else "1.weight"
    n_inputs = int(head_state[first].shape[1])
    new_head = network.make_head(
        head, n_inputs, n_classes, head_params["hidden_units"], head_params["dropout"]
    )
    new_head.load_state_dict({k: torch.as_tensor(v) for k, v in head_state.items()})
    return network.FineTuneNet(trunk, new_head, pooling).eval()


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
