"""The forward loop: decoded batches through the cut network, pooled, handed on as they are made."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._progress import Progress
from ..images import ImageLoadError
from ..layers import build_extractor
from ..models import build_model
from ..pooling import pool
from .decode import _collate, _Decode, _prefetch, _stack_ready, _TorchDecode, _worker_init
from .fold import _fold_batchnorm
from .runtime import _DTYPES

#: Largest forward pass on the CPU; bigger loader batches go through in chunks of this size.
CPU_FORWARD_BATCH = 8


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
        net = build_model(spec)
        extractor = build_extractor(net, layers)
        _fold_batchnorm(extractor)
        # The extractor holds what it runs; the layers after the cut and the unfolded originals go.
        del net
        extractor = extractor.to(dev)
        channels_last = True
        extractor = extractor.to(memory_format=torch.channels_last)
        mean = torch.tensor(spec.preprocessing.mean, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(spec.preprocessing.std, device=dev).view(1, 3, 1, 1)
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
        # On the CPU, small forward passes are faster (activations stay in cache; measured in
        # bench/RESULTS.md): the loader's batch is pushed through in chunks. A GPU takes it whole.
        chunk = batch_size if dev.type == "cuda" else min(batch_size, CPU_FORWARD_BATCH)
        autocast = torch.autocast(
            dev.type, dtype=_DTYPES.get(precision), enabled=precision in _DTYPES
        )
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
                        x = (x.float().div_(255) - mean) / std
                    else:
                        # (N, H, W, 3) uint8 viewed as NCHW: channels_last strides, no copy.
                        x = torch.from_numpy(np.stack([t for _, _, t in good])).permute(0, 3, 1, 2)
                        x = (x.to(dev, non_blocking=True).float().div_(255) - mean) / std
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)  # a no-op: already is
                    pooled = {layer: [] for layer in layers}
                    with torch.inference_mode():
                        for start in range(0, len(x), chunk):
                            part = x[start : start + chunk]
                            single = len(part) == 1
                            if single:
                                # A pass of one image takes other CPU kernels than a pass of several
                                # (codes up to 5e-6 apart, bench/RESULTS.md): run it as a pair, so
                                # that an image's code never depends on how it was batched.
                                part = torch.cat([part, part])
                            with autocast:
                                feats = extractor(part)
                            for layer in layers:
                                code = pool(feats[layer], pooling)
                                pooled[layer].append(code[:1] if single else code)
                            del feats  # activations of early layers are large; free before the next
                            # Counted per pass: a loader batch of a slow network can take minutes.
                            bar.update(1 if single else len(part))
                    # Codes are true for what was decoded: a file rewritten since it was hashed
                    # made codes of its new content.
                    deliver(
                        [d for d, _, _ in good],
                        {layer: torch.cat(pooled[layer]).cpu().numpy() for layer in layers},
                        stored_as=[a for _, a, _ in good],
                    )
                    computed += len(good)
                if len(good) < len(batch):
                    bar.update(len(batch) - len(good))  # the unreadable ones are done too
        finally:
            if batches is not loader:
                batches.close()
            bar.close()
        return computed
