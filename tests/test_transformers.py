"""Tests for cnncodes.transformers: CNNCodes, skipped images, grid searches that reuse codes."""

from __future__ import annotations

import os

import cnncodes.extract
import numpy as np
import pandas as pd
import pytest
import torch
from cnncodes.cache import CodeStore, list_configs
from cnncodes.models import LayerError, ModelError, WeightsError, file_sha256
from cnncodes.transformers import (
    CNNCodes,
    SkippedImagesError,
    SkippedImagesWarning,
)
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from cnncodes.images import ImageLoadError
from tests.test_models import overwrite_in_place

NET = "cnncodes.demo_data:digits_net"
SMALL = {"resize": 32, "crop": 32, "num_workers": 0}


def codes(tmp_path, **params):
    params = {
        "model": NET,
        "weights": "none",
        "cache_dir": str(tmp_path / "cache"),
        **SMALL,
        **params,
    }
    return CNNCodes(**params)


# -------------------------------------------------------------------------------- construction


def test_init_only_stores_even_a_missing_checkpoint(tmp_path):
    missing = tmp_path / "nope.pth"
    est = CNNCodes(model="no_such_model", weights=missing, layer=["x"], batch_size=-3)
    assert est.weights is missing and est.layer == ["x"] and est.batch_size == -3
    with pytest.raises(WeightsError, match="nope.pth"):
        CNNCodes(model=NET, weights=str(missing)).fit(["a.png"])


def test_fit_reads_no_image_and_resolves_names(tmp_path, forward_counter):
    est = codes(tmp_path, layer=["features.7", "penultimate"], pooling="avgmax")
    assert est.fit(["never/created.png"]) is est
    assert forward_counter.builds == 0
    assert est.layers_ == ["features.7", "flatten"]
    assert est.layer_sizes_ == {"features.7": 64, "flatten": 64}
    assert est.n_features_out_ == 128 and est.n_features_in_ == 1
    assert est.spec_.weights_id == "none:seed=0"
    assert not os.path.exists(tmp_path / "cache")


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"layer": "layer9"}, LayerError, r"layer='layer9' is not a node"),
        ({"layer": []}, ValueError, r"layer=\[\]: expected a layer name"),
        ({"pooling": "mean"}, ValueError, r"pooling='mean' is not supported; choose one of avg"),
        ({"on_error": "ignore"}, ValueError, r"on_error='ignore': choose one of 'raise', 'skip'"),
        ({"precision": "fp64"}, ValueError, r"precision='fp64': choose one of"),
        ({"batch_size": 0}, ValueError, r"batch_size=0: expected an int >= 1"),
        ({"num_workers": -1}, ValueError, r"num_workers=-1: expected an int >= 0 or None"),
        ({"device": "tpu"}, ValueError, r"device='tpu'"),
        ({"cache_dir": 3}, TypeError, r"cache_dir=3"),
        ({"model": "resnet5O"}, ModelError, r"'resnet5O' is not a torchvision"),
        (
            {"crop": 224, "resize": 256, "layer": "features.0", "pooling": "flatten"},
            ValueError,
            r"layer='features.0': pooling='flatten' would make",
        ),
        ({"progress": "yes"}, ValueError, r"progress='yes'"),
    ],
)
def test_fit_fails_early_on_bad_configuration(tmp_path, params, error, match):
    with pytest.raises(error, match=match):
        codes(tmp_path, **params).fit(["a.png"])


# -------------------------------------------------------------------------------- input forms


