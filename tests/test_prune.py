"""cnncodes.store.prune: prune and clear configurations, safely beside readers and writers."""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import time

import numpy as np
import pytest

import cnncodes.store.prune
from cnncodes.errors import UsageError
from cnncodes.store import locks
from cnncodes.store.cache import CodeStore, list_configs
from cnncodes.store.prune import clear, config_usage, prune
from cnncodes.store.readthrough import CodeCache


def _keys(n, start=0):
    return [f"{i:064x}" for i in range(start, start + n)]


def _codes(n, d=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _config(model, layer="avgpool"):
    return {"model": model, "layer": layer, "pooling": "avg", "preprocessing": {"view": "flip"}}


def _filled(root, model, rows=4, layer="avgpool", age=0.0):
    """A configuration with ``rows`` codes, every file of it last touched ``age`` seconds ago."""
    store = CodeStore(root, _config(model, layer))
    store.write(_keys(rows), _codes(rows))
    stamp = time.time() - age
    for name in os.listdir(store.path):
        os.utime(os.path.join(store.path, name), (stamp, stamp))
    return store


def _models(root):
    return sorted(info["config"]["model"] for _, info in list_configs(root))


def test_config_usage_names_model_layer_pooling_view_rows_bytes_and_last_use(tmp_path):
    store = _filled(tmp_path, "resnet18", rows=3, age=100)
    (usage,) = [config_usage(s, i) for s, i in list_configs(tmp_path)]
    assert {k: usage[k] for k in ("model", "layer", "pooling", "view", "rows")} == {
        "model": "resnet18",
        "layer": "avgpool",
        "pooling": "avg",
        "view": "flip",
        "rows": 3,
    }
    assert usage["bytes"] >= os.path.getsize(store.shard_paths()[0])
    assert abs(usage["last_used"] - (time.time() - 100)) < 5


def test_reads_stamp_last_use_at_most_once_a_minute(tmp_path, monkeypatch):
    store = _filled(tmp_path, "m", age=1000)
    locks._TOUCHED.clear()
    calls = []
    real = os.utime
    monkeypatch.setattr(os, "utime", lambda *a, **k: (calls.append(a), real(*a, **k)))
    store.read(_keys(2))
    assert abs(locks.last_used(store.path) - time.time()) < 5  # .last-use made now
    for _ in range(20):
        store.read(_keys(2))
    assert len(calls) <= 1  # warm reads do not touch the disk again
    monkeypatch.setattr(locks, "TOUCH_EVERY", 0.0)
    store.read(_keys(1))
    assert len(calls) >= 1


def test_prune_by_model_by_age_and_dry_run(tmp_path):
    _filled(tmp_path, "old", age=40 * 86400)
    _filled(tmp_path, "new", age=60)
    _filled(tmp_path, "other", layer="layer4", age=40 * 86400)
    with pytest.raises(UsageError, match="clear"):
        prune(tmp_path)
    dry = prune(tmp_path, older_than=datetime.timedelta(days=30), dry_run=True)
    assert sorted(r["model"] for r in dry["removed"]) == ["old", "other"]
    assert dry["dry_run"] and _models(tmp_path) == ["new", "old", "other"]
    report = prune(tmp_path, model="old", older_than=30 * 86400)
    assert [r["reason"] for r in report["removed"]] == ["older"]
    assert _models(tmp_path) == ["new", "other"]
    assert report["kept"] == 2 and report["freed_bytes"] > 0
    report = prune(tmp_path, model="new")
    assert [(r["model"], r["reason"]) for r in report["removed"]] == [("new", "model")]
    assert _models(tmp_path) == ["other"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".trash-")]


def test_prune_to_a_size_budget_removes_least_recently_used_first(tmp_path):
    for i, model in enumerate(["a", "b", "c", "d"]):
        _filled(tmp_path, model, age=1000 * (4 - i))  # "a" is the least recently used
    sizes = {
        u["model"]: u["bytes"] for u in (config_usage(s, i) for s, i in list_configs(tmp_path))
    }
    budget = sizes["c"] + sizes["d"]
    report = prune(tmp_path, max_bytes=budget)
    assert [r["model"] for r in report["removed"]] == ["a", "b"]
    assert _models(tmp_path) == ["c", "d"] and report["bytes_after"] <= budget
    assert prune(tmp_path, max_bytes=10**12)["removed"] == []


