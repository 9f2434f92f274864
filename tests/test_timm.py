"""timm models beside torchvision: ``model="timm:NAME"`` (needs the optional ``timm`` extra)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm", reason="timm is not installed: pip install 'cnncodes[timm]'")

import huggingface_hub  # noqa: E402 - timm's dependency, there only with timm
from cnncodes.architectures import model_identity  # noqa: E402
from cnncodes.extract import spec_from_config  # noqa: E402
from cnncodes.layers import build_extractor, layer_shapes  # noqa: E402
from cnncodes.models import (  # noqa: E402
    LayerError,
    ModelError,
    WeightsError,
    WeightsUnavailableError,
    build_model,
    list_layers,
    resolve_layers,
    resolve_spec,
)
from cnncodes.persistence import refused_model_code  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from cnncodes import CNNCodes  # noqa: E402
from cnncodes.spec import CodeKey  # noqa: E402
from tests.test_cli import run, run_json  # noqa: E402

NET = "timm:resnet10t"  # 5 M parameters; its pretrained config: 176 px crops, bicubic
SMALL = {"resize": 40, "crop": 32}


@pytest.fixture(scope="module")
def spec():
    return resolve_spec(NET, "none", **SMALL)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty hub cache and torch hub, and a record of every download attempted (public seams)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("CNNCODES_DOWNLOAD", raising=False)
    calls = []

    def refuse(*args, **kwargs):
        calls.append((args, kwargs))
        raise OSError("no network (test)")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return calls


def _hub_cache_file(cache, repo, filename, data, revision="0" * 40):
    """``data`` where the Hugging Face hub keeps a downloaded file: a blob named by its
    SHA-256, linked from the revision's snapshot, the revision named by ``refs/main``."""
    root = cache / f"models--{repo.replace('/', '--')}"
    blob = root / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    snapshot = root / "snapshots" / revision / filename
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)
    return blob


# ------------------------------------------------------------------------------- names, weights


def test_timm_names_resolve_with_the_pretrained_config_preprocessing():
    spec = resolve_spec(NET, "none")
    pre = spec.preprocessing
    # timm's eval transform: crop 176 of the shorter side scaled to floor(176 / 0.875) = 201.
    assert pre.crop == (176, 176) and pre.resize == (201,) and pre.interpolation == "bicubic"
    assert set(dict(pre.source).values()) == {"model"}  # random weights: the architecture's own
    assert spec.weights_id == "none:seed=0"

    pretrained = resolve_spec(NET)  # offline-safe: no file is looked for while resolving
    assert pretrained.weights_id == "timm:resnet10t.c3_in1k"
    assert pretrained.weights == "resnet10t.c3_in1k"
    assert pretrained.preprocessing == pre
    assert set(dict(pretrained.preprocessing.source).values()) == {"weights"}
    assert resolve_spec(NET, "c3_in1k") == pretrained == resolve_spec(NET, "resnet10t.c3_in1k")
    assert resolve_spec("timm:resnet10t.c3_in1k", "DEFAULT").weights_id == pretrained.weights_id


def test_explicit_preprocessing_wins_over_the_pretrained_config():
    pre = resolve_spec(NET, interpolation="bilinear", mean=0.5, **SMALL).preprocessing
    assert (pre.resize, pre.crop, pre.mean, pre.interpolation) == (
        (40,),
        (32, 32),
        (0.5,) * 3,
        "bilinear",
    )
    assert pre.std == (0.229, 0.224, 0.225)  # still timm's
    assert pre.describe().endswith(
        "(from: explicit: mean, resize, crop, interpolation; weights: std)"
    )


@pytest.mark.parametrize(
    ("model", "weights", "error", "match"),
    [
        ("timm:resnet10x", "none", ModelError, r"'resnet10x' is not a timm model\. Did you mean "),
        ("timm:resnet10t.nope", "none", ModelError, r"no pretrained tag 'nope' for 'resnet10t'"),
        ("timm:", "none", ModelError, r"model='timm:': '' is not a timm model"),
        (NET, "nope", WeightsError, r"weights='nope': timm has no pretrained .*resnet10t\.c3_in1k"),
        (NET, "resnet18.a1_in1k", WeightsError, r"are for another model: 'timm:resnet10t'"),
        ("timm:resnet10t.c3_in1k", "tv_in1k", WeightsError, r"contradict the tag"),
    ],
)
def test_bad_timm_names_say_what_is_accepted(model, weights, error, match):
    with pytest.raises(error, match=match):
        resolve_spec(model, weights)


