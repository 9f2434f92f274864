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
