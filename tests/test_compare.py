"""Fine-tuning next to codes: the fine-tuning recipes through run_experiment and ``cnncodes fit``
(cnncodes.estimators.steps), and ``compare_approaches`` / ``cnncodes compare`` (cnncodes.compare)."""

from __future__ import annotations

import json

import pytest
from cnncodes.experiment import run_experiment
from cnncodes.report import write_report

from tests.conftest import write_classes
from tests.test_cli import assert_one_line_error, run
from tests.test_experiment import FAST

CLI_MODEL = [
    "--model", "cnncodes.demo_data:digits_net", "--weights", "none",
    "--resize", "32", "--crop", "32", "--mean", "0.5", "--std", "0.5", "--num-workers", "0",
]  # fmt: skip


# ----------------------------------------------------------------------------- fit a FineTune


def test_finetune_head_runs_through_run_experiment_on_cached_codes(data, tmp_path, forward_counter):
    from cnncodes import FineTune

    paths, labels = data
    overrides = dict(FAST, cache_dir=str(tmp_path / "cache"), epochs=1, lrs=[1e-2, 1e-1])
    result = run_experiment(paths, labels, "finetune_head", overrides=overrides, test_size=0.25)
    # The head layer's codes of the 12 training images, once; every fold and candidate read them
    # (predictions too); the 4 test images' codes are computed for the score, and cached.
    assert forward_counter.images == 16
    assert (result.extraction["computed"], result.extraction["cached"]) == (12, 0)
    assert isinstance(result.estimator, FineTune) and result.estimator.trunk_cached_
    assert result.estimator.epochs == 1 and result.estimator.freeze == "all"
    assert result.metrics["cv"]["n_candidates"] == 2
    assert set(result.metrics["best_params"]) == {"lr"}
    assert list(result.table.columns) == ["rank", "lr", "mean", "std", "fit_seconds"]
    assert result.metrics["test"]["n"] == 4
    assert result.config["extractor"]["model"] == FAST["model"]
    assert result.config["layers"] == ["flatten"]
    assert result.config["layer"] == {"mode": "concat", "candidates": ["penultimate"]}
    written = write_report(result, tmp_path / "report")
    assert {"metrics.json", "cv_results.csv", "confusion_matrix.png", "config.json"} <= set(written)

    again = run_experiment(paths, labels, "finetune_head", overrides=overrides, test_size=0.25)
    assert forward_counter.images == 16
    assert (again.extraction["computed"], again.extraction["cached"]) == (0, 12)


def test_finetune_top_sweeps_learning_rate_and_freeze_depth(data, tmp_path):
    paths, labels = data
    overrides = dict(FAST, cache_dir=str(tmp_path / "cache"), epochs=1)
    result = run_experiment(paths, labels, "finetune_top", overrides=overrides, cv=2)
    assert result.config["param_grid"] == {
        "lr": [1e-3, 1e-2],
        "freeze": ["features.7", "features.8"],
    }
    assert set(result.table["freeze"]) == {"features.7", "features.8"}
    assert result.estimator.init_head == "probe" and result.metrics["test"] is None
    assert result.metrics["cv"]["predictions"]["n"] == 16  # no test set: cross-validated


