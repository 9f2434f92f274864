"""Tests for cnncodes.cache: the sharded HDF5 code store."""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import re
import time
import warnings

import cnncodes.cache
import cnncodes.readthrough
import h5py
import numpy as np
import pytest
from cnncodes.cache import (
    DEFAULT_CACHE_DIR,
    CacheWarning,
    CodeStore,
    config_key,
    list_configs,
    resolve_cache_dir,
)

import cnncodes.utils.files

CONFIG = {"model": "resnet18", "layer": "avgpool", "pooling": "avg"}


def _keys(n, start=0):
    """Fake content hashes (64 hex digits), distinct and deterministic."""
    return [f"{i:064x}" for i in range(start, start + n)]


def _codes(n, d=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


@pytest.fixture
def store(tmp_path):
    return CodeStore(tmp_path / "cache", CONFIG)


def _fake_shard(path, store, keys_data=None, codes_data=None, **attrs):
    """A file that copies our shard layout; the caller may replace members with ``*_data``."""
    with h5py.File(path, "w") as f:
        if keys_data is None:
            f.create_dataset("keys", data=np.array([k.encode() for k in _keys(2)], "S64"))
        else:
            keys_data(f)
        if codes_data is None:
            f.create_dataset("codes", data=_codes(2))
        else:
            codes_data(f)
        f.attrs["format"] = "cnncodes-shard"
        f.attrs["format_version"] = 1
        f.attrs["config_key"] = store.key
        for name, value in attrs.items():
            f.attrs[name] = value


# ----------------------------------------------------------------------------- reading and writing


def test_write_read_roundtrip_in_requested_order(store):
    keys, codes = _keys(5), _codes(5)
    path = store.write(keys, codes)
    assert os.path.dirname(path) == store.path and path.endswith(".h5")
    order = [3, 0, 4, 1]
    np.testing.assert_array_equal(store.read([keys[i] for i in order]), codes[order])
    out = np.full((6, 4), -1, np.float32)
    store.read([keys[2], keys[4]], out=out, rows=[5, 0])
    np.testing.assert_array_equal(out[[5, 0]], codes[[2, 4]])
    assert (out[1:5] == -1).all()
    np.testing.assert_array_equal(store.contains([keys[1], "f" * 64]), [True, False])


def test_reads_across_shards(store):
    store.write(_keys(3), _codes(3, seed=1))
    store.write(_keys(3, start=3), _codes(3, seed=2))
    wanted = _keys(6)[::-1]
    expected = np.concatenate([_codes(3, seed=1), _codes(3, seed=2)])[::-1]
    np.testing.assert_array_equal(store.read(wanted), expected)


def test_read_of_missing_keys_and_bad_writes(store):
    store.write(_keys(1), _codes(1))
    with pytest.raises(KeyError, match="1 codes are not in the cache"):
        store.read(_keys(2))
    with pytest.raises(ValueError, match=r"codes of shape \(3, 4\) do not match 2 keys"):
        store.write(_keys(2), _codes(3))
    assert store.write([], np.zeros((0, 4), np.float32)) is None


def test_shards_are_self_describing_for_plain_h5py(store):
    path = store.write(_keys(2), _codes(2))
    with h5py.File(path, "r") as f:
        assert [k.decode() for k in f["keys"][:]] == _keys(2)
        np.testing.assert_array_equal(f["codes"][:], _codes(2))
        assert json.loads(f.attrs["config"]) == CONFIG
        assert f.attrs["config_key"] == store.key
    with open(os.path.join(store.path, "config.json")) as f:
        assert json.load(f)["config"] == CONFIG


def test_index_and_duplicates_newest_wins(store):
    first = store.write(_keys(2), _codes(2, seed=1))
    second = store.write(_keys(1), _codes(1, seed=2))
    index = store.index()
    assert index == {_keys(2)[0]: (second, 0), _keys(2)[1]: (first, 1)}
    np.testing.assert_array_equal(store.read(_keys(1)), _codes(1, seed=2))
    info = store.info()
    assert (info["rows"], info["unique"], info["shards"]) == (3, 2, 2)


def test_config_key_covers_content_not_order():
    assert config_key({"a": 1, "b": [1, 2]}) == config_key({"b": [1, 2], "a": 1})
    assert config_key({"a": 1}) != config_key({"a": 2})
    assert len(config_key(CONFIG)) == 24
    assert CodeStore("x", CONFIG).key == config_key(CONFIG)


# ----------------------------------------------------------------------------- compaction


def test_compaction_keeps_every_row(store):
    keys, codes = _keys(15), _codes(15)
    for i in range(0, 15, 3):
        store.write(keys[i : i + 3], codes[i : i + 3])
    store.write(keys[:2], codes[:2])  # duplicates of rows already stored
    assert store.compact(min_shards=10) == 0
    assert store.compact() == 6
    assert len(store.shard_paths()) == 1
    np.testing.assert_array_equal(store.read(keys), codes)
    info = store.info()
    assert (info["rows"], info["unique"], info["features"]) == (15, 15, 4)
    assert store.check_shards() == [(store.shard_paths()[0], None)]


def test_compaction_is_skipped_while_another_process_holds_the_lock(store):
    store.write(_keys(1), _codes(1))
    store.write(_keys(1, start=1), _codes(1))
    fd = os.open(os.path.join(store.path, ".compact.lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert store.compact() == 0
    finally:
        os.close(fd)
    assert store.compact() == 2


def _temporary(folder, name, age=3600):
    """A partly written file named ``name`` in ``folder``, last modified ``age`` seconds ago."""
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(b"partial")
    os.utime(path, (time.time() - age, time.time() - age))
    return path


DEAD_PID = 999_999_999  # above any pid_max: no such process


def test_compaction_removes_temporaries_of_dead_writers_only(store):
    store.write(_keys(1), _codes(1))
    store.write(_keys(1, start=1), _codes(1))
    dead = _temporary(store.path, f".tmp-{DEAD_PID}-abcd.part")  # named as before pid@host
    alive = _temporary(store.path, f".tmp-{os.getpid()}-abcd.part")
    assert all(not p.startswith(".tmp-") for p in map(os.path.basename, store.shard_paths()))
    store.compact()
    assert not os.path.exists(dead)
    assert os.path.exists(alive)


def test_the_next_write_removes_temporaries_of_dead_writers_on_this_host_only(store):
    store.write(_keys(1), _codes(1))
    host = cnncodes.utils.files._host()
    dead = _temporary(store.path, f".tmp-{DEAD_PID}@{host}-abcd.part")
    kept = [
        _temporary(store.path, f".tmp-{os.getpid()}@{host}-abcd.part"),  # a live writer
        _temporary(store.path, f".tmp-{DEAD_PID}@{host}-ef01.part", age=5),  # within the grace
        _temporary(store.path, f".tmp-{DEAD_PID}@another_host-abcd.part"),  # pid not ours to check
        _temporary(store.path, ".tmp-notapid-abcd.part"),
    ]
    fresh = CodeStore(store.root, CONFIG)  # another process's store: it sweeps on its first write
    fresh.write(_keys(1, start=1), _codes(1))
    assert not os.path.exists(dead)
    assert all(os.path.exists(p) for p in kept)
    name = os.path.basename(cnncodes.cache.temporary_path(store.path, suffix=".part"))
    assert name.startswith(f".tmp-{os.getpid()}@{host}-") and name.endswith(".part")
    assert cnncodes.utils.files._writer(name, ".tmp-") == (os.getpid(), host)


def test_a_store_makes_no_folder_until_it_commits_codes(tmp_path):
    store = CodeStore(tmp_path / "cache", CONFIG)
    store.ensure_writable()  # checks, without leaving anything but the cache folder
    assert os.listdir(tmp_path / "cache") == []
    assert list_configs(tmp_path / "cache") == []
    store.write(_keys(1), _codes(1))
    assert [s.key for s, _ in list_configs(tmp_path / "cache")] == [store.key]


def _reader(root, stop, results, seed):
    """Read random rows until told to stop; report (reads, first error or None)."""
    store = CodeStore(root, CONFIG)
    keys, codes = _keys(40), _codes(40)
    rng = np.random.default_rng(seed)
    reads, error = 0, None
    try:
        while not stop.is_set():
            pick = rng.choice(40, 7, replace=False)
            np.testing.assert_array_equal(store.read([keys[i] for i in pick]), codes[pick])
            assert len(store.index()) >= 40
            reads += 1
    except Exception as exc:  # reported to the test process
        error = repr(exc)
    results.put((reads, error))


def test_readers_in_other_processes_see_every_row_during_compaction(store):
    keys, codes = _keys(40), _codes(40)
    for i in range(0, 40, 4):
        store.write(keys[i : i + 4], codes[i : i + 4])
    ctx = multiprocessing.get_context("fork")  # the readers use numpy and h5py only
    stop, results = ctx.Event(), ctx.Queue()
    readers = [ctx.Process(target=_reader, args=(store.root, stop, results, s)) for s in range(2)]
    for p in readers:
        p.start()
    try:
        deadline = time.monotonic() + 2.5
        rounds = 0
        while time.monotonic() < deadline:
            store.write(_keys(2, start=100 + 2 * rounds), _codes(2, seed=rounds))
            store.write(keys[rounds % 40 : rounds % 40 + 1], codes[rounds % 40 : rounds % 40 + 1])
            assert store.compact(blocking=True) >= 2
            rounds += 1
    finally:
        stop.set()
        outcomes = [results.get(timeout=30) for _ in readers]
        for p in readers:
            p.join(timeout=30)
    assert [error for _, error in outcomes] == [None, None]
    assert all(reads > 0 for reads, _ in outcomes)
    assert rounds > 5
    np.testing.assert_array_equal(store.read(keys), codes)
    assert len(store.shard_paths()) == 1


# ----------------------------------------------------------------------------- files not ours


def test_foreign_hdf5_file_is_ignored_with_a_warning(store):
    store.write(_keys(2), _codes(2))
    foreign = os.path.join(store.path, "foreign.h5")
    with h5py.File(foreign, "w") as f:
        f.create_dataset("data", data=np.arange(4))
    with pytest.warns(CacheWarning, match=r"ignoring cache file .*foreign\.h5: unexpected members"):
        index = store.index()
    assert set(index) == set(_keys(2))
    # Said once per process and file (a grid search lists the shards for every fold).
    np.testing.assert_array_equal(store.read(_keys(2)), _codes(2))


@pytest.mark.parametrize(
    "attrs, match",
    [
        ({"format": "other"}, "not a cnncodes shard of this format version"),
        ({"format_version": 99}, "not a cnncodes shard of this format version"),
        ({"config_key": "0" * 24}, "belongs to another configuration"),
    ],
)
def test_lookalike_shards_with_wrong_attributes_are_ignored(store, attrs, match):
    store.write(_keys(1, start=7), _codes(1))
    _fake_shard(os.path.join(store.path, "zz-lookalike.h5"), store, **attrs)
    with pytest.warns(CacheWarning, match=match):
        assert set(store.index()) == set(_keys(1, start=7))


def test_unreadable_shard_is_ignored(store):
    store.write(_keys(1), _codes(1))
    with open(os.path.join(store.path, "zz-garbage.h5"), "wb") as f:
        f.write(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    with pytest.warns(CacheWarning, match="zz-garbage.h5"):
        assert list(store.index()) == _keys(1)


def test_symlinked_shard_is_never_followed(store, tmp_path):
    store.write(_keys(1), _codes(1))
    elsewhere = CodeStore(tmp_path / "elsewhere", CONFIG)
    real = elsewhere.write(_keys(1, start=50), _codes(1, seed=5))  # a valid shard of this config
    os.symlink(real, os.path.join(store.path, "zz-link.h5"))
    with pytest.warns(CacheWarning, match=r"zz-link\.h5: not a regular file"):
        assert list(store.index()) == _keys(1)


def _external_link(other):
    def make(f):
        f["codes"] = h5py.ExternalLink(str(other), "/codes")

    return make


def _external_storage(secret):
    def make(f):
        f.create_dataset("codes", shape=(2, 4), dtype="f4", external=[(str(secret), 0, 32)])

    return make


def _virtual(other):
    def make(f):
        layout = h5py.VirtualLayout(shape=(2, 4), dtype="f4")
        layout[:] = h5py.VirtualSource(str(other), "codes", shape=(2, 4))
        f.create_virtual_dataset("codes", layout)

    return make


@pytest.mark.parametrize(
    "member, match",
    [
        (_external_link, "'codes' is a ExternalLink, not a plain dataset"),
        (_external_storage, "'codes' uses external or virtual storage"),
        (_virtual, "'codes' uses external or virtual storage"),
    ],
)
def test_external_storage_and_links_are_never_followed(store, tmp_path, member, match):
    # The target would be perfectly readable: it is refused for what it is, not for failing.
    target = tmp_path / "target.h5"
    with h5py.File(target, "w") as f:
        f.create_dataset("codes", data=_codes(2, seed=9))
    if member is _external_storage:
        target = tmp_path / "secret.bin"
        target.write_bytes(_codes(2, seed=9).tobytes())
    store.write(_keys(1, start=7), _codes(1))
    _fake_shard(os.path.join(store.path, "zz-external.h5"), store, codes_data=member(target))
    with pytest.warns(CacheWarning, match=match):
        index = store.index()
    assert set(index) == set(_keys(1, start=7))
    report = dict(store.check_shards())
    assert match.split("'codes' ")[1] in report[os.path.join(store.path, "zz-external.h5")]


def _flip_a_bit(path, codes):
    data = bytearray(open(path, "rb").read())
    at = bytes(data).find(codes.tobytes())
    assert at > 0
    data[at + 5] ^= 0x01
    with open(path, "r+b") as f:
        f.write(data)


def test_check_shards_detects_a_tampered_byte(store):
    codes = _codes(3)
    path = store.write(_keys(3), codes)
    good = store.write(_keys(1, start=3), _codes(1))
    assert store.check_shards() == [(path, None), (good, None)]
    _flip_a_bit(path, codes)
    report = dict(store.check_shards())
    assert "checksum mismatch" in report[path]
    assert report[good] is None


@pytest.mark.parametrize("streamed", [False, True])
def test_a_tampered_shard_is_never_served(store, monkeypatch, streamed):
    if streamed:  # larger than the shards held in memory: hashed in runs of rows
        monkeypatch.setattr(cnncodes.cache, "_HOLD_MAX_SHARD_BYTES", 8)
    codes = _codes(3)
    path = store.write(_keys(3), codes)
    good = store.write(_keys(1, start=3), _codes(1))
    _flip_a_bit(path, codes)
    cnncodes.cache._SHARD_INDEX.clear()
    cnncodes.cache._SHARD_CODES.clear()
    with pytest.warns(CacheWarning, match=r"ignoring cache file .*checksum mismatch"):
        index = store.index()
    assert sorted(index) == _keys(1, start=3)  # the altered rows are missing: computed again
    np.testing.assert_array_equal(store.read(_keys(1, start=3)), _codes(1))
    assert good in {p for p, _ in index.values()}


def test_shards_too_large_to_check_on_every_listing_are_left_to_cache_verify(store, monkeypatch):
    monkeypatch.setattr(cnncodes.cache, "_VERIFY_MAX_BYTES", 8)
    codes = _codes(3)
    path = store.write(_keys(3), codes)
    _flip_a_bit(path, codes)
    cnncodes.cache._SHARD_INDEX.clear()
    cnncodes.cache._SHARD_CODES.clear()
    assert sorted(store.index()) == _keys(3)
    assert "checksum mismatch" in dict(store.check_shards())[path]


def test_temporary_files_are_not_shards(store):
    store.write(_keys(1), _codes(1))
    with open(os.path.join(store.path, ".tmp-1-abcd.part"), "wb") as f:
        f.write(b"partial")
    assert len(store.shard_paths()) == 1
    assert list(store.index()) == _keys(1)


# ----------------------------------------------------------------------------- inspection


def test_info_counts_and_sizes(store):
    empty = store.info()
    assert (empty["rows"], empty["shards"], empty["features"], empty["bytes"]) == (0, 0, None, 0)
    store.write(_keys(3), _codes(3, d=6))
    store.write(_keys(2, start=2), _codes(2, d=6))
    info = store.info()
    assert info["key"] == store.key and info["config"] == CONFIG
    assert (info["rows"], info["unique"], info["features"], info["shards"]) == (5, 4, 6, 2)
    assert info["bytes"] == sum(os.path.getsize(p) for p in store.shard_paths())


def test_list_configs(tmp_path):
    root = tmp_path / "cache"
    assert list_configs(root) == []
    a = CodeStore(root, {**CONFIG, "layer": "layer3"})
    b = CodeStore(root, CONFIG)
    a.write(_keys(2), _codes(2))
    b.write(_keys(1), _codes(1))
    (root / "not-a-config").mkdir()
    found = {store.key: (store.config, info["rows"]) for store, info in list_configs(root)}
    assert found == {a.key: (a.config, 2), b.key: (CONFIG, 1)}


def test_list_configs_warns_about_folders_not_ours(tmp_path):
    root = tmp_path / "cache"
    CodeStore(root, CONFIG).write(_keys(1), _codes(1))
    bad = root / ("0" * 24)
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"config": {"model": "other"}}))
    with pytest.warns(CacheWarning, match="its key does not match its folder"):
        configs = list_configs(root)
    assert [store.config for store, _ in configs] == [CONFIG]


def test_resolve_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCODES_CACHE", str(tmp_path / "from-env"))
    assert resolve_cache_dir("auto") == str(tmp_path / "from-env")
    assert resolve_cache_dir() == str(tmp_path / "from-env")
    monkeypatch.delenv("CNNCODES_CACHE")
    monkeypatch.chdir(tmp_path)
    assert resolve_cache_dir("auto") == str(tmp_path / DEFAULT_CACHE_DIR)
    assert resolve_cache_dir(None) is None
    assert resolve_cache_dir(tmp_path / "x") == str(tmp_path / "x")
    assert resolve_cache_dir("rel") == str(tmp_path / "rel")
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="cache_dir='.*file' exists and is not a folder"):
        resolve_cache_dir(tmp_path / "file")
    with pytest.raises(TypeError, match="cache_dir=3: expected 'auto', None"):
        resolve_cache_dir(3)


