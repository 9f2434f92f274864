"""Batched extraction of CNN codes from image files, through the cache (no scikit-learn here).

:func:`extract_codes` hashes every file, serves the codes the cache already has, and pushes only
the missing images through the network: decoded while the network runs (by worker processes, or
by a background thread where there are none), batched, under ``torch.inference_mode``, cut after
the deepest requested layer, with BatchNorm folded into the convolutions before it and
channels_last memory. Codes are committed to the cache every few hundred rows and whenever the run
stops (an error, Ctrl-C), so nothing computed is lost and an interrupted run resumes where it
stopped. Speed measurements and the reasons for the defaults: ``bench/RESULTS.md``.

With ``spec.preprocessing.impl == "torch"`` the images are decoded and preprocessed as tensors on
the extraction device instead (JPEG by torchvision: nvJPEG on a GPU, batched), in a background
thread of this process and, on a GPU, on a second CUDA stream; see :func:`preprocess_bytes`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from . import cache as _cache
from ._choices import PRECISIONS
from ._progress import Progress
from .images import (
    ImageLoadError,
    file_digests,
    jpeg_orientation,
    load_image_bytes,
    read_and_hash_all,
    read_file,
    remember_digest,
)
from .models import (
    WeightsError,
    _is_int,
    build_extractor,
    build_model,
    file_sha256,
    layer_shapes,
    resolve_layers,
    resolve_spec,
)
from .persistence import UntrustedModelCodeError, refused_model_code
from .pooling import check_pooling, code_size, pool
from .spec import GPU_DECODER, CodeKey

__all__ = [
    "CPU_FORWARD_BATCH",
    "PRECISIONS",
    "ExtractionResult",
    "SkippedImage",
    "code_config",
    "exact_fp32",
    "extract_codes",
    "preprocess",
    "preprocess_bytes",
    "resolve_device",
    "resolve_precision",
    "spec_from_config",
]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: Largest forward pass on the CPU; bigger loader batches go through in chunks of this size.
CPU_FORWARD_BATCH = 8
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


# Where the PyTorch version has them (2.9+), the per-operation float32 precision switches that
# CUDA kernels read: cuBLAS matrix products and cuDNN convolutions ("tf32" lets them round inputs
# to TF32; cuDNN convolutions default to it). Older versions have the legacy ``allow_tf32`` flags.
_FP32_SWITCHES = {"cuda": (("cuda", "matmul"), ("cudnn", "conv"))}
_FP32_LEGACY = {"cuda": (("cuda", "matmul"), ("cudnn",))}


def _backend(path):
    module = torch.backends
    for part in path:
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _fp32_switches(device_type):
    """``[(object, attribute, exact value)]``: the switches that keep float32 work exact."""
    switches = []
    for path in _FP32_SWITCHES.get(device_type, ()):
        module = _backend(path)
        try:
            _ = module.fp32_precision
        except (AttributeError, RuntimeError):
            break  # a PyTorch without the new API: use the legacy flags below
        switches.append((module, "fp32_precision", "ieee"))
    else:
        return switches
    return [
        (module, "allow_tf32", False)
        for module in map(_backend, _FP32_LEGACY.get(device_type, ()))
        if module is not None
    ]


@contextlib.contextmanager
def exact_fp32(device_type):
    """Full IEEE float32 matrix products and convolutions on ``device_type`` while the block runs.

    On CUDA, PyTorch lets cuDNN convolutions use TF32 by default, and cuBLAS matrix products when
    the user asked for it (``torch.backends.cuda.matmul``, ``torch.set_float32_matmul_precision``).
    TF32 keeps 10 mantissa bits, so "fp32" codes made that way differ from CPU fp32 codes by about
    1e-3 while being stored under the same cache key. This turns TF32 off for the duration (the
    per-operation ``fp32_precision = "ieee"``, or ``allow_tf32 = False`` on PyTorch < 2.9) and
    restores the previous settings on exit, even when the block raises. A no-op on the CPU.

    Examples
    --------
    >>> with exact_fp32("cuda"):
    ...     torch.backends.cudnn.conv.fp32_precision
    'ieee'
    """
    saved = []
    try:
        for module, attribute, exact in _fp32_switches(device_type):
            saved.append((module, attribute, getattr(module, attribute)))
            setattr(module, attribute, exact)
        yield
    finally:
        for module, attribute, value in reversed(saved):
            setattr(module, attribute, value)


def code_config(spec, layer, pooling, precision, device_type="cpu"):
    """The cache configuration of one layer's codes: everything that changes the numbers.

    :meth:`CodeKey.config <cnncodes.spec.CodeKey.config>` of
    :meth:`CodeKey.for_device <cnncodes.spec.CodeKey.for_device>`; see there.
    """
    return CodeKey.for_device(spec, layer, pooling, precision, device_type).config()


def spec_from_config(config, weights_path=None, seed=0, trust_model_code=False):
    """Rebuild the :class:`~cnncodes.models.ModelSpec` that made a cache configuration.

    The inverse of :func:`code_config`, used to recompute stored codes. A configuration made from
    a checkpoint file stores only the file's SHA-256, so the file must be supplied
    (``weights_path``: a path or a list of candidate paths; the one with the right hash is used).
    Torchvision weights are rebuilt by name, ``none:seed=N`` from its seed, and a user's callable
    with ``seed``.

    A configuration comes from a cache folder, which may come from elsewhere: like
    :func:`cnncodes.persistence.load`, a ``package.module:callable`` model it names is imported
    only if ``trust_model_code`` allows it (False: only
    :data:`~cnncodes.persistence.BUILTIN_MODEL_CALLABLES`; True: any; or a list of names).

    Raises
    ------
    cnncodes.persistence.UntrustedModelCodeError
        The configuration names a model callable that ``trust_model_code`` does not allow
        (nothing was imported).
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
    key = CodeKey.from_config(config)
    model, weights = key.spec.model, key.spec.weights_spec
    refused = refused_model_code([model], trust_model_code)
    if refused:
        raise UntrustedModelCodeError(
            "this cache configuration",
            refused,
            what="A cache folder",
            command="cnncodes cache verify",
            call=f"spec_from_config(config, trust_model_code={refused!r})",
        )
    overrides = key.spec.preprocessing.arguments()
    if weights.kind == "none":
        spec = resolve_spec(model, "none", seed=weights.seed, **overrides)
    elif weights.kind == "checkpoint":
        if weights_path is None:
            raise WeightsError(
                f"made from a checkpoint file with SHA-256 {weights.sha256}, whose path is not "
                "stored; pass the file (weights_path=..., --weights PATH)"
            )
        candidates = (
            [weights_path] if isinstance(weights_path, (str, os.PathLike)) else weights_path
        )
        found = [p for p in candidates if os.path.isfile(p) and file_sha256(p) == weights.sha256]
        if not found:
            raise WeightsError(
                f"made from a checkpoint file with SHA-256 {weights.sha256}; none of the given "
                f"weights files ({', '.join(map(os.fspath, candidates))}) has that hash"
            )
        spec = resolve_spec(model, found[0], seed=seed, **overrides)
    elif weights.kind == "callable":
        spec = resolve_spec(model, None, seed=seed, **overrides)
    else:
        spec = resolve_spec(model, weights.name, seed=seed, **overrides)
    gpu = isinstance(key.decode, str) and key.decode.endswith(GPU_DECODER)
    device_type = "cuda" if gpu else "cpu"
    rebuilt = CodeKey.for_device(spec, key.layer, key.pooling, key.precision, device_type).config()
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
    return TF.pil_to_tensor(_resize_crop(image, preprocessing))


