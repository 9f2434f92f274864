"""Tests for cnncodes.extract: codes, row order, batching, the cache and bad images."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cnncodes.extract as extract_module
import numpy as np
import pytest
import torch
from cnncodes.cache import CodeStore, config_key
from cnncodes.extract import code_config, exact_fp32, extract_codes
from cnncodes.models import WeightsError, build_model, resolve_spec
from PIL import Image

from cnncodes.images import ImageLoadError, file_digest
from tests.tiny_nets import TinyCNN

FAST = dict(num_workers=0)


def _counts(line):
    """A progress line without its rates and times (the machine's speed is not under test)."""
    return re.sub(r" in [0-9.]+ s$", " in", line.split(",")[0])


def _pixels(path, resize, crop):
    """Resize the shorter side with Pillow (bilinear), centre-crop: written out independently."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    nw, nh = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - crop) / 2.0)), int(round((nh - crop) / 2.0))
    return np.asarray(img.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255


def _reference_avgpool(spec, paths):
    """resnet18 global-average-pooled features, computed without cnncodes' pipeline."""
    net = build_model(spec)
    net.fc = torch.nn.Identity()
    pre = spec.preprocessing
    x = np.stack([_pixels(p, pre.resize[0], pre.crop[0]) for p in paths])
    x = (x - np.array(pre.mean, np.float32)) / np.array(pre.std, np.float32)
    with torch.no_grad():
        return net(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- codes


def test_codes_of_an_untrained_resnet18(tiny_spec, make_images):
    images = make_images(6)
    result = extract_codes(images, tiny_spec, "avgpool", cache_dir=None, **FAST)
    codes = result.codes["avgpool"]
    assert list(result.codes) == ["avgpool"]
    assert codes.dtype == np.float32 and codes.shape == (6, 512)
    assert np.isfinite(codes).all() and np.ptp(codes, axis=0).max() > 0
    np.testing.assert_array_equal(result.kept, np.arange(6))
    assert (result.skipped, result.computed, result.cached) == ([], 6, 0)
    assert result.concatenated() is codes
    _close(codes, _reference_avgpool(tiny_spec, images))


def test_rows_follow_input_order(tiny_spec, make_images):
    images = make_images(7)
    base = extract_codes(images, tiny_spec, "flatten", cache_dir=None, batch_size=3, **FAST)
    order = [5, 2, 6, 0, 3, 1, 4]
    shuffled = extract_codes(
        [images[i] for i in order], tiny_spec, "flatten", cache_dir=None, batch_size=3, **FAST
    )
    _close(shuffled.codes["flatten"], base.codes["flatten"][order])
    for i in range(7):
        assert not np.allclose(base.codes["flatten"][i], base.codes["flatten"][(i + 1) % 7])


@pytest.mark.parametrize("batch_size", [1, 3])
def test_batch_size_does_not_change_codes(tiny_spec, make_images, batch_size):
    images = make_images(7)
    kwargs = dict(cache_dir=None, precision="fp32", device="cpu", **FAST)
    whole = extract_codes(
        images, tiny_spec, ["layer3", "avgpool"], "avgmax", batch_size=7, **kwargs
    )
    split = extract_codes(
        images, tiny_spec, ["layer3", "avgpool"], "avgmax", batch_size=batch_size, **kwargs
    )
    for layer in ("layer3", "avgpool"):
        _close(split.codes[layer], whole.codes[layer])


def test_codes_are_bit_identical_however_the_images_were_batched(tiny_spec, make_images, tmp_path):
    # A forward pass of one image takes other CPU kernels than a pass of several (up to 5e-6
    # apart for this net): an image added to a cache on its own must get the codes that a
    # run over the whole folder gives it.
    images = make_images(5)
    kwargs = dict(precision="fp32", device="cpu", **FAST)
    whole = extract_codes(images, tiny_spec, "avgpool", cache_dir=None, **kwargs).codes
    cache = tmp_path / "cache"
    for n in range(1, len(images) + 1):  # each run computes one new image
        result = extract_codes(images[:n], tiny_spec, "avgpool", cache_dir=cache, **kwargs)
        assert result.computed == 1
    incremental = extract_codes(images, tiny_spec, "avgpool", cache_dir=cache, **kwargs)
    assert incremental.cached == 5
    np.testing.assert_array_equal(incremental.codes["avgpool"], whole["avgpool"])
    for batch_size in (1, 2, 3):
        split = extract_codes(
            images, tiny_spec, "avgpool", cache_dir=None, batch_size=batch_size, **kwargs
        )
        np.testing.assert_array_equal(split.codes["avgpool"], whole["avgpool"])


def test_multiple_layers_come_from_one_pass(tiny_spec, make_images, forward_counter):
    images = make_images(3)
    layers = ["layer4", "layer2", "avgpool"]
    result = extract_codes(
        images, tiny_spec, layers, "pyramid", cache_dir=None, batch_size=2, **FAST
    )
    assert list(result.codes) == layers
    assert (forward_counter.batches, forward_counter.images) == (math.ceil(3 / 2), 3)
    # pyramid: 5 values per channel, also on avgpool's 1x1 maps
    assert [result.codes[name].shape[1] for name in layers] == [5 * 512, 5 * 128, 5 * 512]
    assert result.concatenated().shape == (3, 5 * 512 + 5 * 128 + 5 * 512)
    for layer in layers:
        alone = extract_codes(images, tiny_spec, layer, "pyramid", cache_dir=None, **FAST)
        _close(result.codes[layer], alone.codes[layer])


def test_bf16_on_cpu_agrees_with_fp32(tiny_spec, make_images):
    images = make_images(4)
    fp32 = extract_codes(images, tiny_spec, "avgpool", cache_dir=None, precision="fp32", **FAST)
    bf16 = extract_codes(images, tiny_spec, "avgpool", cache_dir=None, precision="bf16", **FAST)
    a, b = fp32.codes["avgpool"], bf16.codes["avgpool"]
    assert b.dtype == np.float32 and np.isfinite(b).all()
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99
    assert not np.array_equal(a, b)  # it really ran in bfloat16
    assert bf16.configs["avgpool"]["precision"] == "bf16"


def _tf32_state():
    return {
        name: module.fp32_precision
        for name, module in (
            ("matmul", torch.backends.cuda.matmul),
            ("conv", torch.backends.cudnn.conv),
        )
    }


@pytest.fixture
def tf32_on():
    """TF32 allowed for CUDA matrix products and convolutions (settable without a GPU)."""
    if not hasattr(torch.backends.cudnn, "conv"):
        pytest.skip("this PyTorch has no per-operation fp32_precision switches (added in 2.9)")
    before = _tf32_state()
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    yield {"matmul": "tf32", "conv": "tf32"}
    torch.backends.cuda.matmul.fp32_precision = before["matmul"]
    torch.backends.cudnn.conv.fp32_precision = before["conv"]


def test_exact_fp32_turns_tf32_off_and_restores_it(tf32_on):
    with exact_fp32("cuda"):
        assert _tf32_state() == {"matmul": "ieee", "conv": "ieee"}
    assert _tf32_state() == tf32_on
    with pytest.raises(KeyError, match="boom"), exact_fp32("cuda"):
        assert _tf32_state() == {"matmul": "ieee", "conv": "ieee"}
        raise KeyError("boom")
    assert _tf32_state() == tf32_on
    # Nothing to switch on the CPU.
    with exact_fp32("cpu"):
        assert _tf32_state() == tf32_on


@pytest.mark.parametrize("precision, inside", [("fp32", "ieee"), ("bf16", "tf32")])
@pytest.mark.parametrize("fails", [False, True])
def test_cuda_fp32_extraction_runs_without_tf32(
    cnn_spec, make_images, monkeypatch, tf32_on, precision, inside, fails
):
    # The network step is replaced, so this runs without a GPU: what matters is the state the
    # CUDA kernels would see while codes are made, and that it is restored afterwards.
    seen = []

    def network(loop):
        seen.append(_tf32_state())
        if fails:
            raise RuntimeError("out of memory")
        return 0

    from cnncodes.extraction import engines

    monkeypatch.setattr(engines, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(engines.ForwardLoop, "run", network)
    images = make_images(2)
    if fails:
        with pytest.raises(RuntimeError, match="out of memory"):
            extract_codes(images, cnn_spec, "pool", cache_dir=None, precision=precision)
    else:
        extract_codes(images, cnn_spec, "pool", cache_dir=None, precision=precision)
    assert seen == [{"matmul": inside, "conv": inside}]
    assert _tf32_state() == tf32_on


def test_worker_processes_give_the_same_codes(tiny_spec, make_images):
    images = make_images(6)
    inline = extract_codes(
        images, tiny_spec, "avgpool", cache_dir=None, num_workers=0, batch_size=4
    )
    workers = extract_codes(
        images, tiny_spec, "avgpool", cache_dir=None, num_workers=2, batch_size=4
    )
    _close(workers.codes["avgpool"], inline.codes["avgpool"], tol=1e-6)


def test_empty_input(cnn_spec):
    result = extract_codes([], cnn_spec, "pool", cache_dir=None, **FAST)
    assert result.codes["pool"].shape == (0, 16)
    assert (len(result.kept), result.computed) == (0, 0)


def test_path_objects_are_accepted(cnn_spec, make_images):
    images = make_images(2)
    a = extract_codes([os.fspath(p) for p in images], cnn_spec, "pool", cache_dir=None, **FAST)
    b = extract_codes([Path(p) for p in images], cnn_spec, "pool", cache_dir=None, **FAST)
    np.testing.assert_array_equal(a.codes["pool"], b.codes["pool"])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"pooling": "mean"}, ValueError, "pooling='mean' is not supported"),
        ({"on_error": "ignore"}, ValueError, "on_error='ignore': choose one of 'raise', 'skip'"),
        ({"batch_size": 0}, ValueError, "batch_size=0: expected a positive int"),
        ({"batch_size": True}, ValueError, "batch_size=True: expected a positive int"),
        ({"num_workers": -1}, ValueError, r"num_workers=-1: expected an int >= 0"),
        ({"device": "tpu"}, ValueError, "device='tpu': expected 'auto', 'cpu'"),
        ({"precision": "fp64"}, ValueError, "precision='fp64': choose one of 'auto', 'fp32'"),
        ({"layers": "layer9"}, ValueError, "layer='layer9' is not a node of resnet18"),
        ({"engine": "spark"}, ValueError, "engine='spark': choose one of 'local', 'ray'"),
        ({"engine": "ray", "ray_actors": 0}, ValueError, "ray_actors=0: expected an int >= 1"),
    ],
)
def test_bad_arguments(tiny_spec, make_images, kwargs, error, match):
    images = make_images(1)
    kwargs = {"layers": "avgpool", "cache_dir": None, **kwargs}
    with pytest.raises(error, match=match):
        extract_codes(images, tiny_spec, **kwargs)


