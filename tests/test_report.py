"""Tests for cnncodes/report.py: the plots of the report folder."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
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
