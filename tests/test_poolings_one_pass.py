"""Several poolings of the same layers come out of one forward pass (issue 21, item 1)."""

from __future__ import annotations

import numpy as np
import pytest
from cnncodes.extract import code_config, extract_codes
from cnncodes.search import warm_cache
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from cnncodes.store.cache import CodeStore
from tests.test_transformers import codes

LAYERS = ["features.3", "features.7"]
POOLINGS = ["avg", "max"]


def test_warm_of_layers_by_poolings_is_one_pass(tmp_path, images, forward_counter):
    pipe = Pipeline([("cnncodes", codes(tmp_path)), ("clf", LogisticRegression())])
    grid = {"cnncodes__layer": LAYERS, "cnncodes__pooling": POOLINGS}
    summary = warm_cache(pipe, images, grid)
    assert summary == {
        "runs": 1, "configurations": 4, "computed": 12, "cached": 0, "skipped": []
    }  # fmt: skip
    assert forward_counter.images == len(images)  # each image through the network once
    step = pipe.named_steps["cnncodes"]
    spec = step.fit(images).spec_
    for layer in LAYERS:
        for pooling in POOLINGS:
            # Each (layer, pooling) under its own configuration, as a single-pooling run's.
            config = code_config(spec, layer, pooling, "fp32")
            assert len(CodeStore(str(tmp_path / "cache"), config).index()) == 12
            alone = extract_codes(images, spec, layer, pooling, cache_dir=None, num_workers=0)
            cached = step.set_params(layer=layer, pooling=pooling).fit(images).transform(images)
            np.testing.assert_array_equal(cached, alone.codes[layer])
    assert forward_counter.images == len(images) * (1 + len(LAYERS) * len(POOLINGS))


def test_extract_codes_takes_a_list_of_poolings(tmp_path, images, forward_counter):
    spec = codes(tmp_path).fit(images).spec_
    both = extract_codes(images, spec, LAYERS, POOLINGS, cache_dir=None, num_workers=0)
    assert forward_counter.images == len(images)
    assert set(both.codes) == {(layer, p) for layer in LAYERS for p in POOLINGS}
    for layer in LAYERS:
        for pooling in POOLINGS:
            alone = extract_codes(images, spec, layer, pooling, cache_dir=None, num_workers=0)
            np.testing.assert_array_equal(both.codes[layer, pooling], alone.codes[layer])
            assert both.configs[layer, pooling] == alone.configs[layer]
    with pytest.raises(ValueError, match="pooling"):
        extract_codes(images, spec, LAYERS, [], cache_dir=None)
    with pytest.raises(ValueError, match="not supported"):
        extract_codes(images, spec, LAYERS, ["avg", "median"], cache_dir=None)
