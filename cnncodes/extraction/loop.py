"""The forward loop: decoded batches through the cut network, pooled, handed on as they are made."""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UsageError
from ..images.load import ImageLoadError
from ..networks.layers import build_extractor
from ..networks.models import build_model
from ..networks.pooling import pool
from ..utils.progress import Progress
from .decode import _collate, _Decode, _prefetch, _stack_ready, _TorchDecode, _worker_init
from .fold import _fold_batchnorm
from .runtime import _DTYPES

#: Largest forward pass on the CPU; bigger loader batches go through in chunks of this size.
CPU_FORWARD_BATCH = 8

#: How the reason of an image skipped for its non-finite codes begins.
NON_FINITE = "non-finite codes"


def nonfinite_rows(codes):
    """Per row of ``codes`` (``{layer: array}``), the layers whose code has a NaN or an
    infinity: a list of lists, empty where the row is finite."""
    rows = None
    for layer, block in codes.items():
        bad = ~np.isfinite(np.asarray(block).reshape(len(block), -1)).all(axis=1)
        rows = rows or [[] for _ in range(len(block))]
        label = layer[0] if isinstance(layer, tuple) else layer  # (layer, pooling) names
        for r in np.flatnonzero(bad):
            if label not in rows[r]:
                rows[r].append(label)
    return rows or []


def nonfinite_reason(spec, layers):
    """Why an image's codes are not kept: names the model, its weights and the layers."""
    return (
        f"{NON_FINITE} (NaN or infinity) from model={spec.model!r}, weights={spec.weights!r}, "
        f"layer(s) {', '.join(map(repr, layers))}"
    )


def nonfinite_error(reason, path, network):
    """The UsageError for a non-finite ``reason`` first met at image ``path``; ``network``: a
    plain image of the mean colour gives non-finite codes too (the network is at fault)."""
    hint = (
        "a plain image of the mean colour gives non-finite codes too: check the weights (a "
        "checkpoint holding NaN?) and the preprocessing"
        if network
        else "with on_error='skip' (--on-error skip) such images are left out"
    )
    return UsageError(f"{reason}, first for image {path}: none of them was cached; {hint}")


class FiniteCheck:
    """Screens the codes of each batch before they are delivered to the cache.

    Codes with a NaN or an infinity are never cached. With ``on_error="raise"`` they raise a
    :class:`UsageError` naming the model, weights, layer and the first such image. With
    ``"skip"`` the images are recorded in ``failed`` with that reason, unless the network is at
    fault: ``probe()`` (the codes of a plain image of the normalisation mean, computed once,
    when first needed) is non-finite too, as with a checkpoint holding NaN; then it raises.
    """

    def __init__(self, spec, layers, on_error, failed, probe):
        self.spec, self.layers, self.on_error, self.failed = spec, layers, on_error, failed
        self.probe = probe
        self._network_at_fault = None

    def network_at_fault(self):
        if self._network_at_fault is None:
            self._network_at_fault = any(nonfinite_rows(self.probe()))
        return self._network_at_fault

    def __call__(self, digests, codes, paths):
        """The row numbers of ``digests`` whose codes may be delivered."""
        rows = nonfinite_rows(codes)
        keep = [r for r, bad in enumerate(rows) if not bad]
        if len(keep) == len(rows):
            return keep
        first = next(r for r, bad in enumerate(rows) if bad)
        reason = nonfinite_reason(self.spec, rows[first])
        if self.on_error == "raise" or self.network_at_fault():
            raise nonfinite_error(reason, paths[digests[first]], self.network_at_fault())
        for r, bad in enumerate(rows):
            if bad:
                self.failed[digests[r]] = nonfinite_reason(self.spec, bad)
        return keep


def code_outputs(layers, pooling):
    """The codes a forward pass makes: ``(name, layer, pooling)`` for every layer and pooling.

    ``pooling`` a str: one code per layer, named by the layer (as always). A list of poolings:
    every layer pooled each way from the same activations, named ``(layer, pooling)``; a dict
    of layer to list of poolings: each layer pooled its own ways.
    """
    if isinstance(pooling, str):
        return [(layer, layer, pooling) for layer in layers]
    if isinstance(pooling, dict):  # per layer, its own poolings
        return [((layer, p), layer, p) for layer in layers for p in pooling[layer]]
    return [((layer, p), layer, p) for layer in layers for p in pooling]


