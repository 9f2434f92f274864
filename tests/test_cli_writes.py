"""What the command line writes, when the disk is full or a run is killed (issue 23): every write
failure names its file and says why; free space is checked before the long part of a run; a
report folder is written as a whole; --cv lowered to the smallest class is said, not silent."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest

import cnncodes.utils.files
from tests.conftest import write_classes
from tests.test_cli import assert_one_line_error, run
from tests.test_cli_finetune import TINY

MODEL = [
    "--model", "cnncodes.demo_data:digits_net",
    "--resize", "32", "--crop", "32", "--mean", "0.5", "--std", "0.5",
    "--num-workers", "0",
]  # fmt: skip


def fit(capsys, root, *extra):
    return run(capsys, "fit", root / "photos", *MODEL, "--cache-dir", root / "cache", *extra)


@pytest.fixture
def disk_full_for(monkeypatch):
    """``disk_full_for(name)``: the atomic write of any file called ``name`` fails with ENOSPC
    (when its temporary file is synced, where a full disk shows), other writes go through."""
    real = cnncodes.utils.files.fsync_path
    names = []

    def fsync(path):
        if any(os.path.basename(path).startswith(f".{name}.tmp-") for name in names):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path)

    monkeypatch.setattr(cnncodes.utils.files, "fsync_path", fsync)
    return names


def assert_names_the_full_disk(err, path):
    assert_one_line_error(err, str(path), "disk is full", "ENOSPC")
    assert "bug" not in err


# ----------------------------------------------------------------------------- (a) full disk


def test_fit_report_on_a_full_disk_names_the_file(capsys, photos, disk_full_for):
    disk_full_for.append("config.json")
    report, model = photos / "report", photos / "model.skops"
    code, _, err = fit(capsys, photos, "--cv", "2", "--report", report, "--out", model)
    assert code == 1
    assert_names_the_full_disk(err, report / "config.json")
    assert model.is_file()  # written before the report
    # (c) the report is written as a whole: nothing of it where the full disk stopped it
    assert not report.exists()
    assert [n for n in os.listdir(photos) if n.startswith(".report")] == []


def test_fit_model_on_a_full_disk_names_the_file(capsys, photos, disk_full_for):
    disk_full_for.append("model.skops")
    model = photos / "model.skops"
    code, _, err = fit(capsys, photos, "--cv", "2", "--out", model)
    assert code == 1
    assert_names_the_full_disk(err, model)
    assert not model.exists()


def test_extract_out_on_a_full_disk_names_the_file(capsys, photos, disk_full_for):
    disk_full_for.append("codes.h5")
    out = photos / "codes.h5"
    code, _, err = run(
        capsys, "extract", photos / "photos", *MODEL, "--cache-dir", photos / "cache", "--out", out
    )
    assert code == 1
    assert_names_the_full_disk(err, out)


def test_finetune_checkpoint_and_report_on_a_full_disk_name_the_file(capsys, photos, disk_full_for):
    disk_full_for.append("net.pth")
    checkpoint = photos / "net.pth"
    code, _, err = run(
        capsys, "finetune", photos / "photos", *TINY, "--cache-dir", photos / "cache",
        "--epochs", "1", "--save-checkpoint", checkpoint,
    )  # fmt: skip
    assert code == 1
    assert_names_the_full_disk(err, checkpoint)

    disk_full_for.append("metrics.json")
    report = photos / "report"
    code, _, err = run(
        capsys, "finetune", photos / "photos", *TINY, "--cache-dir", photos / "cache",
        "--epochs", "1", "--report", report,
    )  # fmt: skip
    assert code == 1
    assert_names_the_full_disk(err, report / "metrics.json")
    # The per-epoch state stays (the run can be resumed), and no half report beside it.
    assert sorted(os.listdir(report)) == ["finetune.state"]


def _nearly_full(monkeypatch):
    real = shutil.disk_usage

    def usage(path):
        total, used, _ = real(path)
        return type(real(path))(total, used, 1 << 20)  # 1 MiB free

    monkeypatch.setattr(shutil, "disk_usage", usage)


@pytest.mark.parametrize("option", ["--report", "--out"])
def test_fit_checks_free_space_before_the_search(capsys, monkeypatch, photos, option):
    import cnncodes.workflows.experiment

    def no_search(*args, **kwargs):
        raise AssertionError("the search ran")

    monkeypatch.setattr(cnncodes.workflows.experiment, "run_experiment", no_search)
    _nearly_full(monkeypatch)
    target = photos / ("report" if option == "--report" else "model.skops")
    code, _, err = fit(capsys, photos, option, target)
    assert code == 2
    assert_one_line_error(err, option, str(photos), "1.0 MiB free")


def test_finetune_checks_free_space_before_training(capsys, monkeypatch, photos):
    _nearly_full(monkeypatch)
    code, _, err = run(
        capsys, "finetune", photos / "photos", *TINY, "--cache-dir", photos / "cache",
        "--save-checkpoint", photos / "net.pth",
    )  # fmt: skip
    assert code == 2
    assert_one_line_error(err, "--save-checkpoint", "1.0 MiB free")
    assert "epoch" not in err


# ----------------------------------------------------------------------------- (b) --cv lowered


def test_fit_says_when_it_runs_fewer_folds_than_asked(capsys, photos):
    code, out, err = fit(capsys, photos, "--cv", "100", "--json")
    assert code == 0, err
    assert json.loads(out)["metrics"]["cv"]["n_splits"] == 8
    line = next(line for line in err.splitlines() if "not the 100 asked for" in line)
    assert "8 folds" in line and "the smallest class" in line and "has 8 images" in line


# ----------------------------------------------------------------------------- (c) whole report


def test_an_earlier_report_is_replaced_as_a_whole(capsys, photos, disk_full_for):
    report = photos / "report"
    code, _, err = fit(
        capsys, photos, "--pipeline", "layer_sweep_svm", "--layer", "features.3",
        "--layer", "flatten", "--cv", "2", "--report", report,
    )  # fmt: skip
    assert code == 0, err
    first = {name: (report / name).read_bytes() for name in os.listdir(report)}
    assert "layer_sweep.png" in first and "config.json" in first

    # A failed rewrite leaves the earlier report as it was, every file of it.
    disk_full_for.append("config.json")
    code, _, err = fit(capsys, photos, "--cv", "2", "--report", report)
    assert code == 1
    assert {name: (report / name).read_bytes() for name in os.listdir(report)} == first

    # A rewrite replaces it: no file of the earlier run (the layer sweep's) stays.
    disk_full_for.clear()
    code, _, err = fit(capsys, photos, "--cv", "2", "--report", report)
    assert code == 0, err
    assert sorted(os.listdir(report)) == [
        "config.json", "confusion_matrix.png", "cv_results.csv", "metrics.json"
    ]  # fmt: skip
    assert [n for n in os.listdir(photos) if n.startswith(".report")] == []


def test_a_report_folder_with_other_files_is_refused_before_the_run(capsys, photos):
    report = photos / "report"
    report.mkdir()
    (report / "notes.txt").write_text("mine")
    code, _, err = fit(capsys, photos, "--cv", "2", "--report", report)
    assert code == 2
    assert_one_line_error(err, "--report", "notes.txt")
    assert (report / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- (d) one class


def test_finetune_on_a_single_class_names_it_as_fit_does(capsys, tmp_path):
    write_classes(str(tmp_path / "one"), per_class=4, classes=("5",))
    for command, extra in (("finetune", TINY), ("fit", MODEL)):
        code, _, err = run(capsys, command, tmp_path / "one", *extra, "--cache-dir", tmp_path)
        assert code == 2
        assert_one_line_error(err, "only the class '5'", "at least two classes")
        assert "np.str_" not in err


def test_a_model_inside_the_report_folder_is_refused_before_the_run(capsys, photos):
    # The report replaces its folder as a whole: a model saved in it would be lost, or stop
    # the report after the run.
    report = photos / "results"
    report.mkdir()
    code, _, err = fit(capsys, photos, "--cv", "2", "--report", report, "--out", report / "m.skops")
    assert code == 2
    assert_one_line_error(err, "--out", "inside --report")
    assert "grid search" not in err
    assert os.listdir(report) == []
