"""Fine-tuning next to codes: the fine-tuning recipes through run_experiment and ``cnncodes fit``
(cnncodes._finetune_runs), and ``compare_approaches`` / ``cnncodes compare`` (cnncodes.compare)."""

from __future__ import annotations

import json

import pytest

from cnncodes.experiment import run_experiment
from cnncodes.report import write_report
from tests.test_cli import assert_one_line_error, run
from tests.test_experiment import write_classes

FAST = {
    "model": "cnncodes.demo_data:digits_net",
    "weights": "none",
    "resize": 32,
    "crop": 32,
    "mean": 0.5,
    "std": 0.5,
    "num_workers": 0,
}
CLI_MODEL = [
    "--model", "cnncodes.demo_data:digits_net", "--weights", "none",
    "--resize", "32", "--crop", "32", "--mean", "0.5", "--std", "0.5", "--workers", "0",
]  # fmt: skip


@pytest.fixture
def data(tmp_path):
    return write_classes(str(tmp_path / "photos"))


# ----------------------------------------------------------------------------- fit a FineTune


def test_finetune_head_runs_through_run_experiment_on_cached_codes(data, tmp_path, forward_counter):
    from cnncodes import FineTune

    paths, labels = data
    overrides = dict(FAST, cache_dir=str(tmp_path / "cache"), epochs=1, lrs=[1e-2, 1e-1])
    result = run_experiment(paths, labels, "finetune_head", overrides=overrides, test_size=0.25)
    # The head layer's codes of the 12 training images, once; every fold and candidate read them.
    assert forward_counter.images == 12
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
    assert forward_counter.images == 12
    assert (again.extraction["computed"], again.extraction["cached"]) == (0, 12)


def test_unreadable_images_with_a_finetune_recipe(data, tmp_path):
    paths, labels = data
    bad = tmp_path / "photos" / "dark" / "broken.png"
    bad.write_bytes(b"not an image")
    paths, labels = [*paths, str(bad)], [*labels, "dark"]
    overrides = dict(FAST, cache_dir=str(tmp_path / "cache"), epochs=1, lrs=[1e-2])
    with pytest.raises(Exception, match="broken.png"):
        run_experiment(paths, labels, "finetune_head", overrides=overrides, cv=2)
    result = run_experiment(
        paths, labels, "finetune_head", overrides=overrides, cv=2, on_error="skip"
    )
    assert [s.path for s in result.skipped["train"]] == [str(bad)]
    assert result.config["train"]["n_images"] == 16


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