def test_ray_engine_without_ray_says_how_to_install_it(tiny_spec, make_images, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"engine='ray' needs Ray.*pip install -e '\.\[ray\]'"):
        extract_codes(make_images(1), tiny_spec, "avgpool", cache_dir=None, engine="ray")


def test_ray_engine_arguments_are_checked_before_ray_is_needed(tiny_spec, make_images, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # no Ray session is started (nor could be)
    with pytest.raises(ValueError, match="precision='fp64': choose one of"):
        extract_codes(make_images(1), tiny_spec, "avgpool", engine="ray", precision="fp64")


def test_importing_cnncodes_does_not_import_ray():
    code = (
        "import sys, cnncodes, cnncodes.extract, cnncodes.transformers; print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_bad_image_arguments(tiny_spec, tmp_path):
    with pytest.raises(
        TypeError, match=r"images='a\.jpg': expected a sequence of image file paths"
    ):
        extract_codes("a.jpg", tiny_spec, "avgpool", cache_dir=None)
    with pytest.raises(TypeError, match=r"images\[1\]=3: expected an image file path"):
        extract_codes(["a.jpg", 3], tiny_spec, "avgpool", cache_dir=None)


def test_flatten_limit_fails_before_any_image_is_read(tmp_path):
    spec = resolve_spec("resnet18", "none", resize=128, crop=128)
    with pytest.raises(ValueError, match="pooling='flatten' would make 262,144 features"):
        extract_codes([tmp_path / "missing.jpg"], spec, "conv1", "flatten", cache_dir=None)


# ----------------------------------------------------------------------------- the cache


def test_cached_codes_equal_computed_ones_and_skip_the_network(
    cnn_spec, make_images, tmp_path, forward_counter
):
    images = make_images(6)
    cache = tmp_path / "cache"
    first = extract_codes(images, cnn_spec, "pool", cache_dir=cache, batch_size=4, **FAST)
    assert (first.computed, first.cached, forward_counter.images) == (6, 0, 6)
    second = extract_codes(images, cnn_spec, "pool", cache_dir=cache, batch_size=4, **FAST)
    assert (second.computed, second.cached) == (0, 6)
    assert (forward_counter.builds, forward_counter.images) == (1, 6)  # no second network
    np.testing.assert_array_equal(second.codes["pool"], first.codes["pool"])
    uncached = extract_codes(images, cnn_spec, "pool", cache_dir=None, batch_size=4, **FAST)
    np.testing.assert_array_equal(uncached.codes["pool"], first.codes["pool"])
    store = CodeStore(cache, first.configs["pool"])
    assert store.info()["rows"] == 6 and store.key == config_key(first.configs["pool"])


def test_only_missing_images_are_computed(cnn_spec, make_images, tmp_path, forward_counter):
    images = make_images(8)
    cache = tmp_path / "cache"
    extract_codes(images[:4], cnn_spec, "pool", cache_dir=cache, **FAST)
    order = [7, 0, 5, 2, 6, 1, 4, 3]
    forward_counter.images = 0
    result = extract_codes([images[i] for i in order], cnn_spec, "pool", cache_dir=cache, **FAST)
    assert (result.computed, result.cached, forward_counter.images) == (4, 4, 4)
    reference = extract_codes(images, cnn_spec, "pool", cache_dir=None, **FAST)
    _close(result.codes["pool"], reference.codes["pool"][order])


def test_same_file_under_two_names_is_computed_once(
    cnn_spec, make_images, tmp_path, forward_counter
):
    a, b = make_images(2)
    copy = tmp_path / "copy-of-a.png"
    shutil.copy(a, copy)
    result = extract_codes([a, b, copy, a], cnn_spec, "pool", cache_dir=tmp_path / "c", **FAST)
    assert (result.computed, forward_counter.images) == (2, 2)
    codes = result.codes["pool"]
    np.testing.assert_array_equal(codes[0], codes[2])
    np.testing.assert_array_equal(codes[0], codes[3])
    assert not np.allclose(codes[0], codes[1])
    assert CodeStore(tmp_path / "c", result.configs["pool"]).info()["rows"] == 2


def test_rewritten_file_is_recomputed(cnn_spec, make_images, tmp_path, forward_counter):
    images = make_images(3)
    cache = tmp_path / "cache"
    before = extract_codes(images, cnn_spec, "pool", cache_dir=cache, **FAST)
    other = make_images(2, seed=99, folder=tmp_path / "other")[1]
    old_digest = file_digest(images[1])
    shutil.copyfile(other, images[1])  # same name, new content
    assert file_digest(images[1]) != old_digest
    forward_counter.images = 0
    after = extract_codes(images, cnn_spec, "pool", cache_dir=cache, **FAST)
    assert (after.computed, after.cached, forward_counter.images) == (1, 2, 1)
    fresh = extract_codes([other], cnn_spec, "pool", cache_dir=None, **FAST)
    _close(after.codes["pool"][1], fresh.codes["pool"][0])
    np.testing.assert_array_equal(after.codes["pool"][[0, 2]], before.codes["pool"][[0, 2]])
    assert not np.allclose(after.codes["pool"][1], before.codes["pool"][1])


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"layers": "relu1"}, id="layer"),
        pytest.param({"pooling": "max"}, id="pooling"),
        pytest.param({"spec": {"resize": 44}}, id="resize"),
        pytest.param({"spec": {"mean": 0.5}}, id="mean"),
        pytest.param({"spec": {"interpolation": "bicubic"}}, id="interpolation"),
        pytest.param({"spec": {"crop": 30}}, id="crop"),
        pytest.param({"spec": {"seed": 1}}, id="weights"),
        pytest.param({"precision": "bf16"}, id="precision"),
    ],
)
def test_a_change_that_alters_codes_gets_its_own_configuration(
    make_images, tmp_path, forward_counter, change
):
    images = make_images(3)
    cache = tmp_path / "cache"
    base_spec = dict(resize=40, crop=32, seed=0)
    base = dict(layers="conv2", pooling="avg", precision="fp32")

    def run(spec_kwargs, kwargs, cache_dir):
        kw = {**base_spec, **spec_kwargs}
        spec = resolve_spec("tests.tiny_nets:tiny_cnn", **kw)
        return extract_codes(images, spec, cache_dir=cache_dir, **{**base, **kwargs}, **FAST)

    first = run({}, {}, cache)
    spec_change = change.get("spec", {})
    other = {k: v for k, v in change.items() if k != "spec"}
    forward_counter.images = 0
    changed = run(spec_change, other, cache)
    assert changed.computed == 3 and forward_counter.images == 3
    (old_config,), (new_config,) = first.configs.values(), changed.configs.values()
    assert config_key(old_config) != config_key(new_config)
    uncached = run(spec_change, other, None)
    np.testing.assert_array_equal(
        next(iter(changed.codes.values())), next(iter(uncached.codes.values()))
    )
    assert len(os.listdir(cache)) == 2


