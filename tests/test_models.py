"""Tests for cnncodes.models: names, weights, preprocessing and layers."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import time
import urllib.error

import numpy as np
import pytest
import torch
from cnncodes.cache import config_key
from cnncodes.extract import code_config, spec_from_config
from cnncodes.layers import layer_shapes
from cnncodes.models import (
    LayerError,
    ModelError,
    WeightsError,
    WeightsUnavailableError,
    build_extractor,
    build_model,
    default_preprocessing_note,
    file_sha256,
    list_layers,
    read_checkpoint,
    resolve_layers,
    resolve_spec,
)
from torchvision.models import SqueezeNet1_0_Weights
from torchvision.models.feature_extraction import get_graph_node_names

from cnncodes import extract_codes
from cnncodes.networks.preprocessing import PreprocessingWarning, default_preprocessing_warning
from tests.resnet_cifar import resnet20
from tests.tiny_nets import DynamicCNN, TinyCNN

TINY = "tests.tiny_nets:tiny_cnn"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _tiny_state(seed):
    torch.manual_seed(seed)
    return TinyCNN().state_dict()


def _assert_state_equal(net, state):
    own = net.state_dict()
    assert set(own) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(own[key], value, rtol=0, atol=0)


# ----------------------------------------------------------------------------- the models facade

#: Every name cnncodes.models exported before its split into modules (issue 13).
MODELS_NAMES = [
    "ModelSpec",
    "Preprocessing",
    "PREPROCESSING_KEYS",
    "PREPROCESSING_IMPLS",
    "LayerInfo",
    "ModelError",
    "WeightsError",
    "WeightsUnavailableError",
    "LayerError",
    "resolve_spec",
    "resolve_preprocessing",
    "resolve_layers",
    "build_model",
    "build_extractor",
    "list_layers",
    "file_sha256",
    "describe_preprocessing",
    "default_preprocessing_note",
    "PENULTIMATE",
]


def test_models_still_exports_every_name_it_did():
    import cnncodes.models

    import cnncodes

    assert set(MODELS_NAMES) <= set(cnncodes.models.__all__)
    # Also imported from cnncodes.models (not in its __all__) by code written before the split.
    for name in [*MODELS_NAMES, "layer_shapes", "model_identity"]:
        value = getattr(cnncodes.models, name)
        # One object wherever it is imported from: isinstance and except clauses keep working.
        assert getattr(cnncodes, name, value) is value, name


#: Private names cnncodes.models re-exported before the split, and their public names now.
OLD_PRIVATE_NAMES = {
    "_checkpoint_preprocessing": "checkpoint_preprocessing",
    "_fetch_named_weights": "fetch_named_weights",
    "_fetch_timm_weights": "fetch_timm_weights",
    "_load_state": "load_state",
    "_load_timm_pretrained": "load_timm_pretrained",
    "_read_checkpoint": "read_checkpoint",
    "_state_fingerprint": "state_fingerprint",
    "_meta_for_spec": "meta_for_spec",
    "_probe": "probe_layers",
    "_declared_preprocessing": "declared_preprocessing",
    "_timm_preprocessing": "timm_preprocessing",
}


def test_old_private_names_of_models_are_the_public_jobs():
    import cnncodes.models

    from cnncodes.networks import checkpoints, layers, preprocessing

    for old, new in OLD_PRIVATE_NAMES.items():
        owner = next(m for m in (checkpoints, layers, preprocessing) if hasattr(m, new))
        assert new in owner.__all__
        assert getattr(cnncodes.models, old) is getattr(owner, new), old


# ----------------------------------------------------------------------------- model names


@pytest.mark.parametrize(
    "model", ["resnet18", "mobilenet_v2", "efficientnet_b0", "convnext_tiny", "vit_b_16"]
)
def test_torchvision_names_resolve_without_weights(model):
    spec = resolve_spec(model, "none")
    assert (spec.model, spec.weights, spec.weights_id) == (model, "none", "none:seed=0")
    assert len(spec.arch_id) == 16


def test_torchvision_cache_keys_are_those_of_earlier_versions():
    """Codes cached for torchvision models by earlier versions are still found (same keys)."""
    known = {
        "resnet18": ("06a1c57ba771afeb", "avgpool", "769639c908a4d3b24bd213d6"),
        "mobilenet_v2": ("1ee6bff1eec476d3", "features", "afeec100c8bd860df68a8445"),
    }
    for model, (arch_id, layer, key) in known.items():
        spec = resolve_spec(model, "none")
        assert spec.arch_id == arch_id
        assert config_key(code_config(spec, layer, "avg", "fp32")) == key
    assert resolve_spec("resnet18", "DEFAULT").arch_id == known["resnet18"][0]


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(ModelError, match=r"model='resnet51' is not a torchvision .* Did you mean"):
        resolve_spec("resnet51", "none")
    with pytest.raises(ModelError, match=r"'resnet50'.*list_models\(\).*package\.module:callable"):
        resolve_spec("resnet51", "none")
    with pytest.raises(ModelError, match=r"Did you mean .*'mobilenet_v2'"):
        resolve_spec("mobilenetv2", "none")


@pytest.mark.parametrize(
    "model, match",
    [
        ("", "expected a torchvision model name"),
        (3, "model=3: expected a torchvision model name"),
        ("tests.tiny_nets:", "expected 'package.module:callable'"),
        ("no_such_module_xyz:net", "cannot import module 'no_such_module_xyz'"),
        ("tests.tiny_nets:nope", "module 'tests.tiny_nets' has no attribute 'nope'"),
        ("tests.tiny_nets:not_a_module", "returned Tensor, not a torch.nn.Module"),
    ],
)
def test_bad_model_arguments(model, match):
    with pytest.raises(ModelError, match=match):
        resolve_spec(model, "none")


def test_user_callable_without_weights_is_identified_by_its_state():
    spec = resolve_spec(TINY)
    assert spec.weights == "callable"
    assert spec.weights_id.startswith("state-sha256:")
    assert resolve_spec(TINY).weights_id == spec.weights_id
    assert resolve_spec(TINY, seed=1).weights_id != spec.weights_id
    torch.manual_seed(0)
    _assert_state_equal(build_model(spec), TinyCNN().state_dict())


# ----------------------------------------------------------------------------- named weights


@pytest.mark.parametrize(
    "weights, expected",
    [
        (None, "ResNet50_Weights.IMAGENET1K_V2"),
        ("DEFAULT", "ResNet50_Weights.IMAGENET1K_V2"),
        ("ResNet50_Weights.DEFAULT", "ResNet50_Weights.IMAGENET1K_V2"),
        ("IMAGENET1K_V1", "ResNet50_Weights.IMAGENET1K_V1"),
        ("ResNet50_Weights.IMAGENET1K_V1", "ResNet50_Weights.IMAGENET1K_V1"),
    ],
)
def test_weights_names(weights, expected):
    spec = resolve_spec("resnet50", weights)
    assert spec.weights == spec.weights_id == expected


@pytest.mark.parametrize(
    "model, weights, match",
    [
        ("resnet50", "ResNet18_Weights.IMAGENET1K_V1", r"are for another model: 'resnet50' takes "),
        ("resnet50", "IMAGENET1K_V9", r"is not one of ResNet50_Weights: DEFAULT, IMAGENET1K_V1"),
        (TINY, "DEFAULT", "named torchvision weights only apply to torchvision models"),
        ("resnet18", 3.0, "weights=3.0: expected a weights name"),
    ],
)
def test_bad_weights_names(model, weights, match):
    with pytest.raises(WeightsError, match=match):
        resolve_spec(model, weights)


def test_none_weights_are_seeded():
    a0, b0 = (
        build_model(resolve_spec("resnet18", "none")),
        build_model(resolve_spec("resnet18", "NONE")),
    )
    a1 = build_model(resolve_spec("resnet18", "none", seed=1))
    assert resolve_spec("resnet18", "none", seed=1).weights_id == "none:seed=1"
    torch.testing.assert_close(a0.state_dict(), b0.state_dict(), rtol=0, atol=0)
    assert not torch.equal(a0.conv1.weight, a1.conv1.weight)
    assert not torch.equal(a0.fc.weight, a1.fc.weight)
    # The global random state is not consumed by building a model.
    torch.manual_seed(5)
    build_model(resolve_spec("resnet18", "none", seed=1))
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(1))
    assert not a0.training and not any(p.requires_grad for p in a0.parameters())


def _offline(monkeypatch, calls):
    def download(url, dst, *args, **kwargs):
        calls.append((url, dst))
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)


@pytest.mark.parametrize("download", ["", "1"])
def test_named_weights_offline_say_where_to_put_them(tmp_path, monkeypatch, download):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("CNNCODES_DOWNLOAD", download)
    calls = []
    _offline(monkeypatch, calls)
    spec = resolve_spec("resnet18", "IMAGENET1K_V1")  # resolving is offline-safe
    assert calls == []
    target = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(WeightsUnavailableError) as info:
        build_model(spec)
    message = str(info.value)
    assert "ResNet18_Weights.IMAGENET1K_V1 are not on this machine" in message
    assert str(target) in message and "TORCH_HOME" in message
    assert str(tmp_path / "hub") in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "weights='/path/to/checkpoint.pth'" in message
    assert (
        info.value.__cause__ is None
        and info.value.__context__ is None
        or (info.value.__suppress_context__)
    )
    if download:  # downloading was allowed, and failed
        assert "could not be downloaded (<urlopen error no network (test)>)" in message
        assert [dst for _, dst in calls] == [str(target)]
    else:  # nothing is fetched unless the user allows it
        assert "CNNCODES_DOWNLOAD=1" in message
        assert calls == []
    assert not target.exists()


class _RunsCode:
    """A pickle payload that creates a file when unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_hub_file_with_a_wrong_hash_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    calls = []
    _offline(monkeypatch, calls)
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    marker = tmp_path / "code-ran"
    torch.save(_RunsCode(marker), hub / "resnet18-f37072fd.pth")
    with pytest.raises(WeightsError, match=r"does not match the SHA-256 prefix 'f37072fd'"):
        build_model(resolve_spec("resnet18", "IMAGENET1K_V1"))
    assert calls == [] and not marker.exists()
    # Proof that the file is dangerous: torchvision's own loader (weights_only=False) runs it.
    torch.load(hub / "resnet18-f37072fd.pth", weights_only=False)
    assert marker.exists()


