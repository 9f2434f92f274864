"""Tests for cnncodes.search: filter_readable and warm_cache around grid searches over CNNCodes."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from cnncodes.search import filter_readable, warm_cache
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from tests.test_transformers import _search, codes


def _shards(root):
    return sorted(
        os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(".h5")
    )


@pytest.mark.parametrize("use_extractor", [True, False])
@pytest.mark.parametrize("kind", ["list", "array", "frame"])
def test_filter_readable_drops_images_with_their_labels(tmp_path, with_bad, use_extractor, kind):
    paths, y, bad = with_bad
    y = np.array([f"label-of-{os.path.basename(p)}" for p in paths])
    X = {
        "list": list(paths),
        "array": np.array(paths, dtype=object),
        "frame": pd.DataFrame({"path": paths}),
    }[kind]
    pipe = Pipeline(
        [("cnncodes", codes(tmp_path, on_error="raise")), ("clf", LogisticRegression())]
    )
    X_ok, y_ok, skipped = filter_readable(X, y, extractor=pipe if use_extractor else None)
    assert type(X_ok) is type(X)
    kept = list(X_ok["path"]) if kind == "frame" else list(X_ok)
    assert bad not in kept and len(kept) == 12
    assert list(y_ok) == [f"label-of-{os.path.basename(p)}" for p in kept]
    assert [(s.index, s.path) for s in skipped] == [(5, bad)]
    assert isinstance(skipped[0].reason, str) and skipped[0].reason


def test_filter_readable_fills_the_cache_for_the_fit_that_follows(
    tmp_path, with_bad, forward_counter
):
    paths, y, _ = with_bad
    pipe = Pipeline(
        [("cnncodes", codes(tmp_path)), ("scale", StandardScaler()), ("clf", LogisticRegression())]
    )
    X_ok, y_ok, _ = filter_readable(paths, y, extractor=pipe)
    built = forward_counter.builds
    pipe.fit(X_ok, y_ok)
    assert forward_counter.builds == built
    assert filter_readable(X_ok, y_ok, extractor=pipe) == (X_ok, y_ok, [])


def test_filter_readable_checks_lengths(tmp_path, images):
    with pytest.raises(ValueError, match="12 images but y has 3 labels"):
        filter_readable(images, [0, 1, 0])
    with pytest.raises(ValueError, match="LogisticRegression has no CNNCodes step"):
        filter_readable(images, extractor=LogisticRegression())


def test_warm_cache_then_parallel_search_never_runs_the_network(
    tmp_path, images, labels, forward_counter
):
    search = _search(tmp_path, n_jobs=2)
    summary = warm_cache(search, images)
    # One forward pass serves both layers and both poolings.
    assert forward_counter.runs == [[("features.3", "features.7"), 12]]
    assert summary == {"runs": 1, "configurations": 4, "computed": 12, "cached": 0, "skipped": []}
    shards = _shards(tmp_path / "cache")
    search.fit(images, labels)  # joblib worker processes share the on-disk cache
    assert _shards(tmp_path / "cache") == shards  # no worker wrote (so computed) anything
    serial = _search(tmp_path).fit(images, labels)
    assert forward_counter.builds == 1
    np.testing.assert_allclose(
        search.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"]
    )
    again = warm_cache(search, images)
    assert (again["computed"], again["cached"]) == (0, 12)


def test_warm_cache_needs_a_cache_and_a_grid(tmp_path, images):
    with pytest.raises(ValueError, match="cache_dir=None keeps nothing"):
        warm_cache(codes(tmp_path, cache_dir=None), images, {"layer": ["features.3"]})
    with pytest.raises(ValueError, match="param_grid is required for a CNNCodes"):
        warm_cache(codes(tmp_path), images)


def test_warm_cache_takes_any_search_that_carries_a_grid(tmp_path, images, forward_counter):
    from scipy.stats import uniform
    from sklearn.experimental import enable_halving_search_cv  # noqa: F401
    from sklearn.model_selection import HalvingGridSearchCV, RandomizedSearchCV

    pipe = Pipeline([("cnncodes", codes(tmp_path)), ("clf", LogisticRegression())])
    grid = {"cnncodes__layer": ["features.3", "features.7"], "clf__C": [0.1, 1.0]}
    assert warm_cache(HalvingGridSearchCV(pipe, grid), images)["configurations"] == 2
    random = RandomizedSearchCV(pipe, grid, n_iter=2)
    assert warm_cache(random, images) == {
        "runs": 1, "configurations": 2, "computed": 0, "cached": 12, "skipped": []
    }  # fmt: skip
    assert forward_counter.builds == 1
    # An alias and the name it stands for are one layer: one forward pass, no duplicate codes.
    aliased = {"cnncodes__layer": ["penultimate", "flatten"]}
    assert warm_cache(pipe, images, aliased)["configurations"] == 1
    drawn = RandomizedSearchCV(pipe, {"clf__C": uniform(0, 1)}, n_iter=2)
    with pytest.raises(ValueError, match="pass param_grid= with the CNNCodes settings"):
        warm_cache(drawn, images)
    assert warm_cache(drawn, images, {"cnncodes__layer": ["features.3"]})["cached"] == 12