def test_info_reads_keys_only_and_a_later_read_still_checks(store):
    codes = _codes(3)
    path = store.write(_keys(3), codes)
    _flip_a_bit(path, codes)
    cnncodes.cache._SHARD_INDEX.clear()
    cnncodes.cache._SHARD_CODES.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checked shard would be warned about: none is
        assert store.info()["rows"] == 3  # no code read to count rows
    with pytest.warns(CacheWarning, match=f"{re.escape(str(path))}: checksum mismatch"):
        assert store.index() == {}  # the listing for a read checks, memo or not


# ------------------------------------------------------------------ the read-through CodeCache

CONFIGS = {"a": CONFIG, "b": {**CONFIG, "layer": "layer3"}}
WIDTHS = {"a": 4, "b": 3}


def _true_codes(key, name):
    """The codes a fake network makes of ``key``: deterministic per key and name."""
    seed = int(key, 16) % 2**32 + (1000 if name == "b" else 0)
    return np.random.default_rng(seed).normal(size=WIDTHS[name]).astype(np.float32)


class FakeNetwork:
    """A ``compute`` that records its calls and delivers codes ``per_block`` keys at a time."""

    def __init__(self, per_block=2, fail_after=None, names=("a", "b")):
        self.calls = []
        self.per_block = per_block
        self.fail_after = fail_after  # raise once this many keys were delivered
        self.names = names

    def __call__(self, missing, deliver):
        self.calls.append(list(missing))
        for start in range(0, len(missing), self.per_block):
            if self.fail_after is not None and start >= self.fail_after:
                raise RuntimeError("network failed midway")
            block = missing[start : start + self.per_block]
            deliver(block, {n: np.stack([_true_codes(k, n) for k in block]) for n in self.names})