def test_hub_file_with_the_right_hash_is_loaded(tmp_path, monkeypatch):
    state = build_model(resolve_spec("squeezenet1_0", "none", seed=3)).state_dict()
    staged = tmp_path / "staged.pth"
    torch.save(state, staged)
    prefix = hashlib.sha256(staged.read_bytes()).hexdigest()[:8]
    hub_file = tmp_path / "hub" / "checkpoints" / f"squeezenet1_0-{prefix}.pth"
    hub_file.parent.mkdir(parents=True)
    shutil.move(staged, hub_file)
    # Public seams only: the hub folder is $TORCH_HOME/hub, the file name is the published URL's,
    # whose hash prefix these stand-in weights match.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = SqueezeNet1_0_Weights.IMAGENET1K_V1.value
    monkeypatch.setattr(weights, "url", weights.url.rsplit("/", 1)[0] + "/" + hub_file.name)
    calls = []
    _offline(monkeypatch, calls)
    loaded = build_model(resolve_spec("squeezenet1_0", "IMAGENET1K_V1"))
    _assert_state_equal(loaded, state)
    assert calls == []


# ----------------------------------------------------------------------------- checkpoint files


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: sd, id="plain"),
        pytest.param(lambda sd: {"state_dict": sd, "epoch": 3}, id="state_dict"),
        pytest.param(lambda sd: {"model": sd, "optimizer": {"lr": 0.1}}, id="model"),
        pytest.param(lambda sd: {"model_state_dict": sd}, id="model_state_dict"),
        pytest.param(
            lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
            id="module-prefix",
        ),
        pytest.param(lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()}, id="compile-prefix"),
    ],
)
def test_checkpoint_layouts(tmp_path, wrap):
    state = _tiny_state(7)
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(state), path)
    spec = resolve_spec(TINY, str(path))
    assert spec.weights == str(path)
    _assert_state_equal(build_model(spec), state)


