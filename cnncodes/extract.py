"""Batched extraction of CNN codes from image files, through the cache (no scikit-learn here).

:func:`extract_codes` hashes every file, serves the codes the cache already has, and pushes only
the missing images through the network: decoded by worker processes while the network runs,
batched, under ``torch.inference_mode``, cut after the deepest requested layer. Codes are committed
to the cache every few hundred rows and whenever the run stops (an error, Ctrl-C), so nothing
computed is lost and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from . import cache as _cache
from .images import (
    DECODE_POLICY,
    ImageLoadError,
    file_digest,
    load_image_bytes,
    read_file,
    remember_digest,
)
from .models import (
    WeightsError,
    build_extractor,
    build_model,
    file_sha256,
    layer_shapes,
    resolve_layers,
    resolve_spec,
)
from .pooling import check_pooling, code_size, pool

__all__ = [
    "PRECISIONS",
    "ExtractionResult",
    "SkippedImage",
    "code_config",
    "extract_codes",
    "preprocess",
    "resolve_device",
    "resolve_precision",
    "spec_from_config",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
ON_ERROR = ("raise", "skip")


@dataclass(frozen=True)
class SkippedImage:
    """An input that produced no code: its position in the input, its path and why."""

    index: int
    path: str
    reason: str


@dataclass
class ExtractionResult:
    """What :func:`extract_codes` returns.

    Attributes
    ----------
    codes : dict of str to ndarray
        Per layer, float32 codes of shape ``(len(kept), n_features)`` in input order.
    kept : ndarray of int
        Input positions that have a code (all of them unless images were skipped).
    skipped : list of SkippedImage
        The inputs left out with ``on_error="skip"``, with their reasons.
    computed : int
        Images (distinct contents) pushed through the network in this call.
    cached : int
        Images (distinct contents) whose codes all came from the cache.
    configs : dict of str to dict
        Per layer, the configuration that made the codes (as stored in the cache).
    """

    codes: dict
    kept: np.ndarray
    skipped: list = field(default_factory=list)
    computed: int = 0
    cached: int = 0
    configs: dict = field(default_factory=dict)
    seconds: float = 0.0

    def concatenated(self):
        """All layers' codes side by side, in the order the layers were requested."""
        arrays = list(self.codes.values())
        if len(arrays) == 1:
            return arrays[0]
        return np.concatenate(arrays, axis=1)