def _expected(keys, name):
    return np.stack([_true_codes(k, name) for k in keys])


def test_read_through_computes_only_the_misses_once_and_serves_hits_without_compute(tmp_path):
    cache = cnncodes.readthrough.CodeCache(tmp_path / "cache", CONFIGS)
    assert cache.widths() is None  # nothing stored yet
    net = FakeNetwork()
    first = cache.cached(_keys(4), net, WIDTHS)
    assert net.calls == [_keys(4)]
    assert (first.computed, first.hits) == (4, 0)
    # Repeats, hits and misses mixed: misses computed once, in first-seen order, each once.
    keys = [_keys(1, 5)[0], *_keys(4), _keys(1, 4)[0], _keys(1, 2)[0], _keys(1, 5)[0]]
    again = cnncodes.readthrough.CodeCache(tmp_path / "cache", CONFIGS).cached(keys, net, WIDTHS)
    assert net.calls[1:] == [[_keys(1, 5)[0], _keys(1, 4)[0]]]
    assert (again.computed, again.hits) == (2, 4)
    for name in CONFIGS:
        assert again.codes[name].dtype == np.float32
        np.testing.assert_array_equal(again.codes[name], _expected(keys, name))
    # Everything is stored now: a third call never computes.
    third = cnncodes.readthrough.CodeCache(tmp_path / "cache", CONFIGS).cached(keys, net, WIDTHS)
    assert len(net.calls) == 2 and (third.computed, third.hits) == (0, 6)
    np.testing.assert_array_equal(third.codes["b"], _expected(keys, "b"))
    assert cache.widths() == WIDTHS