def test_checkpoint_identity_is_the_files_sha256(tmp_path):
    path = tmp_path / "a.pth"
    torch.save(_tiny_state(1), path)
    spec = resolve_spec(TINY, path)  # os.PathLike is accepted
    assert spec.weights_id == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    copy = tmp_path / "b.pth"
    shutil.copy(path, copy)
    assert resolve_spec(TINY, str(copy)).weights_id == spec.weights_id
    torch.save(_tiny_state(2), path)  # same size, other numbers
    changed = resolve_spec(TINY, str(path))
    assert changed.weights_id != spec.weights_id
    with pytest.raises(WeightsError, match=r"a\.pth changed: its SHA-256 is now [0-9a-f]{64}"):
        build_model(spec)
    _assert_state_equal(build_model(changed), _tiny_state(2))
    os.remove(path)
    with pytest.raises(WeightsError, match=r"weights file not found: .*a\.pth"):
        build_model(changed)


def overwrite_in_place(path, data):
    """Rewrite ``path`` with ``data`` (same size) in place and restore its times, as a user's
    copy tool or a malicious process can: same path, size, mtime and inode, other bytes."""
    st = os.stat(path)
    assert len(data) == st.st_size
    # File times tick at the kernel's clock granularity (a few ms): let the change be visible.
    while time.time_ns() < st.st_ctime_ns + 50_000_000:
        time.sleep(0.01)
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        st.st_size,
        st.st_mtime_ns,
        st.st_ino,
    )


def test_weights_overwritten_in_place_with_mtime_restored_are_hashed_again(tmp_path):
    path, other = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(_tiny_state(1), path)
    torch.save(_tiny_state(2), other)
    old, new = file_sha256(path), file_sha256(other)
    assert old != new
    spec = resolve_spec(TINY, str(path))
    overwrite_in_place(path, other.read_bytes())
    assert file_sha256(path) == new  # not the memoised digest of the old bytes
    assert resolve_spec(TINY, str(path)).weights_id == f"sha256:{new}"
    with pytest.raises(WeightsError, match=rf"a\.pth changed: its SHA-256 is now {new}"):
        build_model(spec)


def test_mismatched_keys_are_listed(tmp_path):
    state = _tiny_state(0)
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"bad\.pth does not fit") as info:
        build_model(resolve_spec(TINY, str(path)))
    assert "missing keys: head.bias" in str(info.value)
    assert "unexpected keys: extra.weight" in str(info.value)
    assert "Only the classifier head" not in str(info.value)  # extra.weight is not the head
    state = _tiny_state(0)
    state["head.weight"] = torch.zeros(7, 16)
    state["head.bias"] = torch.zeros(7)
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"shape mismatches: head.weight \(7, 16\) vs \(5, 16\)"):
        build_model(resolve_spec(TINY, str(path)))


def test_a_checkpoint_with_another_head_gets_advice(tmp_path):
    import torchvision

    path = tmp_path / "finetuned.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    with pytest.raises(WeightsError) as info:
        build_model(resolve_spec("resnet18", str(path)))
    message = str(info.value)
    assert "fc.weight (10, 512) vs (1000, 512)" in message
    assert "Only the classifier head 'fc' differs" in message
    assert "--model-arg num_classes=10 (model_kwargs={'num_classes': 10})" in message


def test_pickles_that_need_code_are_refused(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": _tiny_state(0), "hook": _RunsCode(marker)}, evil)
    whole = tmp_path / "whole.pth"
    torch.save(TinyCNN(), whole)  # a pickled module needs its class: not a plain state_dict
    for path in (evil, whole):
        with pytest.raises(WeightsError, match="cannot be read as a checkpoint with weights_only"):
            build_model(resolve_spec(TINY, str(path)))
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, match",
    [
        (torch.zeros(3), "holds a Tensor, not a state_dict"),
        ({"epoch": 3, "best": 0.5}, r"no state_dict found.*top-level keys: 'epoch', 'best'"),
        (b"not a checkpoint", "cannot be read as a checkpoint"),
    ],
)
def test_files_without_a_state_dict(tmp_path, content, match):
    path = tmp_path / "x.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(WeightsError, match=match):
        build_model(resolve_spec(TINY, str(path)))


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(WeightsError, match=r"weights file not found: .*missing\.pth"):
        resolve_spec(TINY, str(tmp_path / "missing.pth"))


# ----------------------------------------------------------------------------- real weights