@pytest.mark.parametrize(
    ("X", "error", "match"),
    [
        (np.zeros((4, 3)), TypeError, r"expects a sequence of image file paths.*dtype float64"),
        ([1.0, 2.0], TypeError, r"X\[0\]=1.0 is a float; CNNCodes expects"),
        (["a.png", 7], TypeError, r"X\[1\]=7 is a int"),
        ("a.png", TypeError, r"single path.*\['a.png'\]"),
        ([], ValueError, r"X is empty"),
        (np.array([], dtype=object), ValueError, r"X is empty"),
        (pd.DataFrame({"a": ["x"], "b": ["y"]}), ValueError, r"2 columns \['a', 'b'\]"),
        (np.array([["a", "b"]], dtype=object), ValueError, r"one image path per row"),
        (42, TypeError, r"got int"),
    ],
)
def test_bad_input_is_refused_with_what_is_expected(tmp_path, X, error, match):
    est = codes(tmp_path)
    with pytest.raises(error, match=match):
        est.fit(X)
    est.fit(["a.png"])
    with pytest.raises(error, match=match):
        est.transform(X)


def test_accepted_input_forms_give_equal_codes(tmp_path, images):
    est = codes(tmp_path).fit(images)
    expected = est.transform(images)
    forms = [
        [os.fspath(p) for p in images],
        [type(tmp_path)(p) for p in images],
        tuple(images),
        np.array(images),
        np.array(images, dtype=object).reshape(-1, 1),
        pd.Series(images),
        pd.DataFrame({"path": images}),
    ]
    for X in forms:
        np.testing.assert_array_equal(est.transform(X), expected)


def test_dataframe_column_name_is_remembered(tmp_path, images):
    est = codes(tmp_path).fit(pd.DataFrame({"path": images}))
    assert list(est.feature_names_in_) == ["path"]
    with pytest.raises(ValueError, match=r"column \['file'\].*fitted with column \['path'\]"):
        est.transform(pd.DataFrame({"file": images}))
    est.fit(images)
    assert not hasattr(est, "feature_names_in_")


# -------------------------------------------------------------------------------- codes


def test_codes_are_float32_one_row_per_input_and_cached(tmp_path, images, forward_counter):
    est = codes(tmp_path)
    first = est.fit_transform(images)
    assert first.dtype == np.float32 and first.shape == (12, 64)
    assert forward_counter.images == 12
    second = clone_fit(est, images).transform(images[::-1])
    assert forward_counter.images == 12  # every code came from the cache
    np.testing.assert_array_equal(second, first[::-1])


def clone_fit(est, X):
    from sklearn.base import clone

    return clone(est).fit(X)


def test_multi_layer_codes_are_the_layers_side_by_side(tmp_path, images):
    both = codes(tmp_path, layer=["features.7", "features.3"], pooling="max").fit(images)
    a = codes(tmp_path, layer="features.7", pooling="max").fit(images).transform(images)
    b = codes(tmp_path, layer="features.3", pooling="max").fit(images).transform(images)
    np.testing.assert_array_equal(both.transform(images), np.hstack([a, b]))
    names = both.get_feature_names_out()
    assert list(names[:2]) == ["features.7__max0", "features.7__max1"]
    assert names[32] == "features.3__max0" and len(names) == 48


def test_without_cache_codes_are_computed_every_time(tmp_path, images, forward_counter):
    est = codes(tmp_path, cache_dir=None).fit(images)
    a, b = est.transform(images), est.transform(images)
    np.testing.assert_array_equal(a, b)
    assert forward_counter.images == 24
    assert not os.path.exists(tmp_path / "cache")


def test_set_output_pandas_keeps_the_index(tmp_path, images):
    est = codes(tmp_path).set_output(transform="pandas")
    X = pd.DataFrame({"path": images}, index=[f"id{i}" for i in range(12)])
    out = est.fit_transform(X)
    assert isinstance(out, pd.DataFrame)
    assert list(out.index) == list(X.index)
    assert list(out.columns) == list(est.get_feature_names_out())


# -------------------------------------------------------------------------------- checkpoints


def _checkpoint(path, seed):
    from cnncodes.demo_data import digits_net

    torch.manual_seed(seed)
    torch.save(digits_net().state_dict(), path)
    return str(path)