def test_cli_fit_with_finetune_head_saves_a_model_that_predicts(capsys, tmp_path):
    write_classes(str(tmp_path / "photos"))
    code, out, err = run(
        capsys, "fit", tmp_path / "photos", "--pipeline", "finetune_head", *CLI_MODEL,
        "--test-size", "0.25", "--cv", "2", "--cache-dir", tmp_path / "cache",
        "--out", tmp_path / "ft.skops", "--report", tmp_path / "report", "--json",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["recipe"] == "finetune_head"
    assert summary["metrics"]["test"]["n"] == 4
    assert [c["lr"] for c in summary["candidates"]] and (tmp_path / "ft.skops").is_file()
    config = json.loads((tmp_path / "report" / "config.json").read_text())
    assert config["recipe"] == "finetune_head" and config["layers"] == ["flatten"]


def test_cli_fit_with_an_option_a_finetune_recipe_does_not_take(capsys, tmp_path):
    write_classes(str(tmp_path / "photos"))
    code, out, err = run(
        capsys, "fit", tmp_path / "photos", "--pipeline", "finetune_head", *CLI_MODEL,
        "--impl", "torch", "--cache-dir", tmp_path / "cache",
    )  # fmt: skip
    assert code == 2 and out == ""
    assert_one_line_error(err, "finetune_head.build() got unknown option(s) 'impl'")


# ----------------------------------------------------------------------------- compare

SMALL_GRIDS = {
    "linear_probe": {"Cs": [1.0]},
    "layer_sweep_svm": {"Cs": [1.0], "kernels": ["linear"], "poolings": ["avg"]},
}


def test_compare_fits_four_approaches_on_one_split(data, tmp_path):
    from cnncodes.compare import APPROACHES, compare_approaches

    paths, labels = data
    network = {k: FAST[k] for k in ("resize", "crop", "mean", "std")}
    result = compare_approaches(
        paths, labels, model=FAST["model"], weights="none", preprocessing=network,
        test_size=0.25, epochs=1, cv=2, recipe_options=SMALL_GRIDS,
        cache_dir=str(tmp_path / "cache"), num_workers=0,
    )  # fmt: skip
    rows = result.rows
    assert [r["approach"] for r in rows] == [name for name, _ in APPROACHES]
    assert (result.n_train, result.n_test) == (12, 4)
    # Every row trained on the same images and was tested on the same images.
    assert len({r["train_sha256"] for r in rows}) == 1
    assert len({r["test_sha256"] for r in rows}) == 1
    assert all(r["metrics"]["n"] == 4 and 0 <= r["accuracy"] <= 1 for r in rows)
    probe, svm, top, everything = rows
    assert probe["settings"]["layers"] == ["flatten"] and probe["epochs"] is None
    assert svm["settings"]["layer"] in result.config["sweep_layers"]
    assert probe["images_per_second"] == pytest.approx(12 / probe["seconds"])
    # The top-blocks row is frozen at finetune_top's first default depth, with an LP-FT head.
    assert (top["settings"]["freeze"], top["settings"]["init_head"]) == ("features.7", "probe")
    assert everything["settings"]["freeze"] == "none"
    for row in (top, everything):
        assert row["epochs"] == 1
        assert row["images_per_second"] == pytest.approx(12 * 1 / row["seconds"])
    table = result.table()
    assert list(table["approach"]) == [r["approach"] for r in rows] and "metrics" not in table


def test_compare_skips_rows_and_gives_no_speed_for_cached_codes(data, tmp_path):
    from cnncodes.compare import APPROACHES, compare_approaches

    paths, labels = data
    network = {k: FAST[k] for k in ("resize", "crop", "mean", "std")}
    kwargs = dict(
        model=FAST["model"], weights="none", preprocessing=network, test_size=0.25, cv=2,
        recipe_options=SMALL_GRIDS, cache_dir=str(tmp_path / "cache"), num_workers=0,
        skip=["finetune_top", "finetune_all"],
    )  # fmt: skip
    first = compare_approaches(paths, labels, **kwargs)
    assert [r["approach"] for r in first.rows] == ["linear_probe", "layer_sweep_svm"]
    assert first.config["skip"] == ["finetune_top", "finetune_all"]
    probe = first.rows[0]
    assert probe["network_images"] == 12
    assert probe["images_per_second"] == pytest.approx(12 / probe["seconds"])
    # Every code in the cache now: no image computed, so no images/s.
    again = compare_approaches(paths, labels, **kwargs)
    assert [r["network_images"] for r in again.rows] == [0, 0]
    assert [r["images_per_second"] for r in again.rows] == [None, None]
    with pytest.raises(ValueError, match=r"skip='finetune': not a row; the rows: linear_probe, "):
        compare_approaches(paths, labels, **{**kwargs, "skip": ["finetune"]})
    with pytest.raises(ValueError, match="every row skipped"):
        compare_approaches(paths, labels, **{**kwargs, "skip": [n for n, _ in APPROACHES]})


def test_cli_compare_skip_and_cached_rows(capsys, tmp_path):
    write_classes(str(tmp_path / "photos"))
    argv = [
        "compare", tmp_path / "photos", *CLI_MODEL, "--test-size", "0.25", "--cv", "2",
        "--cache-dir", tmp_path / "cache", "--skip", "finetune_all", "--skip", "finetune_top",
        "--skip", "layer_sweep_svm",
    ]  # fmt: skip
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[3:]] == ["linear_probe"]
    assert lines[3].split()[4] != "cached"
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert out.splitlines()[3].split()[4] == "cached"
    code, out, err = run(capsys, *argv[:-1], "svm")
    assert code == 2 and out == ""
    assert_one_line_error(
        err, "--skip: 'svm': not a row", "linear_probe, layer_sweep_svm, finetune_top"
    )