def pooling_key(pooling):
    """``pooling`` (a str, a list, or a dict of layer to list) as a hashable key."""
    if isinstance(pooling, dict):
        return tuple((layer, tuple(p)) for layer, p in pooling.items())
    return pooling if isinstance(pooling, str) else tuple(pooling)


def mean_colour_image(preprocessing):
    """One (H, W, 3) uint8 image of the normalisation mean's colour, at the network's input
    size: zeros once normalised."""
    h, w = preprocessing.input_size
    colour = np.clip(np.round(np.array(preprocessing.mean) * 255), 0, 255).astype(np.uint8)
    return np.broadcast_to(colour, (h, w, 3)).copy()


# Networks built in this session (:func:`sharing_networks`): (spec of the center view, layers,
# pooling, device, precision, batch size) -> Forward. None outside a session.
_SHARED = contextvars.ContextVar("cnncodes_shared_forwards", default=None)


@contextlib.contextmanager
def sharing_networks():
    """For the block, extractions that push images through the same network share one
    :class:`Forward` (the views of :func:`cnncodes.extract.extract_views` differ only in their
    images' crops): the network is built, traced and folded once, not once per view."""
    token = _SHARED.set({}) if _SHARED.get() is None else None
    try:
        yield
    finally:
        if token is not None:
            _SHARED.reset(token)


def shared_forward(spec, layers, pooling, device, precision, batch_size):
    """The :class:`Forward` of these settings: the session's (:func:`sharing_networks`) when
    there is one, else a new one. The view is no part of it (only the decoders crop)."""
    shared = _SHARED.get()
    if shared is None:
        return Forward(spec, layers, pooling, device, precision, batch_size)
    key = (spec.with_view("center"), tuple(layers), pooling_key(pooling), str(device), precision)
    key += (batch_size,)
    if key not in shared:
        shared[key] = Forward(spec, layers, pooling, device, precision, batch_size)
    return shared[key]


class Forward:
    """The network cut after ``layers``, on its device: uint8 pixel batches -> pooled codes.

    ``pooling``: a str, or a list of poolings each applied to the same activations (see
    :func:`code_outputs`, which names the codes).

    The per-batch step that every engine runs (the local :class:`ForwardLoop` and the Ray
    actors of :mod:`cnncodes.extraction.ray_engine`), so that their codes are the same: the
    extractor is built once (BatchNorm folded, channels_last), then each call normalises a batch
    on the device and pushes it through in passes of ``chunk`` images.
    """

    def __init__(self, spec, layers, pooling, device, precision, batch_size):
        self.layers, self.pooling, self.device = list(layers), pooling, device
        self.outputs = code_outputs(self.layers, pooling)
        net = build_model(spec)
        extractor = build_extractor(net, self.layers)
        _fold_batchnorm(extractor)
        # The extractor holds what it runs; the layers after the cut and the unfolded originals go.
        del net
        self.extractor = extractor.to(device).to(memory_format=torch.channels_last)
        self.mean = torch.tensor(spec.preprocessing.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.preprocessing.std, device=device).view(1, 3, 1, 1)
        self.spec_preprocessing = spec.preprocessing
        # On the CPU, small forward passes are faster (activations stay in cache; measured in
        # bench/RESULTS.md): a batch is pushed through in chunks. A GPU takes it whole.
        self.chunk = batch_size if device.type == "cuda" else min(batch_size, CPU_FORWARD_BATCH)
        self.autocast = torch.autocast(
            device.type, dtype=_DTYPES.get(precision), enabled=precision in _DTYPES
        )

    def probe(self):
        """The codes of one plain image of the normalisation mean's colour."""
        return self(self.stack([mean_colour_image(self.spec_preprocessing)]))

    @staticmethod
    def stack(pixels):
        """(H, W, 3) uint8 arrays -> an NCHW uint8 tensor with channels_last strides (no copy)."""
        return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)

    def __call__(self, x, on_pass=None):
        """Codes of the uint8 NCHW batch ``x``: ``{name: float32 ndarray}`` (by layer, see
        :func:`code_outputs`).

        ``on_pass(n)`` is called after each forward pass with the images it computed.
        """
        dev = self.device
        x = (x.to(dev, non_blocking=True).float().div_(255) - self.mean) / self.std
        x = x.contiguous(memory_format=torch.channels_last)  # a no-op: already is
        pooled = {name: [] for name, _, _ in self.outputs}
        with torch.inference_mode():
            for start in range(0, len(x), self.chunk):
                part = x[start : start + self.chunk]
                single = len(part) == 1
                if single:
                    # A pass of one image takes other CPU kernels than a pass of several
                    # (codes up to 5e-6 apart, bench/RESULTS.md): run it as a pair, so
                    # that an image's code never depends on how it was batched.
                    part = torch.cat([part, part])
                with self.autocast:
                    feats = self.extractor(part)
                for name, layer, pooling in self.outputs:
                    code = pool(feats[layer], pooling)
                    pooled[name].append(code[:1] if single else code)
                del feats  # activations of early layers are large; free before the next
                if on_pass is not None:
                    on_pass(1 if single else len(part))
        return {name: torch.cat(codes).cpu().numpy() for name, codes in pooled.items()}