def test_changed_checkpoint_is_refused_even_on_a_warm_cache(tmp_path, images):
    ckpt = _checkpoint(tmp_path / "net.pth", seed=1)
    est = codes(tmp_path, weights=ckpt)
    est.fit_transform(images)  # codes are now cached
    old = file_sha256(ckpt)
    _checkpoint(ckpt, seed=2)
    new = file_sha256(ckpt)
    assert old != new
    with pytest.raises(WeightsError, match=rf"net\.pth changed.*now {new}.*made with {old}"):
        est.transform(images)
    os.remove(ckpt)
    with pytest.raises(WeightsError, match=rf"weights file not found: .*net\.pth.*{old}"):
        est.transform(images)


def test_checkpoint_overwritten_in_place_is_refused_and_not_cached_under_its_old_hash(
    tmp_path, images
):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    ckpt = _checkpoint(tmp_path / "a" / "net.pth", seed=1)
    other = _checkpoint(tmp_path / "b" / "net.pth", seed=2)  # same archive name: same size
    old, new = file_sha256(ckpt), file_sha256(other)
    est = codes(tmp_path, weights=ckpt)
    before = est.fit_transform(images)
    overwrite_in_place(ckpt, open(other, "rb").read())  # same size, mtime and inode
    with pytest.raises(WeightsError, match=rf"net\.pth changed.*now {new}.*made with {old}"):
        est.transform(images)
    # A new fit resolves the new bytes: new codes, under the new hash, not the old entry.
    refit = codes(tmp_path, weights=ckpt)
    after = refit.fit_transform(images)
    assert refit.spec_.weights_id == f"sha256:{new}"
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, codes(tmp_path, weights=other).fit_transform(images))
    np.testing.assert_array_equal(
        codes(tmp_path, weights=_checkpoint(tmp_path / "again.pth", seed=1)).fit_transform(images),
        before,
    )


def test_checkpoint_weights_change_the_codes(tmp_path, images):
    a = codes(tmp_path, weights=_checkpoint(tmp_path / "a.pth", 1)).fit_transform(images)
    b = codes(tmp_path, weights=_checkpoint(tmp_path / "b.pth", 2)).fit_transform(images)
    assert not np.allclose(a, b)


# -------------------------------------------------------------------------------- bad images


def test_raise_names_the_bad_file(tmp_path, with_bad):
    paths, _, bad = with_bad
    est = codes(tmp_path).fit(paths)
    with pytest.raises(ImageLoadError, match="broken.png"):
        est.transform(paths)


def test_skip_keeps_rows_aligned_with_nan_and_names_the_file(tmp_path, with_bad, images):
    paths, _, bad = with_bad
    clean = codes(tmp_path).fit_transform(images)
    est = codes(tmp_path, on_error="skip").fit(paths)
    with pytest.warns(SkippedImagesWarning, match=r"(?s)1 of 13 images.*\[5\] .*broken\.png"):
        out = est.transform(paths)
    assert out.shape == (13, 64)
    assert np.isnan(out[5]).all()
    np.testing.assert_array_equal(np.delete(out, 5, axis=0), clean)


def test_skip_with_labels_refuses_rather_than_misalign(tmp_path, with_bad):
    paths, y, bad = with_bad
    est = codes(tmp_path, on_error="skip")
    with pytest.raises(
        SkippedImagesError, match=r"(?s)1 of 13 training images.*broken\.png"
    ) as info:
        est.fit_transform(paths, y)
    assert [(s.index, s.path) for s in info.value.skipped] == [(5, bad)]
    pipe = Pipeline([("cnncodes", est), ("clf", LogisticRegression())])
    with pytest.raises(SkippedImagesError, match="filter_readable"):
        pipe.fit(paths, y)


# -------------------------------------------------------------------------------- grid search


