"""Tests for cnncodes/demo.py that need no demo run (the CLI and docs tests run it)."""

from __future__ import annotations

import itertools

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from cnncodes import demo, list_layers


def test_every_row_names_its_layer_and_pooling():
    shapes = {i.name: i.shape for i in list_layers("cnncodes.demo_data:digits_net", "none")}
    for name, description, weights, layer, pooling in demo.FEATURE_SETS:
        if weights is None:
            continue
        assert layer in description, name
        if len(shapes[layer]) == 1:  # a vector: every pooling passes it through unchanged
            assert "no pooling" in description, name
        else:
            assert f"{pooling} pooling" in description, name


def test_fit_command_names_the_rows_settings():
    argv = demo.fit_command("pretrained-early", "linear_probe", "out")
    assert argv[argv.index("--layer") + 1] == "features.7"
    assert argv[argv.index("--pooling") + 1] == "pyramid"
    assert argv[argv.index("--weights") + 1] == "out/digits_net_source.pth"
    assert argv[argv.index("--test") + 1] == "out/data/target_test"
    untrained = demo.fit_command("untrained-top", "linear_svm", seed=3)
    assert "none" in untrained and "--pooling" not in untrained
    assert untrained[-2:] == ["--random-state", "3"]
    assert demo.fit_command("raw-pixels", "linear_svm") is None
    with pytest.raises(ValueError, match="name='top': choose one of pretrained-top"):
        demo.fit_command("top", "linear_svm")
    with pytest.raises(ValueError, match="recipe='sgd': choose one of linear_probe"):
        demo.fit_command("pretrained-top", "sgd")


def test_fit_command_keeps_the_demos_cache_option():
    # Without it, rerunning a row of a demo run with --cache-dir recomputed into ./cache.
    default = demo.fit_command("pretrained-top", "linear_svm")
    assert "--cache-dir" not in default and "--no-cache" not in default
    folder = demo.fit_command("pretrained-top", "linear_svm", cache_dir="/tmp/my codes")
    assert folder == [*default, "--cache-dir", "/tmp/my codes"]
    assert demo.fit_command("pretrained-top", "linear_svm", cache_dir=None) == [
        *default,
        "--no-cache",
    ]


def test_comparison_plot_labels_apart_and_legend_off_the_bars(tmp_path):
    accuracy = {name: {"linear_probe": 0.99, "linear_svm": 0.98} for name, *_ in demo.FEATURE_SETS}
    fig = demo._plot(accuracy, tmp_path / "comparison.png")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # lays the figure out as savefig did
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    labels = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
    for a, b in itertools.combinations(labels, 2):
        assert not a.overlaps(b), "x labels overlap"
    legend = ax.get_legend().get_window_extent(renderer)
    for bar in ax.patches:
        assert not legend.overlaps(bar.get_window_extent(renderer)), "the legend covers a bar"