def test_timm_is_a_reserved_prefix_not_a_module_to_import_or_trust(spec):
    assert model_identity(NET) == (NET, None, None)
    assert refused_model_code([NET, "mymodels:net"], False) == ["mymodels:net"]
    other = resolve_spec("timm:mobilenetv3_small_050", "none", **SMALL)
    torchvision = resolve_spec("resnet18", "none", **SMALL)
    assert len({spec.arch_id, other.arch_id, torchvision.arch_id}) == 3
    keys = [CodeKey.for_device(s, "fc", "avg", "fp32") for s in (spec, other)]
    assert keys[0].digest != keys[1].digest
    assert resolve_spec(NET, "none", **SMALL).arch_id == spec.arch_id  # stable


# ------------------------------------------------------------------------------- weights files


def test_missing_pretrained_weights_say_where_to_put_them_offline(offline, tmp_path):
    spec = resolve_spec(NET)
    with pytest.raises(WeightsUnavailableError) as info:
        build_model(spec)
    message = str(info.value)
    cache = tmp_path / "hf"
    assert "weights timm:resnet10t.c3_in1k are not on this machine" in message
    assert str(cache / "models--timm--resnet10t.c3_in1k" / "snapshots") in message
    assert "model.safetensors of the repository timm/resnet10t.c3_in1k" in message
    assert "HF_HUB_CACHE" in message and "CNNCODES_DOWNLOAD=1" in message
    assert "weights='/path/to/model.safetensors'" in message
    assert offline == []  # nothing fetched, nothing attempted
    assert not any(cache.rglob("*.safetensors"))


def test_pretrained_weights_are_read_from_timms_hub_cache(offline, tmp_path):
    torch.manual_seed(5)
    state = timm.create_model("resnet10t").state_dict()
    staged = tmp_path / "staged.safetensors"
    save_file(state, staged)
    blob = _hub_cache_file(
        tmp_path / "hf", "timm/resnet10t.c3_in1k", "model.safetensors", staged.read_bytes()
    )
    net = build_model(resolve_spec(NET))
    loaded = net.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert not net.training and offline == []

    blob.write_bytes(blob.read_bytes()[:-8] + b"\0" * 8)  # altered after download
    with pytest.raises(WeightsError, match=r"does not match the SHA-256 '[0-9a-f]{64}' published"):
        build_model(resolve_spec(NET))