def test_resnet20_cifar_checkpoint_loads(assets, make_images):
    path = assets / "weights" / "resnet20_cifar10.th"
    spec = resolve_spec("tests.resnet_cifar:resnet20", weights=str(path), resize=32, crop=32)
    net = build_model(spec)
    raw = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in raw.items():
        torch.testing.assert_close(net.state_dict()[key.removeprefix("module.")], value.cpu())
    get_graph_node_names(resnet20())  # FX-traceable: the graph extractor is used
    assert resolve_layers(spec, "penultimate") == ["flatten"]
    assert layer_shapes(spec, ["layer1", "layer2", "layer3", "flatten", "linear"]) == {
        "layer1": (16, 32, 32),
        "layer2": (32, 16, 16),
        "layer3": (64, 8, 8),
        "flatten": (64,),
        "linear": (10,),
    }
    images = make_images(6)
    batched = extract_codes(
        images, spec, ["penultimate", "linear"], cache_dir=None, num_workers=0, batch_size=6
    )
    single = extract_codes(
        images, spec, ["penultimate", "linear"], cache_dir=None, num_workers=0, batch_size=1
    )
    codes = batched.codes["flatten"]
    assert codes.shape == (6, 64) and np.isfinite(codes).all()
    assert (codes >= 0).all() and codes.std(0).max() > 0  # averaged ReLU outputs, not constant
    for layer in ("flatten", "linear"):
        np.testing.assert_allclose(single.codes[layer], batched.codes[layer], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_mobilenet_v2_imagenet_checkpoint_recognises_ants_and_bees(assets):
    weights = assets / "weights" / "mobilenet_v2_imagenet.pth"
    labels = (assets / "weights" / "imagenet_labels.txt").read_text().splitlines()[1:]
    insects = {i for i, name in enumerate(labels) if name.split(",")[0] in ("ant", "bee")}
    assert len(insects) == 2
    val = assets / "data" / "hymenoptera" / "val"
    images = sorted(glob.glob(str(val / "ants" / "*.jpg")))[:4]
    images += sorted(glob.glob(str(val / "bees" / "*.jpg")))[:4]
    # The original was trained on (x - 128) / 128 at a plain 224x224 resize.
    spec = resolve_spec("mobilenet_v2", str(weights), resize=(224, 224), crop=0, mean=0.5, std=0.5)
    assert resolve_layers(spec, "penultimate") == ["classifier.0"]
    kwargs = dict(cache_dir=None, num_workers=0)
    batched = extract_codes(images, spec, ["classifier.1", "penultimate"], batch_size=8, **kwargs)
    logits = batched.codes["classifier.1"]
    assert logits.shape == (8, 1000) and batched.codes["classifier.0"].shape == (8, 1280)
    assert np.isfinite(logits).all() and np.isfinite(batched.codes["classifier.0"]).all()
    pick = [0, 1, 4, 5]  # batch size 1 on a few: each image alone (224 px is slow on 2 cores)
    single = extract_codes([images[i] for i in pick], spec, "classifier.1", batch_size=1, **kwargs)
    np.testing.assert_array_equal(logits[pick].argmax(1), single.codes["classifier.1"].argmax(1))
    np.testing.assert_allclose(logits[pick], single.codes["classifier.1"], rtol=1e-4, atol=1e-4)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    hits = sum(bool(insects & set(row)) for row in top5)
    assert hits >= 6, [[labels[i] for i in row] for row in top5]


# ----------------------------------------------------------------------------- preprocessing


def test_preprocessing_defaults_to_the_imagenet_evaluation_transform(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_tiny_state(0), path)
    for spec in (resolve_spec("resnet18", "none"), resolve_spec(TINY, str(path))):
        pre = spec.preprocessing
        assert (pre.resize, pre.crop, pre.interpolation) == ((256,), (224, 224), "bilinear")
        assert (pre.mean, pre.std, pre.input_size) == (IMAGENET_MEAN, IMAGENET_STD, (224, 224))


@pytest.mark.parametrize(
    "model, weights, resize, crop, interpolation",
    [
        ("resnet50", "IMAGENET1K_V2", (232,), (224, 224), "bilinear"),
        ("efficientnet_b0", "DEFAULT", (256,), (224, 224), "bicubic"),
        ("efficientnet_b3", "DEFAULT", (320,), (300, 300), "bicubic"),
    ],
)
def test_preprocessing_follows_the_weights_transforms(model, weights, resize, crop, interpolation):
    pre = resolve_spec(model, weights).preprocessing
    assert (pre.resize, pre.crop, pre.interpolation) == (resize, crop, interpolation)


def test_explicit_preprocessing_wins():
    pre = resolve_spec(
        "efficientnet_b0",
        "DEFAULT",
        resize=40,
        crop=32,
        mean=0.5,
        std=(0.2, 0.3, 0.4),
        interpolation="nearest",
    ).preprocessing
    assert (pre.resize, pre.crop, pre.mean, pre.std) == (
        (40,),
        (32, 32),
        (0.5,) * 3,
        (0.2, 0.3, 0.4),
    )
    assert pre.interpolation == "nearest"
    partial = resolve_spec("efficientnet_b0", "DEFAULT", crop=(30, 20)).preprocessing
    assert (partial.resize, partial.crop, partial.interpolation) == ((256,), (30, 20), "bicubic")
    free = resolve_spec("resnet18", "none", resize=(40, 48), crop=0).preprocessing
    assert free.crop is None and free.input_size == (40, 48)
    assert resolve_spec("resnet18", "none", resize=(40, 48), crop="none").preprocessing == free


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"resize": 0}, r"resize=0: sizes must be positive"),
        ({"resize": 30.5}, r"resize=30.5: expected an int or \(height, width\)"),
        ({"resize": (30.0, 30)}, r"resize=\(30.0, 30\): expected an int"),
        ({"crop": 10**6, "resize": 10**6}, r"resize=1000000: at most 4096 pixels a side"),
        ({"resize": 32, "crop": 64}, r"crop=\(64, 64\) is larger than resize=\(32,\)"),
        ({"resize": (40, 30), "crop": (32, 32)}, r"crop=\(32, 32\) is larger than resize"),
        ({"seed": True}, "seed=True: expected an int"),
        ({"resize": "big"}, "resize='big': expected an int or"),
        ({"resize": (1, 2, 3)}, r"resize=\(1, 2, 3\): expected an int or \(height, width\)"),
        ({"crop": (32, -1)}, "sizes must be positive"),
        ({"mean": (0.5, 0.5)}, r"mean=\(0.5, 0.5\): expected a float or three floats"),
        ({"std": 0}, "std=0: values must be positive"),
        ({"std": "x"}, "std='x': expected a float or three floats"),
        ({"interpolation": "cubic"}, "interpolation='cubic': choose one of nearest, bilinear"),
        ({"resize": 40, "crop": 0}, r"crop=0 \(no centre crop\) needs resize=\(height, width\)"),
        ({"seed": "1"}, "seed='1': expected an int"),
    ],
)
def test_bad_preprocessing_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve_spec("resnet18", "none", **kwargs)


