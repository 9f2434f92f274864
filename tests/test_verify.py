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


def test_a_lost_or_damaged_config_json_is_recovered_from_the_shards(tmp_path, make_images):
    from cnncodes.models import resolve_spec

    spec = resolve_spec(TINY, "none", resize=40, crop=32)
    cache = tmp_path / "cache"
    extract_codes(make_images(3), spec, "conv2", "avg", cache_dir=cache, num_workers=0)
    [(store, _)] = list_configs(cache)
    config_json = os.path.join(store.path, "config.json")
    with open(config_json, "rb") as f:
        original = f.read()
    for damage in (None, b"{not json", b'{"config": {"model": "other"}}'):
        if damage is None:
            os.unlink(config_json)
        else:
            with open(config_json, "wb") as f:
                f.write(damage)
        report = verify_cache(cache)
        assert report["ok"] and len(report["configs"]) == 1
        assert report["configs"][0]["rows"] == 3
        assert report["recovered"] == [store.path]
        assert any("recovered" in w and store.key in w for w in report["warnings"])
        with open(config_json, "rb") as f:
            assert f.read() == original


def test_a_folder_verify_cannot_account_for_is_a_problem(tmp_path, make_images, capsys):
    from cnncodes.models import resolve_spec

    from tests.test_cli import run

    spec = resolve_spec(TINY, "none", resize=40, crop=32)
    cache = tmp_path / "cache"
    extract_codes(make_images(2), spec, "conv2", "avg", cache_dir=cache, num_workers=0)
    [(store, _)] = list_configs(cache)
    os.unlink(os.path.join(store.path, "config.json"))
    for name in os.listdir(store.path):  # its shards gone too: nothing says what it held
        if name.endswith(".h5"):
            with open(os.path.join(store.path, name), "wb") as f:
                f.write(b"not hdf5")
    report = verify_cache(cache)
    assert not report["ok"] and report["configs"] == []
    assert [u["folder"] for u in report["unaccounted"]] == [store.path]
    code, out, _ = run(capsys, "cache", "verify", "--cache-dir", cache)
    assert code == 1 and store.key in out