def _resize_crop(image, preprocessing):
    mode = InterpolationMode(preprocessing.interpolation)
    size = list(preprocessing.resize)
    image = TF.resize(image, size, interpolation=mode, antialias=True)
    if preprocessing.crop is not None:
        image = TF.center_crop(image, list(preprocessing.crop))
    return image


def _pixels_hwc(image, preprocessing):
    """:func:`preprocess` as a uint8 ``(H, W, 3)`` array: stacked, it is already channels_last."""
    return np.asarray(_resize_crop(image, preprocessing), dtype=np.uint8)


class _Decode:
    """Picklable per-image work for DataLoader workers: read, hash, decode, resize, crop.

    Pixels come back as uint8 ``(H, W, 3)`` numpy arrays (no torch in the decoding thread or
    process): a stack of them is an ``NHWC`` block, i.e. a channels_last batch without a copy.
    """

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
            return digest, actual, _pixels_hwc(image, self.preprocessing), None
        except ImageLoadError as exc:
            return digest, None, None, exc.reason
        except Exception as exc:  # resize of a degenerate image, etc.: report per file
            return digest, None, None, f"cannot preprocess: {exc}"


# ImageOps.exif_transpose's transpositions (EXIF orientation 2-8) on (C, H, W) tensors.
_ORIENT = {
    2: lambda t: t.flip(-1),
    3: lambda t: t.flip(-2, -1),
    4: lambda t: t.flip(-2),
    5: lambda t: t.transpose(-2, -1),
    6: lambda t: t.rot90(-1, (-2, -1)),
    7: lambda t: t.transpose(-2, -1).flip(-2, -1),
    8: lambda t: t.rot90(1, (-2, -1)),
}