@dataclass(frozen=True, kw_only=True)
class ForwardLoop:
    """One pass of the images of ``items`` through the network, handing each batch's codes on.

    Built by :func:`cnncodes.extract.extract_codes` as the ``compute`` of its
    :class:`~cnncodes.readthrough.CodeCache` (which knows what to keep); :meth:`run` does the work.
    """

    # What runs, and how.
    spec: object
    layers: list
    pooling: object  # a str, or a list of poolings (see code_outputs)
    device: torch.device
    precision: str
    batch_size: int
    num_workers: int
    on_error: str
    progress: object
    # The inputs: (content digest, file path) of each image to compute.
    items: list
    # Where the codes go: ``deliver(digests, {layer: codes}, stored_as=digests read)``.
    deliver: object
    # Filled in place: digest -> why its file could not be read (with on_error="skip").
    failed: dict

    def run(self):
        """Push the images through the network; the number of images computed."""
        spec, layers, pooling, items = self.spec, self.layers, self.pooling, self.items
        deliver, failed, dev, precision = self.deliver, self.failed, self.device, self.precision
        batch_size, num_workers, on_error = self.batch_size, self.num_workers, self.on_error
        forward = shared_forward(spec, layers, pooling, dev, precision, batch_size)
        tensors = spec.preprocessing.impl == "torch"
        if tensors:
            # Decoded in this process (a background thread), on the extraction device.
            loader = _TorchDecode(items, spec.preprocessing, dev, batch_size)
        else:
            loader = torch.utils.data.DataLoader(
                _Decode(items, spec.preprocessing),
                batch_size=batch_size,
                num_workers=num_workers if len(items) > 1 else 0,
                collate_fn=_collate,
                worker_init_fn=_worker_init if num_workers else None,
                pin_memory=dev.type == "cuda",
            )
        bar = Progress(len(items), "extracting", "images", "img", self.progress)
        paths = dict(items)
        finite = FiniteCheck(spec, layers, on_error, failed, forward.probe)
        computed = 0
        in_process = tensors or loader.num_workers == 0
        batches = _prefetch(loader) if in_process and len(items) > batch_size else loader
        try:
            for batch in batches:
                if tensors:
                    batch, ready = batch
                good = [(d, a, t) for d, a, t, reason in batch if reason is None]
                for digest, _a, _t, reason in batch:
                    if reason is not None:
                        if on_error == "raise":
                            raise ImageLoadError(paths[digest], reason)
                        failed[digest] = reason
                if good:
                    if tensors:
                        # Already on the device; stacked as channels_last.
                        x = _stack_ready([t for _, _, t in good], ready, dev)
                    else:
                        x = Forward.stack([t for _, _, t in good])
                    # Counted per pass: a loader batch of a slow network can take minutes.
                    codes = forward(x, on_pass=bar.update)
                    keep = finite([d for d, _, _ in good], codes, paths)
                    ok = [good[r] for r in keep]
                    if len(ok) < len(good):
                        codes = {layer: block[keep] for layer, block in codes.items()}
                    # Codes are true for what was decoded: a file rewritten since it was hashed
                    # made codes of its new content.
                    if ok:
                        deliver([d for d, _, _ in ok], codes, stored_as=[a for _, a, _ in ok])
                    computed += len(ok)
                if len(good) < len(batch):
                    bar.update(len(batch) - len(good))  # the unreadable ones are done too
        finally:
            if batches is not loader:
                batches.close()
            bar.close()
        return computed
