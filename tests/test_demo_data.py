"""Tests for the offline demo's digits dataset and pretraining."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from cnncodes.demo_data import (
    IMAGE_SIZE,
    SOURCE_CLASSES,
    TARGET_CLASSES,
    digits_net,
    load_image_folder,
    pretrain,
    write_digits_dataset,
)
from cnncodes.models import resolve_spec
from PIL import Image
from sklearn.datasets import load_digits
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from cnncodes import extract_codes
from tests.conftest import one_torch_thread


@pytest.fixture(scope="module")
def digits_target():
    return load_digits().target


@pytest.fixture(scope="module")
def dataset(demo_run):
    # The session's demo wrote the default dataset (read-only here; see test_dataset_idempotent).
    return write_digits_dataset(demo_run.out_dir / "data")


@pytest.fixture(scope="module")
def pretrained(dataset, demo_run, tmp_path_factory):
    """The demo's default pretraining, and the same call again into another file."""
    out = tmp_path_factory.mktemp("ckpt")
    with one_torch_thread():  # as the demo ran: thread counts may change the last bits
        second = pretrain(dataset["source"], out / "b.pt", seed=0)
    first = dict(demo_run.report["pretraining"])
    first["checkpoint"] = str(demo_run.out_dir / Path(first["checkpoint"]).name)  # was relative
    return first, second


def _files(folder):
    return sorted(
        os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs
    )


def test_dataset_counts(dataset, digits_target):
    n_source = int(np.isin(digits_target, SOURCE_CLASSES).sum())
    n_target = int(np.isin(digits_target, TARGET_CLASSES).sum())
    assert dataset["counts"] == {
        "source": n_source,
        "target_train": 5 * len(TARGET_CLASSES),
        "target_test": n_target - 5 * len(TARGET_CLASSES),
    }
    for d in SOURCE_CLASSES:
        files = os.listdir(os.path.join(dataset["source"], str(d)))
        assert len(files) == int((digits_target == d).sum())
    for d in TARGET_CLASSES:
        train = set(os.listdir(os.path.join(dataset["target_train"], str(d))))
        test = set(os.listdir(os.path.join(dataset["target_test"], str(d))))
        assert len(train) == 5
        assert not train & test
        assert len(train) + len(test) == int((digits_target == d).sum())
    assert sorted(os.listdir(dataset["source"])) == [str(d) for d in SOURCE_CLASSES]
    assert sorted(os.listdir(dataset["target_test"])) == [str(d) for d in TARGET_CLASSES]


def test_png_format_and_pixels(dataset):
    digits = load_digits()
    folder = os.path.join(dataset["target_train"], "7")
    name = min(os.listdir(folder))
    index = int(name.removesuffix(".png"))
    assert digits.target[index] == 7
    with Image.open(os.path.join(folder, name)) as im:
        assert im.format == "PNG"
        assert im.mode == "RGB"
        assert im.size == (IMAGE_SIZE, IMAGE_SIZE)
        rgb = np.asarray(im)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    # sklearn's convention, ink high: the brightest pixels follow the digit's ink.
    src = digits.images[index]
    assert rgb[0, 0, 0] == 0 and rgb[..., 0].max() > 200
    small = np.asarray(Image.fromarray(rgb[..., 0]).resize((8, 8), Image.Resampling.BOX))
    assert np.corrcoef(small.ravel(), src.ravel())[0, 1] > 0.9


def test_dataset_idempotent(dataset):
    root = dataset["root"]
    before = {f: os.stat(os.path.join(root, f)).st_mtime_ns for f in _files(root)}
    again = write_digits_dataset(root)
    assert again["created"] is False
    assert again["counts"] == dataset["counts"]
    after = {f: os.stat(os.path.join(root, f)).st_mtime_ns for f in _files(root)}
    assert after == before