def test_numpy_integers_are_integers():
    plain = resolve_spec("resnet18", "none", seed=3, resize=(40, 48), crop=32)
    numpy = resolve_spec(
        "resnet18", "none", seed=np.int64(3), resize=np.array([40, 48]), crop=np.int32(32)
    )
    assert numpy == plain and type(numpy.seed) is int


# ----------------------------------------------------------------------------- declared preprocessing


@pytest.fixture
def declare(monkeypatch):
    """``declare(value, target=tiny_nets.tiny_cnn)``: set a callable's ``preprocessing`` attribute."""
    from tests import tiny_nets

    def set_(value, target=tiny_nets.tiny_cnn):
        monkeypatch.setattr(target, "preprocessing", value, raising=False)

    return set_


def test_declared_preprocessing_sits_between_explicit_and_default(declare):
    declare({"resize": (40, 48), "crop": 32, "mean": 0.5, "interpolation": "bicubic"})
    pre = resolve_spec(TINY).preprocessing
    assert (pre.resize, pre.crop, pre.interpolation) == ((40, 48), (32, 32), "bicubic")
    assert (pre.mean, pre.std) == ((0.5,) * 3, IMAGENET_STD)  # std not declared: the default

    pre = resolve_spec(TINY, "none", crop=0, std=0.25, interpolation="nearest").preprocessing
    assert (pre.resize, pre.crop, pre.mean) == ((40, 48), None, (0.5,) * 3)
    assert (pre.std, pre.interpolation) == ((0.25,) * 3, "nearest")


def test_a_class_can_declare_preprocessing(declare):
    declare({"resize": 36, "crop": (32, 28), "std": (0.2, 0.3, 0.4)}, TinyCNN)
    pre = resolve_spec("tests.tiny_nets:TinyCNN").preprocessing
    assert (pre.resize, pre.crop, pre.std) == ((36,), (32, 28), (0.2, 0.3, 0.4))
    assert (pre.mean, pre.input_size) == (IMAGENET_MEAN, (32, 28))
    # A preprocessing *method* on a module class is not a declaration.
    declare(lambda self, x: x, TinyCNN)
    assert resolve_spec("tests.tiny_nets:TinyCNN").preprocessing.crop == (224, 224)


def test_without_a_declaration_the_default_applies():
    pre = resolve_spec(TINY).preprocessing
    assert (pre.resize, pre.crop, pre.mean) == ((256,), (224, 224), IMAGENET_MEAN)


def test_declared_preprocessing_is_part_of_the_cache_key(declare, make_images, tmp_path):
    paths = make_images(4)
    cache = tmp_path / "cache"
    declare({"resize": 40, "crop": 32, "mean": 0.5, "std": 0.5})
    spec = resolve_spec(TINY, "none")
    key = config_key(code_config(spec, "flatten", "avg", "fp32"))
    # The same values given explicitly are the same configuration; the config rebuilds the spec.
    explicit = resolve_spec(TINY, "none", resize=40, crop=32, mean=0.5, std=0.5)
    assert config_key(code_config(explicit, "flatten", "avg", "fp32")) == key
    config = code_config(spec, "flatten", "avg", "fp32")
    assert spec_from_config(config, trust_model_code=[TINY]) == spec
    first = extract_codes(paths, spec, "flatten", "avg", cache_dir=cache, num_workers=0)
    assert (first.computed, first.cached) == (4, 0)

    declare({"resize": 40, "crop": 32, "mean": 0.5, "std": 0.25})
    changed = resolve_spec(TINY, "none")
    assert changed.preprocessing.std == (0.25,) * 3
    assert config_key(code_config(changed, "flatten", "avg", "fp32")) != key
    second = extract_codes(paths, changed, "flatten", "avg", cache_dir=cache, num_workers=0)
    assert (second.computed, second.cached) == (4, 0)  # not the stale codes of the old std
    assert not np.allclose(second.codes["flatten"], first.codes["flatten"])

    declare({"resize": 40, "crop": 32, "mean": 0.5, "std": 0.5})
    again = extract_codes(
        paths, resolve_spec(TINY, "none"), "flatten", "avg", cache_dir=cache, num_workers=0
    )
    assert (again.computed, again.cached) == (0, 4)
    np.testing.assert_array_equal(again.codes["flatten"], first.codes["flatten"])


