"""Tests for cnncodes.experiment (the grid search + evaluation behind `cnncodes fit` / `predict`)
and cnncodes.report (the report folder)."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from cnncodes.experiment import run_experiment
from cnncodes.report import write_report
from PIL import Image

from cnncodes.images import ImageLoadError
from cnncodes.utils.jsonable import jsonable
from tests.conftest import write_classes

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
    # Two poolings from one pass: the training images go through the network once; the 6 test
    # images only for the refitted winner, once.
    assert forward_counter.images == len(paths) + len(test_paths)
    assert result.extraction["computed"] == len(paths)
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
    assert forward_counter.images == len(paths) + len(test_paths)
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
    # image once (the layers and poolings share a pass, flatten taking only avg), the test
    # images once.
    assert forward_counter.images == len(paths) + len(test_paths)
    assert any("temporary cache" in n for n in notes), notes
    assert result.extraction["computed"] == len(paths)
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
    from cnncodes.experiment import _apply_overrides

    from cnncodes import recipes

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


# A fine-tuning recipe takes its own path through run_experiment (cnncodes.estimators.steps).
@pytest.mark.parametrize(
    "recipe, settings",
    [("linear_probe", SMALL_C), ("finetune_head", {"epochs": 1, "lrs": [1e-2]})],
)
def test_unreadable_training_images_are_left_out_with_their_labels(
    data, tmp_path, recipe, settings
):
    paths, labels = data
    bad = tmp_path / "photos" / "dark" / "broken.png"
    bad.write_bytes(b"not an image")
    paths, labels = paths + [str(bad)], labels + ["dark"]
    overrides = dict(FAST, cache_dir=str(tmp_path / "cache"), **settings)
    with pytest.raises(ImageLoadError, match="broken.png"):
        run_experiment(paths, labels, recipe, overrides=overrides, cv=2)
    result = run_experiment(paths, labels, recipe, overrides=overrides, cv=2, on_error="skip")
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


@pytest.mark.parametrize("n_jobs", [2, -1])
def test_a_parallel_search_shows_the_same_progress_and_finds_the_same(
    data, tmp_path, capsys, n_jobs
):
    # Issue 21, item 2: --n-jobs 2 printed no progress at all. Its fits are counted in a tally
    # file, into the same "grid search: N/M fits" bar or lines.
    import joblib

    paths, labels = data
    overrides = dict(FAST, cache_dir=str(tmp_path / "cache"), **SMALL_C)
    sequential = run_experiment(paths, labels, overrides=overrides, cv=2, progress=False)
    capsys.readouterr()
    calls = []
    real = joblib.parallel_config

    def recording(*args, **kwargs):
        calls.append(kwargs.get("backend"))
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(joblib, "parallel_config", recording)
        parallel = run_experiment(
            paths, labels, overrides=overrides, cv=2, progress=True, n_jobs=n_jobs
        )
    err = capsys.readouterr().err
    assert "grid search: 6/6 fits in" in err  # 3 values of C x 2 folds
    assert calls == ["threading"]  # a CNNCodes pipeline only reads the warm cache: threads
    np.testing.assert_array_equal(
        parallel.search.cv_results_["mean_test_score"],
        sequential.search.cv_results_["mean_test_score"],
    )
    assert parallel.metrics["best_params"] == sequential.metrics["best_params"]


def test_the_tally_scorer_counts_in_a_file_from_any_process(tmp_path):
    import pickle

    from cnncodes.workflows.parallel import TallyScorer

    tally = str(tmp_path / "tally")
    scorer = pickle.loads(pickle.dumps(TallyScorer(_constant_score, tally)))
    assert [scorer(None, None, None) for _ in range(3)] == [0.5] * 3
    assert os.path.getsize(tally) == 3


def test_a_loky_worker_is_prepared_once_with_the_parents_digests(data, tmp_path):
    # Another network step than CNNCodes keeps loky's processes: each imports the step's
    # module, takes the parent's image digests (with their stamps) and freezes the collector.
    import gc

    from cnncodes.images.load import file_digests, known_digests
    from cnncodes.workflows.parallel import prepare_worker

    paths, _ = data
    digests = file_digests(paths[:3])
    entries = known_digests(paths[:3])
    assert [e[2] for e in entries] == digests and all(e[1][0] == e[0] for e in entries)
    try:
        prepare_worker(["cnncodes.estimators.codes"], entries)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def _constant_score(estimator, X, y):
    return 0.5


def test_the_default_progress_reaches_the_extraction_in_a_log(data, tmp_path, capsys, monkeypatch):
    # progress=None (what `cnncodes fit` passes): the warm pass reports in a log file as
    # extract_codes does, rather than taking the recipe's silent progress=False.
    import cnncodes.utils.progress

    monkeypatch.setattr(cnncodes.utils.progress, "LOG_INTERVAL", 0.0)
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


def test_names_moved_out_of_this_module_are_still_importable_from_it():
    import cnncodes.evaluation
    import cnncodes.experiment
    import cnncodes.fitted

    moved = {
        cnncodes.evaluation: ("classification_metrics", "cv_table", "layer_table"),
        cnncodes.fitted: (
            "RUNTIME_PARAMS", "predict_images", "relocate_weights", "set_runtime", "verify_model"
        ),
    }  # fmt: skip
    for module, names in moved.items():
        for name in names:
            assert getattr(cnncodes.experiment, name) is getattr(module, name), name
