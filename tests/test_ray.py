"""The Ray engine: same codes as the local engine, one cache for many nodes, faults, grid search.

One local Ray (2 CPUs, a small object store) serves the module; the multi-node test, last, makes
its own cluster of two nodes on this machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import joblib
import numpy as np
import pytest
from cnncodes.extract import extract_codes
from cnncodes.models import resolve_spec
from conftest import ROOT, write_classes, write_images
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from cnncodes import CNNCodes, warm_cache
from cnncodes.errors import UsageError
from cnncodes.extraction.ray_engine import CodeWriter
from cnncodes.images import ImageLoadError

ray = pytest.importorskip("ray")

LAYERS = ["relu1", "pool"]


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """A local Ray for the module; the test networks' switches in the environment of its workers."""
    if ray.is_initialized():
        ray.shutdown()
    armed = tmp_path_factory.mktemp("armed") / "exit"
    env = {
        "CNNCODES_TEST_DRIVER_PID": str(os.getpid()),
        "CNNCODES_TEST_EXIT_ARMED": str(armed),
        "CNNCODES_TEST_SLOW_SECONDS": "0.4",
        # The workers import the test networks as "tests.tiny_nets".
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=150 * 2**20)
    try:
        yield armed
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def spec():
    return resolve_spec("tests.tiny_nets:tiny_cnn", None, resize=40, crop=32)


def _rows(cache_dir):
    """Rows committed per configuration folder (every shard counted, duplicates included)."""
    rows = {}
    for config in sorted(os.listdir(cache_dir)):
        folder = os.path.join(cache_dir, config)
        for name in os.listdir(folder):
            if name.endswith(".h5"):
                with h5py.File(os.path.join(folder, name), "r") as f:
                    rows[config] = rows.get(config, 0) + f["keys"].shape[0]
    return rows


def _assert_same(a, b):
    assert list(a.codes) == list(b.codes)
    for layer in a.codes:
        np.testing.assert_array_equal(a.codes[layer], b.codes[layer])
    np.testing.assert_array_equal(a.kept, b.kept)
    assert a.skipped == b.skipped


def test_same_codes_as_the_local_engine_and_the_same_skipped_images(
    ray_local, spec, with_bad, tmp_path
):
    paths, _, bad = with_bad
    local = extract_codes(paths, spec, LAYERS, cache_dir=None, on_error="skip")
    on_ray = extract_codes(
        paths, spec, LAYERS, cache_dir=tmp_path / "c", on_error="skip", engine="ray"
    )
    _assert_same(local, on_ray)
    assert [s.path for s in on_ray.skipped] == [bad]
    assert (on_ray.computed, on_ray.cached) == (12, 0)
    # Every image committed once per layer; the second run reads them all.
    assert list(_rows(tmp_path / "c").values()) == [12, 12]
    again = extract_codes(
        paths, spec, LAYERS, cache_dir=tmp_path / "c", on_error="skip", engine="ray"
    )
    _assert_same(local, again)
    assert (again.computed, again.cached) == (0, 12)


def test_impl_torch_decodes_in_the_actors_with_the_same_codes(ray_local, images, tmp_path, capsys):
    # impl="torch" decodes on the extraction device, so in the actor, as the local engine does.
    torch_spec = resolve_spec("tests.tiny_nets:tiny_cnn", None, resize=40, crop=32, impl="torch")
    local = extract_codes(images, torch_spec, LAYERS, cache_dir=None)
    capsys.readouterr()
    on_ray = extract_codes(
        images, torch_spec, LAYERS, cache_dir=tmp_path / "c", engine="ray", progress=True
    )
    _assert_same(local, on_ray)
    # One progress report over every actor, counted by the driver.
    assert "extracting on Ray: 12/12 images" in capsys.readouterr().err


def test_a_file_rewritten_after_hashing_gets_the_codes_of_its_new_content(
    ray_local, spec, images, tmp_path, monkeypatch, forward_counter
):
    from cnncodes.extraction import ray_engine

    real = ray_engine.ray_file_digests

    def stale(ray_, paths):  # image 3 as it was when hashed: other bytes than the actors read
        digests = real(ray_, paths)
        digests[3] = "f" * 64
        return digests

    monkeypatch.setattr(ray_engine, "ray_file_digests", stale)
    local = extract_codes(images, spec, LAYERS, cache_dir=None)
    assert forward_counter.builds == 1
    on_ray = extract_codes(images, spec, LAYERS, cache_dir=tmp_path / "c", engine="ray")
    _assert_same(local, on_ray)
    assert on_ray.computed == 12
    # Read back from what the actor stored, not recomputed by this process.
    assert forward_counter.builds == 1