def test_batch_size_and_workers_share_one_configuration(cnn_spec, make_images, tmp_path):
    images = make_images(4)
    cache = tmp_path / "cache"
    first = extract_codes(images, cnn_spec, "pool", cache_dir=cache, batch_size=4, num_workers=0)
    again = extract_codes(images, cnn_spec, "pool", cache_dir=cache, batch_size=1, num_workers=2)
    assert again.configs == first.configs and (again.computed, again.cached) == (0, 4)


def test_a_changed_checkpoint_file_is_never_served_stale_codes(make_images, tmp_path):
    images = make_images(3)
    cache = tmp_path / "cache"
    ckpt = tmp_path / "weights.pth"
    torch.manual_seed(1)
    torch.save(TinyCNN().state_dict(), ckpt)
    model = "tests.tiny_nets:tiny_cnn"
    spec_a = resolve_spec(model, str(ckpt), resize=40, crop=32)
    codes_a = extract_codes(images, spec_a, "flatten", cache_dir=cache, **FAST).codes["flatten"]
    torch.manual_seed(2)
    torch.save(TinyCNN().state_dict(), ckpt)  # same path, new weights
    spec_b = resolve_spec(model, str(ckpt), resize=40, crop=32)
    assert spec_b.weights_id != spec_a.weights_id
    result_b = extract_codes(images, spec_b, "flatten", cache_dir=cache, **FAST)
    assert result_b.computed == 3
    uncached_b = extract_codes(images, spec_b, "flatten", cache_dir=None, **FAST)
    np.testing.assert_array_equal(result_b.codes["flatten"], uncached_b.codes["flatten"])
    assert not np.allclose(result_b.codes["flatten"], codes_a)
    # The old spec still names the old file's hash: its codes are served, new work is refused.
    again_a = extract_codes(images, spec_a, "flatten", cache_dir=cache, **FAST)
    np.testing.assert_array_equal(again_a.codes["flatten"], codes_a)
    new_image = make_images(1, seed=5, folder=tmp_path / "more")
    with pytest.raises(WeightsError, match="weights.pth changed"):
        extract_codes(new_image, spec_a, "flatten", cache_dir=cache, **FAST)


