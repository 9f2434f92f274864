"""Decode image files into fully loaded RGB PIL images under one fixed policy.

Every image that reaches a network goes through :func:`load_image` (or
:func:`load_image_bytes`), so that two runs on the same file always see the same
pixels.  The policy, whose version is :data:`DECODE_POLICY`, is:

Files
    Only regular files are opened.  A FIFO, directory, socket or device is
    refused with ``ImageLoadError("not a regular file")`` without reading from it
    (``Image.open`` on a FIFO would block forever).  The file is opened with
    ``O_NONBLOCK`` and checked again with ``fstat`` so a file swapped for a FIFO
    between the two checks cannot hang the caller either.  Missing files and
    permission errors are reported as ``"file not found"`` and
    ``"permission denied"``.

Formats
    Any format Pillow reads.  Only the first frame of an animation or a
    multi-page file is used.

Decompression bombs
    The declared ``width * height`` is compared with ``max_pixels`` right after
    the header is parsed and before any pixel data is decoded.  Pillow's own
    ``DecompressionBombWarning``/``DecompressionBombError`` are turned into
    :class:`ImageLoadError` as well.  Global Pillow state (``Image.MAX_IMAGE_PIXELS``)
    is never changed, so a ``max_pixels`` above twice Pillow's limit cannot lift
    Pillow's own hard error.

Orientation
    The EXIF orientation tag is applied (``ImageOps.exif_transpose``).  When the
    EXIF block is broken the image is used as stored rather than refused.

Colour
    The result is always mode ``"RGB"``.  Alpha (``RGBA``, ``LA``, ``PA``,
    ``RGBa``, ``La``, an RGBA palette, or a ``transparency`` key on ``P``,
    ``L``, ``RGB`` or ``1`` images) is composited over a white background, not dropped.
    16-bit grayscale (``I;16*``) is scaled from 0..65535 to 0..255 (divide by
    257, round) because ``convert("RGB")`` would saturate it.  32-bit ``I``
    images whose maximum is at most 255 are taken as 8-bit, otherwise clipped to
    0..65535 and scaled like 16-bit.  Float ``F`` images whose maximum is at
    most 1.0 are scaled by 255, otherwise clipped to 0..255 (NaN becomes 0).
    Every other mode (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``,
    ...) goes through Pillow's ``convert("RGB")``.  ICC profiles are not applied.

Errors
    Truncated or corrupt data raises :class:`ImageLoadError` because the whole
    image is decoded inside the call; ``ImageFile.LOAD_TRUNCATED_IMAGES`` is never
    set.  Any exception Pillow raises while decoding becomes an
    :class:`ImageLoadError` carrying the original message, except
    ``MemoryError`` and ``KeyboardInterrupt``, which propagate.

The returned image is detached from the file: the file is closed before the
function returns.

Other decoders
    The ``"torch"`` preprocessing (:class:`cnncodes.models.Preprocessing`) decodes
    JPEG files with torchvision (libjpeg-turbo on the CPU, nvJPEG on a GPU) under
    this same policy: :func:`jpeg_orientation` lets through only complete
    single-frame JPEG files of mode ``RGB`` or ``L`` within ``max_pixels`` (their
    pixels need no colour rule beyond grey -> RGB) and gives their EXIF orientation;
    every other file, and every file torchvision fails on, goes through
    :func:`load_image_bytes`, so errors are the same under both.

Bump :data:`DECODE_POLICY` whenever a change here would change decoded pixels:
it is part of cache keys.

Note that the bomb check uses ``warnings.catch_warnings``, which on Python 3.11
swaps process-wide warning filters; the explicit size check makes the result
correct even if another thread races on those filters.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UsageError
from ..spec import DECODE_POLICY, file_stamp
from ..utils.files import display
from ..utils.memo import Memo

__all__ = [
    "DECODE_POLICY",
    "MAX_PIXELS",
    "ImageLoadError",
    "load_image",
    "load_image_bytes",
    "read_file",
    "file_digest",
    "file_stamp",
    "jpeg_orientation",
]


MAX_PIXELS: int = 89_478_485

_WHITE = (255, 255, 255, 255)
_BOMB_PIXELS_RE = re.compile(r"\((\d+) pixels\)")


class ImageLoadError(UsageError):
    """Raised when an image file cannot be turned into RGB pixels.

    Parameters
    ----------
    path : str, bytes or os.PathLike
        The file (or the ``name`` given to :func:`load_image_bytes`).
    reason : str
        Short human-readable reason, e.g. ``"not a regular file"``.

    Attributes
    ----------
    path : str
        ``os.fsdecode(path)``; undecodable bytes are kept as surrogate escapes
        so ``os.fsencode(err.path)`` gives back the original name.
    reason : str
        The reason given.

    Notes
    -----
    ``str(err)`` is ``f"{path}: {reason}"``, except that undecodable bytes of a
    non-UTF-8 file name are written as ``\\xNN`` so the message can always be
    printed or logged.

    Examples
    --------
    >>> err = ImageLoadError("a.jpg", "file not found")
    >>> str(err)
    'a.jpg: file not found'
    """

    def __init__(self, path, reason: str):
        self.path = path if isinstance(path, str) else os.fsdecode(path)
        self.reason = reason
        super().__init__(f"{display(self.path)}: {reason}")

    def __reduce__(self):
        # The default reduce would call cls(message) and fail on the second
        # argument, which breaks passing the error between worker processes.
        return (type(self), (self.path, self.reason))


def load_image(path, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image file and return it fully decoded as an RGB PIL image.

    Parameters
    ----------
    path : str, bytes or os.PathLike
        The file to read.  Only regular files are opened.
    max_pixels : int, optional
        Refuse images whose declared ``width * height`` exceeds this.  Defaults
        to :data:`MAX_PIXELS` (Pillow's own default).

    Returns
    -------
    PIL.Image.Image
        A loaded image of mode ``"RGB"``, detached from the (closed) file.

    Raises
    ------
    ImageLoadError
        The file is missing, unreadable, not a regular file, not an image,
        truncated or corrupt, or too large.

    Examples
    --------
    >>> img = load_image("photo.jpg")  # doctest: +SKIP
    >>> img.mode  # doctest: +SKIP
    'RGB'
    """
    return _decode(io.BytesIO(read_file(path)), os.fsdecode(path), max_pixels)