def test_clear_everything_or_one_model(tmp_path):
    _filled(tmp_path, "a")
    _filled(tmp_path, "b")
    (tmp_path / "not-a-config").mkdir()
    assert clear(tmp_path, dry_run=True)["kept"] == 0 and _models(tmp_path) == ["a", "b"]
    assert [r["model"] for r in clear(tmp_path, model="a")["removed"]] == ["a"]
    assert _models(tmp_path) == ["b"]
    clear(tmp_path)
    assert _models(tmp_path) == [] and (tmp_path / "not-a-config").is_dir()


def test_a_configuration_being_written_or_compacted_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(cnncodes.store.prune, "BUSY_WAIT", 0.05)
    store = _filled(tmp_path, "a")
    with locks.shared_write_lock(store.path, lambda: None):
        report = clear(tmp_path)
    assert report["removed"] == [] and [b["model"] for b in report["busy"]] == ["a"]
    with store._compact_lock(blocking=True):
        assert clear(tmp_path)["busy"]
    assert _models(tmp_path) == ["a"]
    assert clear(tmp_path)["removed"]


def test_a_writer_whose_folder_is_pruned_before_it_locks_commits_into_a_new_one(tmp_path):
    store = _filled(tmp_path, "a")
    real = store._ensure_dir
    pruned = []

    def ensure_then_pruned():
        real()
        if not pruned:  # the first time: a prune renames the folder away right after
            pruned.append(clear(tmp_path))

    store._ensure_dir = ensure_then_pruned
    store.write(_keys(2, start=10), _codes(2, seed=1))
    assert pruned[0]["removed"]
    np.testing.assert_array_equal(store.read(_keys(2, start=10)), _codes(2, seed=1))
    assert not store.contains(_keys(1)).any()  # the pruned rows are gone, the new ones kept


def _read_through(root, stop, results):
    """Read every key again and again through the read-through cache while prunes run."""
    try:
        cache = CodeCache(root, {"x": _config("a")})
        reads = computed = 0
        keys = _keys(8)

        def compute(missing, deliver):
            deliver(missing, {"x": np.stack([_codes(8)[int(k, 16)] for k in missing])})

        while not stop.is_set():
            got = cache.cached(keys, compute, {"x": 4})
            np.testing.assert_array_equal(got.codes["x"], _codes(8))
            reads += 1
            computed += got.computed
        results.put((reads, computed, None))
    except BaseException as exc:  # reported to the test, not lost in the child
        results.put((0, 0, repr(exc)))


def _write_loop(root, stop, results):
    try:
        store = CodeStore(root, _config("w"))
        written = []
        while not stop.is_set():
            start = len(written)
            store.write(_keys(1, start=start), _codes(1, seed=start))
            written.append(start)
        results.put((len(written), None))
    except BaseException as exc:
        results.put((0, repr(exc)))


def test_readers_and_writers_in_other_processes_survive_concurrent_prunes(tmp_path):
    _filled(tmp_path, "a", rows=8)
    ctx = multiprocessing.get_context("fork")  # numpy and h5py only in the children
    stop, reads, writes = ctx.Event(), ctx.Queue(), ctx.Queue()
    procs = [
        ctx.Process(target=_read_through, args=(tmp_path, stop, reads)),
        ctx.Process(target=_write_loop, args=(tmp_path, stop, writes)),
    ]
    for p in procs:
        p.start()
    removed = 0
    try:
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            removed += len(prune(tmp_path, model="a")["removed"])  # never the writer's "w"
            time.sleep(0.01)
    finally:
        stop.set()
        read_outcome, write_outcome = reads.get(timeout=60), writes.get(timeout=60)
        for p in procs:
            p.join(timeout=60)
    assert read_outcome[2] is None and write_outcome[1] is None
    assert read_outcome[0] > 0 and removed > 0
    assert read_outcome[1] > 0  # pruned codes were computed again, not a crash
    n = write_outcome[0]
    store = CodeStore(tmp_path, _config("w"))
    assert n > 0 and store.contains(_keys(n)).all()  # every committed row of "w" kept


