"""Tests for cnncodes.images: the image decoding policy."""

from __future__ import annotations

import io
import os
import pickle
import threading
import time
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from cnncodes.images import (
    DECODE_POLICY,
    MAX_PIXELS,
    ImageLoadError,
    load_image,
    load_image_bytes,
)
from cnncodes.images import load as images


def _rgb_pattern(w: int = 32, h: int = 24) -> np.ndarray:
    """Return a deterministic RGB test pattern."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 8 % 256, y * 10 % 256, (x + y) * 4 % 256], axis=-1).astype(np.uint8)


def _px(img: Image.Image) -> np.ndarray:
    """Return the pixels of an RGB image as an int array."""
    assert img.mode == "RGB"
    return np.asarray(img).astype(np.int32)


def _run_with_timeout(fn, seconds: float):
    """Run ``fn`` in a daemon thread; fail the test if it does not finish in time."""
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test thread
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"call did not return within {seconds} s")
    if "error" in result:
        raise result["error"]
    return result["value"]


def test_constants():
    assert MAX_PIXELS == 89_478_485
    assert isinstance(DECODE_POLICY, str) and DECODE_POLICY
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS  # we never touch Pillow's global


def test_png_roundtrip_exact(tmp_path):
    a = _rgb_pattern()
    p = tmp_path / "a.png"
    Image.fromarray(a).save(p)
    img = load_image(p)
    assert img.mode == "RGB" and img.size == (32, 24)
    np.testing.assert_array_equal(np.asarray(img), a)


def test_jpeg_roundtrip_close(tmp_path):
    a = _rgb_pattern()
    p = tmp_path / "a.jpg"
    Image.fromarray(a).save(p, quality=95)
    img = load_image(str(p))
    assert img.mode == "RGB" and img.size == (32, 24)
    assert np.abs(_px(img) - a).mean() < 6


def test_result_is_detached_and_loaded(tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(_rgb_pattern()).save(p)
    img = load_image(p)
    assert getattr(img, "fp", None) is None
    os.remove(p)  # pixels must already be in memory
    assert img.getpixel((1, 1)) == tuple(_rgb_pattern()[1, 1])


def test_16bit_gray_png_is_scaled_not_saturated(tmp_path):
    a = np.linspace(0, 65535, 200 * 100).round().astype(np.uint16).reshape(100, 200)
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    with Image.open(p) as raw:
        assert raw.mode.startswith("I;16")
    out = _px(load_image(p))
    assert abs(out.mean() - a.mean() / 257) < 0.5
    assert (out == 255).mean() < 0.01
    np.testing.assert_array_equal(out[..., 0], np.rint(a / 257))
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


@pytest.mark.parametrize("mode", ["I;16B", "I;16L"])
def test_16bit_byte_orders(mode):
    raw = Image.frombytes(
        mode,
        (3, 1),
        np.array([0, 257 * 100, 65535], dtype=">u2" if mode.endswith("B") else "<u2").tobytes(),
    )
    buf = io.BytesIO()
    # TIFF keeps the 16-bit sample; we then decode via the bytes entry point.
    raw.save(buf, format="TIFF")
    out = _px(load_image_bytes(buf.getvalue()))
    assert out[0, :, 0].tolist() == [0, 100, 255]


def test_rgba_transparent_becomes_white(tmp_path):
    a = np.zeros((10, 10, 4), dtype=np.uint8)
    a[..., 0] = 200
    a[:5, :, 3] = 0  # top half fully transparent
    a[5:, :, 3] = 255
    p = tmp_path / "rgba.png"
    Image.fromarray(a).save(p)
    out = _px(load_image(p))
    assert (out[:5] == 255).all()
    assert (out[5:] == [200, 0, 0]).all()


def test_rgba_half_alpha_is_blended_over_white(tmp_path):
    p = tmp_path / "half.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 128)).save(p)
    out = _px(load_image(p))
    assert np.abs(out - 127).max() <= 1


def test_la_over_white(tmp_path):
    p = tmp_path / "la.png"
    img = Image.new("LA", (4, 2), (50, 255))
    img.putpixel((0, 0), (50, 0))
    img.save(p)
    out = _px(load_image(p))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[1, 1].tolist() == [50, 50, 50]


def test_premultiplied_la_and_rgba():
    la = Image.merge("La", [Image.new("L", (2, 1), 64), Image.new("L", (2, 1), 128)])
    rgba = Image.new("RGBa", (2, 1), (64, 64, 64, 128))
    for img in (la, rgba):
        out = _px(images._to_rgb(img))
        # unpremultiplied grey 128 at alpha 0.5 over white -> about 191
        assert np.abs(out - 191).max() <= 2


def test_palette_without_transparency(tmp_path):
    p = tmp_path / "p.png"
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    img.save(p)
    out = _px(load_image(p))
    assert (out == [10, 200, 30]).all()


def test_palette_with_transparency(tmp_path):
    p = tmp_path / "pt.png"
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.save(p, transparency=0)
    with Image.open(p) as raw:
        assert raw.mode == "P" and "transparency" in raw.info
    out = _px(load_image(p))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[3, 3].tolist() == [10, 200, 30]


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(p, quality=95)
    with Image.open(p) as raw:
        assert raw.mode == "CMYK"
    out = _px(load_image(p))
    assert np.abs(out - [255, 0, 0]).max() < 10


def test_bilevel(tmp_path):
    p = tmp_path / "one.png"
    img = Image.new("1", (4, 2), 0)
    img.putpixel((1, 0), 1)
    img.save(p)
    out = _px(load_image(p))
    assert out[0, 1].tolist() == [255, 255, 255]
    assert out[0, 0].tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),  # max <= 1: scaled by 255
        ([0.0, 100.0, 300.0], [0, 100, 255]),  # otherwise clipped
        ([-5.0, float("nan"), 0.25], [0, 0, 64]),
    ],
)
def test_float_tiff(tmp_path, values, expected):
    p = tmp_path / "f.tif"
    Image.fromarray(np.array([values], dtype=np.float32)).save(p)
    with Image.open(p) as raw:
        assert raw.mode == "F"
    assert _px(load_image(p))[0, :, 1].tolist() == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 100, 255], [0, 100, 255]),  # max <= 255: already 8-bit
        ([0, 257 * 100, 65535], [0, 100, 255]),  # scaled like 16-bit
        ([-3, 257 * 10, 1_000_000], [0, 10, 255]),  # clipped to 0..65535 first
    ],
)
def test_int32_tiff(tmp_path, values, expected):
    p = tmp_path / "i.tif"
    Image.fromarray(np.array([values], dtype=np.int32)).save(p)
    with Image.open(p) as raw:
        assert raw.mode == "I"
    assert _px(load_image(p))[0, :, 0].tolist() == expected


@pytest.mark.parametrize("mode", ["YCbCr", "LAB", "HSV"])
def test_other_modes_convert(mode):
    out = images._to_rgb(Image.new("RGB", (2, 2), (200, 40, 10)).convert(mode))
    assert out.mode == "RGB" and out.size == (2, 2)


def test_exif_orientation_applied(tmp_path):
    p = tmp_path / "rot.jpg"
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(p, exif=exif, quality=95)
    out = load_image(p)
    assert out.size == (20, 40)
    a = _px(out)
    # orientation 6 = rotate 90 clockwise for display: the left half ends on top
    assert a[5, 10, 2] > 200 and a[35, 10, 0] > 200


def test_broken_exif_keeps_unrotated(tmp_path, monkeypatch):
    p = tmp_path / "a.png"
    Image.fromarray(_rgb_pattern()).save(p)

    def boom(img, **kwargs):
        raise SyntaxError("bad exif")

    monkeypatch.setattr(images.ImageOps, "exif_transpose", boom)
    out = load_image(p)
    np.testing.assert_array_equal(np.asarray(out), _rgb_pattern())


def test_animated_gif_first_frame(tmp_path):
    p = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(p) as raw:
        assert raw.n_frames == 3
    out = _px(load_image(p))
    assert (out == [255, 0, 0]).all()


def test_multipage_tiff_first_page(tmp_path):
    p = tmp_path / "pages.tif"
    pages = [Image.new("RGB", (8, 8), c) for c in [(0, 0, 255), (0, 255, 0)]]
    pages[0].save(p, save_all=True, append_images=pages[1:])
    assert (_px(load_image(p)) == [0, 0, 255]).all()


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "t.jpg"
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated|corrupt") as info:
        load_image(p)
    assert info.value.path == str(p)
    with pytest.raises(ImageLoadError, match="truncated|corrupt"):
        load_image_bytes(data[: len(data) // 2])


def test_truncated_png(tmp_path):
    p = tmp_path / "t.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[:2000])
    with pytest.raises(ImageLoadError, match="truncated|corrupt"):
        load_image(p)


def test_random_bytes_named_jpg(tmp_path):
    p = tmp_path / "noise.jpg"
    p.write_bytes(np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ImageLoadError, match=r"noise\.jpg: cannot identify image file$"):
        load_image(p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="cannot identify image file"):
        load_image(p)


def test_directory(tmp_path):
    with pytest.raises(ImageLoadError, match="not a regular file$"):
        load_image(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_refused_quickly(tmp_path):
    p = tmp_path / "pipe.jpg"
    os.mkfifo(p)
    t0 = time.monotonic()
    with pytest.raises(ImageLoadError, match="not a regular file$"):
        _run_with_timeout(lambda: load_image(p), 5)
    assert time.monotonic() - t0 < 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_fifo_swapped_in_after_stat(tmp_path, monkeypatch):
    # Simulate the race: stat sees a regular file, but open gets a FIFO.
    real = tmp_path / "real.png"
    Image.new("RGB", (2, 2)).save(real)
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    real_stat = os.stat
    monkeypatch.setattr(images.os, "stat", lambda path: real_stat(real))
    with pytest.raises(ImageLoadError, match="not a regular file$"):
        _run_with_timeout(lambda: load_image(pipe), 5)


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match=r"nope\.png: file not found$"):
        load_image(tmp_path / "nope.png")


def test_permission_denied(tmp_path, monkeypatch):
    # Running as root bypasses file modes, so simulate the failure instead.
    p = tmp_path / "a.png"
    Image.new("RGB", (2, 2)).save(p)

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images.os, "open", deny)
    with pytest.raises(ImageLoadError, match="permission denied$"):
        load_image(p)


def test_decompression_bomb_own_limit_fast(tmp_path):
    p = tmp_path / "bomb.png"
    Image.new("1", (5000, 5000)).save(p)  # 25 Mpx, below Pillow's limit; ~4 kB file
    t0 = time.monotonic()
    with pytest.raises(
        ImageLoadError,
        match=r"decompression bomb: 25,000,000 pixels exceeds the limit of 10,000,000$",
    ):
        load_image(p, max_pixels=10_000_000)
    assert time.monotonic() - t0 < 1


def test_decompression_bomb_default_limit(tmp_path):
    # 400 Mpx is above twice Pillow's limit, so Pillow itself raises at open.
    p = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(p)
    data = p.read_bytes()
    t0 = time.monotonic()
    with pytest.raises(
        ImageLoadError,
        match=r"decompression bomb: 400,000,000 pixels exceeds the limit of 89,478,485$",
    ):
        load_image(p)
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image_bytes(data)
    assert time.monotonic() - t0 < 1


def test_decompression_bomb_warning_becomes_error(tmp_path):
    # 100 Mpx: Pillow only warns; the warning must not leak and must be an error.
    p = tmp_path / "bomb.png"
    Image.new("1", (10000, 10000)).save(p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(
            ImageLoadError, match="100,000,000 pixels exceeds the limit of 89,478,485"
        ):
            load_image(p)


def test_larger_max_pixels_allows_big_image(tmp_path):
    p = tmp_path / "big.png"
    Image.new("1", (2000, 1000)).save(p)
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(p, max_pixels=1_999_999)
    assert load_image(p, max_pixels=2_000_000).size == (2000, 1000)


def test_non_utf8_file_name(tmp_path):
    base = os.fsencode(tmp_path)
    good = base + b"/ok\xff.png"
    bad = base + b"/bad\xfe.jpg"
    with open(good, "wb") as f:
        Image.fromarray(_rgb_pattern()).save(f, format="PNG")
    with open(bad, "wb") as f:
        f.write(b"not an image at all")
    np.testing.assert_array_equal(np.asarray(load_image(good)), _rgb_pattern())
    with pytest.raises(ImageLoadError) as info:
        load_image(bad)
    err = info.value
    assert os.fsencode(err.path) == bad
    text = str(err)
    text.encode("utf-8")  # must be printable on a strict UTF-8 stream
    assert text.endswith(r"bad\xfe.jpg: cannot identify image file")
    with pytest.raises(ImageLoadError, match="file not found") as info:
        load_image(base + b"/missing\xff.png")
    str(info.value).encode("utf-8")


def test_error_attributes_and_pickle():
    err = ImageLoadError(b"dir/x.png", "file not found")
    assert isinstance(err, ValueError)
    assert err.path == "dir/x.png" and err.reason == "file not found"
    assert str(err) == "dir/x.png: file not found"
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ImageLoadError
    assert (back.path, back.reason, str(back)) == (err.path, err.reason, str(err))


def test_bytes_match_file(tmp_path):
    for name, kwargs in [("a.jpg", {"quality": 80}), ("a.png", {})]:
        p = tmp_path / name
        Image.fromarray(_rgb_pattern()).save(p, **kwargs)
        from_file = np.asarray(load_image(p))
        from_bytes = np.asarray(load_image_bytes(p.read_bytes(), name=name))
        np.testing.assert_array_equal(from_file, from_bytes)


def test_bytes_error_uses_name():
    with pytest.raises(ImageLoadError, match=r"^upload\.jpg: cannot identify image file$"):
        load_image_bytes(b"garbage", name="upload.jpg")
    with pytest.raises(ImageLoadError, match=r"^<bytes>: "):
        load_image_bytes(b"garbage")


def test_memory_error_propagates(tmp_path, monkeypatch):
    p = tmp_path / "a.png"
    Image.new("RGB", (2, 2)).save(p)

    def oom(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(images.Image, "open", oom)
    with pytest.raises(MemoryError):
        load_image(p)


def test_load_truncated_images_never_set(tmp_path):
    p = tmp_path / "t.jpg"
    Image.fromarray(_rgb_pattern(64, 64)).save(p)
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(ImageLoadError):
        load_image(p)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("threads", [1, 3])
def test_file_digests_hash_many_files_in_order_with_errors_in_place(tmp_path, monkeypatch, threads):
    import hashlib

    paths = []
    for i in range(7):
        p = tmp_path / f"{i}.bin"
        p.write_bytes(bytes([i]) * (5000 + i))
        paths.append(str(p))
    paths.insert(2, str(tmp_path / "missing.jpg"))
    paths.insert(5, str(tmp_path))  # a folder
    monkeypatch.setattr(images, "_PER_TASK", 2)  # several runs of files, even for 9 paths
    images._DIGESTS.clear()
    out = images.file_digests(paths, threads=threads)
    assert isinstance(out[2], ImageLoadError) and "missing.jpg" in str(out[2])
    assert isinstance(out[5], ImageLoadError) and "not a regular file" in str(out[5])
    for path, digest in zip(paths, out):
        if path.endswith(".bin"):
            assert digest == hashlib.sha256(open(path, "rb").read()).hexdigest()
            assert digest == images.file_digest(path)

    # A second call reads no unchanged file again; a rewritten one is hashed anew.
    reads = []
    real = images.read_file
    monkeypatch.setattr(images, "read_file", lambda p: reads.append(p) or real(p))
    (tmp_path / "3.bin").write_bytes(b"new content" * 500)
    again = images.file_digests(paths, threads=threads)
    assert sorted(reads) == sorted([str(tmp_path / "3.bin"), paths[2], paths[5]])
    rewritten = paths.index(str(tmp_path / "3.bin"))
    assert again[rewritten] == hashlib.sha256(b"new content" * 500).hexdigest()
    for i, path in enumerate(paths):
        if path.endswith(".bin") and i != rewritten:
            assert again[i] == out[i]


def test_a_repeated_list_of_paths_still_notices_a_rewritten_file(tmp_path):
    # Issue 21, item 5: the digests of a list asked for again come from one lookup stamped with
    # every file's stamp; a file rewritten in place (same size, mtime restored) is hashed anew.
    paths = []
    for i in range(4):
        path = tmp_path / f"{i}.bin"
        path.write_bytes(bytes([i]) * 100)
        paths.append(str(path))
    first = images.file_digests(paths)
    assert images.file_digests(paths) == first
    st = os.stat(paths[2])
    with open(paths[2], "r+b") as f:
        f.write(b"\xff" * 100)
    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns))
    again = images.file_digests(paths)
    assert again[:2] == first[:2] and again[3] == first[3]
    assert again[2] == images.hashlib.sha256(b"\xff" * 100).hexdigest() != first[2]
    os.remove(paths[1])
    gone = images.file_digests(paths)
    assert isinstance(gone[1], images.ImageLoadError) and gone[2] == again[2]
