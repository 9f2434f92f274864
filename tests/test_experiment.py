"""Tests for cnncodes.experiment (the grid search + evaluation behind `cnncodes fit` / `predict`)
and cnncodes.report (the report folder)."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from cnncodes.experiment import (
    classification_metrics,
    jsonable,
    predict_images,
    run_experiment,
    verify_model,
)
from cnncodes.images import ImageLoadError
from cnncodes.models import ModelError, WeightsError
from cnncodes.report import write_report

FAST = {
    "model": "cnncodes.demo_data:digits_net",
    "weights": "none",
    "resize": 32,
    "crop": 32,
    "mean": 0.5,
    "std": 0.5,
    "num_workers": 0,
}
SMALL_C = {"Cs": [0.01, 1.0, 100.0]}


def _counts(line):
    """A progress line without its rates and times (the machine's speed is not under test)."""
    return re.sub(r" in [0-9.]+ s$", " in", line.split(",")[0])


def write_classes(folder, per_class=8, seed=0, classes=("bright", "dark")):
    """Class folders of small PNGs whose classes differ in brightness; returns (paths, labels)."""
    rng = np.random.default_rng(seed)
    paths, labels = [], []
    for c, name in enumerate(classes):
        level = 200 - 150 * c / max(1, len(classes) - 1)
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(level + rng.integers(-40, 40, (26, 26, 3)), 0, 255).astype(np.uint8)
            path = os.path.join(folder, name, f"{i:02d}.png")
            Image.fromarray(pixels).save(path)
            paths.append(path)
            labels.append(name)
    return paths, labels


@pytest.fixture
def data(tmp_path):
    return write_classes(str(tmp_path / "photos"))


def test_classification_metrics():
    m = classification_metrics(["a", "a", "b", "b", "c"], ["a", "b", "b", "b", "a"])
    assert m["n"] == 5
    assert m["accuracy"] == pytest.approx(3 / 5)
    # Recall: a 1/2, b 2/2, c 0/1 -> balanced accuracy is their mean.
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["per_class"]["b"] == {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    assert m["per_class"]["c"]["precision"] == 0.0  # never predicted: 0, no warning
    assert m["labels"] == ["a", "b", "c"]
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_jsonable_makes_strict_json():
    value = {"a": np.float32(0.5), "b": (1, np.int64(2)), "c": float("nan"), "d": np.arange(2)}
    text = json.dumps(jsonable(value), allow_nan=False)
    assert json.loads(text) == {"a": 0.5, "b": [1, 2], "c": None, "d": [0, 1]}


def test_linear_probe_with_a_held_out_split(data, tmp_path, forward_counter):
    paths, labels = data
    overrides = dict(FAST, cache_dir=str(tmp_path / "cache"), **SMALL_C)
    result = run_experiment(paths, labels, "linear_probe", overrides=overrides, test_size=0.25)
    # 16 images: 4 held out (2 per class), 12 for the search; each image through the net once.
    assert forward_counter.images == 16
    assert result.config["train"]["n_images"] == 12 and result.config["test"]["n_images"] == 4
    assert result.config["split"] == {"test_size": 0.25, "seed": 0}
    assert result.metrics["cv"]["n_candidates"] == 3
    assert result.metrics["test"]["n"] == 4
    assert result.metrics["test"]["overlap_with_training"] == 0
    assert set(result.metrics["test"]["per_class"]) == {"bright", "dark"}
    # Brightness survives an untrained network.
    assert result.metrics["test"]["accuracy"] == 1.0
    assert result.metrics["best_params"] == {"clf__C": result.search.best_params_["clf__C"]}
    assert list(result.table["rank"]) == sorted(result.table["rank"])
    assert list(result.table.columns) == ["rank", "C", "mean", "std", "fit_seconds"]
    assert result.layers is None
    assert result.extraction["computed"] == 12  # the search's; the test images came after
    assert result.config["extractor"]["model"] == FAST["model"]
    assert set(result.estimator.predict(paths)) <= {"bright", "dark"}

    # Run again: every code comes from the cache, the network never runs.
    again = run_experiment(paths, labels, "linear_probe", overrides=overrides, test_size=0.25)
    assert forward_counter.images == 16
    assert again.extraction == {**result.extraction, "computed": 0, "cached": 12}
    assert again.metrics["best_params"] == result.metrics["best_params"]


def test_layer_sweep_runs_the_network_once_per_image(data, tmp_path, forward_counter):
    paths, labels = data
    overrides = dict(
        FAST,
        cache_dir=str(tmp_path / "cache"),
        layer=["features.3", "flatten"],
        pooling="avg",
        Cs=[1.0],
        gammas=["scale"],
    )
    result = run_experiment(paths, labels, "layer_sweep_svm", overrides=overrides, cv=3)
    # Both layers come from one forward pass per image (warm_cache groups them).
    assert forward_counter.images == len(paths)
    assert list(result.layers["layer"]) == ["features.3", "flatten"]
    assert result.layers["best"].sum() == 1
    grid = result.config["param_grid"]
    assert [g["cnncodes__layer"] for g in grid] == [["features.3", "flatten"]] * 2
    assert [g["cnncodes__pooling"] for g in grid] == [["avg"]] * 2
    # No test set: the best candidate is described by its cross-validated predictions.
    assert result.metrics["test"] is None
    assert result.metrics["cv"]["predictions"]["n"] == len(paths)


def test_test_images_go_through_the_network_for_the_winner_only(data, tmp_path, forward_counter):
    paths, labels = data
    test_paths, test_labels = write_classes(str(tmp_path / "test"), per_class=3, seed=1)
    overrides = dict(
        FAST,
        cache_dir=str(tmp_path / "cache"),
        layer="features.3",
        poolings=["avg", "max"],
        Cs=[1.0],
        gammas=["scale"],
        kernels=["linear"],
    )
    result = run_experiment(
        paths, labels, "layer_sweep_svm", overrides=overrides, cv=2, test=(test_paths, test_labels)
    )
    # Two poolings: the training images go through the network for each; the 6 test images
    # only for the refitted winner, once.
    assert forward_counter.images == 2 * len(paths) + len(test_paths)
    assert result.extraction["computed"] == 2 * len(paths)
    assert result.metrics["test"]["n"] == len(test_paths)


def test_unreadable_images_are_screened_without_an_extra_pass(data, tmp_path, forward_counter):
    paths, labels = data
    test_paths, test_labels = write_classes(str(tmp_path / "test"), per_class=3, seed=1)
    broken = tmp_path / "test" / "dark" / "broken.png"
    broken.write_bytes(b"not an image")
    bad_train = tmp_path / "photos" / "dark" / "broken.png"
    bad_train.write_bytes(b"not an image either")
    notes = []
    overrides = dict(
        FAST, cache_dir=str(tmp_path / "cache"), layer="features.3", poolings=["max", "avgmax"],
        Cs=[1.0], gammas=["scale"], kernels=["linear"],
    )  # fmt: skip
    result = run_experiment(
        [*paths, str(bad_train)], [*labels, "dark"], "layer_sweep_svm", overrides=overrides,
        cv=2, on_error="skip", test=([*test_paths, str(broken)], [*test_labels, "dark"]),
        log=notes.append,
    )  # fmt: skip
    # The recipe's own pooling (avg) is not in the grid: screening with it would cost a pass.
    assert forward_counter.images == 2 * len(paths) + len(test_paths)
    assert [s.path for s in result.skipped["train"]] == [str(bad_train)]
    assert result.config["train"]["n_images"] == len(paths)
    assert [s.path for s in result.skipped["test"]] == [str(broken)]
    assert result.metrics["test"]["n"] == len(test_paths)
    assert any("left out 1 unreadable test image(s)" in n for n in notes)


def test_without_a_cache_each_image_still_goes_through_the_network_once(
    data, tmp_path, forward_counter, monkeypatch
):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    paths, labels = data
    test_paths, test_labels = write_classes(str(tmp_path / "test"), per_class=3, seed=1)
    notes = []
    overrides = dict(FAST, cache_dir=None, layer=["features.3", "flatten"], **SMALL_C)
    result = run_experiment(
        paths, labels, "layer_sweep_svm", overrides=overrides, cv=3,
        test=(test_paths, test_labels), log=notes.append,
    )  # fmt: skip
    # 2 layers x 3 Cs x 2 kernels x 2 poolings x 3 folds, a refit and the test set: each
    # image once per pooling (the layers share a pass), the test images once.
    assert forward_counter.images == 2 * len(paths) + len(test_paths)
    assert any("temporary cache" in n for n in notes), notes
    assert result.extraction["computed"] == 2 * len(paths)
    # Nothing is left on disk, and the model keeps no cache.
    assert list(scratch.iterdir()) == []
    assert result.estimator.steps[0][1].cache_dir is None
    assert result.search.estimator.steps[0][1].cache_dir is None


def test_user_layers_become_multi_layer_codes_in_other_recipes(data, tmp_path):
    paths, labels = data
    overrides = dict(FAST, cache_dir=str(tmp_path / "cache"), layer=["features.3", "flatten"])
    result = run_experiment(paths, labels, "linear_svm", overrides=overrides, cv=2)
    step = result.estimator.steps[0][1]
    assert step.layers_ == ["features.3", "flatten"]
    assert result.layers is None
    assert result.config["layer"] == {"mode": "concat", "candidates": [["features.3", "flatten"]]}


def test_layer_mode_sweep_makes_each_user_layer_a_candidate(data, tmp_path, forward_counter):
    paths, labels = data
    notes = []
    overrides = dict(
        FAST, cache_dir=str(tmp_path / "cache"), layer=["features.3", "flatten"], Cs=[1.0]
    )
    result = run_experiment(
        paths, labels, "linear_probe", overrides=overrides, cv=2, layer_mode="sweep",
        log=notes.append,
    )  # fmt: skip
    assert result.config["param_grid"]["cnncodes__layer"] == ["features.3", "flatten"]
    assert result.config["layer"] == {"mode": "sweep", "candidates": ["features.3", "flatten"]}
    assert list(result.layers["layer"]) == ["features.3", "flatten"]
    assert "layers swept, one candidate each: features.3, flatten" in notes
    # The layers share one forward pass per image.
    assert forward_counter.images == len(paths)


def _overridden_grid(recipe, layer_mode, **overrides):
    from cnncodes import recipes
    from cnncodes.experiment import _apply_overrides

    overrides = dict(FAST, cache_dir=None, **overrides)
    return _apply_overrides(recipes.get(recipe), overrides, layer_mode)


@pytest.mark.parametrize(
    "recipe, layer_mode, expected",
    [
        # The recipe's own meaning: layer_sweep_svm sweeps, the others concatenate.
        ("layer_sweep_svm", None, ("sweep", ["features.3", "flatten"])),
        ("linear_probe", None, ("concat", None)),
        # The other meaning, asked for.
        ("layer_sweep_svm", "concat", ("concat", [["features.3", "flatten"]])),
        ("linear_probe", "sweep", ("sweep", ["features.3", "flatten"])),
        ("sgd", "concat", ("concat", None)),
    ],
)
def test_layer_mode_decides_what_several_user_layers_mean(recipe, layer_mode, expected):
    pipe, grid, mode = _overridden_grid(
        recipe, layer_mode, layer=["features.3", "flatten"], pooling="avg"
    )
    grids = grid if isinstance(grid, list) else [grid]
    swept = {repr(g.get("cnncodes__layer")) for g in grids}
    assert (mode, *swept) == (expected[0], repr(expected[1]))
    if expected[1] is None:  # not in the grid: one code of both layers
        assert pipe.named_steps["cnncodes"].layer == ["features.3", "flatten"]


def test_a_bad_layer_mode_is_refused():
    with pytest.raises(ValueError, match=r"layer_mode='stack': expected 'sweep' .* or 'concat'"):
        _overridden_grid("linear_probe", "stack", layer="flatten")
    with pytest.raises(ValueError, match=r"layer=\[\]: give at least one layer name"):
        _overridden_grid("linear_probe", None, layer=[])


def test_a_separate_test_set(data, tmp_path):
    paths, labels = data
    test_paths, test_labels = write_classes(str(tmp_path / "test"), per_class=3, seed=1)
    result = run_experiment(
        paths,
        labels,
        "linear_probe",
        overrides=dict(FAST, cache_dir=None, **SMALL_C),
        test=(test_paths, test_labels),
        cv=2,
    )
    assert result.metrics["test"]["n"] == 6
    assert result.extraction["computed"] == 16  # no cache: a temporary one for the run
    assert result.config["test"]["sha256"] != result.config["train"]["sha256"]


def test_unreadable_training_images_are_left_out_with_their_labels(data, tmp_path):
    paths, labels = data
    bad = tmp_path / "photos" / "dark" / "broken.png"
    bad.write_bytes(b"not an image")
    paths, labels = paths + [str(bad)], labels + ["dark"]
    overrides = dict(FAST, cache_dir=str(tmp_path / "cache"), **SMALL_C)
    with pytest.raises(ImageLoadError, match="broken.png"):
        run_experiment(paths, labels, "linear_probe", overrides=overrides, cv=2)
    result = run_experiment(
        paths, labels, "linear_probe", overrides=overrides, cv=2, on_error="skip"
    )
    assert [s.path for s in result.skipped["train"]] == [str(bad)]
    assert result.config["train"]["n_images"] == 16


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"test_size": 0.2, "test": ([], [])}, "either test"),
        ({"test_size": 1.5}, "between 0 and 1"),
        ({"test_size": 0.01}, "cannot hold one of each"),
        ({"on_error": "ignore"}, "on_error='ignore'"),
    ],
)
def test_bad_arguments(data, kwargs, message):
    paths, labels = data
    with pytest.raises(ValueError, match=message):
        run_experiment(paths, labels, overrides=dict(FAST, cache_dir=None), **kwargs)