def read_file(path) -> bytes:
    """Read a whole image file, refusing anything but a regular file (a FIFO never blocks).

    Raises
    ------
    ImageLoadError
        The file is missing, unreadable or not a regular file.

    Examples
    --------
    >>> data = read_file("photo.jpg")  # doctest: +SKIP
    """
    name = os.fsdecode(path)
    try:
        # stat first so that opening has no side effects on devices.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ImageLoadError(name, "not a regular file")
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImageLoadError(name, "file not found") from None
    except PermissionError:
        raise ImageLoadError(name, "permission denied") from None
    except OSError as e:
        raise ImageLoadError(name, f"cannot open file: {e.strerror or e}") from None
    with os.fdopen(fd, "rb") as fp:
        try:
            # The path may have been replaced between stat and open.
            if not stat.S_ISREG(os.fstat(fp.fileno()).st_mode):
                raise ImageLoadError(name, "not a regular file")
            return fp.read()
        except OSError as e:
            raise ImageLoadError(name, f"read error: {e.strerror or e}") from None


# Digests of files by path, stamped with the file's file_stamp (a rewritten file is hashed again).
_DIGESTS = Memo(1_000_000)


def file_digest(path) -> str:
    """SHA-256 hex digest of an image file's bytes: the file's identity in the cache.

    Memoised in this process on the file's :func:`file_stamp`, which only skips re-reading an
    unchanged file; the identity itself is always the content hash.

    Raises
    ------
    ImageLoadError
        As :func:`read_file`.
    """
    digest = _memoised_digest(path)
    return digest if digest is not None else remember_digest(path, read_file(path))


