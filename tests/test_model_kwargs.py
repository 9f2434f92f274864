"""Arguments for the model builders: ``model_kwargs`` and ``--model-arg KEY=VALUE``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from cnncodes.cache import list_configs
from cnncodes.extract import code_config, spec_from_config
from cnncodes.finetune import FineTune
from cnncodes.models import ModelError, WeightsError, build_model, list_layers, resolve_spec
from cnncodes.persistence import load, save
from cnncodes.transformers import CNNCodes
from sklearn.base import clone

from cnncodes import cli
from cnncodes.spec import CodeKey, ModelSpec

SMALL = dict(resize=40, crop=32)
BUILDER = "tests.tiny_nets:tiny_cnn_for"


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_torchvision_builder_takes_num_classes():
    spec = resolve_spec("resnet18", "none", model_kwargs={"num_classes": 7}, **SMALL)
    assert spec.model_kwargs == (("num_classes", 7),)
    fc = next(info for info in list_layers(spec) if info.name == "fc")
    assert fc.shape == (7,)
    assert build_model(spec).fc.out_features == 7


def test_a_checkpoint_with_another_head_loads_with_num_classes(tmp_path):
    path = tmp_path / "three.pth"
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3)
    torch.save(net.state_dict(), path)
    with pytest.raises(WeightsError, match=r"--model-arg num_classes=3 \(model_kwargs="):
        build_model(resolve_spec("resnet18", str(path), **SMALL))
    spec = resolve_spec("resnet18", str(path), model_kwargs={"num_classes": 3}, **SMALL)
    loaded = build_model(spec)
    assert torch.equal(loaded.fc.weight, net.fc.weight)


def test_a_callable_that_takes_an_argument():
    with pytest.raises(ModelError, match="cannot be called without arguments.*--model-arg"):
        resolve_spec(BUILDER, "none", **SMALL)
    spec = resolve_spec(BUILDER, "none", model_kwargs={"num_classes": 4}, **SMALL)
    assert build_model(spec).head.out_features == 4
    built = resolve_spec(BUILDER, model_kwargs={"num_classes": 4}, **SMALL)  # its own weights
    assert built.weights_spec.kind == "callable"
    assert build_model(built).head.out_features == 4
    other = resolve_spec(BUILDER, "none", model_kwargs={"num_classes": 4, "relu": False}, **SMALL)
    assert other.arch_id != spec.arch_id


@pytest.mark.parametrize("model", ["resnet18", BUILDER])
def test_an_unknown_argument_names_the_model_and_the_argument(model):
    with pytest.raises(ModelError, match=rf"model='{model}' does not take model_kwargs.*colour=1"):
        resolve_spec(model, "none", model_kwargs={"num_classes": 2, "colour": 1}, **SMALL)


@pytest.mark.parametrize(
    "bad, message",
    [
        ([("num_classes", 3)], "expected a dict"),
        ({"num_classes": [3]}, "num_classes=\\[3\\] is a list"),
        ({"num_classes": float("nan")}, "num_classes=nan is a float"),
        ({"num_classes": {"a": 1}}, "is a dict"),
        ({3: 3}, "key 3 is not a keyword argument name"),
    ],
)
def test_bad_values_are_refused_naming_the_key(bad, message):
    with pytest.raises(ModelError, match=message):
        resolve_spec("resnet18", "none", model_kwargs=bad)


def test_identity_and_cache_key_change_only_with_kwargs():
    plain = resolve_spec("resnet18", "none", seed=3, **SMALL)
    # Pinned: a spec without kwargs keeps the key and identity it had before they existed.
    assert plain.arch_id == "06a1c57ba771afeb"
    assert "model_kwargs" not in plain.to_dict()
    key = CodeKey.for_device(plain, "avgpool", "avg", "fp32")
    assert "model_kwargs" not in key.config()
    empty = resolve_spec("resnet18", "none", seed=3, model_kwargs={}, **SMALL)
    assert empty == plain
    assert CodeKey.for_device(empty, "avgpool", "avg", "fp32").digest == key.digest

    given = resolve_spec("resnet18", "none", seed=3, model_kwargs={"num_classes": 7}, **SMALL)
    other = CodeKey.for_device(given, "avgpool", "avg", "fp32")
    assert given.arch_id != plain.arch_id
    assert other.config()["model_kwargs"] == {"num_classes": 7}
    assert other.digest != key.digest
    assert CodeKey.from_json(other.to_json()) == other
    assert given.to_dict()["model_kwargs"] == {"num_classes": 7}
    # Rebuilt from the cache configuration, kwargs included.
    assert spec_from_config(code_config(given, "avgpool", "avg", "fp32")) == given


def test_a_spec_pickled_before_model_kwargs_reads_back_empty():
    spec = resolve_spec("resnet18", "none", **SMALL)
    state = dict(vars(spec))
    del state["model_kwargs"]
    old = ModelSpec.__new__(ModelSpec)
    old.__dict__.update(state)  # what unpickling a spec saved before the field does
    assert old.model_kwargs == () and old == spec


def test_cli_model_arg_on_layers_and_extract(capsys, make_images, tmp_path):
    code, out, err = run(
        capsys, "layers", "resnet18", "--weights", "none", "--model-arg", "num_classes=3", "--json"
    )
    assert code == 0, err
    layers = {layer["name"]: layer for layer in json.loads(out)["layers"]}
    assert layers["fc"]["shape"] == [3]

    paths = make_images(2)
    folder = str(tmp_path / "images")
    common = ["extract", folder, "--model", "resnet18", "--weights", "none", "--resize", "40"]
    common += ["--crop", "32", "--num-workers", "0", "--cache-dir", tmp_path / "cache", "--layer"]
    code, out, err = run(capsys, *common, "fc", "--model-arg", "num_classes=3", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["images"], result["layers"], result["features"]) == (len(paths), ["fc"], 3)

    code, _, err = run(capsys, *common, "fc", "--model-arg", "colour=red")
    assert code != 0
    assert "model='resnet18' does not take model_kwargs colour='red'" in err
    code, _, err = run(capsys, *common, "fc", "--model-arg", "num_classes")
    assert code != 0 and "expected KEY=VALUE" in err
    code, _, err = run(capsys, *common, "fc", "--model-arg", "a=1", "--model-arg", "a=2")
    assert code != 0 and "given twice" in err


def test_model_arg_values_are_json_where_they_parse():
    from cnncodes.cli._core import _model_arg

    assert _model_arg("num_classes=5") == ("num_classes", 5)
    assert _model_arg("p=0.5") == ("p", 0.5)
    assert _model_arg("flag=true") == ("flag", True)
    assert _model_arg("x=null") == ("x", None)
    assert _model_arg('name="5"') == ("name", "5")
    assert _model_arg("act=relu") == ("act", "relu")


@pytest.mark.parametrize("cls", [CNNCodes, FineTune])
def test_estimators_store_model_kwargs_as_given(cls):
    kwargs = {"num_classes": 3}
    est = cls(model="resnet18", model_kwargs=kwargs)
    assert est.get_params()["model_kwargs"] is kwargs
    assert clone(est).get_params()["model_kwargs"] == kwargs
    assert cls(model_kwargs=[1]).model_kwargs == [1]  # validated in fit, not here
    assert cls().get_params()["model_kwargs"] is None


def test_cnncodes_refuses_bad_kwargs_in_fit(make_images):
    est = CNNCodes("resnet18", weights="none", model_kwargs={"num_classes": [3]}, **SMALL)
    with pytest.raises(ModelError, match="num_classes=\\[3\\]"):
        est.fit(make_images(1))


@pytest.mark.parametrize("suffix", [".joblib", ".skops"])
def test_a_saved_pipeline_with_kwargs_round_trips(make_images, tmp_path, suffix):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    paths = make_images(6)
    codes = CNNCodes(
        "resnet18",
        weights="none",
        layer="fc",
        model_kwargs={"num_classes": 3},
        cache_dir=str(tmp_path / "cache"),
        num_workers=0,
        **SMALL,
    )
    pipe = make_pipeline(codes, LogisticRegression()).fit(paths, [0, 1] * 3)
    assert pipe[0].n_features_out_ == 3
    save(pipe, tmp_path / f"model{suffix}")
    restored = load(tmp_path / f"model{suffix}")
    assert restored[0].spec_ == pipe[0].spec_
    assert restored[0].spec_.model_kwargs == (("num_classes", 3),)
    np.testing.assert_array_equal(restored.predict_proba(paths), pipe.predict_proba(paths))


def test_fine_tune_builds_with_kwargs(make_images, tmp_path):
    paths = make_images(6)
    ft = FineTune(
        BUILDER,
        weights="none",
        model_kwargs={"num_classes": 4},
        epochs=1,
        valid_size=None,
        cache_dir=str(tmp_path / "cache"),
        num_workers=0,
        **SMALL,
    ).fit(paths, ["a", "b"] * 3)
    assert ft.spec_.model_kwargs == (("num_classes", 4),)
    assert ft.state_dict_["head.weight"].shape == (4, 16)
    assert ft.predict(paths).shape == (6,)


def test_fit_passes_model_arg_to_the_recipe(capsys, photos):
    code, out, err = run(
        capsys, "fit", photos / "photos", "--model", BUILDER, "--model-arg", "num_classes=3",
        "--layer", "head", "--resize", "40", "--crop", "32", "--num-workers", "0",
        "--cache-dir", photos / "cache", "--cv", "2", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["extraction"]["computed"] == 16
    [(store, _)] = list_configs(photos / "cache")
    assert store.config["model_kwargs"] == {"num_classes": 3}


def test_finetune_top_finds_freeze_depths_of_a_builder_that_needs_arguments():
    import pipelines

    _, grid = pipelines.get("finetune_top").build(
        model=BUILDER, weights="none", model_kwargs={"num_classes": 3}
    )
    assert grid["freeze"] == ["none", "relu1"]


@pytest.mark.parametrize("cls", [CNNCodes, FineTune])
def test_an_estimator_pickled_before_model_kwargs_still_loads(cls):
    import pickle

    est = cls(model="resnet18", weights="none")
    state = est.__getstate__()
    del state["model_kwargs"]  # as saved before the parameter existed
    old = cls.__new__(cls)
    old.__setstate__(state)
    assert old.get_params()["model_kwargs"] is None
    assert pickle.loads(pickle.dumps(old)).get_params() == est.get_params()


def test_cache_info_shows_the_builder_arguments(capsys, make_images, tmp_path):
    make_images(2)
    cache = tmp_path / "cache"
    code, _, err = run(
        capsys, "extract", tmp_path / "images", "--model", "resnet18", "--weights", "none",
        "--resize", "40", "--crop", "32", "--num-workers", "0", "--cache-dir", cache,
        "--layer", "fc", "--model-arg", "num_classes=3", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    code, out, err = run(capsys, "cache", "info", "--cache-dir", cache, "--json")
    assert code == 0, err
    [config] = json.loads(out)["configs"]
    assert config["model_kwargs"] == {"num_classes": 3}
    code, out, _ = run(capsys, "cache", "info", "--cache-dir", cache)
    assert "resnet18(num_classes=3)" in out


def test_finetune_cli_with_model_arg_records_it_and_predicts(capsys, photos):
    import shlex

    out_file, report = photos / "ft.skops", photos / "report"
    code, out, err = run(
        capsys, "finetune", photos / "photos", "--model", BUILDER, "--model-arg", "num_classes=4",
        "--model-arg", 'relu="yes"', "--resize", "32", "--crop", "32", "--num-workers", "0",
        "--cache-dir", photos / "cache", "--epochs", "1", "--out", out_file, "--report", report,
        "--json",
    )  # fmt: skip
    assert code == 0, err
    config = json.loads((report / "config.json").read_text())
    argv = shlex.split(config["command"])
    assert argv[argv.index("--model-arg") :][:4] == [
        "--model-arg", "num_classes=4", "--model-arg", 'relu="yes"',
    ]  # fmt: skip
    assert cli.build_parser().parse_args(argv[1:]).model_kwargs == {"num_classes": 4, "relu": "yes"}
    code, out, err = run(
        capsys, "predict", out_file, photos / "test", "--trust-model-code", BUILDER,
        "--num-workers", "0",
    )  # fmt: skip
    assert code == 0, err
    assert load(out_file, trust_model_code=[BUILDER]).spec_.model_kwargs == (
        ("num_classes", 4),
        ("relu", "yes"),
    )


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Sockets that refuse to connect, and empty download caches: any fetch fails loudly."""
    import socket

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("CNNCODES_DOWNLOAD", raising=False)
    return attempts


@pytest.mark.parametrize(
    "model, kwargs",
    [
        ("resnet18", {"weights": "IMAGENET1K_V1"}),
        ("resnet18", {"pretrained": True}),
        ("resnet18", {"weights_backbone": "IMAGENET1K_V1"}),
        ("timm:resnet10t", {"pretrained": True}),
        ("timm:resnet10t", {"pretrained_cfg": "c3_in1k"}),
        ("timm:resnet10t", {"pretrained_cfg_overlay": "x"}),
        ("timm:resnet10t", {"checkpoint_path": "/nowhere.pth"}),
    ],
)
def test_model_arguments_that_choose_weights_are_refused_offline(no_network, model, kwargs):
    (key,) = kwargs
    with pytest.raises(ModelError, match=rf"{key}=.* chooses weights.*weights=.*--weights"):
        build_model(resolve_spec(model, "none", model_kwargs=kwargs, **SMALL))
    assert no_network == []
