"""The ``impl="torch"`` preprocessing: torchvision decoding, tensor resize, its own cache key."""

from __future__ import annotations

import io

import cnncodes.extract as extract_module
import numpy as np
import pytest
import torch
from cnncodes.cache import config_key
from cnncodes.extract import (
    code_config,
    extract_codes,
    preprocess,
    preprocess_bytes,
    spec_from_config,
)
from cnncodes.models import resolve_preprocessing, resolve_spec
from PIL import Image

import cnncodes.extraction.decode as decode_module
from cnncodes.images import ImageLoadError, jpeg_orientation, load_image_bytes, read_file

FAST = dict(num_workers=0, cache_dir=None, device="cpu")
SIZES = ((48, 40), (40, 56), (64, 64), (97, 61))


def _specs(model="resnet18", **kwargs):
    kwargs = {"seed": 0, "resize": 40, "crop": 32, **kwargs}
    weights = "none" if ":" not in model else None
    pil = resolve_spec(model, weights, **kwargs)
    return pil, resolve_spec(model, weights, impl="torch", **kwargs)


def _cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _jpeg_bytes(array, **save):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=95, **save)
    return buffer.getvalue()


def _pil_pixels(data, pre):
    return preprocess(load_image_bytes(data), pre)


def _gradient(h, w, seed=0):
    """An asymmetric picture (flips and rotations show), smooth enough to survive JPEG."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = 40 + 3 * x[..., None] * rng.uniform(0.5, 1, 3) + 1 * y[..., None] * rng.uniform(0, 1, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- resolution


def test_impl_defaults_to_pil_and_is_part_of_the_cache_key():
    pil, torch_ = _specs()
    assert pil.preprocessing.impl == "pil" and torch_.preprocessing.impl == "torch"
    assert resolve_spec("resnet18", "none", resize=40, crop=32, impl="pil") == pil
    pil_config = code_config(pil, "avgpool", "avg", "fp32")
    torch_config = code_config(torch_, "avgpool", "avg", "fp32")
    assert torch_config["preprocessing"]["impl"] == "torch"
    assert config_key(pil_config) != config_key(torch_config)
    assert spec_from_config(torch_config) == torch_
    assert spec_from_config(pil_config) == pil


@pytest.mark.parametrize("impl", ["PIL", "cuda", "", None, 1])
def test_unknown_impl_is_refused_naming_the_parameter(impl):
    with pytest.raises(ValueError, match=r"impl=.*: choose one of pil, torch"):
        resolve_spec("resnet18", "none", impl=impl)


@pytest.mark.parametrize("interpolation", ["nearest", "box", "hamming", "lanczos"])
def test_torch_impl_refuses_interpolations_it_does_not_have(interpolation):
    with pytest.raises(
        ValueError,
        match=rf"interpolation='{interpolation}' is not supported by impl='torch'; "
        r"choose one of bilinear, bicubic",
    ):
        resolve_preprocessing(interpolation=interpolation, impl="torch")
    assert resolve_preprocessing(interpolation=interpolation).impl == "pil"


# ----------------------------------------------------------------------------- pixels


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_torch_pixels_match_pillow_pixels(make_images, interpolation):
    paths = make_images(8, sizes=SIZES)  # JPEG and PNG in turn
    pil, torch_ = _specs(interpolation=interpolation)
    diffs = []
    for path in paths:
        data = read_file(path)
        a = _pil_pixels(data, pil.preprocessing)
        b = preprocess_bytes(data, torch_.preprocessing, name=path)
        assert b.dtype == torch.uint8 and b.shape == a.shape == (3, 32, 32)
        diffs.append((a.int() - b.int()).abs())
    # Measured: mean 0.003 (bilinear) / 0.001 (bicubic) grey levels, never more than 1 apart.
    assert torch.cat([d.flatten() for d in diffs]).float().mean() < 0.05
    assert max(int(d.max()) for d in diffs) <= 2


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_pillow(orientation):
    array = _gradient(30, 50)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    data = _jpeg_bytes(array, exif=exif.tobytes())
    assert jpeg_orientation(data) == orientation
    pre = resolve_preprocessing(resize=(24, 36), crop=0, impl="torch")
    expected = _pil_pixels(data, pre)
    got = preprocess_bytes(data, pre)
    assert got.shape == expected.shape == (3, 24, 36)
    assert (got.int() - expected.int()).abs().float().mean() < 0.5


def test_grey_cmyk_alpha_and_16_bit_files_follow_the_pillow_policy():
    rgb = _gradient(20, 30)
    grey = _jpeg_bytes(rgb[..., 0])
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, "JPEG", quality=95)
    rgba = np.dstack([rgb, np.linspace(0, 255, 30, dtype=np.uint8)[None].repeat(20, 0)])
    png_alpha = io.BytesIO()
    Image.fromarray(rgba).save(png_alpha, "PNG")
    png16 = io.BytesIO()
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(png16, "PNG")
    same_size = resolve_preprocessing(resize=(20, 30), crop=0, impl="torch")
    smaller = resolve_preprocessing(resize=16, crop=16, impl="torch")
    assert jpeg_orientation(grey) == 1
    for data in (cmyk.getvalue(), png_alpha.getvalue(), png16.getvalue()):
        assert jpeg_orientation(data) is None  # decoded by Pillow: exactly its pixels
        assert torch.equal(preprocess_bytes(data, same_size), _pil_pixels(data, same_size))
        # Then resized by torch: at most one grey level from Pillow's resize.
        diff = (preprocess_bytes(data, smaller).int() - _pil_pixels(data, smaller).int()).abs()
        assert diff.max() <= 1
    assert torch.equal(preprocess_bytes(grey, same_size), _pil_pixels(grey, same_size))
    diff = (preprocess_bytes(grey, smaller).int() - _pil_pixels(grey, smaller).int()).abs()
    assert diff.max() <= 1


def test_only_complete_rgb_or_grey_jpegs_reach_torchvision():
    data = _jpeg_bytes(_gradient(20, 30))
    assert jpeg_orientation(data) == 1
    assert jpeg_orientation(data[:-100]) is None  # truncated
    assert jpeg_orientation(data + b"\0\0") is None  # trailing bytes: Pillow decides
    assert jpeg_orientation(b"not an image\xff\xd9") is None
    assert jpeg_orientation(data, max_pixels=599) is None and jpeg_orientation(data, max_pixels=600)
    image = Image.fromarray(_gradient(20, 30))
    exif = image.getexif()
    exif[0x0112] = 9  # not an orientation: used as stored, like ImageOps.exif_transpose
    assert jpeg_orientation(_jpeg_bytes(_gradient(20, 30), exif=exif.tobytes())) == 1


def test_a_batch_with_a_file_torchvision_cannot_decode_decodes_the_others():
    good = _jpeg_bytes(_gradient(20, 30))
    bad = good[:200] + b"\0" * 50 + b"\xff\xd9"
    out = decode_module._decode_jpegs([good, bad, good], torch.device("cpu"))
    assert out[1] is None
    assert out[0].shape == out[2].shape == (3, 20, 30)


def test_images_of_one_size_are_resized_together_with_the_same_pixels(monkeypatch):
    pre = resolve_preprocessing(resize=40, crop=32, impl="torch")
    blobs = [
        _jpeg_bytes(_gradient(60, 80, seed=0)),
        _jpeg_bytes(_gradient(50, 50, seed=1)),
        _jpeg_bytes(_gradient(60, 80, seed=2)),
        b"\x89PNG\r\n\x1a\n not a picture",
        _jpeg_bytes(_gradient(60, 80, seed=3)),
    ]
    alone = []
    for data in blobs:
        try:
            alone.append(preprocess_bytes(data, pre, name="x.jpg"))
        except ImageLoadError as exc:
            alone.append(exc.reason)
    calls = []
    real = decode_module._resize_crop_tensor

    def counting(pixels, preprocessing):
        calls.append(tuple(pixels.shape))
        return real(pixels, preprocessing)

    monkeypatch.setattr(decode_module, "_resize_crop_tensor", counting)
    items = [(f"d{i}", f"{i}.jpg") for i in range(len(blobs))]
    batch = decode_module._TorchDecode([], pre, "cpu").batch(items, blobs)
    assert sorted(calls) == [(3, 3, 60, 80), (3, 50, 50)]  # one call for the three 60x80 images
    for (_, _, pixels, reason), expected in zip(batch, alone):
        if isinstance(expected, str):
            assert pixels is None and reason == expected
        else:
            assert reason is None and torch.equal(pixels, expected)


def test_a_group_that_fails_to_resize_is_retried_image_by_image(monkeypatch):
    pre = resolve_preprocessing(resize=40, crop=32, impl="torch")
    blobs = [_jpeg_bytes(_gradient(60, 80, seed=i)) for i in range(3)]
    real = decode_module._resize_crop_tensor

    def fails_on_batches(pixels, preprocessing):
        if pixels.ndim == 4:
            raise RuntimeError("out of memory")
        return real(pixels, preprocessing)

    monkeypatch.setattr(decode_module, "_resize_crop_tensor", fails_on_batches)
    items = [(f"d{i}", f"{i}.jpg") for i in range(3)]
    batch = decode_module._TorchDecode([], pre, "cpu").batch(items, blobs)
    assert [reason for *_, reason in batch] == [None] * 3
    assert all(tuple(p.shape) == (3, 32, 32) for _, _, p, _ in batch)


# ----------------------------------------------------------------------------- extraction


def test_codes_agree_with_the_pil_impl(make_images):
    paths = make_images(10, sizes=SIZES)
    pil, torch_ = _specs()
    a = extract_codes(paths, pil, "avgpool", **FAST).codes["avgpool"]
    # batch_size 4 < 10 images: decoding runs in the background thread.
    b = extract_codes(paths, torch_, "avgpool", batch_size=4, **FAST).codes["avgpool"]
    assert a.shape == b.shape == (10, 512)
    # Measured: cosine >= 0.999999 with this untrained resnet18.
    assert _cosines(a, b).min() >= 0.999
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_torch_impl_codes_do_not_depend_on_batch_size(cnn_spec, make_images, batch_size):
    paths = make_images(7, sizes=SIZES)
    _, spec = _specs("tests.tiny_nets:tiny_cnn")
    reference = extract_codes(paths, spec, "pool", batch_size=5, **FAST).codes["pool"]
    codes = extract_codes(paths, spec, "pool", batch_size=batch_size, **FAST).codes["pool"]
    np.testing.assert_allclose(codes, reference, rtol=1e-5, atol=1e-6)


def test_pil_and_torch_codes_are_cached_apart(make_images, tmp_path, forward_counter):
    paths = make_images(4)
    pil, torch_ = _specs("tests.tiny_nets:tiny_cnn")
    cache = dict(cache_dir=tmp_path / "cache", num_workers=0, device="cpu")
    extract_codes(paths, pil, "pool", **cache)
    first = extract_codes(paths, torch_, "pool", **cache)
    assert (first.computed, first.cached) == (4, 0)
    again = extract_codes(paths, torch_, "pool", **cache)
    assert (again.computed, again.cached) == (0, 4)
    np.testing.assert_array_equal(again.codes["pool"], first.codes["pool"])
    assert forward_counter.images == 8


def _bad_jpegs(folder, make_images):
    good = make_images(3, sizes=SIZES, folder=folder)
    data = read_file(good[0])
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = folder / "garbage.jpg"
    garbage.write_bytes(b"not a jpeg" * 20 + b"\xff\xd9")
    return good, [str(truncated), str(garbage)]


@pytest.mark.parametrize("which", [0, 1])
def test_a_corrupt_jpeg_raises_the_same_error_as_with_pil(make_images, tmp_path, which):
    good, bad = _bad_jpegs(tmp_path / "images", make_images)
    pil, torch_ = _specs("tests.tiny_nets:tiny_cnn")
    paths = good[:2] + [bad[which]] + good[2:]
    errors = []
    for spec in (pil, torch_):
        with pytest.raises(ImageLoadError) as info:
            extract_codes(paths, spec, "pool", batch_size=2, **FAST)
        errors.append(info.value)
    assert errors[1].path == bad[which]
    assert str(errors[1]) == str(errors[0])
    assert str(errors[1]).startswith(bad[which] + ": ")


def test_skip_reports_the_same_files_and_reasons_as_pil(make_images, tmp_path):
    good, bad = _bad_jpegs(tmp_path / "images", make_images)
    paths = [bad[0], good[0], str(tmp_path / "missing.jpg"), good[1], bad[1], good[2]]
    pil, torch_ = _specs("tests.tiny_nets:tiny_cnn")
    results = [
        extract_codes(paths, spec, "pool", batch_size=2, on_error="skip", **FAST)
        for spec in (pil, torch_)
    ]
    assert results[1].skipped == results[0].skipped
    assert [s.index for s in results[1].skipped] == [0, 2, 4]
    np.testing.assert_array_equal(results[1].kept, [1, 3, 5])
    assert _cosines(results[0].codes["pool"], results[1].codes["pool"]).min() >= 0.999


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_torch_impl_agrees_with_the_cpu(make_images):
    paths = make_images(12, sizes=SIZES)
    _, spec = _specs()
    cpu = extract_codes(paths, spec, "avgpool", precision="fp32", **FAST).codes["avgpool"]
    options = {**FAST, "device": "cuda"}
    gpu = extract_codes(paths, spec, "avgpool", batch_size=5, precision="fp32", **options)
    assert _cosines(cpu, gpu.codes["avgpool"]).min() >= 0.999


# ----------------------------------------------------------------------------- wiring


def test_gpu_decoded_codes_have_their_own_key_and_rebuild():
    _, spec = _specs()
    pil, _ = _specs()
    cpu = code_config(spec, "avgpool", "avg", "fp32", "cpu")
    gpu = code_config(spec, "avgpool", "avg", "fp32", "cuda")
    assert gpu["decode"] == cpu["decode"] + extract_module.GPU_DECODER
    assert config_key(gpu) != config_key(cpu)
    # The Pillow path decodes on the CPU whatever the device: one key for both.
    assert code_config(pil, "avgpool", "avg", "fp32", "cuda") == code_config(
        pil, "avgpool", "avg", "fp32", "cpu"
    )
    assert spec_from_config(gpu) == spec and spec_from_config(cpu) == spec


def test_cnncodes_impl_parameter_reaches_the_spec(make_images, tmp_path):
    import pickle

    from cnncodes.transformers import CNNCodes
    from sklearn.base import clone

    paths = make_images(3, sizes=SIZES)
    est = CNNCodes("resnet18", weights="none", resize=40, crop=32, impl="torch", cache_dir=None)
    assert clone(est).get_params()["impl"] == "torch"
    est.fit(paths)
    assert est.spec_.preprocessing.impl == "torch"
    codes = est.transform(paths)
    pil = CNNCodes("resnet18", weights="none", resize=40, crop=32, cache_dir=None).fit(paths)
    assert _cosines(codes, pil.transform(paths)).min() >= 0.999
    with pytest.raises(ValueError, match="impl='gpu'"):
        CNNCodes("resnet18", weights="none", impl="gpu").fit(paths)
    # An estimator saved before the parameter existed unpickles as the Pillow path.
    state = pil.__getstate__()
    del state["impl"]
    old = CNNCodes.__new__(CNNCodes)
    old.__setstate__(state)
    assert old.impl == "pil" and clone(old).get_params()["impl"] == "pil"
    assert pickle.loads(pickle.dumps(est)).impl == "torch"


def test_cli_impl_option(make_images, tmp_path, capsys):
    import json

    from cnncodes import cli

    make_images(2, folder=tmp_path / "data" / "a", sizes=SIZES)
    make_images(2, folder=tmp_path / "data" / "b", sizes=SIZES, seed=1)
    argv = ["extract", str(tmp_path / "data"), "--model", "resnet18", "--weights", "none",
            "--resize", "40", "--crop", "32", "--cache-dir", str(tmp_path / "cache"), "--json"]  # fmt: skip
    assert cli.main([*argv, "--impl", "torch"]) == 0
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert cli.main(["cache", "info", "--cache-dir", str(tmp_path / "cache"), "--json"]) == 0
    configs = json.loads(capsys.readouterr().out)["configs"]
    impls = sorted(
        json.load(open(f"{c['path']}/config.json"))["config"]["preprocessing"]["impl"]
        for c in configs
    )
    assert impls == ["pil", "torch"]
    assert cli.main(["extract", "x", "--model", "resnet18", "--impl", "gpu"]) == 2
