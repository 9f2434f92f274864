"""Tests for cnncodes/report.py: the plots of the report folder."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from cnncodes.report import plot_confusion_matrix, plot_layer_sweep


def test_labels_in_any_script_draw_without_glyph_warnings(tmp_path):
    # Class names come from folder names: CJK or emoji must not turn into "Glyph missing"
    # warnings (the command line prints each as a "cnncodes: warning:" line).
    labels = ["猫", "🐱", "ant"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_confusion_matrix(np.eye(3, dtype=int), labels, tmp_path / "cm.png")
        table = pd.DataFrame(
            {
                "layer": ["層1", "🐱"],
                "mean_test_score": [0.5, 0.7],
                "std_test_score": [0.1, 0.1],
                "best": [False, True],
            }
        )
        plot_layer_sweep(table, tmp_path / "sweep.png")
    assert (tmp_path / "cm.png").stat().st_size > 0 and (tmp_path / "sweep.png").stat().st_size > 0


def test_characters_no_font_has_are_written_as_code_points():
    from cnncodes.report import _drawable, _fonts

    families, covered = _fonts()
    assert families[0] == "DejaVu Sans"
    for label in ("猫", "🐱", "ants 2"):
        drawn = _drawable(label)
        assert all(ord(c) in covered for c in drawn if c != " "), drawn
        # Either the font draws the character, or its code point stands in for it.
        assert all(c in drawn or f"U+{ord(c):04X}" in drawn for c in label)
    assert _drawable("ants 2") == "ants 2"


def test_training_curves_with_and_without_a_validation_split(tmp_path):
    from cnncodes.report import plot_training_curves

    with_valid = [
        {"epoch": e, "train_loss": 1 / e, "valid_loss": 1.2 / e, "valid_acc": 0.5 + e / 10}
        for e in (1, 2, 3)
    ]
    without = [{"epoch": e, "train_loss": 1 / e} for e in (1, 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_training_curves(with_valid, tmp_path / "a.png")
        plot_training_curves(without, tmp_path / "b.png")
        plot_training_curves([], tmp_path / "c.png")  # epochs=0: an empty plot, not an error
    for name in ("a.png", "b.png", "c.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# ----------------------------------------------------------------------------- whole folders


def _text(content):
    def write(path):
        with open(path, "w") as f:
            f.write(content)

    return write


@pytest.mark.parametrize("exchange", [True, False])
def test_a_report_replaces_an_earlier_one_as_a_whole(tmp_path, monkeypatch, exchange):
    import os

    from cnncodes.workflows import report

    if not exchange:  # an OS without renameat2: the earlier folder aside, then the new one in
        monkeypatch.setattr(report, "_exchange", lambda a, b: False)
    folder = tmp_path / "report"
    report._write_folder(folder, {"metrics.json": _text("1"), "layer_sweep.png": _text("1")})
    written = report._write_folder(folder, {"metrics.json": _text("2"), "config.json": _text("2")})
    assert sorted(os.listdir(folder)) == ["config.json", "metrics.json"]
    assert written == {n: os.path.join(folder, n) for n in ("metrics.json", "config.json")}
    assert (folder / "metrics.json").read_text() == "2"
    assert os.listdir(tmp_path) == ["report"]  # no temporary folder left


def test_a_report_killed_while_written_leaves_the_earlier_one(tmp_path):
    import os

    from cnncodes.workflows import report

    folder = tmp_path / "report"
    report._write_folder(folder, {"metrics.json": _text("1"), "config.json": _text("1")})

    def killed(path):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        report._write_folder(folder, {"metrics.json": _text("2"), "config.json": killed})
    assert {n: (folder / n).read_text() for n in os.listdir(folder)} == {
        "metrics.json": "1",
        "config.json": "1",
    }
    assert os.listdir(tmp_path) == ["report"]


def test_a_folder_with_other_files_is_never_replaced(tmp_path):
    from cnncodes.errors import UsageError
    from cnncodes.workflows import report

    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "metrics.json").write_text("old")
    report.check_report_folder(folder)  # an earlier report: fine
    (folder / "thesis.tex").write_text("mine")
    with pytest.raises(UsageError, match="thesis.tex"):
        report.check_report_folder(folder)
    with pytest.raises(UsageError, match="thesis.tex"):  # checked again just before the swap
        report._write_folder(folder, {"metrics.json": _text("new")})
    assert (folder / "thesis.tex").read_text() == "mine"
    assert (folder / "metrics.json").read_text() == "old"


_KILLED_REPORT = """
import sys, time
from cnncodes.workflows import report

def first(path):
    with open(path, "w") as f:
        f.write("2")

def stop(path):
    with open(path, "w") as f:
        f.write("half")
    print("writing", flush=True)
    time.sleep(600)

report._write_folder(sys.argv[1], {"metrics.json": first, "config.json": stop})
"""


def test_the_next_report_removes_the_folder_a_killed_report_left(tmp_path):
    import os
    import subprocess
    import sys
    import time

    from cnncodes.utils import files
    from cnncodes.workflows import report

    folder = tmp_path / "report"
    report._write_folder(folder, {"metrics.json": _text("1")})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_REPORT, str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
    )
    try:
        assert child.stdout.readline().strip() == "writing"
    finally:
        child.kill()  # SIGKILL while the report's second file is half written
        child.wait()
    left = [n for n in os.listdir(tmp_path) if n != "report"]
    assert len(left) == 1 and left[0].startswith(f".report.tmp-{child.pid}@"), left
    assert (folder / "metrics.json").read_text() == "1"  # the earlier report, untouched
    old = time.time() - 2 * files.STALE_GRACE_SECONDS
    for parent, _, names in os.walk(tmp_path / left[0]):
        for path in [parent, *(os.path.join(parent, n) for n in names)]:
            os.utime(path, (old, old))
    report._write_folder(folder, {"metrics.json": _text("3")})
    assert os.listdir(tmp_path) == ["report"]
    assert (folder / "metrics.json").read_text() == "3"