def test_a_bad_image_raises_the_same_error_and_keeps_the_other_codes(
    ray_local, spec, with_bad, tmp_path
):
    paths, _, bad = with_bad
    with pytest.raises(ImageLoadError) as local:
        extract_codes(paths, spec, LAYERS, cache_dir=None)
    with pytest.raises(ImageLoadError) as on_ray:
        extract_codes(paths, spec, LAYERS, cache_dir=tmp_path / "c", engine="ray")
    assert (on_ray.value.path, on_ray.value.reason) == (local.value.path, local.value.reason)
    assert on_ray.value.path == bad
    good = [p for p in paths if p != bad]
    kept = extract_codes(good, spec, LAYERS, cache_dir=tmp_path / "c", engine="ray")
    assert (kept.computed, kept.cached) == (0, 12)  # nothing computed was lost


def test_estimator_on_ray_without_a_cache_uses_a_temporary_folder(ray_local, images):
    params = dict(model="tests.tiny_nets:tiny_cnn", layer=LAYERS, resize=40, crop=32)
    local = CNNCodes(cache_dir=None, **params).fit_transform(images)
    on_ray = CNNCodes(cache_dir=None, engine="ray", **params).fit_transform(images)
    np.testing.assert_array_equal(local, on_ray)


def test_views_on_ray_are_the_local_engines_views(ray_local, images, tmp_path, monkeypatch):
    params = dict(model="tests.tiny_nets:tiny_cnn", layer=LAYERS, resize=40, crop=32)
    local = CNNCodes(cache_dir=None, views="flip", view_reduce="stack", **params)
    on_ray = CNNCodes(
        cache_dir=tmp_path / "c", views="flip", view_reduce="stack", engine="ray", **params
    )
    codes = on_ray.fit_transform(images)
    assert codes.shape[:2] == (12, 2)
    np.testing.assert_array_equal(local.fit_transform(images), codes)
    # Every view's codes committed by the actors under its own configuration.
    assert sorted(_rows(tmp_path / "c").values()) == [12, 12, 12, 12]


def test_a_killed_actor_is_restarted_and_its_block_retried(ray_local, images, tmp_path):
    dying = resolve_spec("tests.tiny_nets:exiting_cnn", None, resize=40, crop=32)
    local = extract_codes(images, dying, ["pool"], cache_dir=None)
    ray_local.write_text("armed")
    on_ray = extract_codes(images, dying, ["pool"], cache_dir=tmp_path / "c", engine="ray")
    assert not ray_local.exists(), "no actor died: the test network was never armed"
    _assert_same(local, on_ray)
    assert on_ray.computed == 12
    # The dead actor committed nothing of its block: no row stored twice.
    assert list(_rows(tmp_path / "c").values()) == [12]


_DRIVER = """
import sys
import ray
from cnncodes.extract import extract_codes
from cnncodes.models import resolve_spec
ray.init(address=sys.argv[1])
spec = resolve_spec("tests.tiny_nets:slow_cnn", None, resize=40, crop=32)
extract_codes(sys.argv[3:], spec, ["pool"], cache_dir=sys.argv[2], engine="ray", ray_actors=1)
print("finished", flush=True)
"""


def test_a_killed_driver_leaves_its_shards_and_a_rerun_computes_the_rest(ray_local, tmp_path):
    paths = write_images(tmp_path / "img", 16, seed=3)
    slow = resolve_spec("tests.tiny_nets:slow_cnn", None, resize=40, crop=32)
    cache = tmp_path / "c"
    address = ray.get_runtime_context().gcs_address
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, address, str(cache), *paths],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while not (cache.is_dir() and _rows(cache)) and time.monotonic() < deadline:
            assert driver.poll() is None, "the driver ended before committing anything"
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    committed = sum(_rows(cache).values())
    assert 0 < committed < 16
    rerun = extract_codes(paths, slow, ["pool"], cache_dir=cache, engine="ray")
    assert rerun.cached >= committed and rerun.computed == 16 - rerun.cached
    _assert_same(extract_codes(paths, slow, ["pool"], cache_dir=None), rerun)


