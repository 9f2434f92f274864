"""Tests for cnncodes.spec: the concepts as torch-free types, and what they must keep stable."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cnncodes.cache import config_key
from cnncodes.extract import code_config, spec_from_config
from cnncodes.models import ModelSpec, Preprocessing, WeightsError, resolve_spec

from cnncodes import persistence
from cnncodes.spec import GPU_DECODER, CodeKey, Weights
from tests.conftest import write_images

DATA = Path(__file__).parent / "data"
TINY = "tests.tiny_nets:tiny_cnn"


def test_spec_imports_without_torch_or_sklearn():
    code = (
        "import sys, cnncodes.spec\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'sklearn') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


# Cache keys computed by cnncodes before spec.py existed: caches written then must still be found.
_TINY_SPEC = ModelSpec(
    TINY,
    "callable",
    "state-sha256:7ac9e9b4b267987e3b187994595ba510c784de1317efb69897d190b93c7efe6b",
    "fb6ec11a9e3be7ca+d2d01c1f8faf1824",
    2,
    Preprocessing((32,), (32, 32), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
)


def test_cache_keys_are_those_of_earlier_versions():
    assert config_key(code_config(_TINY_SPEC, "flatten", "avg", "fp32")) == (
        "7c50b33c387f50dd06553fa4"
    )
    checkpoint = dataclasses.replace(
        _TINY_SPEC, weights="/x/net.pth", weights_id="sha256:" + "ab" * 32
    )
    assert config_key(code_config(checkpoint, "flatten", "avg", "fp16")) == (
        "f3a5a41ca869ae56468fbb75"
    )
    spec = resolve_spec(
        "resnet18", "none", seed=3, resize=40, crop=32, impl="torch", interpolation="bicubic"
    )
    assert config_key(code_config(spec, "layer3", "max", "bf16", "cuda")) == (
        "0c841b25ae63df3232e5aa14"
    )
    spec = resolve_spec("resnet18", "IMAGENET1K_V1", crop=0, resize=(48, 64))
    assert spec.weights_id == "ResNet18_Weights.IMAGENET1K_V1"
    assert config_key(code_config(spec, "avgpool", "avg", "fp32")) == "18c291af229e6dd0f3c25a93"


@pytest.mark.parametrize("suffix", [".skops", ".joblib"])
def test_model_saved_before_spec_still_loads(tmp_path, suffix):
    """tests/data/saved_before_spec.*: a digits_net CNNCodes + LogisticRegression pipeline saved
    when ModelSpec and Preprocessing lived in cnncodes.models (fitted on write_images(d, 6,
    seed=5) with labels 0, 1, 0, 1, 0, 1)."""
    pipe = persistence.load(DATA / f"saved_before_spec{suffix}")
    spec = pipe[0].spec_
    assert isinstance(spec, ModelSpec) and isinstance(spec.preprocessing, Preprocessing)
    assert spec == resolve_spec("cnncodes.demo_data:digits_net", "none", seed=1)
    paths = write_images(tmp_path, 6, seed=5)
    expected = [0.490029, 0.495623, 0.498679, 0.522533, 0.487393, 0.506074]
    np.testing.assert_allclose(pipe.predict_proba(paths)[:, 1], expected, atol=2e-6)


@pytest.mark.parametrize(
    "identity, kind",
    [
        ("ResNet18_Weights.IMAGENET1K_V1", "torchvision"),
        ("sha256:" + "ab" * 32, "checkpoint"),
        ("state-sha256:" + "cd" * 32, "callable"),
        ("none:seed=7", "none"),
        ("none:seed=-1", "none"),
        ("timm:resnet10t.c3_in1k", "timm"),
    ],
)
def test_weights_identity_round_trips(identity, kind):
    weights = Weights.parse(identity)
    assert weights.kind == kind and weights.identity == identity


def test_weights_parse_refuses_what_no_identity_is():
    with pytest.raises(WeightsError, match=r"weights identity 'none:seed=x': the seed must be"):
        Weights.parse("none:seed=x")
    with pytest.raises(WeightsError, match=r"weights identity '': expected a torchvision"):
        Weights.parse("")
    with pytest.raises(ValueError, match=r"kind='hub': choose one of torchvision, checkpoint"):
        Weights("hub")


def test_resolved_specs_carry_their_weights_as_the_type(tmp_path):
    import torch

    from tests.tiny_nets import TinyCNN

    torch.manual_seed(0)
    path = tmp_path / "net.pth"
    torch.save(TinyCNN().state_dict(), path)
    specs = {
        "checkpoint": resolve_spec(TINY, path),
        "none": resolve_spec(TINY, "none", seed=4),
        "callable": resolve_spec(TINY, None),
        "torchvision": resolve_spec("resnet18", "IMAGENET1K_V1"),
    }
    for kind, spec in specs.items():
        weights = spec.weights_spec
        assert weights.kind == kind and weights.identity == spec.weights_id
    assert specs["checkpoint"].weights_spec.file == str(path)
    assert specs["none"].weights_spec.seed == 4
    assert specs["torchvision"].weights_spec.name == "ResNet18_Weights.IMAGENET1K_V1"


def test_weights_verify_is_the_one_checkpoint_check(tmp_path):
    path = tmp_path / "net.pth"
    path.write_bytes(b"first")
    weights = Weights("checkpoint", file=str(path), sha256=hashlib.sha256(b"first").hexdigest())
    assert weights.verify() == str(path)
    assert Weights("none", seed=0).verify() is None  # nothing on disk to check
    old, new = weights.sha256, hashlib.sha256(b"second").hexdigest()
    path.write_bytes(b"second")
    with pytest.raises(
        WeightsError,
        match=rf"weights file {path} changed: its SHA-256 is now {new}, but the codes \(and any "
        rf"model trained on them\) were made with {old}; restore the original file, or refit",
    ):
        weights.verify()
    other = tmp_path / "other.pth"
    other.write_bytes(b"other")
    with pytest.raises(
        WeightsError, match=rf"{other} is not the checkpoint this model was fitted with: .*{old}"
    ):
        weights.verify(other)
    with pytest.raises(WeightsError, match=rf"weights file not found: .*gone\.pth .*{old}"):
        weights.verify(tmp_path / "gone.pth")
    unknown = Weights.parse(weights.identity)  # read from a cache key: no path
    with pytest.raises(WeightsError, match=r"the checkpoint file's path is not known; give the"):
        unknown.verify()
    with pytest.raises(WeightsError, match=rf"{other} is not the checkpoint .*{old}; give that"):
        unknown.verify(other)


def test_code_key_is_the_cache_key_and_reads_back():
    checkpoint = dataclasses.replace(
        _TINY_SPEC, weights="/x/net.pth", weights_id="sha256:" + "ab" * 32
    )
    key = CodeKey.for_device(checkpoint, "flatten", "avg", "fp16")
    assert key.digest == "f3a5a41ca869ae56468fbb75"  # as pinned above, from code_config
    back = CodeKey.from_config(json.loads(json.dumps(key.config())))
    assert back.config() == key.config() and back.digest == key.digest
    assert back.spec.weights is None and back.spec.weights_spec.sha256 == "ab" * 32
    assert CodeKey.from_json(key.to_json()).config() == key.config()
    spec = resolve_spec("resnet18", "none", seed=3, resize=(40, 48), crop=0, impl="torch")
    gpu = CodeKey.for_device(spec, "layer3", "max", "bf16", "cuda")
    assert gpu.decode.endswith(GPU_DECODER) and CodeKey.from_config(gpu.config()) == gpu
    assert gpu.config() == code_config(spec, "layer3", "max", "bf16", "cuda")


def test_code_key_from_a_config_that_is_none_names_the_missing_key():
    config = CodeKey.for_device(_TINY_SPEC, "flatten", "avg", "fp32").config()
    del config["precision"]
    with pytest.raises(
        ValueError, match=r"not a cnncodes code configuration \(missing 'precision'"
    ):
        CodeKey.from_config(config)


def test_a_view_is_in_the_cache_key_only_when_it_is_not_the_centre():
    centre = code_config(_TINY_SPEC, "flatten", "avg", "fp32")
    assert "view" not in centre["preprocessing"]
    assert _TINY_SPEC.with_view("center") is _TINY_SPEC
    flip = code_config(_TINY_SPEC.with_view("flip"), "flatten", "avg", "fp32")
    assert flip["preprocessing"] == {**centre["preprocessing"], "view": "flip"}
    assert config_key(flip) == "06475adbb3cbea7581bc6aca"
    back = CodeKey.from_config(json.loads(json.dumps(flip)))
    assert back.spec.preprocessing.view == "flip" and back.config() == flip
    spec = resolve_spec("resnet18", "none", seed=3, resize=40, crop=32).with_view("rrc:0:2")
    assert spec_from_config(code_config(spec, "avgpool", "avg", "fp32")) == spec
    assert "view=rrc:0:2" in spec.preprocessing.describe()


def test_the_package_names_every_public_object_lazily():
    import cnncodes

    for name in cnncodes.__all__:
        assert getattr(cnncodes, name) is not None, name
    assert cnncodes.spec.ModelSpec is ModelSpec and "spec" in dir(cnncodes)
    with pytest.raises(AttributeError, match=r"module 'cnncodes' has no attribute 'nope'"):
        cnncodes.nope  # noqa: B018


@pytest.mark.parametrize("crop", [32, 0])
def test_preprocessing_arguments_resolve_to_the_same_preprocessing(crop):
    spec = resolve_spec(
        "resnet18", "none", resize=(40, 48), crop=crop, mean=0.5, interpolation="bicubic"
    )
    again = resolve_spec("resnet18", "none", **spec.preprocessing.arguments())
    assert again == spec
