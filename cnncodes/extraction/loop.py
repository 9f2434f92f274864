"""The forward loop: decoded batches through the cut network, pooled, handed on as they are made."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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


class Forward:
    """The network cut after ``layers``, on its device: uint8 pixel batches -> pooled codes.

    The per-batch step that every engine runs (the local :class:`ForwardLoop` and the Ray
    actors of :mod:`cnncodes.extraction.ray_engine`), so that their codes are the same: the
    extractor is built once (BatchNorm folded, channels_last), then each call normalises a batch
    on the device and pushes it through in passes of ``chunk`` images.
    """

    def __init__(self, spec, layers, pooling, device, precision, batch_size):
        self.layers, self.pooling, self.device = list(layers), pooling, device
        net = build_model(spec)
        extractor = build_extractor(net, self.layers)
        _fold_batchnorm(extractor)
        # The extractor holds what it runs; the layers after the cut and the unfolded originals go.
        del net
        self.extractor = extractor.to(device).to(memory_format=torch.channels_last)
        self.mean = torch.tensor(spec.preprocessing.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.preprocessing.std, device=device).view(1, 3, 1, 1)
        # On the CPU, small forward passes are faster (activations stay in cache; measured in
        # bench/RESULTS.md): a batch is pushed through in chunks. A GPU takes it whole.
        self.chunk = batch_size if device.type == "cuda" else min(batch_size, CPU_FORWARD_BATCH)
        self.autocast = torch.autocast(
            device.type, dtype=_DTYPES.get(precision), enabled=precision in _DTYPES
        )

    @staticmethod
    def stack(pixels):
        """(H, W, 3) uint8 arrays -> an NCHW uint8 tensor with channels_last strides (no copy)."""
        return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)

    def __call__(self, x, on_pass=None):
        """Codes of the uint8 NCHW batch ``x``: ``{layer: float32 ndarray}``.

        ``on_pass(n)`` is called after each forward pass with the images it computed.
        """
        dev = self.device
        x = (x.to(dev, non_blocking=True).float().div_(255) - self.mean) / self.std
        x = x.contiguous(memory_format=torch.channels_last)  # a no-op: already is
        pooled = {layer: [] for layer in self.layers}
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
                for layer in self.layers:
                    code = pool(feats[layer], self.pooling)
                    pooled[layer].append(code[:1] if single else code)
                del feats  # activations of early layers are large; free before the next
                if on_pass is not None:
                    on_pass(1 if single else len(part))
        return {layer: torch.cat(pooled[layer]).cpu().numpy() for layer in self.layers}


@dataclass(frozen=True, kw_only=True)
class ForwardLoop:
    """One pass of the images of ``items`` through the network, handing each batch's codes on.

    Built by :func:`cnncodes.extract.extract_codes` as the ``compute`` of its
    :class:`~cnncodes.readthrough.CodeCache` (which knows what to keep); :meth:`run` does the work.
    """

    # What runs, and how.
    spec: object
    layers: list
    pooling: str
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
        forward = Forward(spec, layers, pooling, dev, precision, batch_size)
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
                            raise ImageLoadError(dict(items)[digest], reason)
                        failed[digest] = reason
                if good:
                    if tensors:
                        # Already on the device; stacked as channels_last.
                        x = _stack_ready([t for _, _, t in good], ready, dev)
                    else:
                        x = Forward.stack([t for _, _, t in good])
                    # Counted per pass: a loader batch of a slow network can take minutes.
                    codes = forward(x, on_pass=bar.update)
                    # Codes are true for what was decoded: a file rewritten since it was hashed
                    # made codes of its new content.
                    deliver([d for d, _, _ in good], codes, stored_as=[a for _, a, _ in good])
                    computed += len(good)
                if len(good) < len(batch):
                    bar.update(len(batch) - len(good))  # the unreadable ones are done too
        finally:
            if batches is not loader:
                batches.close()
            bar.close()
        return computed
