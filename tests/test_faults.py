"""Fault tests: extraction killed with SIGKILL at random moments, and extractors sharing a cache.

The extracting processes are real child processes (forked from a forkserver that has imported
cnncodes once, so each starts in milliseconds); they are killed with ``SIGKILL``, which no code can
intercept. After every kill the cache must hold only intact shards and correct codes; a final run
must compute exactly what is missing and give the codes of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import time

import cnncodes.cache
import numpy as np
import pytest
from cnncodes.cache import CodeStore
from cnncodes.extract import code_config
from conftest import write_images

from cnncodes.images import file_digest
from tests import _fault_worker as worker

N_IMAGES = 72
TOL = dict(rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def ctx():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests._fault_worker"])
    return context


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    sizes = ((48, 40), (40, 56), (64, 64), (44, 44))
    return write_images(tmp_path_factory.mktemp("fault-images"), N_IMAGES, sizes, seed=11)


def _run(ctx, paths, cache_dir, out, commit_rows=3):
    """Run one extraction in a child process to completion; return its codes and counts."""
    p = ctx.Process(target=worker.extract_job, args=(paths, cache_dir, str(out), commit_rows))
    p.start()
    p.join(120)
    assert p.exitcode == 0, f"extraction process exited with {p.exitcode}"
    with open(f"{out}.json") as f:
        return np.load(f"{out}.npy"), json.load(f)


@pytest.fixture(scope="module")
def reference(ctx, images, tmp_path_factory):
    """Codes of an uninterrupted run without cache, and how long a run with the cache takes."""
    folder = tmp_path_factory.mktemp("reference")
    codes, counts = _run(ctx, images, None, folder / "codes")
    assert counts["computed"] == N_IMAGES
    _, timed = _run(ctx, images, str(folder / "cache"), folder / "timed")
    return codes, timed["seconds"]


def _store(cache_dir):
    spec = worker.spec()
    return CodeStore(cache_dir, code_config(spec, worker.LAYER, "avg", "fp32"))


def _check_cache(store, digests, expected):
    """Every shard intact; every stored code is the reference code of its image."""
    assert [problem for _, problem in store.check_shards() if problem] == []
    index = store.index()
    assert set(index) <= set(digests)
    present = [i for i, d in enumerate(digests) if d in index]
    if present:
        stored = store.read([digests[i] for i in present])
        np.testing.assert_allclose(stored, expected[present], **TOL)
    return len(present)


def _no_temporaries(store):
    return [n for n in os.listdir(store.path) if n.startswith(".tmp-")] == []


def test_sigkill_at_random_moments_then_resume(ctx, images, reference, tmp_path, monkeypatch):
    expected, duration = reference
    digests = [file_digest(p) for p in images]
    cache = str(tmp_path / "cache")
    store = _store(cache)
    rng = np.random.default_rng(2024)
    history = []

    def enough(history):
        # At least 5 kills, one of which left a partly filled cache for a later run to resume.
        kills = [rows for killed, rows in history if killed]
        return len(kills) >= 5 and any(0 < rows < N_IMAGES for rows in kills)

    # 8 rounds, and more (up to 20) while a loaded machine's timing made too few kills land.
    rows = 0
    for round_ in range(20):
        if round_ >= 8 and enough(history):
            break
        if rows == N_IMAGES and not enough(history):
            # A run finished before any kill caught it half-way: nothing is left to kill in
            # this cache, so aim again at an empty one.
            cache = str(tmp_path / f"cache{round_}")
            store, rows = _store(cache), 0
        out = tmp_path / f"round{round_}"
        p = ctx.Process(target=worker.extract_job, args=(images, cache, str(out), 3))
        p.start()
        # Aim inside the remaining work (hashing, building, batches, commits, compaction).
        remaining = 1 - rows / N_IMAGES
        time.sleep(rng.uniform(0.25, 1.0) * duration * max(remaining, 0.3))
        if p.is_alive():
            # It may still finish between the check and the signal: the exit code decides.
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        p.join(60)
        assert p.exitcode in (0, -signal.SIGKILL)
        killed = p.exitcode == -signal.SIGKILL
        before, rows = rows, _check_cache(store, digests, expected)
        history.append((killed, rows))
        # A shared machine's speed drifts from the reference run's: follow it, so that kills
        # keep landing half-way (a run that finished early was faster than aimed for; a kill
        # before any new commit, slower).
        if not killed:
            with open(f"{out}.json") as f:
                done = json.load(f)
            if done["computed"]:
                duration = done["seconds"] * N_IMAGES / done["computed"]
        elif rows == before:
            duration *= 1.25
    print(f"run takes {duration:.2f} s; (killed, rows stored) per round: {history}")
    assert sum(killed for killed, _ in history) >= 5, history
    # Some kill left a partly filled cache that a later run had to resume.
    assert any(killed and 0 < rows < N_IMAGES for killed, rows in history), history
    present = history[-1][1]
    codes, counts = _run(ctx, images, cache, tmp_path / "final")
    assert (counts["computed"], counts["cached"]) == (N_IMAGES - present, present), history
    np.testing.assert_allclose(codes, expected, **TOL)
    assert _check_cache(store, digests, expected) == N_IMAGES
    # The killed writers' temporary files are seconds old: no grace period for this sweep.
    monkeypatch.setattr(cnncodes.cache, "STALE_GRACE_SECONDS", 0)
    store.compact()
    assert _no_temporaries(store)
    assert len(store.shard_paths()) == 1 and store.info()["unique"] == N_IMAGES


def test_concurrent_extractors_share_one_cache(ctx, images, reference, tmp_path):
    expected, _ = reference
    cache = str(tmp_path / "cache")
    store = _store(cache)
    jobs = {
        "first": list(range(0, 48)),
        "last": list(range(24, N_IMAGES)),
        "all-reversed": list(range(N_IMAGES))[::-1],
    }
    stop = tmp_path / "stop-compacting"
    compactor = ctx.Process(target=worker.compact_job, args=(cache, store.config, str(stop)))
    procs = {}
    for name, rows in jobs.items():
        out = str(tmp_path / name)
        paths = [images[i] for i in rows]
        procs[name] = ctx.Process(target=worker.extract_job, args=(paths, cache, out, 2))
    compactor.start()
    for p in procs.values():
        p.start()
    for p in procs.values():
        p.join(120)
    stop.touch()
    compactor.join(60)
    merged = int((tmp_path / "stop-compacting.merged").read_text())
    assert {name: p.exitcode for name, p in procs.items()} == dict.fromkeys(jobs, 0)
    assert compactor.exitcode == 0
    computed = 0
    for name, rows in jobs.items():
        codes = np.load(tmp_path / f"{name}.npy")
        np.testing.assert_allclose(codes, expected[rows], **TOL)
        with open(tmp_path / f"{name}.json") as f:
            computed += json.load(f)["computed"]
    # Each image is computed at least once; overlap may be computed twice, never lost.
    assert N_IMAGES <= computed <= 48 + 48 + N_IMAGES
    assert merged > 0  # the compactor really merged shards while the extractors ran
    digests = [file_digest(p) for p in images]
    assert _check_cache(store, digests, expected) == N_IMAGES
    store.compact()
    assert _no_temporaries(store)
    assert len(store.shard_paths()) == 1
    np.testing.assert_allclose(store.read(digests), expected, **TOL)
