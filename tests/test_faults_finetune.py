"""Fault tests of fine-tuning's writes: a SIGKILL in the middle of the epoch state, a saved model, a
checkpoint.

Each write runs in a child process (forked from a forkserver that has imported cnncodes and torch
once) whose serializer stops at an exact moment: half the file written, before the rename
(tests/_finetune_fault_worker.py). The parent then kills it with ``SIGKILL``, which no code can
intercept, and checks that the name holds what it held before (nothing, or the previous complete
file), and that the next write removes the temporary the killed writer left. The same kill with
the atomic writer swapped for a direct one leaves half a file under the name: the controls show
that these checks catch a write that is not atomic.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time

import numpy as np
import pytest
import torch
from cnncodes.finetune import FineTune, training

from cnncodes import persistence
from cnncodes.utils import files
from tests import _finetune_fault_worker as worker
from tests.conftest import write_images

TINY = dict(model="tests.tiny_nets:tiny_cnn", resize=40, crop=32)
LABELS = np.array(["ant", "bee", "wasp"] * 8)
TRUST = ["tests.tiny_nets:tiny_cnn"]


@pytest.fixture(scope="module")
def ctx():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests._finetune_fault_worker"])
    return context


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("finetune-fault-images"), len(LABELS))


@pytest.fixture(scope="module")
def fitted(paths, tmp_path_factory):
    cache = tmp_path_factory.mktemp("fitted") / "cache"
    settings = dict(**TINY, epochs=1, valid_size=0.25, cache_dir=str(cache))
    return FineTune(**settings).fit(paths, LABELS)


def _killed(ctx, job, *args, atomic=True):
    """Run ``job(*args, conn)`` in a child until its write is half done, then SIGKILL it; the
    path of the half-written file and the child's pid."""
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=job, args=(*args, send), kwargs={"atomic": atomic})
    child.start()
    send.close()
    try:
        assert receive.poll(300), "the child never reached the write"
        try:
            written = receive.recv()
        except EOFError:
            raise AssertionError(f"the child ended ({child.exitcode}) before the write") from None
        assert written != "finished", "the child wrote everything without stopping"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        child.join(60)
        receive.close()
    assert child.exitcode == -signal.SIGKILL
    return written, child.pid


def _age(path):
    """Make a killed writer's temporary older than the grace period of the sweep."""
    old = time.time() - 10 * files.STALE_GRACE_SECONDS
    os.utime(path, (old, old))


def _left_by(temp, name, pid):
    """``temp`` is a half-written temporary of ``name`` that the process ``pid`` named."""
    base = os.path.basename(temp)
    return base.startswith(f".{name}.tmp-{pid}@") and os.path.getsize(temp) > 0


# ----------------------------------------------------------------------------- epoch state


def _params(tmp_path):
    return dict(
        **TINY, freeze="none", epochs=4, valid_size=0.25, cache_dir=str(tmp_path / "cache"),
        checkpoint=str(tmp_path / "run.state"), lr=1e-2,
    )  # fmt: skip


def test_killed_while_writing_the_epoch_state_then_resumed(ctx, paths, tmp_path):
    # Killed half-way through the third epoch's state: the file holds the second epoch's, whole.
    params, state = _params(tmp_path), tmp_path / "run.state"
    temp, pid = _killed(ctx, worker.fit_job, params, paths, LABELS, 3)
    saved = torch.load(state, map_location="cpu", weights_only=True)
    assert saved["epochs"] == 2 and saved["format"] == training.STATE_FORMAT
    assert _left_by(temp, "run.state", pid), temp
    with training.state_lock(str(state)):  # the kernel released the killed run's lock
        pass
    _age(temp)
    resumed = FineTune(**params, resume=True).fit(paths, LABELS)
    assert not os.path.exists(temp)  # swept by the resumed run's first state write
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith(".")) == []
    straight = FineTune(**{**params, "checkpoint": None}).fit(paths, LABELS)
    assert [r["epoch"] for r in resumed.history_] == [1, 2, 3, 4]
    for key in ("train_loss", "valid_loss"):
        np.testing.assert_allclose(
            [r[key] for r in resumed.history_], [r[key] for r in straight.history_], rtol=1e-5
        )
    for key, value in straight.state_dict_.items():
        np.testing.assert_allclose(resumed.state_dict_[key], value, rtol=1e-5, atol=1e-6)
    assert torch.load(state, weights_only=True)["epochs"] == 4


def test_control_a_direct_epoch_state_write_is_caught(ctx, paths, tmp_path):
    # The same kill with the state written straight to its name: half a file that no resume can
    # read. The test above would fail on such a writer.
    params, state = _params(tmp_path), tmp_path / "run.state"
    written, _ = _killed(ctx, worker.fit_job, params, paths, LABELS, 3, atomic=False)
    assert written == str(state)
    with pytest.raises(Exception):  # noqa: B017 - whatever torch raises for half a file
        torch.load(state, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- saved files

_SAVES = {
    "model.skops": worker.save_job,
    "model.joblib": worker.save_job,
    "finetuned.pth": worker.checkpoint_job,
}


def _save(ft, path):
    if path.endswith(".pth"):
        ft.save_checkpoint(path)
    else:
        persistence.save(ft, path)


def _loads(path, ft, paths):
    """The file at ``path`` is a whole model: it loads and predicts as ``ft``."""
    if path.endswith(".pth"):
        saved = torch.load(path, weights_only=True)
        assert saved["finetune"]["classes"] == ["ant", "bee", "wasp"]
        return
    loaded = persistence.load(path, trust_model_code=TRUST)
    np.testing.assert_allclose(loaded.predict_proba(paths), ft.predict_proba(paths), atol=1e-6)


@pytest.mark.parametrize("name", list(_SAVES))
def test_killed_while_saving_leaves_nothing_or_the_previous_file(
    ctx, fitted, paths, tmp_path, name
):
    path = str(tmp_path / name)
    # First save killed half-way: no file under the name, the temporary aside.
    temp, pid = _killed(ctx, _SAVES[name], fitted, path)
    assert not os.path.exists(path)
    assert os.listdir(tmp_path) == [os.path.basename(temp)]
    assert _left_by(temp, name, pid), temp
    _age(temp)
    _save(fitted, path)  # the next save sweeps it
    assert os.listdir(tmp_path) == [name]
    _loads(path, fitted, paths)
    # A save over it killed half-way: the previous file, byte for byte.
    with open(path, "rb") as f:
        before = f.read()
    temp, pid = _killed(ctx, _SAVES[name], fitted, path)
    with open(path, "rb") as f:
        assert f.read() == before
    _loads(path, fitted, paths)
    assert _left_by(temp, name, pid), temp
    _age(temp)
    _save(fitted, path)
    assert os.listdir(tmp_path) == [name]
    _loads(path, fitted, paths)


@pytest.mark.parametrize("name", list(_SAVES))
def test_control_a_direct_save_is_caught(ctx, fitted, paths, tmp_path, name):
    # The same kill with the file written straight to its name leaves half a file there: the
    # test above would fail on such a writer.
    path = str(tmp_path / name)
    written, _ = _killed(ctx, _SAVES[name], fitted, path, atomic=False)
    assert written == path and os.listdir(tmp_path) == [name]
    with pytest.raises(Exception):  # noqa: B017 - whatever the loader raises for half a file
        _loads(path, fitted, paths)
