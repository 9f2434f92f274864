"""How a fine-tuning run starts: which frozen part's activations come from the code cache (the
trunk plan), and LP-FT's head fitted on the codes (the probe)."""

from __future__ import annotations

import numpy as np
import torch

from ...errors import UsageError
from ...networks.layers import layer_shapes
from ...networks.pooling import MAX_FLATTEN_FEATURES, code_size
from . import network

__all__ = ["MAX_CACHED_TRUNK_BYTES", "fit_probe", "init_head_from_probe", "trunk_plan"]

#: Largest block of cached trunk activations held in memory for training (bytes).
MAX_CACHED_TRUNK_BYTES = 4 << 30


def trunk_plan(net, spec, layer, freeze, n_images, *, pooling, augment, trunk_cache):
    """``(tail, node)``: the trainable part and the node whose cached activations feed it, or
    ``(None, None)`` to run the whole network every epoch (``trunk_cache=True`` raises then)."""
    if trunk_cache is False:
        return None, None
    reasons = []
    if freeze == network.FREEZE_NONE:
        reasons.append("freeze='none' trains every layer")
    if augment != "none":
        reasons.append(f"augment={augment!r} makes new views every epoch")
    if freeze == network.FREEZE_ALL:
        node, tail = layer, torch.nn.Identity()
        size = code_size(layer_shapes(spec, [layer])[layer], pooling)
    elif not reasons:
        node = freeze
        tail = network.split_at(net, freeze, layer)
        if tail is None:
            reasons.append(f"the graph cannot be cut at freeze={freeze!r} (a skip connection)")
        size = int(np.prod(layer_shapes(spec, [freeze])[freeze]))
        if size > MAX_FLATTEN_FEATURES:
            reasons.append(f"{freeze!r} has {size} values per image (over {MAX_FLATTEN_FEATURES})")
    if not reasons and size * 4 * n_images > MAX_CACHED_TRUNK_BYTES:
        reasons.append(
            f"{n_images} images x {size} values exceed {MAX_CACHED_TRUNK_BYTES >> 30} GiB"
        )
    if reasons:
        if trunk_cache is True:
            raise UsageError(f"trunk_cache=True is not possible here: {'; '.join(reasons)}")
        return None, None
    return tail, node


def fit_probe(codes, labels):
    """LP-FT's linear probe: a logistic regression (C=1) on standardised ``codes``, fitted to
    ``labels``; a fitted scikit-learn pipeline (scaler, logistic regression)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)).fit(
        codes, labels
    )


def init_head_from_probe(head, codes, labels):
    """LP-FT (Kumar et al. 2022): the linear ``head`` starts as a logistic regression fitted on
    ``codes`` (the head's inputs) and ``labels`` (:func:`fit_probe`)."""
    scaler, probe = fit_probe(codes, labels)
    coef, intercept = probe.coef_, probe.intercept_
    if coef.shape[0] == 1:  # binary: the softmax of (-z/2, z/2) is the sigmoid of z
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    weight = coef / scaler.scale_
    bias = intercept - weight @ scaler.mean_
    linear = head[-1]
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        linear.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