WHERE = r"tests\.tiny_nets:tiny_cnn\.preprocessing"


@pytest.mark.parametrize(
    "declared, match",
    [
        ((32, 32), WHERE + r"=\(32, 32\): expected a dict with any of the keys resize, crop, mean"),
        ("resize=32", WHERE + r"='resize=32': expected a dict"),
        (
            {"resize": 32, "size": 32, "normalize": True},
            WHERE + r" has unknown key\(s\) 'size', 'normalize'; accepted keys: resize, crop, "
            "mean, std, interpolation",
        ),
        ({"resize": 0}, WHERE + r"\['resize'\]=0: sizes must be positive"),
        ({"resize": "big"}, WHERE + r"\['resize'\]='big': expected an int or \(height, width\)"),
        ({"crop": (32, 32, 3)}, WHERE + r"\['crop'\]=\(32, 32, 3\): expected an int or"),
        ({"mean": (0.5, 0.5)}, WHERE + r"\['mean'\]=\(0.5, 0.5\): expected a float or three"),
        ({"std": -1}, WHERE + r"\['std'\]=-1: values must be positive"),
        ({"interpolation": "cubic"}, WHERE + r"\['interpolation'\]='cubic': choose one of"),
        ({"crop": None}, WHERE + r"\['crop'\]=None: leave the key out .*crop=0 or 'none'"),
        ({"mean": None}, WHERE + r"\['mean'\]=None: leave the key out to use the default$"),
    ],
)
def test_bad_declared_preprocessing_is_refused(declare, declared, match):
    declare(declared)
    with pytest.raises(ModelError, match=match):
        resolve_spec(TINY, "none")
    # Explicit arguments do not hide a broken declaration.
    with pytest.raises(ModelError, match=match):
        resolve_spec(TINY, "none", resize=32, crop=32, mean=0.5, std=0.5, interpolation="bilinear")


def test_declared_crop_off_needs_a_two_value_resize(declare):
    declare({"resize": 40, "crop": "none"})
    with pytest.raises(
        ValueError,
        match=WHERE + r"\['crop'\]='none' \(no centre crop\) needs " + WHERE + r"\['resize'\]",
    ):
        resolve_spec(TINY, "none")
    pre = resolve_spec(TINY, "none", resize=(40, 48)).preprocessing
    assert pre.crop is None and pre.input_size == (40, 48)


# ----------------------------------------------------------------------------- checkpoint preprocessing


def save_checkpoint(path, preprocessing=None, legacy=False, seed=5):
    """A tiny_cnn checkpoint, as ``{"state_dict": ..., "preprocessing": ...}`` when given one."""
    torch.manual_seed(seed)
    state = TinyCNN().state_dict()
    obj = state if preprocessing is None else {"state_dict": state, "preprocessing": preprocessing}
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return str(path)


OWN = {"resize": 40, "crop": [32, 32], "mean": [0.5, 0.5, 0.5], "std": 0.25}


@pytest.mark.parametrize("legacy", [False, True])
def test_a_checkpoint_carries_its_own_preprocessing(tmp_path, make_images, legacy):
    own = save_checkpoint(tmp_path / "own.pth", OWN, legacy=legacy)
    plain = save_checkpoint(tmp_path / "plain.pth")
    pre = resolve_spec(TINY, own).preprocessing
    assert (pre.resize, pre.crop, pre.mean, pre.std) == ((40,), (32, 32), (0.5,) * 3, (0.25,) * 3)
    assert dict(pre.source) == {
        "resize": "checkpoint", "crop": "checkpoint", "mean": "checkpoint", "std": "checkpoint",
        "interpolation": "ImageNet default",
    }  # fmt: skip
    assert "(from: checkpoint: mean, std, resize, crop; ImageNet default: interpolation)" in (
        pre.describe()
    )
    # Explicit arguments still win, key by key.
    assert resolve_spec(TINY, own, std=0.5).preprocessing.std == (0.5,) * 3
    # The codes are those of the same weights given the same values explicitly, and not those
    # of the ImageNet default.
    images = make_images(3)
    codes = extract_codes(images, resolve_spec(TINY, own), "pool", cache_dir=None).codes["pool"]
    same = resolve_spec(TINY, plain, resize=40, crop=32, mean=0.5, std=0.25)
    default = resolve_spec(TINY, plain)
    assert np.allclose(codes, extract_codes(images, same, "pool", cache_dir=None).codes["pool"])
    other = extract_codes(images, default, "pool", cache_dir=None).codes["pool"]
    assert not np.allclose(codes, other)
    # build_model still finds the state_dict beside the entry.
    assert build_model(resolve_spec(TINY, own)).conv1.weight.shape == (8, 3, 3, 3)


def test_the_checkpoint_wins_over_the_architectures_declaration(tmp_path):
    # self_declaring_cnn declares resize 40, crop 32, mean 0.5, std 0.5 on its network.
    path = save_checkpoint(tmp_path / "c.pth", {"std": [0.2, 0.3, 0.4]})
    pre = resolve_spec("tests.tiny_nets:self_declaring_cnn", path).preprocessing
    assert pre.std == (0.2, 0.3, 0.4) and pre.mean == (0.5,) * 3 and pre.crop == (32, 32)
    assert dict(pre.source)["std"] == "checkpoint" and dict(pre.source)["mean"] == "model"