def _quiet_torchvision_io():
    # torchvision 0.29 warns on every decode call that its image I/O is deprecated; the user
    # chose impl="torch" and cannot act on it.
    warnings.filterwarnings(
        "ignore",
        message="The image decoding and encoding capabilities of TorchVision",
        category=DeprecationWarning,
    )


def _decode_jpegs(blobs, device):
    """JPEG bytes -> uint8 RGB ``(3, H, W)`` tensors on ``device``; None where torchvision fails.

    One call decodes the whole list (batched nvJPEG on a GPU); one bad file fails that call, so
    then each file is decoded on its own.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    if not blobs:
        return []
    _quiet_torchvision_io()
    tensors = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
    try:
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    out = []
    for tensor in tensors:
        try:
            out.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out.append(None)
    return out


def _resize_crop_tensor(pixels, preprocessing):
    """:func:`_resize_crop` for a uint8 ``(3, H, W)`` tensor, on the tensor's device."""
    mode = InterpolationMode(preprocessing.interpolation)
    pixels = TF.resize(pixels, list(preprocessing.resize), interpolation=mode, antialias=True)
    if preprocessing.crop is not None:
        pixels = TF.center_crop(pixels, list(preprocessing.crop))
    return pixels


def preprocess_bytes(data, preprocessing, *, name="<bytes>", device="cpu"):
    """Decode, orient, resize and crop image file bytes with ``impl="torch"``.

    The ``impl="torch"`` counterpart of :func:`preprocess` (which takes a decoded PIL image):
    a JPEG that :func:`cnncodes.images.jpeg_orientation` accepts is decoded by torchvision on
    ``device``, anything else (or a JPEG torchvision fails on) by
    :func:`cnncodes.images.load_image_bytes`. Returns a uint8 ``(3, H, W)`` tensor on ``device``.

    Raises
    ------
    ImageLoadError
        The bytes are not an image the decode policy accepts (the same error as with Pillow).

    Examples
    --------
    >>> from cnncodes.models import resolve_preprocessing
    >>> pre = resolve_preprocessing(resize=40, crop=32, impl="torch")
    >>> preprocess_bytes(open("photo.jpg", "rb").read(), pre).shape  # doctest: +SKIP
    torch.Size([3, 32, 32])
    """
    [(_, _, pixels, reason)] = _TorchDecode([], preprocessing, device).batch([(None, name)], [data])
    if reason is not None:
        raise ImageLoadError(name, reason)
    return pixels