def test_compare_needs_one_held_out_set_and_a_positive_epoch_count(data):
    from cnncodes.compare import compare_approaches

    paths, labels = data
    with pytest.raises(ValueError, match="give test=.*or test_size"):
        compare_approaches(paths, labels, model=FAST["model"])
    with pytest.raises(ValueError, match="epochs=0: expected an int >= 1"):
        compare_approaches(paths, labels, model=FAST["model"], test_size=0.25, epochs=0)
    with pytest.raises(TypeError, match=r"unknown argument\(s\) 'workers'"):
        compare_approaches(paths, labels, model=FAST["model"], test_size=0.25, workers=0)


def test_cli_compare_json_and_report(capsys, tmp_path):
    write_classes(str(tmp_path / "photos"))
    write_classes(str(tmp_path / "test"), per_class=3, seed=1)
    report = tmp_path / "report"
    code, out, err = run(
        capsys, "compare", tmp_path / "photos", *CLI_MODEL, "--test", tmp_path / "test",
        "--epochs", "1", "--cv", "2", "--freeze", "features.8",
        "--cache-dir", tmp_path / "cache", "--report", report, "--json",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert {"command", "data", "rows", "split", "n_train", "n_test", "report"} <= set(summary)
    assert (summary["n_train"], summary["n_test"], summary["split"]) == (16, 6, {"test": "given"})
    row_keys = {"approach", "accuracy", "seconds", "images_per_second", "epochs", "settings"}
    assert all(row_keys <= set(row) for row in summary["rows"])
    assert summary["rows"][2]["settings"]["freeze"] == "features.8"
    assert set(summary["report"]) == {"compare.json", "compare.png"}
    assert (report / "compare.png").stat().st_size > 0
    assert json.loads((report / "compare.json").read_text())["rows"][0]["approach"] == (
        "linear_probe"
    )


def test_cli_compare_prints_a_table(capsys, tmp_path):
    write_classes(str(tmp_path / "photos"))
    code, out, err = run(
        capsys, "compare", tmp_path / "photos", *CLI_MODEL, "--test-size", "0.25",
        "--epochs", "1", "--cv", "2", "--cache-dir", tmp_path / "cache",
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("12 training images, test: 0.25 of DATA held out (4 images)")
    assert lines[1].split() == [
        "approach", "accuracy", "balanced", "seconds", "images/s", "network", "settings"
    ]  # fmt: skip
    assert [line.split()[0] for line in lines[3:7]] == [
        "linear_probe", "layer_sweep_svm", "finetune_top", "finetune_all"
    ]  # fmt: skip


def test_cli_compare_keeps_the_other_rows_when_one_fails(capsys, monkeypatch, tmp_path):
    from cnncodes.finetune import FineTuneError

    from cnncodes import FineTune

    real_fit = FineTune.fit

    def fit(self, X, y):
        if self.freeze == "none":
            raise FineTuneError("loss became nan in epoch 1 (learning rate 0.001)")
        return real_fit(self, X, y)

    monkeypatch.setattr(FineTune, "fit", fit)
    write_classes(str(tmp_path / "photos"))
    code, out, err = run(
        capsys, "compare", tmp_path / "photos", *CLI_MODEL, "--test-size", "0.25",
        "--epochs", "1", "--cv", "2", "--cache-dir", tmp_path / "cache",
        "--report", tmp_path / "report", "--json",
    )  # fmt: skip
    assert code == 1
    rows = json.loads(out)["rows"]
    assert [r["accuracy"] is None for r in rows] == [False, False, False, True]
    assert rows[3]["error"] == "FineTuneError: loss became nan in epoch 1 (learning rate 0.001)"
    assert "cnncodes: warning: finetune_all failed" in err
    assert (tmp_path / "report" / "compare.png").is_file()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--freeze", "features.77", "--test-size", "0.25"], "freeze='features.77' is not a node"),
        (["--freeze", "features.77", "--test-size", "0.25"], "Closest: features.7"),
        (["--layer", "featurs.3", "--test-size", "0.25"], "featurs.3"),
        ([], "one of the arguments --test --test-size is required"),
        (["--test-size", "0.25", "--epochs", "0"], "argument --epochs: '0': expected a positive"),
        (["--test-size", "0.25", "--lr", "-1"], "argument --lr: '-1': expected a positive"),
        (["--test-size", "0.25", "--impl", "torch"], "--impl torch: fine-tuning decodes"),
    ],
)
def test_cli_compare_bad_inputs_exit_2_before_any_work(capsys, tmp_path, args, fragment):
    write_classes(str(tmp_path / "photos"))
    cache = tmp_path / "cache"
    code, out, err = run(
        capsys, "compare", tmp_path / "photos", *CLI_MODEL, *args, "--cache-dir", cache
    )
    assert code == 2 and out == ""
    assert_one_line_error(err, fragment)
    assert not cache.exists()  # refused before any network ran


