"""Tests for cnncodes.fitted: predictions with a fitted model, its runtime settings, its weights
moved or changed, and the check that it is rebuilt as it was fitted."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from cnncodes.experiment import run_experiment
from cnncodes.fitted import predict_images, relocate_weights, set_runtime, verify_model
from cnncodes.models import ModelError, WeightsError

from cnncodes.images import ImageLoadError
from tests.test_experiment import FAST, SMALL_C


def _checkpoint(path, seed):
    from cnncodes.demo_data import digits_net

    torch.manual_seed(seed)
    torch.save(digits_net().state_dict(), path)
    return str(path)


def test_predict_images_and_a_changed_checkpoint(data, tmp_path):
    paths, labels = data
    weights = _checkpoint(tmp_path / "net.pth", seed=1)
    overrides = dict(FAST, weights=weights, cache_dir=str(tmp_path / "cache"), **SMALL_C)
    model = run_experiment(paths, labels, "linear_probe", overrides=overrides, cv=2).estimator

    table = predict_images(model, paths, labels=labels, proba=True)
    assert list(table.columns) == [
        "path",
        "label",
        "score",
        "score_kind",
        "true_label",
        "proba_bright",
        "proba_dark",
    ]
    assert list(table["path"]) == paths
    assert (table["label"] == table["true_label"]).mean() == 1.0
    np.testing.assert_allclose(table[["proba_bright", "proba_dark"]].sum(axis=1), 1.0, rtol=1e-6)
    assert (table["score"] == table[["proba_bright", "proba_dark"]].max(axis=1)).all()

    # An unreadable image: its own row with the reason, the others predicted.
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    table = predict_images(model, [paths[0], str(bad)], on_error="skip")
    assert table["label"].tolist()[0] in ("bright", "dark") and table["label"].isna().tolist()[1]
    assert table["error"].isna().tolist() == [True, False]
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        predict_images(model, [paths[0], str(bad)])

    # The checkpoint changes: refused, naming the file and both SHA-256.
    import hashlib

    before = hashlib.sha256(open(weights, "rb").read()).hexdigest()
    _checkpoint(weights, seed=2)
    after = hashlib.sha256(open(weights, "rb").read()).hexdigest()
    with pytest.raises(WeightsError) as info:
        predict_images(model, paths)
    assert weights in str(info.value) and before in str(info.value) and after in str(info.value)


def test_predict_skipping_without_a_cache_runs_each_image_once(data, tmp_path, forward_counter):
    paths, labels = data
    overrides = dict(FAST, cache_dir=None, Cs=[1.0])
    model = run_experiment(paths, labels, "linear_probe", overrides=overrides, cv=2).estimator
    expected = predict_images(model, paths[:4])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    forward_counter.images = 0
    table = predict_images(model, [paths[0], str(bad), *paths[1:4]], on_error="skip")
    assert forward_counter.images == 4  # not screened and then extracted again
    assert table["error"].notna().tolist() == [False, True, False, False, False]
    assert table["label"].drop(index=1).tolist() == expected["label"].tolist()
    np.testing.assert_allclose(table["score"].drop(index=1), expected["score"], rtol=1e-6)
    assert model.steps[0][1].on_error == "raise"  # the model's own setting is left as it was

    only_bad = predict_images(model, [str(bad)], on_error="skip")
    assert only_bad["label"].isna().all() and only_bad["error"].notna().all()


def test_predict_scores_without_probabilities(data, tmp_path):
    paths, labels = data
    overrides = dict(FAST, cache_dir=str(tmp_path / "cache"), Cs=[1.0])
    model = run_experiment(paths, labels, "linear_svm", overrides=overrides, cv=2).estimator
    table = predict_images(model, paths[:3])
    assert set(table["score_kind"]) == {"decision"} and (table["score"] >= 0).all()
    with pytest.raises(ValueError, match=r"\(LinearSVC\) gives no probabilities"):
        predict_images(model, paths[:3], proba=True)


def test_verify_model_refuses_an_edited_forward_and_warns_on_older_fingerprints(
    data, tmp_path, monkeypatch
):
    import dataclasses
    import importlib
    import sys

    from tests.test_transformers import EDITED_NET

    module = tmp_path / "verified_forward.py"
    module.write_text(EDITED_NET.format(branch="", scale=""))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "verified_forward", raising=False)
    paths, labels = data
    overrides = dict(FAST, model="verified_forward:net", layer="pool", cache_dir=None, Cs=[1.0])
    model = run_experiment(paths, labels, "linear_probe", overrides=overrides, cv=2).estimator
    verify_model(model)
    step = model.steps[0][1]
    fitted = step.spec_
    modules, _, code = fitted.arch_id.partition("+")
    assert len(modules) == len(code) == 16

    # Saved by an older cnncodes (no code part): accepted while its modules match, with a warning.
    step.spec_ = dataclasses.replace(fitted, arch_id=modules)
    with pytest.warns(UserWarning, match=r"older cnncodes.*forward\(\).*refit"):
        verify_model(model)
    step.spec_ = fitted

    module.write_text(EDITED_NET.format(branch="", scale=" * 2"))
    importlib.invalidate_caches()
    os.utime(module, ns=(1, 1))
    importlib.reload(sys.modules["verified_forward"])
    expected = re.escape(f"fingerprint {fitted.arch_id} at fit time, {modules}+")
    with pytest.raises(ModelError, match=expected):
        verify_model(model)


def test_verify_model_refuses_a_model_that_now_builds_differently(data, tmp_path):
    paths, labels = data
    overrides = dict(FAST, cache_dir=None, Cs=[1.0])
    model = run_experiment(paths, labels, "linear_probe", overrides=overrides, cv=2).estimator
    verify_model(model)
    step = model.steps[0][1]
    fitted = step.spec_
    step.spec_ = fitted.__class__(**{**fitted.__dict__, "arch_id": "0" * 64})
    with pytest.raises(ModelError, match="no longer builds the architecture"):
        verify_model(model)
    step.spec_ = fitted
    step.set_params(resize=36)  # preprocessing now resolves differently from the fitted one
    with pytest.raises(ModelError, match="preprocessing is now"):
        verify_model(model)
    with pytest.raises(ValueError, match="has no CNNCodes step"):
        verify_model(model.steps[-1][1])


def test_predict_images_accepts_a_fitted_search(data, tmp_path):
    paths, labels = data
    result = run_experiment(
        paths, labels, "linear_probe", overrides=dict(FAST, cache_dir=None, Cs=[1.0]), cv=2
    )
    table = predict_images(result.search, paths[:2])
    assert list(table["label"]) == list(result.estimator.predict(paths[:2]))


def test_relocate_weights_needs_a_checkpoint_model(data, tmp_path):
    paths, labels = data
    overrides = dict(FAST, cache_dir=None, Cs=[1.0])
    model = run_experiment(paths, labels, "linear_probe", overrides=overrides, cv=2).estimator
    with pytest.raises(ValueError, match="not a checkpoint file, so there is no file to relocate"):
        relocate_weights(model, tmp_path / "x.pth")


def test_set_runtime_changes_only_what_leaves_the_codes_alone():
    from cnncodes.transformers import CNNCodes
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    pipe = Pipeline(
        [("cnncodes", CNNCodes("resnet18", weights="none")), ("clf", LogisticRegression())]
    )
    assert set_runtime(pipe, batch_size=7, device="cpu", cache_dir=None) is pipe
    params = pipe.get_params()
    assert (params["cnncodes__batch_size"], params["cnncodes__device"]) == (7, "cpu")
    with pytest.raises(ValueError, match=r"set_runtime: 'layer' would change the model's codes"):
        set_runtime(pipe, layer="avgpool", batch_size=8)
    assert pipe.get_params()["cnncodes__batch_size"] == 7
