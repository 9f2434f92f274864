"""Tests for cnncodes.verify: shard integrity and stored codes recomputed from the images."""

from __future__ import annotations

import os

import numpy as np
from cnncodes.cache import CodeStore, list_configs
from cnncodes.extract import extract_codes
from cnncodes.verify import TOLERANCES, verify_cache

TINY = "tests.tiny_nets:tiny_cnn"


def test_verify_cache_rechecks_with_trust_and_finds_lies(tmp_path, make_images, cnn_spec):
    paths = make_images(4)
    cache = tmp_path / "cache"
    extract_codes(paths, cnn_spec, "conv2", "avg", cache_dir=cache, num_workers=0)
    common = {"num_workers": 0, "sample": 3, "seed": 1}

    integrity = verify_cache(cache)
    assert (
        integrity["ok"] and not integrity["rechecked"] and "recheck" not in integrity["configs"][0]
    )

    # The configuration names its own model code: rebuilt only when allowed, never imported else.
    [refused] = verify_cache(cache, paths, **common)["configs"]
    assert refused["recheck"]["status"] == "not re-checked"
    assert f"--trust-model-code {TINY}" in refused["recheck"]["reason"]

    report = verify_cache(cache, paths, trust_model_code=[TINY], **common)
    [config] = report["configs"]
    assert report["ok"] and config["problems"] == [] and config["rows"] == 4
    assert config["recheck"]["status"] == "ok" and config["recheck"]["checked"] == 3
    assert config["recheck"]["tolerance"] == TOLERANCES["fp32"]

    [(store, _)] = list_configs(cache)
    keys = list(store.index())
    store.write(keys, np.full((len(keys), 16), 7.0, np.float32))  # a well-formed shard of lies
    report = verify_cache(cache, paths, trust_model_code=True, compact=True, **common)
    assert not report["ok"] and report["configs"][0]["recheck"]["status"] == "mismatch"
    assert report["configs"][0]["compacted_shards"] == 2  # its shards are sound: merged
    assert isinstance(store, CodeStore) and os.path.isdir(store.path)