def test_grid_search_through_the_ray_backend(ray_local, images, labels, tmp_path):
    from ray.util.joblib import register_ray

    register_ray()
    pipe = make_pipeline(
        CNNCodes(
            "tests.tiny_nets:tiny_cnn", layer="pool", resize=40, crop=32, cache_dir=tmp_path / "c"
        ),
        LogisticRegression(max_iter=500),
    )
    grid = {"cnncodes__layer": ["relu1", "pool"], "logisticregression__C": [0.1, 10.0]}
    serial = GridSearchCV(pipe, grid, cv=3, n_jobs=1).fit(images, labels)
    search = GridSearchCV(pipe, grid, cv=3, n_jobs=2)
    warm_cache(search, images)
    rows = _rows(tmp_path / "c")
    with joblib.parallel_backend("ray"):
        search.fit(images, labels)
    assert search.best_params_ == serial.best_params_
    for key in ("mean_test_score", "split0_test_score", "split2_test_score"):
        np.testing.assert_array_equal(search.cv_results_[key], serial.cv_results_[key])
    assert _rows(tmp_path / "c") == rows  # the Ray workers read the codes, computed none


def test_devices_the_ray_engine_cannot_use_are_refused(ray_local, spec, images):
    with pytest.raises(ValueError, match=r"device='tpu': engine='ray' takes 'auto', 'cpu' or"):
        extract_codes(images, spec, LAYERS, cache_dir=None, engine="ray", device="tpu")
    with pytest.raises(ValueError, match=r"device='cuda': the Ray cluster has no GPU"):
        extract_codes(images, spec, LAYERS, cache_dir=None, engine="ray", device="cuda")


def test_an_unwritable_cache_folder_is_refused_naming_it(ray_local, spec, images, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    folder = str(blocker / "cache")
    with pytest.raises(OSError, match=f"cannot write to the cache folder {folder}"):
        extract_codes(images, spec, LAYERS, cache_dir=folder, engine="ray")
    # A worker checks it too when it starts (another node may not see the folder).
    configs = {layer: {"layer": layer} for layer in LAYERS}
    with pytest.raises(OSError, match=f"Ray worker on .*cannot write to the cache folder {folder}"):
        CodeWriter(spec, LAYERS, "avg", "fp32", 8, "cpu", folder, configs)


def test_codes_committed_where_the_driver_cannot_see_them_are_reported(
    ray_local, spec, images, tmp_path, monkeypatch
):
    from cnncodes.extraction import ray_engine

    def elsewhere(ray_, items, *args, **kwargs):  # as workers writing to their own disks
        return {digest: digest for digest, _ in items}, {}

    monkeypatch.setattr(ray_engine, "run_on_ray", elsewhere)
    folder = str(tmp_path / "c")
    with pytest.raises(OSError, match=f"codes of 12 image.s. to {folder}, which this process"):
        extract_codes(images, spec, LAYERS, cache_dir=folder, engine="ray")


def test_a_cluster_of_two_nodes_computes_every_image_once_into_one_cache(spec, tmp_path):
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    paths = write_images(tmp_path / "img", 12, seed=5)
    local = extract_codes(paths, spec, LAYERS, cache_dir=None)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 100 * 2**20},
    )
    try:
        cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)
        ray.init(address=cluster.address)
        with pytest.raises(ValueError, match="cache_dir=None with engine='ray' on a cluster of 2"):
            extract_codes(paths, spec, LAYERS, cache_dir=None, engine="ray")
        on_ray = extract_codes(paths, spec, LAYERS, cache_dir=tmp_path / "c", engine="ray")
    finally:
        ray.shutdown()
        cluster.shutdown()
    _assert_same(local, on_ray)
    assert on_ray.computed == 12
    assert list(_rows(tmp_path / "c").values()) == [12, 12]


DIGITS = [
    "--model", "cnncodes.demo_data:digits_net",
    "--resize", "32", "--crop", "32", "--mean", "0.5", "--std", "0.5", "--num-workers", "0",
]  # fmt: skip