def _memoised_digest(path):
    """The memoised digest of ``path`` if the file is unchanged since it was hashed, else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return _DIGESTS.get(os.fsdecode(path), stamp=file_stamp(path, st))


def _memoised_digests(paths):
    """:func:`_memoised_digest` of every path, in one loop (a grid search asks for the digest
    of every training image in each fit: this is most of a warm ``transform``)."""
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append(None)
            continue
        stamps.append(file_stamp(path, st) if stat.S_ISREG(st.st_mode) else None)
    # The same files, each unchanged (same stamps): the digests of last time, in one lookup.
    key = tuple(stamp[0] if stamp else None for stamp in stamps)
    batch = _BATCHES.get(key, stamp=stamps)
    if batch is not None:
        return list(batch)
    get = _DIGESTS.get
    out = [None if stamp is None else get(stamp[0], stamp=stamp) for stamp in stamps]
    if None not in out:
        _BATCHES.put(key, tuple(out), stamp=stamps)
    return out


_BATCHES = Memo(64)  # the paths of one call -> their digests, stamped with the files' stamps


def _read_and_hash(path):
    """``(bytes, digest, None)`` of one file, or ``(None, None, ImageLoadError)``."""
    try:
        data = read_file(path)
    except ImageLoadError as exc:
        return None, None, exc
    return data, remember_digest(path, data), None


def read_and_hash_all(paths, threads=None, keep_bytes=True):
    """:func:`_read_and_hash` of every path, in order, by a pool of ``threads`` threads.

    Reading and SHA-256 release the GIL, so threads overlap them (a GPU extraction must not wait
    for one thread hashing file after file). ``threads``: default ``min(8, cpu_count)``; 1 or a
    single path: no pool. ``keep_bytes=False`` drops each file's bytes once hashed.
    """
    threads = threads or min(8, os.cpu_count() or 1)

    def work(path):
        data, digest, error = _read_and_hash(path)
        return (data if keep_bytes else None), digest, error

    if threads <= 1 or len(paths) < 2 * _PER_TASK:
        return [work(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    # Runs of files per task: handing over single small files costs more than hashing them.
    runs = [paths[i : i + _PER_TASK] for i in range(0, len(paths), _PER_TASK)]
    with ThreadPoolExecutor(min(threads, len(runs)), thread_name_prefix="cnncodes-hash") as pool:
        return [item for run in pool.map(lambda r: [work(p) for p in r], runs) for item in run]


_PER_TASK = 16


def file_digests(paths, threads=None):
    """:func:`file_digest` of every path: a digest, or the :class:`ImageLoadError`, per path.

    Memoised digests are looked up first; the other files are read and hashed by
    :func:`read_and_hash_all`'s threads.
    """
    out = _memoised_digests(paths)
    missing = [i for i, d in enumerate(out) if d is None]
    done = read_and_hash_all([paths[i] for i in missing], threads, keep_bytes=False)
    for i, (_, digest, error) in zip(missing, done):
        out[i] = digest if error is None else error
    return out


def known_digests(paths):
    """``[(path, stamp, digest)]`` of the memoised digests of ``paths``: what
    :func:`adopt_digests` takes in another process (a grid search's workers), which then
    rereads no unchanged file. Each keeps its stamp, so a file changed since is hashed anew."""
    out = []
    for path in dict.fromkeys(os.fsdecode(p) for p in paths):
        entry = _DIGESTS.stamped(path)
        if entry is not None:
            out.append((path, *entry))
    return out


def adopt_digests(entries):
    """Memoise the digests :func:`known_digests` gave (in this process)."""
    for path, stamp, digest in entries:
        _DIGESTS.put(path, digest, stamp=stamp)


def remember_digest(path, data: bytes) -> str:
    """Hash ``data`` (the bytes just read from ``path``) and memoise it for :func:`file_digest`."""
    digest = hashlib.sha256(data).hexdigest()
    try:
        st = os.stat(path)
    except OSError:
        return digest
    return _DIGESTS.put(os.fsdecode(path), digest, stamp=file_stamp(path, st))


def load_image_bytes(
    data: bytes, *, name: str = "<bytes>", max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """Decode image file bytes already in memory, under the same policy as :func:`load_image`.

    Use this when the file has already been read (for example to hash it) and the
    exact same bytes must be decoded without reading the file a second time.

    Parameters
    ----------
    data : bytes-like
        The complete contents of an image file.
    name : str, bytes or os.PathLike, optional
        Used only in error messages.
    max_pixels : int, optional
        Refuse images whose declared ``width * height`` exceeds this.

    Returns
    -------
    PIL.Image.Image
        A loaded image of mode ``"RGB"``.

    Raises
    ------
    ImageLoadError
        The bytes are not an image, are truncated or corrupt, or are too large.

    Examples
    --------
    >>> data = open("photo.jpg", "rb").read()  # doctest: +SKIP
    >>> load_image_bytes(data, name="photo.jpg").size  # doctest: +SKIP
    (640, 480)
    """
    label = name if isinstance(name, str) else os.fsdecode(name)
    return _decode(io.BytesIO(data), label, max_pixels)


_ORIENTATION_TAG = 0x0112
_JPEG_EOI = b"\xff\xd9"


def jpeg_orientation(data: bytes, *, max_pixels: int = MAX_PIXELS) -> int | None:
    """EXIF orientation of a JPEG that a decoder other than Pillow may decode under the policy.

    Only the header is parsed. The answer is ``None`` (decode with :func:`load_image_bytes`, which
    gives the policy's pixels or its error) unless ``data`` is a JPEG (not MPO) of mode ``RGB``
    or ``L``, declares between 1 and ``max_pixels`` pixels and ends with the end-of-image marker
    (a truncated file never reaches the other decoder). Otherwise it is the orientation
    ``ImageOps.exif_transpose`` would apply: 2-8, or 1 for none, an unknown value or broken EXIF
    data.

    Examples
    --------
    >>> jpeg_orientation(open("photo.jpg", "rb").read())  # doctest: +SKIP
    1
    """
    if not data.endswith(_JPEG_EOI):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as opened:
                width, height = opened.size
                if (
                    opened.format != "JPEG"
                    or opened.mode not in ("RGB", "L")
                    or not 0 < width * height <= max_pixels
                ):
                    return None
                try:
                    orientation = opened.getexif().get(_ORIENTATION_TAG, 1)
                except MemoryError:
                    raise
                except Exception:  # noqa: BLE001 - broken EXIF: used as stored (_exif_transpose)
                    return 1
        except MemoryError:
            raise
        except Exception:  # noqa: BLE001 - anything odd is left to the policy's own decoder
            return None
    return int(orientation) if orientation in (2, 3, 4, 5, 6, 7, 8) else 1


def _decode(fp, name: str, max_pixels: int) -> Image.Image:
    """Decode the first frame of the open image file ``fp`` into RGB, or raise ImageLoadError."""
    pillow_limit = Image.MAX_IMAGE_PIXELS
    # Pillow's warning threshold is its soft limit; only make it fatal when our
    # own limit is at least as strict, so a larger max_pixels still works.
    strict = pillow_limit is not None and max_pixels <= pillow_limit
    with warnings.catch_warnings():
        warnings.simplefilter("error" if strict else "ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(fp) as opened:
                _check_pixels(name, opened.size, max_pixels)
                opened.seek(0)
                # Decode everything now so truncation surfaces here, not later.
                opened.load()
                img = _exif_transpose(opened)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise _bomb_error(name, e, max_pixels, pillow_limit) from None
        except UnidentifiedImageError:
            raise ImageLoadError(name, "cannot identify image file") from None
        except (ImageLoadError, MemoryError):
            raise
        except OSError as e:
            if e.errno is not None:
                # A real I/O failure (EIO, ...), not a Pillow decoding complaint.
                raise ImageLoadError(name, f"read error: {e.strerror or e}") from e
            raise ImageLoadError(name, f"truncated or corrupt image data: {e}") from e
        except Exception as e:
            raise ImageLoadError(name, f"truncated or corrupt image data: {_msg(e)}") from e
    try:
        return _to_rgb(img)
    except MemoryError:
        raise
    except Exception as e:
        raise ImageLoadError(name, f"cannot convert mode {img.mode!r} to RGB: {_msg(e)}") from e


def _msg(e: BaseException) -> str:
    """Return the exception's message, or its type name when the message is empty."""
    return str(e) or type(e).__name__


def _check_pixels(name: str, size: tuple[int, int], max_pixels: int) -> None:
    """Raise ImageLoadError when ``size`` declares more than ``max_pixels`` pixels."""
    pixels = size[0] * size[1]
    if pixels > max_pixels:
        raise ImageLoadError(name, _bomb_reason(pixels, max_pixels))
    if pixels == 0:
        raise ImageLoadError(name, f"empty image ({size[0]}x{size[1]})")


def _bomb_reason(pixels: int, limit: int) -> str:
    """Format the decompression bomb reason."""
    return f"decompression bomb: {pixels:,} pixels exceeds the limit of {limit:,}"


def _bomb_error(name: str, e: BaseException, max_pixels: int, pillow_limit) -> ImageLoadError:
    """Turn Pillow's decompression bomb warning or error into ImageLoadError."""
    m = _BOMB_PIXELS_RE.search(str(e))
    if m is None:
        return ImageLoadError(name, f"decompression bomb: {e}")
    pixels = int(m.group(1))
    if pixels > max_pixels:
        limit = max_pixels
    elif isinstance(e, Image.DecompressionBombError) and pillow_limit is not None:
        limit = 2 * pillow_limit
    else:
        limit = pillow_limit
    return ImageLoadError(name, _bomb_reason(pixels, limit))


def _exif_transpose(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; keep the image as stored if the EXIF data is broken."""
    try:
        out = ImageOps.exif_transpose(img)
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - broken EXIF raises many types; orientation is optional
        return img.copy()
    # exif_transpose returns None only with in_place=True; keep the type checker happy.
    return out if out is not None else img.copy()


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert a loaded, detached image of any mode to "RGB" under the module policy."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16"):
        return _gray_to_rgb(_scale_16bit(np.asarray(img)))
    if mode == "I":
        a = np.asarray(img)
        if a.max() <= 255:
            return _gray_to_rgb(np.clip(a, 0, 255).astype(np.uint8))
        return _gray_to_rgb(_scale_16bit(a))
    if mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if a.max() <= 1.0:
            a = a * 255.0
        return _gray_to_rgb(np.rint(np.clip(a, 0.0, 255.0)).astype(np.uint8))
    if mode == "La":
        # Pillow cannot convert premultiplied La directly; RGBa it can.
        lum, alpha = img.split()
        img, mode = Image.merge("RGBa", (lum, lum, lum, alpha)), "RGBa"
    # Covers alpha bands, a ``transparency`` key in info and RGBA palettes.
    if img.has_transparency_data:
        return _over_white(img.convert("RGBA"))
    return img.convert("RGB")


def _scale_16bit(a: np.ndarray) -> np.ndarray:
    """Map 0..65535 integers (clipping outside values) to 0..255 uint8 by dividing by 257."""
    a = np.clip(a.astype(np.int64), 0, 65535)
    return ((a + 128) // 257).astype(np.uint8)


def _gray_to_rgb(a: np.ndarray) -> Image.Image:
    """Build an RGB image from a 2-D uint8 array of gray levels."""
    return Image.fromarray(np.ascontiguousarray(a)).convert("RGB")


def _over_white(rgba: Image.Image) -> Image.Image:
    """Composite an RGBA image over an opaque white background."""
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")