def _search(tmp_path, n_jobs=1, **params):
    pipe = Pipeline(
        [
            ("cnncodes", codes(tmp_path, **params)),
            ("scale", StandardScaler()),
            ("clf", LogisticRegression(max_iter=200)),
        ]
    )
    grid = {
        "cnncodes__layer": ["features.3", "features.7"],
        "cnncodes__pooling": ["avg", "max"],
        "clf__C": [0.1, 10.0],
    }
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    return GridSearchCV(pipe, grid, cv=cv, n_jobs=n_jobs)


def test_grid_search_runs_the_network_once_per_image_and_configuration(
    tmp_path, images, labels, forward_counter
):
    search = _search(tmp_path).fit(images, labels)
    # 2 layers x 2 poolings = 4 configurations; 8 candidates x 3 folds + refit read the cache.
    assert forward_counter.images == 12 * 4
    assert {layers for layers, _ in forward_counter.runs} == {("features.3",), ("features.7",)}
    stored = {(s.config["layer"], s.config["pooling"]) for s, _ in list_configs(tmp_path / "cache")}
    assert stored == {
        ("features.3", "avg"),
        ("features.3", "max"),
        ("features.7", "avg"),
        ("features.7", "max"),
    }
    before = list(forward_counter.runs)
    again = _search(tmp_path).fit(images, labels)
    assert forward_counter.runs == before
    np.testing.assert_array_equal(
        search.cv_results_["mean_test_score"], again.cv_results_["mean_test_score"]
    )


def test_grid_search_without_cache_recomputes_every_fold(tmp_path, images, labels, forward_counter):
    pipe = Pipeline([("cnncodes", codes(tmp_path, cache_dir=None)), ("clf", LogisticRegression())])
    GridSearchCV(pipe, {"clf__C": [0.1, 1.0]}, cv=3).fit(images, labels)
    # Every candidate and fold pushes its train and test images, then the refit all of them.
    assert forward_counter.images == 2 * 3 * 12 + 12


def test_parallel_search_on_a_cold_cache_matches_serial(tmp_path, images, labels):
    parallel = _search(tmp_path / "a", n_jobs=2).fit(images, labels)
    serial = _search(tmp_path / "b").fit(images, labels)
    np.testing.assert_allclose(
        parallel.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"]
    )
    # Every configuration's codes ended up in the shared cache, each image at least once.
    for layer in ("features.3", "features.7"):
        for pooling in ("avg", "max"):
            est = codes(tmp_path / "a", layer=layer, pooling=pooling).fit(images)
            config = cnncodes.extract.code_config(est.spec_, layer, pooling, "fp32")
            assert len(CodeStore(tmp_path / "a" / "cache", config).index()) == 12


def test_refit_after_a_checkpoint_change_uses_the_new_file(tmp_path, images, monkeypatch):
    import cnncodes.networks.models as inputs  # where CNNCodes resolves its spec (spec_of)

    calls = []
    original = inputs.resolve_spec
    monkeypatch.setattr(
        inputs, "resolve_spec", lambda *a, **k: calls.append(a) or original(*a, **k)
    )
    ckpt = _checkpoint(tmp_path / "net.pth", seed=1)
    est = codes(tmp_path, weights=ckpt)
    first = est.fit_transform(images)
    codes(tmp_path, weights=ckpt).fit(images)
    assert len(calls) == 1  # a clone's fit reuses the resolution
    _checkpoint(ckpt, seed=2)
    refitted = est.fit_transform(images)
    assert len(calls) == 2
    assert est.spec_.weights_id == f"sha256:{file_sha256(ckpt)}"
    assert not np.allclose(refitted, first)


# -------------------------------------------------------------------------------- memos


USER_NET = """
import torch.nn as nn


def net():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.{act}(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )


net.preprocessing = {{"resize": 20, "crop": 16, "mean": 0.5, "std": 0.5}}
"""