class _TorchDecode:
    """``impl="torch"`` work, batch by batch: read, hash, decode, orient, resize, crop.

    JPEG files go through torchvision on ``device`` together (batched nvJPEG on a GPU), every
    other file through the Pillow policy; then each image is oriented, resized and cropped on
    ``device`` by itself (sizes differ). Iterating yields ``(batch, ready)``: ``batch`` is a list
    of ``(digest, actual digest, uint8 (3, H, W) tensor, reason)`` like :class:`_Decode`'s
    items, ``ready`` a CUDA event recorded on the side stream that made the tensors (None on the
    CPU), so that this can run in a background thread while the network runs on the main stream.
    """

    def __init__(self, items, preprocessing, device, batch_size=32):
        self.items = items
        self.preprocessing = preprocessing
        self.device = torch.device(device)
        self.batch_size = batch_size

    def __iter__(self):
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        for start in range(0, len(self.items), self.batch_size):
            items = self.items[start : start + self.batch_size]
            if stream is None:
                yield self.batch(items), None
                continue
            with torch.cuda.stream(stream):
                batch = self.batch(items)
                ready = torch.cuda.Event()
                ready.record(stream)
            yield batch, ready

    def batch(self, items, blobs=None):
        """Process ``items`` (``(digest, path)``); ``blobs``: their bytes, already read."""
        out = [[digest, None, None, None] for digest, _ in items]
        if blobs is not None:
            datas = list(blobs)
        else:
            # Read and hashed by a pool of threads: this thread feeds a GPU.
            datas = []
            for i, (data, actual, error) in enumerate(read_and_hash_all([p for _, p in items])):
                datas.append(data)
                out[i][1] = actual
                if error is not None:
                    out[i][3] = error.reason
        orientations = [None] * len(items)
        for i, data in enumerate(datas):
            if data is not None:
                orientations[i] = jpeg_orientation(data)
        jpegs = [i for i, o in enumerate(orientations) if o is not None]
        for i, pixels in zip(jpegs, _decode_jpegs([datas[i] for i in jpegs], self.device)):
            if pixels is not None:
                out[i][2] = _ORIENT[orientations[i]](pixels) if orientations[i] != 1 else pixels
        for i, (_, path) in enumerate(items):
            if datas[i] is None or out[i][2] is not None:
                continue
            try:
                image = load_image_bytes(datas[i], name=path)
                out[i][2] = TF.pil_to_tensor(image).to(self.device)
            except ImageLoadError as exc:
                out[i][3] = exc.reason
            except Exception as exc:  # noqa: BLE001 - reported per file, like _Decode
                out[i][3] = f"cannot preprocess: {exc}"
        # Images of one size are resized and cropped together: one call (a few kernel launches
        # on a GPU) instead of one per image. Same arithmetic, image by image.
        sizes = {}
        for i, row in enumerate(out):
            if row[2] is not None:
                sizes.setdefault(tuple(row[2].shape), []).append(i)
        for group in sizes.values():
            if len(group) > 1:
                try:
                    stacked = torch.stack([out[i][2] for i in group])
                    resized = _resize_crop_tensor(stacked, self.preprocessing).unbind(0)
                except Exception:  # retried image by image below, to name the file
                    resized = None
                if resized is not None:
                    for i, pixels in zip(group, resized):
                        out[i][2] = pixels
                    continue
            for i in group:
                try:
                    out[i][2] = _resize_crop_tensor(out[i][2], self.preprocessing)
                except Exception as exc:  # resize of a degenerate image, etc.: report per file
                    out[i][2], out[i][3] = None, f"cannot preprocess: {exc}"
        return [tuple(row) for row in out]


def _stack_ready(pixels, ready, device):
    """Stack the ``(3, H, W)`` tensors of a :class:`_TorchDecode` batch once they are made."""
    if ready is not None:
        current = torch.cuda.current_stream(device)
        current.wait_event(ready)
        for tensor in pixels:
            # Made on the side stream, read on this one: keep the allocator from reusing them early.
            tensor.record_stream(current)
    return torch.stack(pixels).contiguous(memory_format=torch.channels_last)


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