# ----------------------------------------------------------------------------- advise 2 and 4

ADVISE_MODEL = ["--model", "cnncodes.demo_data:digits_net"]


@pytest.fixture
def advise_data(tmp_path, make_images):
    root = tmp_path / "my photos"  # a space: the commands must quote it
    make_images(3, folder=root / "ants", seed=1)
    make_images(3, folder=root / "bees", seed=2)
    return root


def _option(argv, name):
    return argv[argv.index(name) + 1]


def test_advise_scenario_4_names_finetune_and_compare(capsys, monkeypatch, advise_data, tmp_path):
    import shlex

    from cnncodes import advise, cli

    monkeypatch.setattr(advise, "SMALL_PER_CLASS", 3)  # 3 images per class count as large
    code, out, err = run(
        capsys, "advise", advise_data, *ADVISE_MODEL, "--weights", "none",
        "--cache-dir", tmp_path / "cache", "--json",
    )  # fmt: skip
    assert code == 0, err
    advice = json.loads(out)
    assert (advice["scenario"], advice["recipe"], advice["small"]) == (4, None, False)
    assert "large means a median of 3 or more images per class" in advice["reasons"][0]
    argv = shlex.split(advice["command"])
    assert argv[:3] == ["cnncodes", "finetune", str(advise_data)]
    assert _option(argv, "--freeze") == "none" and _option(argv, "--model") == ADVISE_MODEL[1]
    assert {"--epochs", "--test-size", "--out", "--report"} <= set(argv)
    compare = shlex.split(advice["compare_command"])
    assert compare[:3] == ["cnncodes", "compare", str(advise_data)]
    parsed = cli.build_parser().parse_args(compare[1:])  # the command parses as written
    assert (parsed.model, parsed.weights, parsed.test_size) == (ADVISE_MODEL[1], "none", 0.1)
    assert shlex.split(advice["baseline_command"])[1:5] == [
        "fit", str(advise_data), "--pipeline", "layer_sweep_svm"
    ]  # fmt: skip
    assert any("`cnncodes compare` measures" in r for r in advice["reasons"])

    code, out, err = run(
        capsys, "advise", advise_data, *ADVISE_MODEL, "--weights", "none",
        "--cache-dir", tmp_path / "cache",
    )  # fmt: skip
    lines = out.splitlines()
    assert lines[0] == "scenario 4: fine-tuning (cnncodes finetune)"
    assert [line.split(":")[0] for line in lines[-3:]] == ["compare", "baseline", "run"]
    assert lines[-1].startswith("run: cnncodes finetune ")


def test_advise_scenario_2_fine_tunes_the_top_blocks(monkeypatch, advise_data, tmp_path):
    import shlex

    import torch
    from cnncodes.datasets import load_dataset
    from cnncodes.demo_data import digits_net

    from cnncodes import advise

    weights = tmp_path / "net.pth"
    torch.save(digits_net().state_dict(), weights)
    monkeypatch.setattr(advise, "SMALL_PER_CLASS", 3)
    # Similar data: the top layer scores as well as the earlier one (no classifier to ask).
    monkeypatch.setattr(advise, "_cv_score", lambda codes, labels, seed: 0.9)
    monkeypatch.setattr(advise, "_head_layer", lambda spec: None)
    data = load_dataset(advise_data)
    advice = advise.advise(
        data.paths, data.labels, model=ADVISE_MODEL[1], weights=str(weights),
        data_label=str(advise_data), cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    assert (advice.scenario, advice.recipe) == (2, None)
    argv = shlex.split(advice.command)
    assert argv[1] == "finetune" and _option(argv, "--weights") == str(weights)
    # The finetune_top recipe's first depth: the blocks after it train.
    assert _option(argv, "--freeze") == "features.7"
    assert _option(shlex.split(advice.compare_command), "--freeze") == "features.7"
    assert "linear_probe" in advice.baseline_command
