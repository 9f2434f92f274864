"""The forward loop: decoded batches through the cut network, pooled, committed to the cache."""

from __future__ import annotations

import time
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
    """One pass of the images of ``todo`` through the network, filling ``out`` and the cache.

    Built by :func:`cnncodes.extract.extract_codes` once it knows what the cache lacks;
    :meth:`run` does the work.
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
    commit_rows: int
    commit_seconds: float
    # The inputs: file paths, their positions by content digest, the digests to compute.
    paths: list
    groups: dict
    todo: list
    # Filled in place: codes per layer, digests each store already has, the stores, skipped rows.
    out: dict
    have: dict
    stores: dict
    skipped: dict

    def run(self):
        """Push the images through the network; the number of images computed."""
        spec, layers, pooling, paths = self.spec, self.layers, self.pooling, self.paths
        groups, todo, out, have = self.groups, self.todo, self.out, self.have
        stores, skipped, dev, precision = self.stores, self.skipped, self.device, self.precision
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
        items = [(d, paths[groups[d][0]]) for d in todo]
        tensors = spec.preprocessing.impl == "torch"
        if tensors:
            # Decoded in this process (a background thread), on the extraction device.
            loader = _TorchDecode(items, spec.preprocessing, dev, batch_size)
        else:
            loader = torch.utils.data.DataLoader(
                _Decode(items, spec.preprocessing),
                batch_size=batch_size,
                num_workers=num_workers if len(todo) > 1 else 0,
                collate_fn=_collate,
                worker_init_fn=_worker_init if num_workers else None,
                pin_memory=dev.type == "cuda",
            )
        committer = _Committer(stores, self.commit_rows, self.commit_seconds)
        bar = Progress(len(todo), "extracting", "images", "img", self.progress)
        computed = 0
        # On the CPU, small forward passes are faster (activations stay in cache; measured in
        # bench/RESULTS.md): the loader's batch is pushed through in chunks. A GPU takes it whole.
        chunk = batch_size if dev.type == "cuda" else min(batch_size, CPU_FORWARD_BATCH)
        autocast = torch.autocast(
            dev.type, dtype=_DTYPES.get(precision), enabled=precision in _DTYPES
        )
        in_process = tensors or loader.num_workers == 0
        batches = _prefetch(loader) if in_process and len(todo) > batch_size else loader
        try:
            for batch in batches:
                if tensors:
                    batch, ready = batch
                good = [(d, a, t) for d, a, t, reason in batch if reason is None]
                for digest, _a, _t, reason in batch:
                    if reason is not None:
                        if on_error == "raise":
                            raise ImageLoadError(paths[groups[digest][0]], reason)
                        for i in groups[digest]:
                            skipped[i] = reason
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
                    rows = [groups[d] for d, _, _ in good]
                    # A file rewritten since it was hashed is stored under the hash of what was decoded.
                    keys = [a for _, a, _ in good]
                    for layer in layers:
                        codes = torch.cat(pooled[layer]).cpu().numpy()
                        for r, idx in enumerate(rows):
                            out[layer][idx] = codes[r]
                        if layer in stores:
                            new = [r for r, (d, _, _) in enumerate(good) if d not in have[layer]]
                            if new:
                                committer.add(layer, [keys[r] for r in new], codes[new])
                    computed += len(good)
                    committer.step(len(good))
                if len(good) < len(batch):
                    bar.update(len(batch) - len(good))  # the unreadable ones are done too
        finally:
            if batches is not loader:
                batches.close()
            committer.commit()
            bar.close()
        return computed


class _Committer:
    """Buffers new codes per layer and commits them as cache shards every so often."""

    def __init__(self, stores, rows, seconds):
        self.stores = stores
        self.rows = rows
        self.seconds = seconds
        self.buffer = {layer: ([], []) for layer in stores}
        self.pending = 0
        self.last = time.monotonic()

    def add(self, layer, digests, codes):
        keys, blocks = self.buffer[layer]
        keys.extend(digests)
        blocks.append(codes)

    def step(self, n):
        self.pending += n
        if self.pending >= self.rows or time.monotonic() - self.last >= self.seconds:
            self.commit()

    def commit(self):
        for layer, (keys, blocks) in self.buffer.items():
            if keys:
                self.stores[layer].write(keys, np.concatenate(blocks))
            self.buffer[layer] = ([], [])
        self.pending = 0
        self.last = time.monotonic()