def test_bad_data(data):
    paths, labels = data
    with pytest.raises(ValueError, match="no labels"):
        run_experiment(paths, None, overrides=dict(FAST, cache_dir=None))
    with pytest.raises(ValueError, match="class 'odd' has only 1 image"):
        run_experiment(paths + [paths[0]], labels + ["odd"], overrides=dict(FAST, cache_dir=None))
    with pytest.raises(ValueError, match="unknown recipe 'linear_prob'. Did you mean"):
        run_experiment(paths, labels, "linear_prob", overrides=dict(FAST, cache_dir=None))
    with pytest.raises(ValueError, match="layer"):
        run_experiment(paths, labels, overrides=dict(FAST, cache_dir=None, layer="no_such_layer"))


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


def test_write_report(data, tmp_path):
    paths, labels = data
    overrides = dict(
        FAST,
        cache_dir=str(tmp_path / "cache"),
        layer=["features.3", "flatten"],
        pooling="avg",
        Cs=[1.0],
        kernels=["linear"],
    )
    result = run_experiment(
        paths, labels, "layer_sweep_svm", overrides=overrides, cv=2, test_size=0.25
    )
    written = write_report(result, str(tmp_path / "report"))
    assert sorted(written) == [
        "config.json",
        "confusion_matrix.png",
        "cv_results.csv",
        "layer_sweep.csv",
        "layer_sweep.png",
        "metrics.json",
    ]
    for path in written.values():
        assert os.path.getsize(path) > 0
    with open(written["metrics.json"]) as f:
        metrics = json.loads(f.read(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert metrics["test"]["n"] == 4
    assert [row["layer"] for row in metrics["layers"]] == ["features.3", "flatten"]
    with open(written["config.json"]) as f:
        config = json.load(f)
    assert config["recipe"] == "layer_sweep_svm"
    assert config["extractor"]["preprocessing"]["crop"] == [32, 32]
    assert {"torch", "scikit-learn", "cnncodes"} <= set(config["versions"])
    import pandas as pd

    results = pd.read_csv(written["cv_results.csv"])
    assert len(results) == 2 and "mean_test_score" in results
    assert Image.open(written["confusion_matrix.png"]).size[0] > 100


def test_test_classes_never_seen_in_training_are_reported(data, tmp_path):
    paths, labels = data
    test_paths, test_labels = write_classes(
        str(tmp_path / "test"), per_class=2, seed=2, classes=("bright", "grey", "dark")
    )
    logged = []
    result = run_experiment(
        paths,
        labels,
        "linear_probe",
        overrides=dict(FAST, cache_dir=None, Cs=[1.0]),
        test=(test_paths, test_labels),
        cv=2,
        log=logged.append,
    )
    test = result.metrics["test"]
    assert test["unseen_classes"] == ["grey"]
    assert test["n"] == 6 and test["accuracy"] <= 4 / 6  # a 'grey' image is never right
    assert set(test["per_class"]) == {"bright", "dark"}
    assert any("never seen in training: grey" in line for line in logged)


def test_predict_images_accepts_a_fitted_search(data, tmp_path):
    paths, labels = data
    result = run_experiment(
        paths, labels, "linear_probe", overrides=dict(FAST, cache_dir=None, Cs=[1.0]), cv=2
    )
    table = predict_images(result.search, paths[:2])
    assert list(table["label"]) == list(result.estimator.predict(paths[:2]))


def test_a_sequential_search_shows_its_fits_as_progress(data, tmp_path, capsys):
    paths, labels = data
    overrides = dict(FAST, cache_dir=str(tmp_path / "cache"), **SMALL_C)
    quiet = run_experiment(paths, labels, overrides=overrides, cv=2, progress=False)
    assert "grid search" not in capsys.readouterr().err
    shown = run_experiment(paths, labels, overrides=overrides, cv=2, progress=True)
    err = capsys.readouterr().err
    assert "grid search" in err and "6/6" in err  # 3 values of C x 2 folds
    # Counting the fits changes nothing in the search.
    np.testing.assert_array_equal(
        shown.search.cv_results_["mean_test_score"], quiet.search.cv_results_["mean_test_score"]
    )
    assert shown.metrics["best_params"] == quiet.metrics["best_params"]


def test_the_default_progress_reaches_the_extraction_in_a_log(data, tmp_path, capsys, monkeypatch):
    # progress=None (what `cnncodes fit` passes): the warm pass reports in a log file as
    # extract_codes does, rather than taking the recipe's silent progress=False.
    import cnncodes._progress

    monkeypatch.setattr(cnncodes._progress, "LOG_INTERVAL", 0.0)
    paths, labels = data
    overrides = dict(FAST, cache_dir=str(tmp_path / "cache"), Cs=[1.0], batch_size=4)
    result = run_experiment(paths, labels, overrides=overrides, cv=2, progress=None)
    warm = capsys.readouterr().err.split("grid search")[0].splitlines()
    assert [_counts(line) for line in warm] == [
        f"extracting: {n}/16 images" for n in (4, 8, 12)
    ] + ["extracting: 16/16 images in"]
    assert result.estimator.steps[0][1].progress is False


def test_the_test_images_extraction_shows_progress_and_the_model_keeps_none(data, tmp_path, capsys):
    paths, labels = data
    test_paths, test_labels = write_classes(str(tmp_path / "test"), per_class=3, seed=1)
    overrides = dict(FAST, cache_dir=str(tmp_path / "cache"), Cs=[1.0])
    result = run_experiment(
        paths, labels, overrides=overrides, cv=2, progress=True, test=(test_paths, test_labels)
    )
    assert "extracting" in capsys.readouterr().err.split("grid search")[-1]  # after the search
    assert result.estimator.steps[0][1].progress is False


def test_test_images_that_are_training_images_are_reported(data, tmp_path):
    paths, labels = data
    from cnncodes.datasets import DatasetWarning

    overrides = dict(FAST, cache_dir=str(tmp_path / "cache"), Cs=[1.0])
    with pytest.warns(DatasetWarning, match="3 test image.s. are also training images"):
        result = run_experiment(
            paths, labels, "linear_probe", overrides=overrides, cv=2,
            test=(paths[:3], labels[:3]),
        )  # fmt: skip
    assert result.metrics["test"]["overlap_with_training"] == 3
    duplicates = {"test_in_train": 3, "within_train": 0}
    assert result.metrics["duplicates"] == result.config["duplicates"] == duplicates


def test_repeated_training_images_are_counted_by_content(data, tmp_path):
    import shutil

    paths, labels = data
    copy = os.path.join(os.path.dirname(paths[0]), "copy.png")
    shutil.copy(paths[0], copy)
    notes = []
    overrides = dict(FAST, cache_dir=str(tmp_path / "cache"), Cs=[1.0])
    result = run_experiment(
        [*paths, copy], [*labels, labels[0]], "linear_probe", overrides=overrides, cv=2,
        log=notes.append,
    )  # fmt: skip
    assert result.metrics["duplicates"] == {"test_in_train": None, "within_train": 1}
    assert any("1 training image(s) repeat" in n for n in notes), notes


def test_relocate_weights_needs_a_checkpoint_model(data, tmp_path):
    from cnncodes.experiment import relocate_weights

    paths, labels = data
    overrides = dict(FAST, cache_dir=None, Cs=[1.0])
    model = run_experiment(paths, labels, "linear_probe", overrides=overrides, cv=2).estimator
    with pytest.raises(ValueError, match="not a checkpoint file, so there is no file to relocate"):
        relocate_weights(model, tmp_path / "x.pth")


def test_set_runtime_changes_only_what_leaves_the_codes_alone():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from cnncodes.experiment import set_runtime
    from cnncodes.transformers import CNNCodes

    pipe = Pipeline(
        [("cnncodes", CNNCodes("resnet18", weights="none")), ("clf", LogisticRegression())]
    )
    assert set_runtime(pipe, batch_size=7, device="cpu", cache_dir=None) is pipe
    params = pipe.get_params()
    assert (params["cnncodes__batch_size"], params["cnncodes__device"]) == (7, "cpu")
    with pytest.raises(ValueError, match=r"set_runtime: 'layer' would change the model's codes"):
        set_runtime(pipe, layer="avgpool", batch_size=8)
    assert pipe.get_params()["cnncodes__batch_size"] == 7