def _commit_loop(root, stop, results):
    """Commit rows to "a" and report, after each, whether its rows are readable."""
    try:
        store = CodeStore(root, _config("a"))
        commits = 0
        while not stop.is_set():
            store.write(_keys(1, start=commits), _codes(1, seed=commits))
            commits += 1
            time.sleep(0.002)  # a writer between batches
        results.put((commits, None))
    except BaseException as exc:
        results.put((0, repr(exc)))


def test_a_writer_of_the_configuration_being_pruned_never_fails(tmp_path):
    ctx = multiprocessing.get_context("fork")
    stop, results = ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_commit_loop, args=(tmp_path, stop, results))
    proc.start()
    outcomes = {"removed": 0, "busy": 0}
    try:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            report = prune(tmp_path, model="a")
            outcomes["removed"] += len(report["removed"])
            outcomes["busy"] += len(report["busy"])
    finally:
        stop.set()
        commits, error = results.get(timeout=60)
        proc.join(timeout=60)
    assert error is None and commits > 0
    assert outcomes["removed"] > 0
    # What is left is sound: every shard verifies.
    for store, _ in list_configs(tmp_path):
        assert all(problem is None for _, problem in store.check_shards())


# ----------------------------------------------------------------------------- the command line


def _cli(capsys, *argv):
    from cnncodes import cli

    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_info_names_view_and_last_use(tmp_path, capsys):
    _filled(tmp_path, "resnet18", age=0)
    code, out, _ = _cli(capsys, "cache", "info", "--cache-dir", tmp_path)
    assert code == 0 and "view" in out and "last used" in out and "flip" in out
    code, out, _ = _cli(capsys, "cache", "info", "--cache-dir", tmp_path, "--json")
    (config,) = json.loads(out)["configs"]
    assert config["view"] == "flip" and config["bytes"] > 0 and config["last_used"] > 0


def test_cli_clear_needs_yes_for_everything(tmp_path, capsys):
    _filled(tmp_path, "a")
    _filled(tmp_path, "b")
    code, _, err = _cli(capsys, "cache", "clear", "--cache-dir", tmp_path)
    assert code != 0 and "--yes" in err and str(tmp_path) in err
    assert _models(tmp_path) == ["a", "b"]
    code, out, _ = _cli(capsys, "cache", "clear", "--cache-dir", tmp_path, "--dry-run")
    assert code == 0 and "would remove 2" in out and _models(tmp_path) == ["a", "b"]
    code, out, _ = _cli(capsys, "cache", "clear", "--cache-dir", tmp_path, "--model", "a", "--json")
    assert [r["model"] for r in json.loads(out)["removed"]] == ["a"]
    code, out, _ = _cli(capsys, "cache", "clear", "--cache-dir", tmp_path, "--yes")
    assert code == 0 and "removed 1" in out and _models(tmp_path) == []


def test_cli_prune_by_age_and_size(tmp_path, capsys):
    _filled(tmp_path, "old", age=3 * 86400)
    _filled(tmp_path, "new", age=0)
    code, _, err = _cli(capsys, "cache", "prune", "--cache-dir", tmp_path)
    assert code != 0 and "--older-than" in err
    code, _, err = _cli(capsys, "cache", "prune", "--cache-dir", tmp_path, "--older-than", "3x")
    assert code != 0 and "30d" in err
    argv = ("cache", "prune", "--cache-dir", tmp_path, "--json")
    code, out, _ = _cli(capsys, *argv, "--older-than", "2d", "--dry-run")
    report = json.loads(out)
    assert report["dry_run"] and [r["model"] for r in report["removed"]] == ["old"]
    assert _models(tmp_path) == ["new", "old"]
    code, out, _ = _cli(capsys, *argv, "--max-size", "1KB")
    assert [r["reason"] for r in json.loads(out)["removed"]] == ["size", "size"]
    assert _models(tmp_path) == []


@pytest.mark.parametrize(
    "text, size", [("500MB", 500 * 10**6), ("1.5GiB", int(1.5 * 2**30)), ("1000", 1000)]
)
def test_cli_sizes(text, size):
    from cnncodes.cli.cache import _size

    assert _size(text) == size