def test_missing_is_what_cached_would_compute(tmp_path):
    # The Ray engine asks this first, lets its actors store the codes, then calls cached().
    root = tmp_path / "cache"
    CodeStore(root, CONFIGS["a"]).write(_keys(3), _expected(_keys(3), "a"))
    CodeStore(root, CONFIGS["b"]).write(_keys(2), _expected(_keys(2), "b"))
    cache = cnncodes.readthrough.CodeCache(root, CONFIGS)
    keys = [_keys(1, 4)[0], *_keys(4), _keys(1, 4)[0]]
    missing = cache.missing(keys)
    assert missing == [_keys(1, 4)[0], _keys(3)[2], _keys(4)[3]]
    net = FakeNetwork()
    cache.cached(keys, net, WIDTHS)
    assert net.calls == [missing]
    assert cache.missing(keys) == []
    assert cnncodes.readthrough.CodeCache(None, CONFIGS).missing(keys[:2]) == keys[:2]


def test_read_through_computes_a_key_missing_under_one_name_and_stores_it_only_there(tmp_path):
    root = tmp_path / "cache"
    CodeStore(root, CONFIGS["a"]).write(_keys(3), _expected(_keys(3), "a"))
    cache = cnncodes.readthrough.CodeCache(root, CONFIGS)
    assert cache.widths() is None  # "b" holds nothing yet
    net = FakeNetwork()
    served = cache.cached(_keys(3), net, WIDTHS)
    assert net.calls == [_keys(3)] and (served.computed, served.hits) == (3, 0)
    np.testing.assert_array_equal(served.codes["b"], _expected(_keys(3), "b"))
    assert CodeStore(root, CONFIGS["a"]).info()["rows"] == 3  # not stored a second time
    assert CodeStore(root, CONFIGS["b"]).info()["rows"] == 3