@pytest.mark.parametrize(
    "entry, error, match",
    [
        ([0.5], WeightsError, r"c\.pth\['preprocessing'\]=\[0\.5\]: expected a dict"),
        ({"norm": 0.5}, WeightsError, r"c\.pth\['preprocessing'\] has unknown key\(s\) 'norm'"),
        ({"mean": "grey"}, WeightsError, r"c\.pth\['preprocessing'\]\['mean'\]='grey': expected"),
        ({"crop": None}, WeightsError, r"c\.pth\['preprocessing'\]\['crop'\]=None: leave the"),
        # Between keys (possibly explicit ones): a plain ValueError naming both.
        (
            {"resize": 20, "crop": 32},
            ValueError,
            r"c\.pth\['preprocessing'\]\['crop'\]=\(32, 32\) is",
        ),
    ],
)
def test_a_bad_checkpoint_preprocessing_entry_names_the_file_and_key(tmp_path, entry, error, match):
    path = save_checkpoint(tmp_path / "c.pth", entry)
    with pytest.raises(error, match=match):
        resolve_spec(TINY, path)


def test_crop_off_in_a_checkpoint_echoes_the_checkpoint_value(tmp_path, declare):
    # The architecture declares crop=32; the checkpoint's crop=0 is what the error must quote.
    declare({"resize": 40, "crop": 32})
    path = save_checkpoint(tmp_path / "c.pth", {"crop": 0})
    with pytest.raises(ValueError, match=r"c\.pth\['preprocessing'\]\['crop'\]=0 \(no centre"):
        resolve_spec(TINY, path)


def test_a_warning_when_a_checkpoint_is_normalised_with_the_imagenet_default(tmp_path):
    # The note became a PreprocessingWarning (resolve_spec raises it); the note function says
    # nothing, so that its callers do not repeat it.
    with pytest.warns(PreprocessingWarning) as caught:
        plain = resolve_spec(TINY, save_checkpoint(tmp_path / "plain.pth"))
    assert default_preprocessing_note(plain) is None
    note = default_preprocessing_warning(plain)
    assert [str(w.message) for w in caught] == [note]
    assert "plain.pth carries no preprocessing of its own" in note
    assert "mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize=256, crop=224" in note
    assert "--mean M --std S" in note
    own = resolve_spec(TINY, save_checkpoint(tmp_path / "o.pth", OWN))
    assert default_preprocessing_warning(own) is None
    # Its own normalisation: the default input size is not warned about.
    some = resolve_spec(TINY, save_checkpoint(tmp_path / "s.pth", {"mean": 0.5, "std": 0.5}))
    assert default_preprocessing_warning(some) is None
    with pytest.warns(PreprocessingWarning):
        some = resolve_spec(TINY, save_checkpoint(tmp_path / "r.pth", {"resize": 40, "crop": 32}))
    note = default_preprocessing_warning(some)
    assert "r.pth gives no mean, std, so the ImageNet default is used: mean=(0.485" in note
    assert default_preprocessing_warning(resolve_spec(TINY, "none")) is None  # not a checkpoint


# ----------------------------------------------------------------------------- layers


@pytest.mark.parametrize(
    "model, expected",
    [
        ("resnet18", "flatten"),
        ("mobilenet_v2", "classifier.0"),
        ("vgg11", "classifier.5"),
        ("efficientnet_b0", "classifier.0"),
        ("convnext_tiny", "classifier.1"),
        ("vit_b_16", "getitem_5"),
        ("regnet_y_400mf", "flatten"),
        ("tests.resnet_cifar:resnet20", "flatten"),
    ],
)
def test_penultimate_is_the_input_of_the_last_linear(model, expected):
    size = {} if model.startswith("vit") else {"resize": 40, "crop": 32}
    spec = resolve_spec(model, None if ":" in model else "none", **size)
    assert resolve_layers(spec, "penultimate") == [expected]
    meta = {"resnet18": 512, "mobilenet_v2": 1280, "vgg11": 4096, "efficientnet_b0": 1280}
    meta |= {"convnext_tiny": 768, "vit_b_16": 768, "regnet_y_400mf": 440}
    meta["tests.resnet_cifar:resnet20"] = 64
    assert layer_shapes(spec, [expected]) == {expected: (meta[model],)}


def test_module_names_are_layers(tiny_spec):
    assert resolve_layers(tiny_spec, ["layer3", "layer1.0"]) == ["layer3", "layer1.0"]
    assert layer_shapes(tiny_spec, ["layer3", "layer1.0", "avgpool"]) == {
        "layer3": (256, 2, 2),
        "layer1.0": (64, 8, 8),
        "avgpool": (512, 1, 1),
    }


@pytest.mark.parametrize(
    "layers, match",
    [
        ("layer5", r"layer='layer5' is not a node of resnet18\. Closest: .*layer4"),
        ("layer5", r"`cnncodes layers resnet18`"),
        (["avgpool", "avgpol"], r"layer='avgpol' .* Closest: avgpool"),
        ([], "give at least one layer name"),
        ([3], "layer=3: expected a graph-node name"),
    ],
)
def test_bad_layers(tiny_spec, layers, match):
    with pytest.raises(LayerError, match=match):
        resolve_layers(tiny_spec, layers)


def test_penultimate_needs_a_linear_head():
    with pytest.raises(LayerError, match="layer='penultimate' needs a model that ends in an nn"):
        resolve_layers(resolve_spec("squeezenet1_0", "none"), "penultimate")


def test_too_small_input_is_reported_as_such():
    spec = resolve_spec("squeezenet1_0", "none", resize=10, crop=8)
    with pytest.raises(LayerError, match=r"squeezenet1_0 cannot run on a 8x8 input"):
        layer_shapes(spec, ["classifier.1"])