def test_a_reloaded_or_edited_user_model_is_not_served_from_a_memo(tmp_path, monkeypatch, images):
    import importlib
    import sys

    module = tmp_path / "stale_user_net.py"
    module.write_text(USER_NET.format(act="ReLU"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "stale_user_net", raising=False)
    params = dict(
        model="stale_user_net:net", weights="none", layer="3", cache_dir=str(tmp_path / "c")
    )
    first = CNNCodes(**params).fit(images)
    before = first.transform(images)

    # The declared preprocessing is edited in place: resolved anew, new codes.
    mod = importlib.import_module("stale_user_net")
    mod.net.preprocessing["mean"] = 0.1
    edited = CNNCodes(**params).fit(images)
    assert edited.spec_.preprocessing.mean == (0.1, 0.1, 0.1)
    assert not np.allclose(edited.transform(images), before)

    # The module is rewritten and reloaded with another architecture: a new fingerprint.
    module.write_text(USER_NET.format(act="Tanh"))
    importlib.invalidate_caches()
    os.utime(module, ns=(1, 1))  # a new mtime, so the import system does not reuse its .pyc
    importlib.reload(mod)
    reloaded = CNNCodes(**params).fit(images)
    assert reloaded.spec_.arch_id != first.spec_.arch_id
    assert not np.allclose(reloaded.transform(images), before)


EDITED_NET = """
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = self.conv(x)
        {branch}
        return self.pool(torch.relu(x){scale}).flatten(1)


def net():
    return Net()


net.preprocessing = {{"resize": 20, "crop": 16, "mean": 0.5, "std": 0.5}}
"""
#: A branch on tensor values: torch.fx cannot trace it (extraction falls back to hooks).
UNTRACEABLE = "if x.abs().amax() > 1e6:\n            x = x / 2"


@pytest.mark.parametrize("branch", ["", UNTRACEABLE], ids=["traced", "untraceable"])
def test_an_edited_forward_makes_new_codes(tmp_path, monkeypatch, images, forward_counter, branch):
    import importlib
    import sys

    name = f"edited_forward_{'traced' if not branch else 'hooked'}"
    module = tmp_path / f"{name}.py"
    module.write_text(EDITED_NET.format(branch=branch, scale=""))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    params = dict(model=f"{name}:net", weights="none", layer="pool", cache_dir=str(tmp_path / "c"))
    first = CNNCodes(**params)
    before = first.fit_transform(images)
    assert forward_counter.images == len(images)
    np.testing.assert_array_equal(CNNCodes(**params).fit_transform(images), before)
    assert forward_counter.images == len(images)  # unchanged code: all from the cache

    # relu(x) -> relu(x) * 2: same modules, names, shapes and parameters; other codes.
    module.write_text(EDITED_NET.format(branch=branch, scale=" * 2"))
    importlib.invalidate_caches()
    os.utime(module, ns=(1, 1))  # a new mtime, so the import system does not reuse its .pyc
    importlib.reload(sys.modules[name])
    edited = CNNCodes(**params).fit(images)
    after = edited.transform(images)
    assert forward_counter.images == 2 * len(images)  # a cache miss: computed anew
    np.testing.assert_allclose(after, 2 * before, rtol=1e-5)
    assert edited.spec_.arch_id != first.spec_.arch_id


@pytest.mark.parametrize("branch", ["", UNTRACEABLE], ids=["traced", "untraceable"])
def test_an_edited_helper_in_another_module_makes_new_codes(
    tmp_path, monkeypatch, images, forward_counter, branch
):
    # forward() calls act() from the user's helpers module: its edit must change the key too.
    import importlib
    import sys

    tag = "traced" if not branch else "hooked"
    helpers, name = f"act_helpers_{tag}", f"helped_net_{tag}"
    (tmp_path / f"{helpers}.py").write_text(
        "import torch\n\n\ndef act(x):\n    return torch.relu(x)\n"
    )
    net_source = EDITED_NET.format(branch=branch, scale="").replace("torch.relu(x)", "act(x)")
    (tmp_path / f"{name}.py").write_text(f"from {helpers} import act\n" + net_source)
    monkeypatch.syspath_prepend(str(tmp_path))
    for module in (helpers, name):
        monkeypatch.delitem(sys.modules, module, raising=False)
    params = dict(model=f"{name}:net", weights="none", layer="pool", cache_dir=str(tmp_path / "c"))
    before = CNNCodes(**params).fit_transform(images)
    assert forward_counter.images == len(images)

    (tmp_path / f"{helpers}.py").write_text(
        "import torch\n\n\ndef act(x):\n    return torch.relu(x) * 2\n"
    )
    importlib.invalidate_caches()
    os.utime(tmp_path / f"{helpers}.py", ns=(1, 1))  # no stale .pyc
    importlib.reload(sys.modules[helpers])
    importlib.reload(sys.modules[name])  # as a new process would import them
    after = CNNCodes(**params).fit_transform(images)
    assert forward_counter.images == 2 * len(images)  # a cache miss: computed anew
    np.testing.assert_allclose(after, 2 * before, rtol=1e-5)


def test_a_model_that_needs_arguments_is_refused_naming_it(tmp_path):
    with pytest.raises(ModelError, match=r"model='torch.nn:Linear' cannot be called without"):
        codes(tmp_path, model="torch.nn:Linear").fit(["a.png"])


def test_numpy_values_in_a_grid_work_like_python_ones(tmp_path, images, labels):
    pipe = Pipeline(
        [("cnncodes", codes(tmp_path, batch_size=np.int32(5))), ("clf", LogisticRegression())]
    )
    grid = {"cnncodes__seed": np.arange(2), "cnncodes__num_workers": np.array([0])}
    cv = StratifiedKFold(2)
    search = GridSearchCV(pipe, grid, cv=cv, error_score="raise").fit(images, labels)
    plain = GridSearchCV(pipe, {"cnncodes__seed": [0, 1]}, cv=cv).fit(images, labels)
    np.testing.assert_array_equal(
        search.cv_results_["mean_test_score"], plain.cv_results_["mean_test_score"]
    )


def test_an_iterator_is_refused_rather_than_used_up(tmp_path, images):
    with pytest.raises(TypeError, match="X is a generator, which can be read only once"):
        codes(tmp_path).fit_transform(p for p in images)
    with pytest.raises(TypeError, match="X is a map, which can be read only once"):
        codes(tmp_path).fit(map(str, images))


def test_feature_names_out_checks_input_features(tmp_path, images):
    est = codes(tmp_path).fit(images)
    assert len(est.get_feature_names_out(["x0"])) == est.n_features_out_
    with pytest.raises(ValueError, match="input_features should have length equal to"):
        est.get_feature_names_out(["a", "b"])
    named = codes(tmp_path).fit(pd.DataFrame({"path": images}))
    with pytest.raises(ValueError, match="input_features is not equal to feature_names_in_"):
        named.get_feature_names_out(["file"])


def test_a_cache_that_cannot_be_written_fails_before_any_image_is_computed(
    tmp_path, images, forward_counter
):
    with pytest.raises(ValueError, match=r"cache_dir='': expected a folder path \('.'"):
        codes(tmp_path, cache_dir="").fit(images)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    est = codes(tmp_path, cache_dir=str(blocker / "cache")).fit(images)
    with pytest.raises(OSError, match=r"cannot write to the cache folder .*a_file.cache"):
        est.transform(images)
    assert forward_counter.builds == 0


def test_the_search_helpers_are_still_importable_from_here():
    import cnncodes.search
    import cnncodes.transformers

    for name in ("filter_readable", "warm_cache"):
        assert getattr(cnncodes.transformers, name) is getattr(cnncodes.search, name)
        assert name in cnncodes.transformers.__all__
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        cnncodes.transformers.no_such_name  # noqa: B018