def _worker_init(_worker_id):
    # Each worker decodes one image at a time; intra-op threads would only fight the network.
    torch.set_num_threads(1)


def _collate(batch):
    return batch


_DONE = object()


def _prefetch(iterable, depth=1):
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead.

    Used when decoding happens in this process (``num_workers=0``): Pillow releases the GIL while
    it decodes and resizes, so the next batch is decoded while the network runs on this one
    (measured on 2 cores: MobileNetV2 about +6%, ResNet-18 unchanged; no worker processes to
    start). Exceptions are re-raised in the consumer; closing the generator stops the thread.
    """
    import queue
    import threading

    items = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item):
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run():
        try:
            for item in iterable:
                if not put((item, None)):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put((_DONE, exc))
            return
        put((_DONE, None))

    thread = threading.Thread(target=run, name="cnncodes-decode", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = items.get()
            if item is _DONE:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        thread.join()


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
    if isinstance(images, (list, tuple)) and all(type(p) is str for p in images):
        return list(images)  # the common case, checked in one pass (warm calls are ~1 ms)
    paths = []
    for i, p in enumerate(images):
        if not isinstance(p, (str, os.PathLike)):
            raise TypeError(
                f"images[{i}]={p!r}: expected an image file path (str or os.PathLike), "
                f"not {type(p).__name__}"
            )
        paths.append(os.fspath(p))
    return paths


def _default_workers(device, cores=None):
    """Decoding processes when ``num_workers`` is not given.

    On the CPU the network already keeps every core busy (intra-op threads), so on a small machine
    decoding workers only take cores from it: measured on 2 cores, 0 workers beat 1 and 2 (see
    bench/RESULTS.md); a larger CPU machine gets up to 4. A GPU needs the CPU only to decode: every
    core but one (for this process), up to 16. Pillow decodes about 190 JPEGs of 500x375 per
    second per core (measured on an H100 machine with 1 / 4 / 15 workers: 191 / 612 / 1,180
    images/s, against 6,220 images/s for a ResNet-50 forward pass in fp32), far below what the
    GPU takes.
    """
    cores = cores or os.cpu_count() or 1
    if device.type == "cpu":
        return 0 if cores <= 4 else 4
    return min(16, max(1, cores - 1))


# Per process: code widths by (spec, layers, pooling), and stores by configuration. A grid search
# asks for the same codes once per fold and candidate; these spare it re-hashing configurations
# and re-reading shard metadata (measured in bench/RESULTS.md).
_WIDTHS = {}
_STORES = {}


def _store(root, config):
    key = (root, json.dumps(config, sort_keys=True))
    store = _STORES.get(key)
    if store is None:
        if len(_STORES) >= 256:
            _STORES.clear()
        store = _STORES[key] = _cache.CodeStore(root, copy.deepcopy(config))
    return store


def _cached_widths(stores, layers):
    """Code widths of configurations the cache already holds, or None where any is new.

    Shards are only written for a valid configuration, with its code width, so a stored width
    spares probing the network's shapes (a graph trace: most of a warm call's fixed cost).
    """
    if not stores:
        return None
    widths = {}
    for layer in layers:
        store = stores[layer]
        if not store.shard_paths():
            return None
        width = store.info()["features"]
        if width is None:
            return None
        widths[layer] = width
    return widths


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
        Images decoded together and pushed through the network together: in one forward pass on
        a GPU, in passes of at most :data:`CPU_FORWARD_BATCH` on the CPU (faster there). On the
        CPU the codes are bit-identical whatever the batch size (a lone image goes through as a
        pair, see bench/RESULTS.md); on a GPU, cuDNN may choose other algorithms for other batch
        sizes, so codes may differ by float rounding.
    num_workers : int, optional
        Decoding processes (0: decode in this process). Default: on the CPU, 0 on a machine with at
        most 4 cores (the network needs them all), else 4; on a GPU, every core but one, up to
        16. Not used when
        ``spec.preprocessing.impl == "torch"``: that decodes in a thread of this process.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    precision : str
        ``auto`` (fp32 on the CPU, bf16 on a GPU), ``fp32``, ``bf16`` or ``fp16`` (autocast).
    on_error : {"raise", "skip"}
        ``raise``: stop at the first bad image with an :class:`~cnncodes.images.ImageLoadError`
        naming it, after committing the codes already computed. ``skip``: leave it out and
        report it in :attr:`ExtractionResult.skipped`.
    progress : bool, optional
        False: none. None (default) or True: a progress bar when stderr is a terminal, else (a
        log file) a line every 10 seconds and a final one; with None a run shorter than that
        stays silent (see :class:`cnncodes._progress.Progress`).
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
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive int")
    if num_workers is not None and (not _is_int(num_workers) or num_workers < 0):
        raise ValueError(f"num_workers={num_workers!r}: expected an int >= 0")
    batch_size = int(batch_size)
    num_workers = None if num_workers is None else int(num_workers)
    dev = resolve_device(device)
    if num_workers is None:
        num_workers = _default_workers(dev)
    precision = resolve_precision(precision, dev)
    layers = resolve_layers(spec, layers)
    configs = {layer: code_config(spec, layer, pooling, precision, dev.type) for layer in layers}
    root = _cache.resolve_cache_dir(cache_dir)
    stores = {layer: _store(root, configs[layer]) for layer in layers} if root else {}
    widths = _WIDTHS.get((spec, tuple(layers), pooling)) or _cached_widths(stores, layers)
    if widths is None:
        # Checks the pooling against each layer's shape before any image is read.
        shapes = layer_shapes(spec, layers)
        widths = {layer: code_size(shapes[layer], pooling) for layer in layers}
    _WIDTHS[(spec, tuple(layers), pooling)] = widths

    # 1. Identify every input by content.
    skipped = {}
    digests = file_digests(paths)
    for i, digest in enumerate(digests):
        if isinstance(digest, ImageLoadError):
            if on_error == "raise":
                raise digest
            skipped[i] = digest.reason
            digests[i] = None
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
            store.read(hits, out=out[layer], rows=rows, index=index)
    if len(layers) == 1:
        todo = [d for d in groups if d not in have[layers[0]]] if have[layers[0]] else list(groups)
    else:
        todo = [d for d in groups if any(d not in have[layer] for layer in layers)]
    cached = len(groups) - len(todo)
    # The same picture under several names: copy its row (only where there are such inputs).
    duplicates = [(d, g) for d, g in groups.items() if len(g) > 1]
    for layer in layers:
        for d, (first, *rest) in duplicates:
            if d in have[layer]:
                out[layer][rest] = out[layer][first]

    # 3. Compute the rest.
    computed = 0
    # fp32 codes on a GPU must be the CPU's fp32 codes (same cache key): no TF32 while they are made.
    exact = exact_fp32(dev.type) if precision == "fp32" else contextlib.nullcontext()
    if todo:
        for layer in layers:
            if layer in stores and len(have[layer]) < len(groups):  # it will write codes
                stores[layer].ensure_writable()
        with exact:
            computed = ForwardLoop(
                spec=spec,
                layers=layers,
                pooling=pooling,
                device=dev,
                precision=precision,
                batch_size=batch_size,
                num_workers=num_workers,
                on_error=on_error,
                progress=progress,
                commit_rows=commit_rows,
                commit_seconds=commit_seconds,
                paths=paths,
                groups=groups,
                todo=todo,
                out=out,
                have=have,
                stores=stores,
                skipped=skipped,
            ).run()
    for store in stores.values():
        if len(store.shard_paths()) > 64:
            store.compact()

    if skipped:
        kept = np.array([i for i in range(len(paths)) if i not in skipped], dtype=np.int64)
    else:
        kept = np.arange(len(paths), dtype=np.int64)
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


@dataclass(frozen=True, kw_only=True)
class ForwardLoop:
    """One pass of the images of ``todo`` through the network, filling ``out`` and the cache.

    Built by :func:`extract_codes` once it knows what the cache lacks; :meth:`run` does the work.
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