def test_list_layers(tiny_spec):
    infos = list_layers(tiny_spec)
    names = [info.name for info in infos]
    assert names[:3] == ["x", "conv1", "bn1"] and names[-3:] == ["avgpool", "flatten", "fc"]
    assert names.index("layer1") < names.index("layer2") < names.index("layer4")
    by_name = {info.name: info for info in infos}
    assert by_name["layer4"].shape == (512, 1, 1)
    assert by_name["layer4"].code_sizes == {
        "avg": 512,
        "max": 512,
        "avgmax": 1024,
        "pyramid": 2560,
        "flatten": 512,
    }
    assert by_name["fc"].shape == (1000,)
    assert set(by_name["fc"].code_sizes.values()) == {1000}
    # The shapes agree with a real forward pass of the built network.
    some = ["conv1", "layer2", "layer3.1", "flatten"]
    real = build_extractor(build_model(tiny_spec), some)(torch.zeros(1, 3, 32, 32))
    assert {k: tuple(v.shape[1:]) for k, v in real.items()} == {k: by_name[k].shape for k in some}


def test_list_layers_by_name_marks_impossible_poolings():
    infos = {info.name: info for info in list_layers("resnet18", "none")}
    assert infos["conv1"].shape == (64, 112, 112)
    assert infos["conv1"].code_sizes["flatten"] is None  # above the flatten limit
    assert infos["conv1"].code_sizes["pyramid"] == 320


def test_graph_is_cut_after_the_deepest_layer():
    net = build_model(resolve_spec(TINY))
    calls = []
    net.head.register_forward_hook(lambda *_: calls.append("head"))
    out = build_extractor(net, ["conv2", "conv1"])(torch.zeros(2, 3, 32, 32))
    assert set(out) == {"conv1", "conv2"} and calls == []
    build_extractor(net, ["head"])(torch.zeros(2, 3, 32, 32))
    assert calls == ["head"]


def test_untraceable_model_falls_back_to_hooks_and_stops_early(make_images):
    with pytest.raises(Exception, match="symbolically traced variables cannot be used"):
        get_graph_node_names(DynamicCNN())
    spec = resolve_spec("tests.tiny_nets:dynamic_cnn", resize=40, crop=32)
    assert resolve_layers(spec, "penultimate") == ["flatten"]
    names = [info.name for info in list_layers(spec)]
    assert names == ["conv1", "relu1", "conv2", "relu2", "pool", "flatten", "head"]
    assert layer_shapes(spec, ["conv2", "flatten"]) == {"conv2": (16, 8, 8), "flatten": (16,)}
    net = build_model(spec)
    calls = []
    net.relu2.register_forward_hook(lambda *_: calls.append("relu2"))
    net.head.register_forward_hook(lambda *_: calls.append("head"))
    out = build_extractor(net, ["conv2", "relu1"])(torch.zeros(2, 3, 32, 32))
    assert set(out) == {"conv2", "relu1"} and calls == []
    # Same modules, same seed: the hook extractor gives the codes of the traceable twin.
    images = make_images(4)
    kwargs = dict(cache_dir=None, num_workers=0)
    dynamic = extract_codes(images, spec, ["penultimate", "conv2"], "avgmax", **kwargs)
    static = extract_codes(
        images, resolve_spec(TINY, resize=40, crop=32), ["flatten", "conv2"], "avgmax", **kwargs
    )
    for layer in ("flatten", "conv2"):
        np.testing.assert_allclose(dynamic.codes[layer], static.codes[layer], rtol=1e-6, atol=1e-6)


def test_a_layer_named_twice_is_refused():
    with pytest.raises(LayerError, match=r"names 'layer4' twice: each layer's codes"):
        resolve_layers(resolve_spec("resnet18", "none"), ["layer4", "layer3", "layer4"])
    with pytest.raises(LayerError, match=r"names 'flatten' twice \('penultimate' is 'flatten'"):
        resolve_layers(resolve_spec("resnet18", "none"), ["penultimate", "flatten"])


def test_the_network_a_callable_returns_can_declare_preprocessing():
    pre = resolve_spec("tests.tiny_nets:self_declaring_cnn").preprocessing
    assert (pre.resize, pre.crop, pre.mean, pre.std) == ((40,), (32, 32), (0.5,) * 3, (0.5,) * 3)
    assert resolve_spec("tests.tiny_nets:self_declaring_cnn", crop=24).preprocessing.crop == (
        24,
        24,
    )
    # A submodule called "preprocessing" declares nothing.
    pre = resolve_spec("tests.tiny_nets:cnn_with_a_preprocessing_module").preprocessing
    assert pre.crop == (224, 224)


def test_weights_that_are_no_checkpoint_file_say_what_they_are(tmp_path):
    folder = tmp_path / "weights_dir"
    folder.mkdir()
    with pytest.raises(WeightsError, match="is a directory, not a checkpoint file"):
        resolve_spec("resnet18", str(folder))
    fifo = tmp_path / "weights.fifo"
    os.mkfifo(fifo)
    with pytest.raises(WeightsError, match="not a regular file"):
        resolve_spec("resnet18", str(fifo))  # and never blocks opening it
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match=r"empty.pth is empty: not a checkpoint"):
        resolve_spec("resnet18", str(empty))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00")
    with pytest.raises(WeightsError) as info:
        read_checkpoint(str(junk))
    assert "()" not in str(info.value) and "cannot be read as a checkpoint" in str(info.value)


def test_an_unwritable_cache_names_both_spellings_of_no_cache(tmp_path):
    from cnncodes.cache import CodeStore

    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(OSError) as info:
        CodeStore(blocker / "cache", {"model": "demo"}).ensure_writable()
    assert "cache_dir=None" in str(info.value) and "--no-cache" in str(info.value)
