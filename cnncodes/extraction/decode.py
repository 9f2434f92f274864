"""Image files -> preprocessed pixels: the Pillow and torch decoders and their reading threads."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ..images.load import (
    ImageLoadError,
    jpeg_orientation,
    load_image_bytes,
    read_and_hash_all,
    read_file,
    remember_digest,
)
from ..images.views import view_box


def preprocess(image, preprocessing, digest=None):
    """Resize and crop an RGB PIL image as ``preprocessing`` says; a uint8 ``(3, H, W)`` tensor.

    Normalisation happens later, on the whole batch (on the GPU when there is one), so that
    worker processes send 4x less data. ``digest``: the SHA-256 hex digest of the image file's
    bytes, which seeds a random resized crop view (``"rrc:SEED:I"``, see :mod:`cnncodes.views`).
    """
    return TF.pil_to_tensor(_resize_crop(image, preprocessing, digest))


def _resize_crop(image, preprocessing, digest=None):
    mode = InterpolationMode(preprocessing.interpolation)
    size = list(preprocessing.resize)
    image = TF.resize(image, size, interpolation=mode, antialias=True)
    if preprocessing.view != "center":
        return _cut_view(image, preprocessing, digest)
    if preprocessing.crop is not None:
        image = TF.center_crop(image, list(preprocessing.crop))
    return image


def _cut_view(image, preprocessing, digest):
    """The view of a resized PIL image or ``(3, H, W)`` tensor other than ``"center"``.

    Both decoders cut the same boxes (:func:`cnncodes.views.view_box`), so a view differs
    between ``impl="pil"`` and ``"torch"`` only as their resizing does.
    """
    view, crop = preprocessing.view, preprocessing.crop
    if view == "flip":
        if crop is not None:
            image = TF.center_crop(image, list(crop))
        return TF.horizontal_flip(image)
    top, left, height, width, flip = view_box(view, tuple(TF.get_size(image)), crop, digest)
    if view.startswith("rrc:"):
        mode = InterpolationMode(preprocessing.interpolation)
        image = TF.resized_crop(
            image, top, left, height, width, list(crop), interpolation=mode, antialias=True
        )
    else:
        image = TF.crop(image, top, left, height, width)
    return TF.horizontal_flip(image) if flip else image


def _pixels_hwc(image, preprocessing, digest=None):
    """:func:`preprocess` as a uint8 ``(H, W, 3)`` array: stacked, it is already channels_last."""
    return np.asarray(_resize_crop(image, preprocessing, digest), dtype=np.uint8)


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
            return digest, actual, _pixels_hwc(image, self.preprocessing, actual), None
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
    """:func:`_resize_crop` for a uint8 ``(3, H, W)`` tensor (or a stack of them), on the
    tensor's device; a view other than ``"center"`` is cut afterwards, image by image
    (:func:`_cut_view`), as it depends on the image's digest."""
    mode = InterpolationMode(preprocessing.interpolation)
    pixels = TF.resize(pixels, list(preprocessing.resize), interpolation=mode, antialias=True)
    if preprocessing.crop is not None and preprocessing.view == "center":
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
        if self.preprocessing.view != "center":
            for i, row in enumerate(out):
                if row[2] is not None:
                    # The digest of the bytes decoded, as _Decode's (bytes given: hashed here).
                    digest = row[1] or hashlib.sha256(datas[i]).hexdigest()
                    row[2] = _cut_view(row[2], self.preprocessing, digest)
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