def test_cli_extract_and_fit_with_engine_ray(ray_local, capsys, photos):
    from tests.test_cli import assert_one_line_error, run

    data, out = photos / "photos", {}
    for engine in ("local", "ray"):
        cache = photos / f"cache-{engine}"
        code, _, err = run(
            capsys, "extract", data, *DIGITS, "--cache-dir", cache, "--engine", engine,
            "--out", photos / f"{engine}.npz",
        )  # fmt: skip
        assert code == 0, err
        code, text, err = run(
            capsys, "fit", data, "--pipeline", "linear_probe", *DIGITS, "--cv", "2",
            "--cache-dir", cache, "--engine", engine, "--json", "--out", photos / f"{engine}.skops",
        )  # fmt: skip
        assert code == 0, err
        out[engine] = json.loads(text)
        assert "codes: 0 image codes computed, 16 from the cache" in err  # extract filled it
    local, on_ray = np.load(photos / "local.npz"), np.load(photos / "ray.npz")
    np.testing.assert_array_equal(local["codes"], on_ray["codes"])
    assert out["ray"]["metrics"]["best_params"] == out["local"]["metrics"]["best_params"]
    scores = {
        engine: [{k: v for k, v in row.items() if k != "fit_seconds"} for row in o["candidates"]]
        for engine, o in out.items()
    }
    assert scores["ray"] == scores["local"]
    # The saved model extracts locally wherever it is used.
    from cnncodes import persistence

    saved = persistence.load(photos / "ray.skops")
    assert saved.named_steps["cnncodes"].engine == "local"
    code, _, err = run(capsys, "extract", data, *DIGITS, "--address", "auto")
    assert code == 2
    assert_one_line_error(err, "--address 'auto' applies only to --engine ray")


def test_fine_tuning_reads_codes_the_ray_actors_computed(ray_local, images, labels, tmp_path):
    from cnncodes.finetune import FineTune

    params = dict(
        model="tests.tiny_nets:tiny_cnn", resize=40, crop=32, freeze="all", augment="none",
        init_head="probe", epochs=2, valid_size=0.25, progress=False,
    )  # fmt: skip
    local = FineTune(cache_dir=tmp_path / "local", **params).fit(images, labels)
    on_ray = FineTune(cache_dir=tmp_path / "ray", engine="ray", **params).fit(images, labels)
    # The codes (the probe's, the frozen trunk's) were committed by the actors, under the key
    # fit reads, and are the local engine's bit for bit.
    assert list(_rows(tmp_path / "ray").values()) == [12]
    assert on_ray.trunk_cached_
    read = {
        name: extract_codes(images, on_ray.spec_, [on_ray.layer_], cache_dir=tmp_path / name)
        for name in ("local", "ray")
    }
    assert read["local"].computed == read["ray"].computed == 0
    _assert_same(read["local"], read["ray"])
    # The same run; the training's float sums may round apart in the last bits (seen: 4e-9).
    np.testing.assert_allclose(
        [h["train_loss"] for h in on_ray.history_],
        [h["train_loss"] for h in local.history_],
        rtol=1e-6,
    )
    np.testing.assert_allclose(on_ray.predict_proba(images), local.predict_proba(images), 1e-5)


def test_cli_finetune_with_engine_ray_saves_a_model_that_extracts_locally(
    ray_local, capsys, photos
):
    from cnncodes import persistence
    from tests.test_cli import run

    code, _, err = run(
        capsys, "finetune", photos / "photos", *DIGITS, "--freeze", "all", "--augment", "none",
        "--init-head", "probe", "--epochs", "1", "--test", photos / "test",
        "--cache-dir", photos / "cache", "--engine", "ray", "--out", photos / "ft.skops",
    )  # fmt: skip
    assert code == 0, err
    # The 16 training images' codes, by the actors, and the 6 test images' (the score reads them).
    assert list(_rows(photos / "cache").values()) == [22]
    assert persistence.load(photos / "ft.skops").engine == "local"


def test_non_finite_codes_are_skipped_or_raised_as_locally_and_never_cached(ray_local, tmp_path):
    paths, labels = write_classes(tmp_path / "images", per_class=3)
    spec = resolve_spec("tests.tiny_nets:nan_for_bright_cnn", "none", resize=40, crop=32)
    local = extract_codes(paths, spec, "penultimate", cache_dir=None, on_error="skip")
    on_ray = extract_codes(
        paths, spec, "penultimate", cache_dir=tmp_path / "c", on_error="skip", engine="ray"
    )
    _assert_same(local, on_ray)
    assert len(on_ray.skipped) == 3 and "non-finite" in on_ray.skipped[0].reason
    assert list(_rows(tmp_path / "c").values()) == [3]
    with pytest.raises(UsageError, match="non-finite codes .* first for image .*bright"):
        extract_codes(paths, spec, "penultimate", cache_dir=tmp_path / "c", engine="ray")