def test_null_cache_computes_every_time_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CNNCODES_CACHE", raising=False)
    cache = cnncodes.readthrough.CodeCache(None, CONFIGS)
    assert cache.widths() is None
    net = FakeNetwork()
    keys = _keys(3) + _keys(1)
    for _ in range(2):
        served = cache.cached(keys, net, WIDTHS)
        np.testing.assert_array_equal(served.codes["a"], _expected(keys, "a"))
        assert (served.computed, served.hits) == (3, 0)
    assert net.calls == [_keys(3), _keys(3)]
    assert os.listdir(tmp_path) == []


def test_read_through_commits_as_it_goes_and_keeps_them_when_compute_raises(tmp_path):
    root = tmp_path / "cache"
    cache = cnncodes.readthrough.CodeCache(root, CONFIGS)
    stored = []

    def watching(missing, deliver):
        def counting(keys, codes, stored_as=None):
            deliver(keys, codes, stored_as)
            stored.append(CodeStore(root, CONFIGS["a"]).info()["rows"])

        FakeNetwork(per_block=1, fail_after=5)(missing, counting)

    with pytest.raises(RuntimeError, match="network failed midway"):
        cache.cached(_keys(8), watching, WIDTHS, commit_rows=2, commit_seconds=1e9)
    assert stored == [0, 2, 2, 4, 4]  # a shard every 2 rows, while compute runs
    # The fifth row, delivered but not yet due, was committed when compute raised.
    assert CodeStore(root, CONFIGS["b"]).info()["rows"] == 5
    net = FakeNetwork()
    resumed = cnncodes.readthrough.CodeCache(root, CONFIGS).cached(_keys(8), net, WIDTHS)
    assert net.calls == [_keys(3, 5)] and (resumed.computed, resumed.hits) == (3, 5)
    np.testing.assert_array_equal(resumed.codes["a"], _expected(_keys(8), "a"))