class _RunsCode:
    """A pickle payload that creates a file when unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_in_the_hub_cache_is_never_run(offline, tmp_path):
    marker = tmp_path / "code-ran"
    staged = tmp_path / "staged.bin"
    torch.save(_RunsCode(marker), staged)
    _hub_cache_file(
        tmp_path / "hf", "timm/resnet10t.c3_in1k", "pytorch_model.bin", staged.read_bytes()
    )
    with pytest.raises(
        WeightsError, match=r"cannot be read as a checkpoint with weights_only=True"
    ):
        build_model(resolve_spec(NET))
    assert not marker.exists() and offline == []


def test_a_checkpoint_file_is_identified_by_its_sha256(tmp_path, spec):
    torch.manual_seed(7)
    state = timm.create_model("resnet10t").state_dict()
    path = tmp_path / "net.pth"
    torch.save({"state_dict": state}, path)
    from_file = resolve_spec(NET, str(path), **SMALL)
    assert from_file.weights_id == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert from_file.arch_id == spec.arch_id
    assert torch.equal(build_model(from_file).state_dict()["fc.weight"], state["fc.weight"])


# ----------------------------------------------------------------------------------- layers


def test_layers_are_graph_nodes_and_timms_methods_are_aliases(spec):
    names = [layer.name for layer in list_layers(spec)]
    assert names[-3:] == ["global_pool.flatten", "global_pool", "fc"]
    assert resolve_layers(spec, ["forward_features", "pre_logits"]) == ["layer4", "global_pool"]
    assert resolve_layers(spec, "penultimate") == ["global_pool"]
    assert layer_shapes(spec, ["layer4", "global_pool"]) == {
        "layer4": (512, 1, 1),
        "global_pool": (512,),
    }
    # The aliased nodes output exactly what timm's own methods compute.
    net = build_model(spec)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = build_extractor(net, ["layer4", "global_pool"])(x)
    with torch.no_grad():
        features = net.forward_features(x)
        pre_logits = net.forward_head(features, pre_logits=True)
    torch.testing.assert_close(out["layer4"], features, rtol=0, atol=0)
    torch.testing.assert_close(out["global_pool"], pre_logits, rtol=0, atol=0)

    with pytest.raises(LayerError, match=r"'pre_logits' is 'global_pool' here"):
        resolve_layers(spec, ["pre_logits", "global_pool"])
    with pytest.raises(LayerError, match=r"layer='pre_logits' is not a node of resnet18"):
        resolve_layers(resolve_spec("resnet18", "none"), ["pre_logits"])


def test_penultimate_is_the_input_of_a_linear_fx_traces_through():
    # timm's Linear subclasses nn.Linear, so FX traces into it: its nodes come before its name.
    spec = resolve_spec("timm:mobilenetv3_small_050", "none", **SMALL)
    assert resolve_layers(spec, ["pre_logits"]) == resolve_layers(spec, ["penultimate"])
    assert resolve_layers(spec, "penultimate") == ["flatten"]


# ------------------------------------------------------------------------ extraction, cache, CLI


def test_codes_through_cnncodes_and_the_cache(tmp_path, make_images, forward_counter):
    images = make_images(4)
    params = dict(model=NET, weights="none", layer=["pre_logits", "forward_features"], **SMALL)
    est = CNNCodes(cache_dir=str(tmp_path / "cache"), **params)
    first = est.fit_transform(images)
    assert est.layers_ == ["global_pool", "layer4"]
    assert first.dtype == np.float32 and first.shape == (4, 1024)
    assert forward_counter.images == 4
    again = CNNCodes(cache_dir=str(tmp_path / "cache"), **params).fit_transform(images)
    assert forward_counter.images == 4  # every code came from the cache
    np.testing.assert_array_equal(again, first)
    uncached = CNNCodes(cache_dir=None, **params).fit_transform(images)
    np.testing.assert_allclose(uncached, first, rtol=1e-6, atol=1e-6)


def test_a_cache_configuration_of_pretrained_weights_rebuilds_its_spec():
    spec = resolve_spec(NET, **SMALL)
    config = CodeKey.for_device(spec, "layer4", "avg", "fp32").config()
    assert config["weights"] == "timm:resnet10t.c3_in1k"
    assert spec_from_config(config) == spec


def test_cli_layers_lists_a_timm_model(capsys):
    code, out, err = run(
        capsys, "layers", NET, "--weights", "none", "--crop", "32", "--resize", "40"
    )
    assert code == 0, err
    assert "input 3x32x32" in out
    assert "penultimate = global_pool" in out
    assert "forward_features = layer4 (timm's forward_features output)" in out
    assert "pre_logits = global_pool (timm's pre_logits output)" in out
    assert (
        "interpolation=bicubic (from: model: mean, std, interpolation; explicit: resize, crop)"
        in out
    )
    data = run_json(capsys, "layers", NET, "--weights", "none", "--crop", "32", "--resize", "40")
    assert {layer["name"]: layer["shape"] for layer in data["layers"]}["layer4"] == [512, 1, 1]
    assert data["aliases"] == {"forward_features": "layer4", "pre_logits": "global_pool"}

    code, _, err = run(capsys, "layers", "timm:resnet10x")
    assert code == 2 and "'resnet10x' is not a timm model" in err


def test_model_kwargs_reach_timm_create_model():
    spec = resolve_spec(NET, "none", model_kwargs={"num_classes": 4}, **SMALL)
    assert build_model(spec).fc.out_features == 4
    assert spec.arch_id != resolve_spec(NET, "none", **SMALL).arch_id
    with pytest.raises(ModelError, match=r"model='timm:resnet10t' does not take model_kwargs"):
        resolve_spec(NET, "none", model_kwargs={"colour": 4})


def test_fine_tuning_a_timm_model_freezes_and_feeds_cnncodes(make_images, tmp_path):
    from cnncodes.finetune import FineTune

    paths = make_images(12)
    labels = np.array(["ant", "bee"] * 6)
    ft = FineTune(
        model=NET,
        weights="none",
        freeze="layer3",
        epochs=2,
        lr=1e-2,
        valid_size=0.25,
        cache_dir=str(tmp_path / "cache"),
        progress=False,
        **SMALL,
    ).fit(paths, labels)
    before = build_model(resolve_spec(NET, "none", **SMALL)).state_dict()
    for name, value in before.items():
        if name.startswith(("conv1", "bn1", "layer1", "layer2", "layer3", "fc.")):
            assert np.array_equal(value.numpy(), ft.state_dict_[name]), f"{name} changed"
    trained = [n for n in before if n.startswith("layer4") and n.endswith("weight")]
    assert not any(np.array_equal(before[n].numpy(), ft.state_dict_[n]) for n in trained)
    # The saved checkpoint is a timm checkpoint: CNNCodes extracts the fine-tuned codes from it.
    path = ft.save_checkpoint(tmp_path / "ft.pth")
    codes = CNNCodes(model=NET, weights=path, layer="pre_logits", cache_dir=None, progress=False)
    head = torch.load(path, weights_only=True)["finetune"]["head"]
    logits = torch.as_tensor(codes.fit_transform(paths)) @ head["1.weight"].T + head["1.bias"]
    np.testing.assert_allclose(torch.softmax(logits, 1), ft.predict_proba(paths), atol=1e-4)
