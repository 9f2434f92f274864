"""Tests for `cnncodes fit` and `cnncodes predict`, run in-process through ``main([...])``."""

from __future__ import annotations

import hashlib
import json
import os

import pandas as pd
import pytest
import torch

from cnncodes.utils.files import display
from tests.conftest import write_classes
from tests.test_cli import assert_one_line_error, run

MODEL = [
    "--model", "cnncodes.demo_data:digits_net",
    "--resize", "32", "--crop", "32", "--mean", "0.5", "--std", "0.5",
    "--num-workers", "0",
]  # fmt: skip


@pytest.fixture
def weights(tmp_path):
    from cnncodes.demo_data import digits_net

    torch.manual_seed(3)
    path = tmp_path / "net.pth"
    torch.save(digits_net().state_dict(), path)
    return path


def fit(capsys, root, *extra):
    return run(capsys, "fit", root / "photos", *MODEL, "--cache-dir", root / "cache", *extra)


def test_help_has_examples(capsys):
    for command in ("fit", "predict"):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0
        assert "examples:" in out and f"cnncodes {command} " in out


def test_fit_then_predict(capsys, photos, weights):
    model = photos / "model.skops"
    report = photos / "report"
    code, out, err = run(
        capsys,
        "fit", photos / "photos", "--pipeline", "linear_probe", *MODEL, "--weights", weights,
        "--test", photos / "test", "--cv", "3", "--cache-dir", photos / "cache",
        "--out", model, "--report", report,
    )  # fmt: skip
    assert code == 0, err
    # The table of candidates, the best parameters, the held-out metrics per class.
    assert "linear_probe: 13 candidate(s) x 3 folds" in out
    assert "best: clf__C=" in out
    assert "test (" in out and "6 images): accuracy 1.000, balanced accuracy 1.000" in out
    assert "bright" in out and "precision" in out and "recall" in out
    assert "same content (SHA-256): 0 test image(s) also in training, 0 training image(s)" in out
    assert "16 images in" in err and "codes: 16 image codes computed, 0 from the cache" in err
    assert "codes: 6 test images, for the best candidate only" in err
    assert model.is_file()
    for name in ("metrics.json", "cv_results.csv", "confusion_matrix.png", "config.json"):
        assert (report / name).is_file(), name
    assert not (report / "layer_sweep.png").exists()  # not a layer sweep
    duplicates = {"test_in_train": 0, "within_train": 0}
    assert json.loads((report / "metrics.json").read_text())["duplicates"] == duplicates
    assert json.loads((report / "config.json").read_text())["duplicates"] == duplicates

    out_csv = photos / "predictions.csv"
    code, out, err = run(
        capsys, "predict", model, photos / "test", "--proba", "--out", out_csv,
        "--cache-dir", photos / "cache", "--num-workers", "0",
    )  # fmt: skip
    assert code == 0, err
    table = pd.read_csv(out_csv)
    assert len(table) == 6
    assert list(table.columns) == [
        "path", "label", "score", "score_kind", "true_label", "proba_bright", "proba_dark",
    ]  # fmt: skip
    assert (table["label"] == table["true_label"]).all()
    assert "accuracy on 6 labelled image(s): 1.000" in out

    # --proba without --out or --json: the probabilities are on the screen too.
    code, out, err = run(
        capsys, "predict", model, photos / "test", "--proba",
        "--cache-dir", photos / "cache", "--num-workers", "0",
    )  # fmt: skip
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("path"))
    assert header.split()[-2:] == ["p(bright)", "p(dark)"], header
    first = out.splitlines()[out.splitlines().index(header) + 2].split()
    assert abs(float(first[-2]) + float(first[-1]) - 1) < 2e-3, first
    assert "p(CLASS): the probability of each class" in out

    # Single files, JSON output.
    files = sorted(str(p) for p in (photos / "test" / "dark").iterdir())
    code, out, err = run(
        capsys, "predict", model, *files, "--json", "--cache-dir", photos / "cache",
        "--num-workers", "0",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert [r["path"] for r in data["predictions"]] == files
    assert {r["label"] for r in data["predictions"]} == {"dark"}
    assert data["accuracy"] is None and data["skipped"] == 0

    # The checkpoint changes after fitting: refused, naming the file and both SHA-256.
    before = hashlib.sha256(weights.read_bytes()).hexdigest()
    torch.save({k: v + 1 for k, v in torch.load(weights).items()}, weights)
    after = hashlib.sha256(weights.read_bytes()).hexdigest()
    code, out, err = run(capsys, "predict", model, photos / "test", "--cache-dir", photos / "cache")
    assert code == 2
    assert_one_line_error(err, str(weights), before, after)


def test_fit_json_and_a_layer_sweep_report(capsys, photos):
    code, out, err = fit(
        capsys, photos, "--pipeline", "layer_sweep_svm",
        "--layer", "features.3", "--layer", "flatten", "--pooling", "avg",
        "--test-size", "0.25", "--cv", "2", "--report", photos / "report", "--json",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert data["recipe"] == "layer_sweep_svm"
    assert [row["layer"] for row in data["layers"]] == ["features.3", "flatten"]
    assert data["layer"] == {"mode": "sweep", "candidates": ["features.3", "flatten"]}
    assert data["metrics"]["test"]["n"] == 4
    assert len(data["candidates"]) == data["metrics"]["cv"]["n_candidates"] == 2 * 7 * 5
    assert (photos / "report" / "layer_sweep.png").is_file()
    config = json.loads((photos / "report" / "config.json").read_text())
    assert config["split"] == {"test_size": 0.25, "seed": 0}


def test_fit_help_says_what_several_layers_mean_per_recipe(capsys):
    code, out, _ = run(capsys, "fit", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "swept, one candidate each, by layer_sweep_svm;" in text
    assert (
        "concatenated into one code by finetune_head, finetune_top, linear_probe, linear_svm, sgd"
        in text
    )
    assert "--layer-mode {sweep,concat}" in text


@pytest.mark.parametrize(
    "extra, line",
    [
        ([], "layer: penultimate"),
        (
            ["--layer", "features.3", "--layer", "flatten"],
            "codes: concatenation of features.3 + flatten "
            "(--layer-mode sweep: one candidate per layer)",
        ),
        (
            ["--layer", "features.3", "--layer", "flatten", "--layer-mode", "sweep"],
            "layers swept, one candidate each: features.3, flatten "
            "(--layer-mode concat: one code concatenating them)",
        ),
    ],
)
def test_fit_says_which_layers_it_used_and_how(capsys, photos, extra, line):
    code, out, err = fit(capsys, photos, "--pipeline", "sgd", "--cv", "2", *extra)
    assert code == 0, err
    assert line in out.splitlines()


def test_layer_mode_needs_layers(capsys, photos):
    code, out, err = fit(capsys, photos, "--layer-mode", "concat")
    assert code == 2
    assert_one_line_error(err, "--layer-mode concat", "give the layers", "--layer")


def test_fit_without_held_out_images_reports_cross_validated_predictions(capsys, photos):
    code, out, err = fit(capsys, photos, "--pipeline", "sgd", "--cv", "2")
    assert code == 0, err
    assert "no held-out images" in out and "cross-validated predictions: accuracy" in out


def test_fit_skips_unreadable_images_only_when_asked(capsys, photos):
    (photos / "photos" / "dark" / "broken.png").write_bytes(b"garbage")
    code, out, err = fit(capsys, photos, "--cv", "2")
    assert code == 2
    assert_one_line_error(err, "broken.png", "--on-error skip")
    code, out, err = run(
        capsys, "fit", photos / "photos", *MODEL, "--cache-dir", photos / "cache", "--cv", "2",
        "--on-error", "skip",
    )  # fmt: skip
    assert code == 0, err
    assert "skipped 1 unreadable image(s)" in err and "broken.png" in err


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--pipeline", "linear_prob"], ["unknown recipe 'linear_prob'", "Did you mean"]),
        (["--out", "model.pkl"], ["--out", "'.pkl'", ".joblib or .skops"]),
        (["--test-size", "1.5"], ["--test-size", "between 0 and 1"]),
        (["--test-size", "0.2", "--test", "x"], ["not allowed with argument"]),
        (["--layer", "no_such_layer"], ["no_such_layer"]),
        (["--pipeline", "linear_probe", "--cv", "0"], ["--cv", "an integer >= 2"]),
    ],
)
def test_fit_usage_errors(capsys, photos, argv, fragments):
    code, out, err = fit(capsys, photos, *argv)
    assert code == 2
    assert_one_line_error(err, *fragments)
    assert not (photos / "cache").exists()  # refused before any image went through a network


def test_fit_needs_labels(capsys, tmp_path, make_images):
    make_images(4, folder=tmp_path / "loose")
    code, out, err = run(capsys, "fit", tmp_path / "loose", *MODEL, "--no-cache")
    assert code == 2
    assert_one_line_error(err, "fit needs labelled images")


def test_predict_errors(capsys, photos, tmp_path):
    code, out, err = fit(capsys, photos, "--pipeline", "linear_svm", "--cv", "2",
                         "--out", photos / "svm.joblib")  # fmt: skip
    assert code == 0, err
    model = photos / "svm.joblib"
    common = ["--cache-dir", photos / "cache", "--num-workers", "0"]
    code, out, err = run(capsys, "predict", model, photos / "test", "--proba", *common)
    assert code == 2
    assert_one_line_error(err, "--proba", "LinearSVC", "no probabilities")

    broken = photos / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff")
    good = next((photos / "test" / "dark").iterdir())
    code, out, err = run(capsys, "predict", model, good, broken, *common)
    assert code == 2
    assert_one_line_error(err, "broken.jpg", "--on-error skip")
    code, out, err = run(
        capsys, "predict", model, good, broken, *common, "--on-error", "skip",
        "--out", photos / "p.csv",
    )  # fmt: skip
    assert code == 0, err
    table = pd.read_csv(photos / "p.csv")
    assert table["label"].isna().tolist() == [False, True]
    assert table["error"].isna().tolist() == [True, False]
    assert "skipped" in err and "broken.jpg" in err

    code, out, err = run(capsys, "predict", photos / "nothing.skops", good)
    assert code == 2
    assert_one_line_error(err, "model file not found", "nothing.skops")
    code, out, err = run(capsys, "predict", model, good, "--out", photos / "p.txt")
    assert code == 2
    assert_one_line_error(err, "--out", ".csv")


def test_predict_warns_about_classes_the_model_never_learned(capsys, photos):
    code, out, err = fit(capsys, photos, "--pipeline", "linear_svm", "--cv", "2",
                         "--out", photos / "svm.joblib")  # fmt: skip
    assert code == 0, err
    write_classes(str(photos / "other"), per_class=2, classes=("bright", "grey"))
    code, out, err = run(capsys, "predict", photos / "svm.joblib", photos / "other",
                         "--cache-dir", photos / "cache", "--num-workers", "0")  # fmt: skip
    assert code == 0, err
    assert "class(es) the model never learned: grey (it knows bright, dark)" in err


@pytest.mark.parametrize(
    "option, match",
    [
        (["--cv", "1"], "argument --cv: '1': expected an integer >= 2"),
        (["--n-jobs", "0"], "argument --n-jobs: '0': expected a positive integer, or -1"),
        (["--random-state", "-1"], "argument --random-state: '-1': expected an integer from 0"),
        (["--scoring", "acuracy"], "'acuracy' is not a scikit-learn scorer; did you mean accuracy"),
        (["--test-size", "0.9"], "test_size=0.9: leaves 1 training image(s) for 2 classes"),
    ],
)
def test_fit_options_are_checked_naming_the_option(capsys, photos, option, match):
    code, out, err = fit(capsys, photos, "--pipeline", "linear_svm", *option)
    assert code == 2
    assert match in err and "Traceback" not in err


def test_fit_on_a_single_class_names_the_problem(capsys, photos, tmp_path):
    write_classes(str(tmp_path / "one"), per_class=4, classes=("bright",))
    code, out, err = run(capsys, "fit", tmp_path / "one", *MODEL, "--cache-dir", tmp_path / "c")
    assert code == 2
    assert_one_line_error(err, "only the class 'bright'", "at least two classes")


def test_predict_with_a_checkpoint_that_moved(capsys, photos, weights, forward_counter):
    model = photos / "model.skops"
    code, out, err = run(
        capsys, "fit", photos / "photos", "--pipeline", "linear_probe", *MODEL,
        "--weights", weights, "--cv", "2", "--cache-dir", photos / "cache", "--out", model,
    )  # fmt: skip
    assert code == 0, err
    common = ["--cache-dir", photos / "cache", "--num-workers", "0", "--json"]
    code, out, err = run(capsys, "predict", model, photos / "photos", *common)
    assert code == 0, err
    expected = json.loads(out)["predictions"]

    moved = photos / "elsewhere" / "renamed.pth"
    moved.parent.mkdir()
    weights.rename(moved)
    code, out, err = run(capsys, "predict", model, photos / "photos", *common)
    assert code == 2
    assert_one_line_error(err, "weights file not found", "predict --weights PATH")
    forward_counter.images = 0
    code, out, err = run(capsys, "predict", model, photos / "photos", *common, "--weights", moved)
    assert code == 0, err
    assert json.loads(out)["predictions"] == expected
    assert forward_counter.images == 0  # same content, same cache key: every code is cached

    other = photos / "other.pth"
    torch.save({k: v + 1 for k, v in torch.load(moved).items()}, other)
    code, out, err = run(capsys, "predict", model, photos / "photos", *common, "--weights", other)
    assert code == 2
    assert_one_line_error(err, "is not the checkpoint this model was fitted with", "other.pth")


def test_a_model_on_your_own_code_predicts_with_trust_model_code(capsys, photos):
    own = ["--model", "tests.tiny_nets:tiny_cnn", *MODEL[2:]]
    model = photos / "own.skops"
    code, out, err = run(
        capsys, "fit", photos / "photos", "--pipeline", "linear_svm", *own, "--cv", "2",
        "--cache-dir", photos / "cache", "--out", model,
    )  # fmt: skip
    assert code == 0, err
    assert "predict with --trust-model-code tests.tiny_nets:tiny_cnn" in out
    common = [model, photos / "test", "--cache-dir", photos / "cache", "--num-workers", "0"]
    code, out, err = run(capsys, "predict", *common)
    assert code == 2
    assert_one_line_error(err, "tests.tiny_nets:tiny_cnn", "--trust-model-code")
    code, out, err = run(
        capsys, "predict", *common, "--trust-model-code", "tests.tiny_nets:tiny_cnn"
    )
    assert code == 0, err
    assert "accuracy on 6 labelled image(s)" in out


def test_fit_json_keeps_grid_values_numeric(capsys, photos):
    code, out, err = fit(capsys, photos, "--pipeline", "linear_svm", "--cv", "2", "--json")
    assert code == 0, err
    data = json.loads(out)
    best = data["metrics"]["best_params"]["clf__C"]
    assert isinstance(best, float) and not isinstance(best, bool)
    values = [row["C"] for row in data["candidates"]]
    assert all(isinstance(v, float) for v in values), values
    assert best in values


def test_fit_shows_the_preprocessing_a_checkpoint_carries(capsys, photos):
    from cnncodes.demo_data import digits_net

    torch.manual_seed(3)
    own = photos / "own.pth"
    entry = {"std": [0.25, 0.25, 0.25]}
    torch.save({"state_dict": digits_net().state_dict(), "preprocessing": entry}, own)
    code, out, err = run(
        capsys, "fit", photos / "photos", "--model", "cnncodes.demo_data:digits_net",
        "--weights", own, "--num-workers", "0", "--cache-dir", photos / "cache", "--cv", "2",
        "--pipeline", "linear_svm", "--json",
    )  # fmt: skip
    assert code == 0, err
    described = (
        "mean=(0.5, 0.5, 0.5) std=(0.25, 0.25, 0.25) resize=32 crop=32x32 interpolation=bilinear "
        "(from: model: mean, resize, crop; checkpoint: std; ImageNet default: interpolation)"
    )
    assert f"preprocessing: {described}" in err
    data = json.loads(out)
    assert data["preprocessing"]["std"] == [0.25] * 3
    assert data["preprocessing"]["source"]["std"] == "checkpoint"
    code, out, err = run(
        capsys, "fit", photos / "photos", "--model", "cnncodes.demo_data:digits_net",
        "--weights", own, "--num-workers", "0", "--cache-dir", photos / "cache", "--cv", "2",
        "--pipeline", "linear_svm",
    )  # fmt: skip
    assert code == 0, err
    assert f"preprocessing: {described}" in out


def test_fit_with_stacked_views_then_predict(capsys, photos, weights):
    model = photos / "views.skops"
    code, out, err = fit(
        capsys, photos, "--pipeline", "linear_probe", "--weights", weights, "--cv", "3",
        "--views", "flip", "--view-reduce", "stack", "--test", photos / "test", "--out", model,
    )  # fmt: skip
    assert code == 0, err
    # Every view of the 16 training images through the network once; the classifier in a
    # ViewStack, its C searched under the stack's name.
    assert "codes: 32 image codes computed, 0 from the cache" in err
    assert "best: views__estimator__clf__C=" in out
    assert "views: stack of center, flip" in out
    assert "6 images): accuracy 1.000" in out
    code, out, err = run(
        capsys, "predict", model, photos / "test", "--proba", "--json",
        "--cache-dir", photos / "cache", "--num-workers", "0",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["accuracy"]["accuracy"] == 1.0


def test_fit_searches_the_views_given_several_times(capsys, photos, weights):
    code, out, err = fit(
        capsys, photos, "--pipeline", "linear_probe", "--weights", weights, "--cv", "2",
        "--views", "center", "--views", "flip", "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert {row["views"] for row in result["candidates"]} == {"center", "flip"}
    # Each view through the network once, whatever the candidates and folds: the centre crop
    # of the set "flip" (centre and mirror) is the set "center"'s.
    assert "codes: 32 image codes computed, 16 from the cache over 2 passes" in err
    code, _, err = fit(
        capsys, photos, "--pipeline", "linear_svm", "--weights", weights,
        "--views", "center", "--views", "flip",
    )  # fmt: skip
    assert code == 2
    assert_one_line_error(
        err, "--views given 2 times: --pipeline linear_svm does not search over views"
    )


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--views", "eleven"], "--views='eleven': choose one of 'center', 'flip', 'five_crop'"),
        (["--views", "0"], "--views=0: a count of random resized crops must be between 1"),
        (["--view-reduce", "median"], "--view-reduce: invalid choice: 'median'"),
    ],
)
def test_fit_refuses_bad_views(capsys, photos, argv, fragment):
    code, _, err = fit(capsys, photos, *argv)
    assert code == 2
    assert_one_line_error(err, fragment)


def test_predict_a_folder_holding_a_file_name_that_is_not_utf8(capsys, photos):
    # Issue 23 (a): a name the OS gives as bytes that are not UTF-8 (os.fsdecode makes it a str
    # with surrogate escapes): predicted from its real path, shown and written as ``\xNN``.
    dark = photos / "test" / "dark"
    first = sorted(dark.iterdir())[0]
    odd = os.fsdecode(os.fsencode(dark) + b"/caf\xe9\xff.png")
    first.rename(odd)
    broken = os.fsdecode(os.fsencode(dark) + b"/bad\xe9.png")
    with open(broken, "wb") as f:
        f.write(b"not an image")
    shown, shown_broken = display(odd), display(broken)
    assert shown.endswith("/dark/caf\\xe9\\xff.png")
    code, out, err = fit(capsys, photos, "--pipeline", "linear_svm", "--cv", "2",
                         "--out", photos / "svm.joblib")  # fmt: skip
    assert code == 0, err
    common = [photos / "svm.joblib", photos / "test", "--cache-dir", photos / "cache",
              "--workers", "0", "--on-error", "skip"]  # fmt: skip

    code, out, err = run(capsys, "predict", *common, "--json")
    assert code == 0, err
    rows = {r["path"]: r for r in json.loads(out)["predictions"]}
    assert rows[shown]["label"] == "dark" and rows[shown]["true_label"] == "dark"
    assert rows[shown_broken]["label"] is None and rows[shown_broken]["error"]

    out_csv = photos / "p.csv"
    code, out, err = run(capsys, "predict", *common, "--out", out_csv)
    assert code == 0, err
    table = pd.read_csv(out_csv, encoding="utf-8")
    assert len(table) == 7 and shown in set(table["path"]) and shown_broken in set(table["path"])
    assert table.set_index("path").loc[shown, "label"] == "dark"
    assert shown in out and f"skipped {shown_broken}" in err

    code, out, err = run(capsys, "predict", *common)
    assert code == 0, err
    assert shown in out and "(skipped)" in out

    # The library keeps the path as the OS gives it: it opens the file.
    from cnncodes.estimators import persistence
    from cnncodes.estimators.fitted import predict_images

    model = persistence.load(photos / "svm.joblib")
    table = predict_images(model, [odd, broken], on_error="skip")
    assert list(table["path"]) == [odd, broken] and table["label"].tolist()[0] == "dark"