def resolve_device(device="auto"):
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` checked."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available; use 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: only {torch.cuda.device_count()} GPU(s) present")
    elif dev.type != "cpu":
        raise ValueError(f"device={device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return dev


def resolve_precision(precision, device):
    """``"auto"`` -> ``"fp32"`` on the CPU and ``"bf16"`` on a GPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def code_config(spec, layer, pooling, precision):
    """The cache configuration of one layer's codes: everything that changes the numbers.

    Batch size, worker count and device count are deliberately absent: they do not change codes.
    """
    return {
        "format": _cache.FORMAT_VERSION,
        "model": spec.model,
        "arch": spec.arch_id,
        "weights": spec.weights_id,
        "layer": layer,
        "pooling": pooling,
        "preprocessing": spec.preprocessing.to_dict(),
        "precision": precision,
        "decode": DECODE_POLICY,
    }


def spec_from_config(config, weights_path=None, seed=0):
    """Rebuild the :class:`~cnncodes.models.ModelSpec` that made a cache configuration.

    The inverse of :func:`code_config`, used to recompute stored codes. A configuration made from
    a checkpoint file stores only the file's SHA-256, so the file must be supplied
    (``weights_path``: a path or a list of candidate paths; the one with the right hash is used).
    Torchvision weights are rebuilt by name, ``none:seed=N`` from its seed, and a user's callable
    with ``seed``.

    Raises
    ------
    ValueError
        Saying why the exact configuration cannot be rebuilt (a :class:`WeightsError` for a
        missing or different checkpoint; a plain ``ValueError`` when the rebuilt configuration
        differs, e.g. after a change of the decode policy or the format version).

    Examples
    --------
    >>> from cnncodes.models import resolve_spec
    >>> spec = resolve_spec("resnet18", "none", seed=3, resize=40, crop=32)
    >>> spec_from_config(code_config(spec, "avgpool", "avg", "fp32")) == spec
    True
    """
    try:
        model, weights_id = config["model"], config["weights"]
        pre = config["preprocessing"]
        overrides = {
            "resize": pre["resize"],
            "crop": pre["crop"] if pre["crop"] is not None else 0,
            "mean": pre["mean"],
            "std": pre["std"],
            "interpolation": pre["interpolation"],
        }
        layer, pooling, precision = config["layer"], config["pooling"], config["precision"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a cnncodes code configuration (missing {exc})") from None
    if weights_id.startswith("none:seed="):
        spec = resolve_spec(model, "none", seed=int(weights_id[len("none:seed=") :]), **overrides)
    elif weights_id.startswith("sha256:"):
        digest = weights_id[len("sha256:") :]
        if weights_path is None:
            raise WeightsError(
                f"made from a checkpoint file with SHA-256 {digest}, whose path is not stored; "
                "pass the file (weights_path=..., --weights PATH)"
            )
        candidates = (
            [weights_path] if isinstance(weights_path, (str, os.PathLike)) else weights_path
        )
        found = [p for p in candidates if os.path.isfile(p) and file_sha256(p) == digest]
        if not found:
            raise WeightsError(
                f"made from a checkpoint file with SHA-256 {digest}; none of the given weights "
                f"files ({', '.join(map(os.fspath, candidates))}) has that hash"
            )
        spec = resolve_spec(model, found[0], seed=seed, **overrides)
    elif weights_id.startswith("state-sha256:"):
        spec = resolve_spec(model, None, seed=seed, **overrides)
    else:
        spec = resolve_spec(model, weights_id, seed=seed, **overrides)
    rebuilt = code_config(spec, layer, pooling, precision)
    if rebuilt != config:
        fields = sorted(k for k in set(rebuilt) | set(config) if rebuilt.get(k) != config.get(k))
        raise ValueError(
            f"the configuration cannot be rebuilt exactly: {', '.join(fields)} differ(s) "
            f"(stored {', '.join(f'{k}={config.get(k)!r}' for k in fields)}; "
            f"now {', '.join(f'{k}={rebuilt.get(k)!r}' for k in fields)})"
        )
    return spec


def preprocess(image, preprocessing):
    """Resize and crop an RGB PIL image as ``preprocessing`` says; a uint8 ``(3, H, W)`` tensor.

    Normalisation happens later, on the whole batch (on the GPU when there is one), so that
    worker processes send 4x less data.
    """
    mode = InterpolationMode(preprocessing.interpolation)
    size = list(preprocessing.resize)
    image = TF.resize(image, size, interpolation=mode, antialias=True)
    if preprocessing.crop is not None:
        image = TF.center_crop(image, list(preprocessing.crop))
    return TF.pil_to_tensor(image)


class _Decode:
    """Picklable per-image work for DataLoader workers: read, hash, decode, resize, crop."""

    def __init__(self, items, preprocessing):
        self.items = items
        self.preprocessing = preprocessing

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        digest, path = self.items[i]
        try:
            data = read_file(path)
            actual = remember_digest(path, data)
            image = load_image_bytes(data, name=path)
            return digest, actual, preprocess(image, self.preprocessing), None
        except ImageLoadError as exc:
            return digest, None, None, exc.reason
        except Exception as exc:  # resize of a degenerate image, etc.: report per file
            return digest, None, None, f"cannot preprocess: {exc}"


def _worker_init(_worker_id):
    # Each worker decodes one image at a time; intra-op threads would only fight the network.
    torch.set_num_threads(1)


def _collate(batch):
    return batch


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


def _as_paths(images):
    if isinstance(images, (str, bytes, os.PathLike)):
        raise TypeError(
            f"images={images!r}: expected a sequence of image file paths, not a single path"
        )
    paths = []
    for i, p in enumerate(images):
        if not isinstance(p, (str, os.PathLike)):
            raise TypeError(
                f"images[{i}]={p!r}: expected an image file path (str or os.PathLike), "
                f"not {type(p).__name__}"
            )
        paths.append(os.fspath(p))
    return paths


def _default_workers():
    return min(4, os.cpu_count() or 1)


def extract_codes(
    images,
    spec,
    layers,
    pooling="avg",
    *,
    cache_dir="auto",
    batch_size=32,
    num_workers=None,
    device="auto",
    precision="auto",
    on_error="raise",
    progress=None,
    commit_rows=512,
    commit_seconds=5.0,
):
    """CNN codes of image files, from the cache where possible, else from the network.

    Parameters
    ----------
    images : sequence of str or os.PathLike
        Image files. Rows of the result follow this order.
    spec : ModelSpec
        A resolved model (:func:`cnncodes.models.resolve_spec`).
    layers : str or list of str
        Graph-node names (or ``"penultimate"``); several come out of one forward pass.
    pooling : str
        ``avg``, ``max``, ``avgmax``, ``pyramid`` or ``flatten`` (see :mod:`cnncodes.pooling`).
    cache_dir : "auto", None or path
        Where codes are cached (see :func:`cnncodes.cache.resolve_cache_dir`); None: no cache.
    batch_size : int
        Images per forward pass. Does not change the codes.
    num_workers : int, optional
        Decoding processes (0: decode in this process). Default: ``min(4, cpu_count)``.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    precision : str
        ``auto`` (fp32 on the CPU, bf16 on a GPU), ``fp32``, ``bf16`` or ``fp16`` (autocast).
    on_error : {"raise", "skip"}
        ``raise``: stop at the first bad image with an :class:`~cnncodes.images.ImageLoadError`
        naming it, after committing the codes already computed. ``skip``: leave it out and
        report it in :attr:`ExtractionResult.skipped`.
    progress : bool, optional
        Show a progress bar (default: when stderr is a terminal).
    commit_rows, commit_seconds :
        Commit new codes to the cache after this many images or seconds, whichever comes first.

    Returns
    -------
    ExtractionResult

    Examples
    --------
    >>> from cnncodes.models import resolve_spec
    >>> spec = resolve_spec("resnet18", "none")
    >>> result = extract_codes(["a.jpg", "b.png"], spec, "avgpool")  # doctest: +SKIP
    >>> result.codes["avgpool"].shape  # doctest: +SKIP
    (2, 512)
    """
    started = time.perf_counter()
    paths = _as_paths(images)
    check_pooling(pooling)
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r}: choose 'raise' or 'skip'")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive int")
    if num_workers is None:
        num_workers = _default_workers()
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers={num_workers!r}: expected an int >= 0")
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    layers = resolve_layers(spec, layers)
    shapes = layer_shapes(spec, layers)
    widths = {layer: code_size(shapes[layer], pooling) for layer in layers}
    configs = {layer: code_config(spec, layer, pooling, precision) for layer in layers}
    root = _cache.resolve_cache_dir(cache_dir)
    stores = {layer: _cache.CodeStore(root, configs[layer]) for layer in layers} if root else {}

    # 1. Identify every input by content.
    skipped = {}
    digests = [None] * len(paths)
    for i, path in enumerate(paths):
        try:
            digests[i] = file_digest(path)
        except ImageLoadError as exc:
            if on_error == "raise":
                raise
            skipped[i] = exc.reason
    groups = {}
    for i, digest in enumerate(digests):
        if digest is not None:
            groups.setdefault(digest, []).append(i)

    # 2. Serve what the cache has.
    out = {layer: np.zeros((len(paths), widths[layer]), np.float32) for layer in layers}
    have = {layer: set() for layer in layers}
    for layer, store in stores.items():
        index = store.index()
        hits = [d for d in groups if d in index]
        have[layer] = set(hits)
        if hits:
            rows = [groups[d][0] for d in hits]
            store.read(hits, out=out[layer], rows=rows)
    todo = [d for d in groups if any(d not in have[layer] for layer in layers)]
    cached = len(groups) - len(todo)
    for layer in layers:
        for d in have[layer]:
            first, *rest = groups[d]
            out[layer][rest] = out[layer][first]

    # 3. Compute the rest.
    computed = 0
    if todo:
        computed = _run_network(
            spec,
            layers,
            pooling,
            paths,
            groups,
            todo,
            out,
            have,
            stores,
            skipped,
            dev,
            precision,
            batch_size,
            num_workers,
            on_error,
            progress,
            commit_rows,
            commit_seconds,
        )
    for store in stores.values():
        if len(store.shard_paths()) > 64:
            store.compact()

    kept = np.array([i for i in range(len(paths)) if i not in skipped], dtype=np.int64)
    codes = {layer: (arr if len(kept) == len(paths) else arr[kept]) for layer, arr in out.items()}
    return ExtractionResult(
        codes=codes,
        kept=kept,
        skipped=[SkippedImage(i, paths[i], skipped[i]) for i in sorted(skipped)],
        computed=computed,
        cached=cached,
        configs=configs,
        seconds=time.perf_counter() - started,
    )


def _run_network(
    spec,
    layers,
    pooling,
    paths,
    groups,
    todo,
    out,
    have,
    stores,
    skipped,
    dev,
    precision,
    batch_size,
    num_workers,
    on_error,
    progress,
    commit_rows,
    commit_seconds,
):
    """Push the images of ``todo`` through the network, filling ``out`` and the cache."""
    from tqdm.auto import tqdm

    net = build_model(spec)
    extractor = build_extractor(net, layers).to(dev)
    channels_last = True
    extractor = extractor.to(memory_format=torch.channels_last)
    mean = torch.tensor(spec.preprocessing.mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(spec.preprocessing.std, device=dev).view(1, 3, 1, 1)
    dataset = _Decode([(d, paths[groups[d][0]]) for d in todo], spec.preprocessing)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers if len(todo) > 1 else 0,
        collate_fn=_collate,
        worker_init_fn=_worker_init if num_workers else None,
        pin_memory=dev.type == "cuda",
    )
    committer = _Committer(stores, commit_rows, commit_seconds)
    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = tqdm(total=len(todo), unit="img", desc="extracting", disable=not show, leave=False)
    computed = 0
    autocast = torch.autocast(dev.type, dtype=_DTYPES.get(precision), enabled=precision in _DTYPES)
    try:
        for batch in loader:
            good = [(d, a, t) for d, a, t, reason in batch if reason is None]
            for digest, _a, _t, reason in batch:
                if reason is not None:
                    if on_error == "raise":
                        raise ImageLoadError(paths[groups[digest][0]], reason)
                    for i in groups[digest]:
                        skipped[i] = reason
            if good:
                x = torch.stack([t for _, _, t in good]).to(dev, non_blocking=True)
                x = (x.float().div_(255) - mean) / std
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.inference_mode(), autocast:
                    feats = extractor(x)
                rows = [groups[d] for d, _, _ in good]
                # A file rewritten since it was hashed is stored under the hash of what was decoded.
                keys = [a for _, a, _ in good]
                for layer in layers:
                    codes = pool(feats[layer], pooling).cpu().numpy()
                    for r, idx in enumerate(rows):
                        out[layer][idx] = codes[r]
                    if layer in stores:
                        new = [r for r, (d, _, _) in enumerate(good) if d not in have[layer]]
                        if new:
                            committer.add(layer, [keys[r] for r in new], codes[new])
                computed += len(good)
                committer.step(len(good))
            bar.update(len(batch))
    finally:
        committer.commit()
        bar.close()
    return computed
