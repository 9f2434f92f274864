"""Jobs that tests/test_faults_finetune.py runs in child processes and kills with SIGKILL.

Each job stops at one exact moment of a write: its serializer (``torch.save``, ``joblib.dump``,
``skops.io.dump``) is wrapped so that the chosen call writes its whole output, cuts the file it
wrote to half its length (a write under way), tells the parent through a pipe and sleeps until
killed. The file it was given is whatever the package's writer passes: a temporary beside the
name when the write is atomic, the name itself when it is not.

The module imports cnncodes and torch at import time so that a forkserver preloads them once.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import joblib
import skops.io
import torch
from cnncodes.finetune import FineTune
from tqdm.auto import tqdm

from cnncodes.estimators import persistence
from cnncodes.utils.files import fsync_path

# tqdm's default lock is a multiprocessing semaphore, which a SIGKILL leaves behind for the
# resource tracker to complain about.
tqdm.set_lock(threading.RLock())


def _pause_in(module, name, signal_conn, call, target=None):
    """Wrap ``module.name(obj, file, ...)``: its ``call``-th call (1-based) that writes ``target``
    (the file, or a temporary of it; None: any file) writes half the file, sends its path on
    ``signal_conn`` and sleeps; the others write as usual."""
    real = getattr(module, name)
    calls = []

    def paused(obj, file, *args, **kwargs):
        real(obj, file, *args, **kwargs)
        if target is not None and not os.path.basename(file).lstrip(".").startswith(target):
            return
        calls.append(file)
        if len(calls) == call:
            size = os.path.getsize(file)
            os.truncate(file, size // 2)  # the first half is on disk, the rest to come
            fsync_path(file)
            signal_conn.send(os.fspath(file))
            signal_conn.close()
            time.sleep(600)  # until the parent's SIGKILL

    setattr(module, name, paused)


def _non_atomic(module):
    """Replace ``module.atomic_path`` with a writer straight to the name (the tests' control)."""

    @contextlib.contextmanager
    def straight(path, prefix=None, suffix=""):
        yield os.fspath(path)

    module.atomic_path = straight


def fit_job(params, paths, labels, call, signal_conn, atomic=True):
    """Fine-tune with ``params``; the ``call``-th epoch state write stops half-way."""
    from cnncodes.estimators.finetune import training

    torch.set_num_threads(1)
    if not atomic:
        _non_atomic(training)
    _pause_in(torch, "save", signal_conn, call, os.path.basename(params["checkpoint"]))
    FineTune(**params).fit(paths, labels)
    signal_conn.send("finished")  # never paused: the test fails on this


def save_job(ft, path, signal_conn, atomic=True):
    """``persistence.save(ft, path)``, stopped half-way through writing the file."""
    torch.set_num_threads(1)
    if not atomic:
        _non_atomic(persistence)
    if path.endswith(".joblib"):
        _pause_in(joblib, "dump", signal_conn, 1)
    else:
        _pause_in(skops.io, "dump", signal_conn, 1)
    persistence.save(ft, path)
    signal_conn.send("finished")


def checkpoint_job(ft, path, signal_conn, atomic=True):
    """``ft.save_checkpoint(path)``, stopped half-way through writing the file."""
    from cnncodes.estimators.finetune import training

    torch.set_num_threads(1)
    if not atomic:
        _non_atomic(training)
    _pause_in(torch, "save", signal_conn, 1)
    ft.save_checkpoint(path)
    signal_conn.send("finished")