def test_a_new_layer_is_added_without_duplicating_cached_ones(cnn_spec, make_images, tmp_path):
    images = make_images(4)
    cache = tmp_path / "cache"
    first = extract_codes(images, cnn_spec, "pool", cache_dir=cache, **FAST)
    both = extract_codes(images, cnn_spec, ["pool", "conv2"], cache_dir=cache, **FAST)
    assert both.computed == 4  # conv2 had to be computed
    np.testing.assert_array_equal(both.codes["pool"], first.codes["pool"])
    assert CodeStore(cache, first.configs["pool"]).info()["rows"] == 4
    assert CodeStore(cache, both.configs["conv2"]).info()["rows"] == 4


# ----------------------------------------------------------------------------- bad images


def _bad_files(folder, make_images):
    """A missing file, a folder, undecodable bytes (twice, under two names), a truncated PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(b"this is not an image" * 10)
    copy = folder / "corrupt-copy.jpg"
    shutil.copy(corrupt, copy)
    (folder / "a-folder.png").mkdir()
    png = make_images(2, seed=3, folder=folder, prefix="whole")[1]
    truncated = folder / "truncated.png"
    truncated.write_bytes(open(png, "rb").read()[:-200])
    return {
        "missing": (str(folder / "missing.jpg"), "file not found"),
        "folder": (str(folder / "a-folder.png"), "not a regular file"),
        "corrupt": (str(corrupt), "cannot identify image file"),
        "truncated": (str(truncated), "truncated or corrupt image data"),
        "copy": (str(copy), "cannot identify image file"),
    }


@pytest.mark.parametrize("cache", [False, True])
def test_skip_reports_every_bad_file_and_keeps_rows_aligned(cnn_spec, make_images, tmp_path, cache):
    good = make_images(4)
    bad = _bad_files(tmp_path / "bad", make_images)
    order = [
        good[0],
        "missing",
        good[1],
        "corrupt",
        "folder",
        good[2],
        "truncated",
        "copy",
        good[3],
    ]
    paths = [bad[p][0] if p in bad else p for p in order]
    cache_dir = tmp_path / "cache" if cache else None
    for _run in range(2 if cache else 1):  # the second run reads the good rows from the cache
        result = extract_codes(
            paths, cnn_spec, "pool", cache_dir=cache_dir, on_error="skip", batch_size=2, **FAST
        )
        np.testing.assert_array_equal(result.kept, [0, 2, 5, 8])
        assert [(s.index, s.path) for s in result.skipped] == [
            (i, paths[i]) for i in (1, 3, 4, 6, 7)
        ]
        for skipped in result.skipped:
            expected = next(reason for path, reason in bad.values() if path == skipped.path)
            assert skipped.reason.startswith(expected), skipped
        reference = extract_codes(good, cnn_spec, "pool", cache_dir=None, **FAST)
        _close(result.codes["pool"], reference.codes["pool"])


def test_raise_names_the_file_after_committing_what_was_computed(
    cnn_spec, make_images, tmp_path, forward_counter
):
    good = make_images(8)
    bad = _bad_files(tmp_path / "bad", make_images)["corrupt"][0]
    paths = good[:6] + [bad] + good[6:]
    cache = tmp_path / "cache"
    with pytest.raises(ImageLoadError, match=r"corrupt\.jpg: cannot identify image file") as info:
        extract_codes(
            paths,
            cnn_spec,
            "pool",
            cache_dir=cache,
            batch_size=2,
            commit_rows=10_000,
            commit_seconds=10_000,
            **FAST,
        )
    assert info.value.path == bad
    store = CodeStore(cache, code_config(cnn_spec, "pool", "avg", "fp32"))
    stored = store.contains([file_digest(p) for p in good])
    np.testing.assert_array_equal(stored, [True] * 6 + [False] * 2)
    forward_counter.images = 0
    resumed = extract_codes(good, cnn_spec, "pool", cache_dir=cache, **FAST)
    assert (resumed.computed, resumed.cached, forward_counter.images) == (2, 6, 2)


def test_raise_on_a_missing_file_before_any_work(cnn_spec, make_images, tmp_path, forward_counter):
    good = make_images(2)
    missing = str(tmp_path / "nope.jpg")
    with pytest.raises(ImageLoadError, match=r"nope\.jpg: file not found"):
        extract_codes(good + [missing], cnn_spec, "pool", cache_dir=tmp_path / "c", **FAST)
    assert forward_counter.builds == 0


def test_default_decoding_workers_follow_the_device_and_the_cores():
    from cnncodes.extraction.runtime import _default_workers

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert [_default_workers(cpu, n) for n in (1, 2, 4, 8, 64)] == [0, 0, 0, 4, 4]
    assert [_default_workers(gpu, n) for n in (1, 2, 4, 16, 64)] == [1, 1, 3, 15, 16]


def test_progress_goes_to_a_log_as_lines_when_stderr_is_not_a_terminal(
    cnn_spec, make_images, capsys, monkeypatch
):
    import cnncodes.utils.progress

    monkeypatch.setattr(cnncodes.utils.progress, "LOG_INTERVAL", 0.0)  # a line after every batch
    images = make_images(5)
    extract_codes(images, cnn_spec, "pool", cache_dir=None, batch_size=2, **FAST)
    lines = capsys.readouterr().err.splitlines()
    assert [_counts(line) for line in lines] == [
        "extracting: 2/5 images",
        "extracting: 4/5 images",
        "extracting: 5/5 images in",
    ]
    assert "img/s, about" in lines[0] and "\r" not in "".join(lines)
    extract_codes(images, cnn_spec, "pool", cache_dir=None, progress=False, **FAST)
    assert capsys.readouterr().err == ""


def test_progress_advances_with_each_forward_pass_not_each_loader_batch(
    cnn_spec, make_images, capsys, monkeypatch
):
    # A loader batch of 32 images on the CPU takes several forward passes; with one update per
    # loader batch a slow network left a log silent for the whole batch.
    import cnncodes.utils.progress

    monkeypatch.setattr(cnncodes.utils.progress, "LOG_INTERVAL", 0.0)
    images = make_images(20)
    extract_codes(images, cnn_spec, "pool", cache_dir=None, batch_size=32, **FAST)
    chunk = extract_module.CPU_FORWARD_BATCH
    lines = [_counts(line) for line in capsys.readouterr().err.splitlines()]
    assert lines == [f"extracting: {n}/20 images" for n in range(chunk, 20, chunk)] + [
        "extracting: 20/20 images in"
    ]