def test_dataset_rebuilds_on_new_parameters_or_damage(tmp_path):
    first = write_digits_dataset(tmp_path, n_target_train_per_class=3, seed=1)
    assert first["counts"]["target_train"] == 15
    marker = json.loads((tmp_path / "dataset.json").read_text())
    assert marker["params"]["n_target_train_per_class"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    second = write_digits_dataset(tmp_path, n_target_train_per_class=4, seed=1)
    assert second["created"] is True
    for d in TARGET_CLASSES:
        assert len(os.listdir(tmp_path / "target_train" / str(d))) == 4

    # A missing file makes the dataset incomplete, so it is rebuilt.
    victim = next((tmp_path / "source" / "0").iterdir())
    victim.unlink()
    third = write_digits_dataset(tmp_path, n_target_train_per_class=4, seed=1)
    assert third["created"] is True and victim.exists()


def test_target_split_depends_on_seed(tmp_path):
    a = write_digits_dataset(tmp_path / "a", seed=0)
    b = write_digits_dataset(tmp_path / "b", seed=1)
    assert _files(a["target_train"]) != _files(b["target_train"])


def test_invalid_n_target_train(tmp_path):
    with pytest.raises(ValueError):
        write_digits_dataset(tmp_path, n_target_train_per_class=0)


def test_load_image_folder(dataset):
    x, y, classes = load_image_folder(dataset["target_train"])
    assert classes == [str(d) for d in TARGET_CLASSES]
    assert x.shape == (25, 3, IMAGE_SIZE, IMAGE_SIZE) and x.dtype == torch.float32
    assert y.tolist() == sorted(list(range(5)) * 5)
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert x.min() == -1.0  # background is black (ink high)


def test_node_names_and_shapes():
    model = digits_net().eval()
    train_nodes, eval_nodes = get_graph_node_names(model)
    expected = ["x"] + [f"features.{i}" for i in range(12)] + ["avgpool", "flatten", "fc"]
    assert eval_nodes == expected
    assert train_nodes == expected
    extractor = create_feature_extractor(model, ["features.7", "features.11", "flatten", "fc"])
    with torch.no_grad():
        out = extractor(torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert out["features.7"].shape == (2, 32, 8, 8)
    assert out["features.11"].shape == (2, 64, 4, 4)
    assert out["flatten"].shape == (2, 64)
    assert out["fc"].shape == (2, 5)
    n_params = sum(p.numel() for p in model.parameters())
    assert 10_000 < n_params < 100_000


def test_pretrain_accuracy_and_checkpoint(pretrained, dataset):
    result, _ = pretrained
    assert result["val_accuracy"] >= 0.95
    assert result["train_accuracy"] >= 0.95
    assert result["n_images"] == dataset["counts"]["source"]
    assert result["epochs"] == 8
    state = torch.load(result["checkpoint"], map_location="cpu", weights_only=True)
    model = digits_net(5)
    model.load_state_dict(state, strict=True)
    assert not [p for p in os.listdir(os.path.dirname(result["checkpoint"])) if p.endswith(".tmp")]


def test_pretrain_deterministic(pretrained):
    a, b = (torch.load(r["checkpoint"], weights_only=True) for r in pretrained)
    assert a.keys() == b.keys()
    # Same seed, same process, CPU: expected to be bit-identical.
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert pretrained[0]["val_accuracy"] == pretrained[1]["val_accuracy"]


def test_pretrain_same_weights_same_bytes(pretrained):
    # The checkpoint's SHA-256 keys the code cache: a second identical run must not orphan it.
    a, b = (Path(r["checkpoint"]).read_bytes() for r in pretrained)
    assert hashlib.sha256(a).hexdigest() == hashlib.sha256(b).hexdigest()


def test_pretrain_leaves_global_state(dataset, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    flag = torch.are_deterministic_algorithms_enabled()
    with one_torch_thread():
        pretrain(dataset["source"], tmp_path / "c.pt", epochs=1)
    assert torch.equal(torch.rand(3), expected)
    assert torch.are_deterministic_algorithms_enabled() == flag


def test_digits_net_declares_the_pretraining_preprocessing(pretrained, dataset, tmp_path):
    spec = resolve_spec("cnncodes.demo_data:digits_net", pretrained[0]["checkpoint"])
    explicit = resolve_spec(
        "cnncodes.demo_data:digits_net",
        pretrained[0]["checkpoint"],
        resize=IMAGE_SIZE,
        crop=IMAGE_SIZE,
        mean=0.5,
        std=0.5,
    )
    # What the demo passed explicitly before the declaration: the same cache configuration.
    assert spec == explicit
    assert spec.preprocessing.input_size == (IMAGE_SIZE, IMAGE_SIZE)
    # Codes see the images exactly as pretraining did (load_image_folder's tensors).
    folder = dataset["target_train"]
    x, _, classes = load_image_folder(folder)
    paths = [
        os.path.join(folder, c, f)
        for c in classes
        for f in sorted(os.listdir(os.path.join(folder, c)))
    ]
    codes = extract_codes(paths, spec, "fc", "avg", cache_dir=None, num_workers=0).codes["fc"]
    model = digits_net(5)
    model.load_state_dict(torch.load(pretrained[0]["checkpoint"], weights_only=True))
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    np.testing.assert_allclose(codes, expected, rtol=1e-4, atol=1e-4)
