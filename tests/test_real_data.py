"""The recipes on real weights and real images from ../shared/assets (skipped when absent)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from cnncodes.search import warm_cache
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV

import pipelines
from pipelines import layer_sweep_svm

ASSETS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "assets"
)
MOBILENET = os.path.join(ASSETS, "weights", "mobilenet_v2_imagenet.pth")
HYMENOPTERA = os.path.join(ASSETS, "data", "hymenoptera")
SIGNS = os.path.join(ASSETS, "data", "sign_language_digits")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (os.path.isfile(MOBILENET) and os.path.isdir(HYMENOPTERA) and os.path.isdir(SIGNS)),
        reason=f"real weights and data not found under {os.path.normpath(ASSETS)}",
    ),
]


def class_folders(root):
    """Paths and labels of a ``root/<class>/<image>`` tree, sorted."""
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    paths, labels = [], []
    for name in classes:
        for file in sorted(os.listdir(os.path.join(root, name))):
            paths.append(os.path.join(root, name, file))
            labels.append(name)
    return paths, np.array(labels)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("real-codes"))


def test_hymenoptera_linear_probe_on_mobilenet_codes(cache_dir):
    X_train, y_train = class_folders(os.path.join(HYMENOPTERA, "train"))
    X_val, y_val = class_folders(os.path.join(HYMENOPTERA, "val"))
    assert len(X_train) == 245 and len(X_val) == 153
    # The original network was trained on (x - 128) / 128: mean = std = 0.5.
    pipe, grid = pipelines.get("linear_probe").build(
        model="mobilenet_v2",
        weights=MOBILENET,
        mean=0.5,
        std=0.5,
        cache_dir=cache_dir,
        num_workers=2,
    )
    search = GridSearchCV(pipe, grid, cv=pipelines.make_cv(y_train))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # large C on separable codes
        search.fit(X_train, y_train)
    accuracy = float(np.mean(search.predict(X_val) == y_val))
    print(
        f"hymenoptera: best C {search.best_params_['clf__C']:g}, CV {search.best_score_:.3f}, "
        f"val accuracy {accuracy:.3f}"
    )
    assert accuracy >= 0.90


def test_sign_language_layer_sweep(cache_dir):
    paths, labels = class_folders(SIGNS)
    rng = np.random.default_rng(0)
    keep = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), 30, replace=False) for c in np.unique(labels)]
    )
    X, y = [paths[i] for i in keep], labels[keep]
    layers = layer_sweep_svm.default_layers("mobilenet_v2")
    # 112 px (the images are 100 px): a quarter of the 224 px cost, and every layer still has
    # a spatial map (features.18 is 1280 x 4 x 4).
    pipe, grid = layer_sweep_svm.build(
        model="mobilenet_v2",
        weights=MOBILENET,
        mean=0.5,
        std=0.5,
        resize=112,
        crop=112,
        cache_dir=cache_dir,
        num_workers=2,
        layers=layers,
        poolings=["avg"],
        Cs=[0.1, 1.0, 10.0, 100.0],
        gammas=["scale", 1.0],
    )
    search = GridSearchCV(pipe, grid, cv=pipelines.make_cv(y))
    warmed = warm_cache(search, X)  # one forward pass gives all four layers
    assert warmed["runs"] == 1 and warmed["configurations"] == 4
    assert warmed["computed"] + warmed["cached"] == len(set(X)) and not warmed["skipped"]
    search.fit(X, y)
    table = layer_sweep_svm.layer_table(search)
    print("\n" + table.to_string(index=False))
    assert list(table["layer"]) == layers
    assert table["mean_test_score"].between(0.0, 1.0).all()
    assert table["best"].sum() == 1
    best = table.loc[table["best"]].iloc[0]
    assert best["layer"] in layers and best["layer"] == search.best_params_["cnncodes__layer"]
    assert best["mean_test_score"] == pytest.approx(search.best_score_)
    assert search.best_score_ > 0.3  # ten classes: chance is 0.1


def test_fit_and_predict_commands_on_hymenoptera(cache_dir, tmp_path, capsys):
    """The command line end to end on real photos: fit on train, evaluate on val, predict val."""
    import json

    import pandas as pd

    from cnncodes import cli

    model_file, report = tmp_path / "model.skops", tmp_path / "report"
    common = ["--mean", "0.5", "--std", "0.5", "--cache-dir", cache_dir, "--num-workers", "2"]
    code = cli.main(
        [
            "fit", os.path.join(HYMENOPTERA, "train"), "--pipeline", "linear_probe",
            "--model", "mobilenet_v2", "--weights", MOBILENET, *common,
            "--test", os.path.join(HYMENOPTERA, "val"),
            "--out", str(model_file), "--report", str(report), "--json",
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    test = result["metrics"]["test"]
    assert test["n"] == 153 and test["accuracy"] >= 0.90
    assert set(test["per_class"]) == {"ants", "bees"}
    config = json.loads((report / "config.json").read_text())
    assert config["extractor"]["weights_id"].startswith("sha256:")

    predictions = tmp_path / "val.csv"
    code = cli.main(
        [
            "predict", str(model_file), os.path.join(HYMENOPTERA, "val"), "--proba",
            "--out", str(predictions), "--cache-dir", cache_dir, "--json",
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table = pd.read_csv(predictions)
    assert len(table) == 153
    accuracy = float((table["label"] == table["true_label"]).mean())
    assert accuracy == pytest.approx(test["accuracy"])  # the saved model is the evaluated one
    assert json.loads(captured.out)["accuracy"]["accuracy"] == pytest.approx(accuracy)
    print(f"fit: val accuracy {test['accuracy']:.3f}, balanced {test['balanced_accuracy']:.3f}")


def test_advise_on_real_photos_names_a_scenario_and_a_runnable_command(cache_dir, capsys):
    import json
    import shlex

    from cnncodes import cli

    data = os.path.join(HYMENOPTERA, "train")
    code = cli.main(
        ["advise", data, "--model", "mobilenet_v2", "--weights", MOBILENET, "--mean", "0.5",
         "--std", "0.5", "--per-class", "10", "--cache-dir", cache_dir, "--json"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    advice = json.loads(captured.out)
    print(f"advise hymenoptera: scenario {advice['scenario']}, reasons {advice['reasons']}")
    assert advice["scenario"] in (1, 2, 3, 4) and advice["small"] is True
    argv = shlex.split(advice["command"])
    assert argv[:3] == ["cnncodes", "fit", data]
    # The preprocessing the measurement used is part of the command it suggests.
    assert argv[argv.index("--mean") + 1] == "0.5" and argv[argv.index("--std") + 1] == "0.5"
    assert cli.build_parser().parse_args(argv[1:]).weights == MOBILENET