def test_read_through_stores_codes_under_the_content_they_were_made_from(tmp_path):
    # A file rewritten between hashing and decoding: its row gets the codes of what was read,
    # stored under the hash of what was read, never under the stale hash.
    root = tmp_path / "cache"
    old, new = _keys(2)

    def rewritten(missing, deliver):
        codes = {n: _expected([new], n) for n in CONFIGS}
        deliver(missing, codes, stored_as=[new])

    served = cnncodes.readthrough.CodeCache(root, CONFIGS).cached([old], rewritten, WIDTHS)
    np.testing.assert_array_equal(served.codes["a"], _expected([new], "a"))
    assert set(CodeStore(root, CONFIGS["a"]).index()) == {new}


def test_read_through_refuses_codes_for_keys_it_did_not_ask_for(tmp_path):
    def stray(missing, deliver):
        deliver(_keys(1, 7), {n: _expected(_keys(1, 7), n) for n in CONFIGS})

    with pytest.raises(ValueError, match=r"compute delivered codes for a key not asked for: '0+7'"):
        cnncodes.readthrough.CodeCache(tmp_path / "cache", CONFIGS).cached(_keys(2), stray, WIDTHS)
    with pytest.raises(ValueError, match=r"compute delivered codes of 'a' only; expected 'a', 'b'"):
        cnncodes.readthrough.CodeCache(None, CONFIGS).cached(
            _keys(2), FakeNetwork(names="a"), WIDTHS
        )


def test_read_through_checks_the_cache_is_writable_before_computing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = cnncodes.readthrough.CodeCache(blocker / "cache", {"a": CONFIG})
    net = FakeNetwork(names=("a",))
    with pytest.raises(OSError, match=r"cannot write to the cache folder .*file.cache"):
        cache.cached(_keys(2), net, {"a": 4})
    assert net.calls == []
