"""A grid search's parallel fits (``n_jobs`` other than 1): cheap workers, counted fits.

:func:`parallel_search` is the context :func:`~cnncodes.workflows.experiment.run_experiment`
runs a search with ``n_jobs`` in. It answers what made ``cnncodes fit --n-jobs 2`` 2.8x slower
than ``--n-jobs 1`` on cached codes, and silent (bench/RESULTS.md, section 14):

- the fits of a :class:`~cnncodes.CNNCodes` pipeline only read the warm cache, and each loky
  worker process first imports scikit-learn, torch and cnncodes and resolves the network
  (about 10 s of CPU each on a loaded 2-core machine, where the whole sequential search took
  17 s), then hashes every image file and reads the shards again (the memos are per process).
  So those fits run on joblib's *threading* backend: no start-up, the parent's memos (digests,
  resolved network, shard codes) shared, and the GIL released where the work is (libsvm, BLAS).
  BLAS threads are limited to ``cpu_count // n_jobs`` per fit meanwhile (threadpoolctl);
- other network steps (a FineTune trains in its fits) keep loky's processes, each prepared
  once when it starts (:func:`prepare_worker`): the step's modules (torch) imported, the
  parent's image digests memoised, then ``gc.freeze()``. Without psutil, loky calls ``gc.collect()`` after a
  task once a second has passed, which with torch loaded (430,000 objects) took 0.4 s each;
  frozen objects are skipped. Each worker gets ``cpu_count // n_jobs`` BLAS and torch threads;
- progress: a scorer in a worker cannot reach the parent's bar, so each scored fit appends one
  byte to a tally file, and a thread of the parent reads its size into the same
  ``grid search: N/M fits`` bar or lines as a sequential search.
"""

from __future__ import annotations

import contextlib
import gc
import os
import tempfile
import threading

__all__ = ["TallyScorer", "parallel_search", "prepare_worker"]


def prepare_worker(modules, digests):
    """A loky worker's initializer: import ``modules`` (the network step's, and with it torch),
    memoise the parent's image digests, then freeze what exists for the garbage collector
    (see the module's docstring)."""
    import importlib

    from ..images.load import adopt_digests

    for name in modules:
        importlib.import_module(name)
    adopt_digests(digests)
    gc.collect()
    gc.freeze()


class TallyScorer:
    """A scorer that counts each call by appending one byte to the file ``tally`` (any
    process: the parent reads the count from the file's size)."""

    def __init__(self, scorer, tally):
        self.scorer = scorer
        self.tally = tally

    def __call__(self, estimator, X, y):
        score = self.scorer(estimator, X, y)
        fd = os.open(self.tally, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, b".")
        finally:
            os.close(fd)
        return score


def _follow(tally, bar, stop, every=0.25):
    """Move ``bar`` to the tally's count until ``stop`` is set, then once more."""
    while True:
        stopping = stop.wait(every)
        try:
            count = os.stat(tally).st_size
        except FileNotFoundError:
            count = 0
        if count > bar.done:
            bar.update(count - bar.done)
        if stopping:
            return


@contextlib.contextmanager
def _threads(inner):
    from joblib import parallel_config
    from threadpoolctl import threadpool_limits

    with parallel_config(backend="threading"), threadpool_limits(inner):
        yield


def _backend(step, paths, n_jobs):
    """The joblib context of the search's fits (see the module's docstring)."""
    from joblib import parallel_config

    from ..estimators.codes import CNNCodes
    from ..images.load import known_digests

    cpus = os.cpu_count() or 1
    workers = cpus if n_jobs is None or n_jobs < 0 else min(n_jobs, cpus)
    inner = max(1, cpus // max(1, workers))
    if isinstance(step, CNNCodes):
        return _threads(inner)
    return parallel_config(
        backend="loky",
        inner_max_num_threads=inner,
        initializer=prepare_worker,
        initargs=([type(step).__module__], known_digests(paths)),
    )


@contextlib.contextmanager
def parallel_search(pipe, step, paths, scoring, fits, progress, n_jobs):
    """Context of a search with ``n_jobs`` parallel fits (threads for a CNNCodes step, else
    loky processes): yields the scoring to search with, counting fits into a ``grid search``
    bar unless ``progress`` is False."""
    from sklearn.metrics import check_scoring

    from ..utils.progress import Progress

    config = _backend(step, paths, n_jobs)
    if progress is False:
        with config:
            yield scoring
        return
    with tempfile.TemporaryDirectory(prefix="cnncodes-fits-") as folder:
        tally = os.path.join(folder, "tally")
        open(tally, "wb").close()
        stop = threading.Event()
        with Progress(fits, "grid search", "fits", "fit", progress) as bar:
            follower = threading.Thread(target=_follow, args=(tally, bar, stop), daemon=True)
            follower.start()
            try:
                with config:
                    yield TallyScorer(check_scoring(pipe, scoring=scoring), tally)
            finally:
                stop.set()
                follower.join()
