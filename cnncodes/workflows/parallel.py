"""A grid search's parallel fits (``n_jobs`` other than 1): ready workers, counted fits.

:func:`parallel_search` is the context :func:`~cnncodes.workflows.experiment.run_experiment`
runs a search with ``n_jobs`` in. It answers what made ``cnncodes fit --n-jobs 2`` 2.8x slower
than ``--n-jobs 1`` on cached codes, and silent (bench/RESULTS.md, section 13):

- joblib's loky workers, without psutil installed, call ``gc.collect()`` after a task once a
  second has passed since the last one, to bound leaks; with torch and a network in the worker
  (430,000 objects) each collection takes 0.4 s, a third of the worker's time. Each worker
  therefore imports and resolves the network step once when it starts (:func:`prepare_worker`)
  and then ``gc.freeze()`` s what that made, which the collections then skip;
- each worker would hash every image file again (the digests are memoised per process): the
  parent hands them its digests, with their file stamps, so a file changed since is still
  hashed anew;
- BLAS and torch threads: each worker gets ``cpu_count // n_jobs`` (joblib's
  ``inner_max_num_threads``), said explicitly;
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


def prepare_worker(steps, digests):
    """A loky worker's initializer: resolve every network step of the grid (torch imported, the
    architecture fingerprinted and traced), memoise the parent's image digests, then freeze what
    exists for the garbage collector (see the module's docstring)."""
    from ..images.load import adopt_digests

    for step in steps:
        try:
            step.fit(["unread.jpg"])  # fitting resolves the network and reads no image
        except Exception:  # noqa: BLE001 - a fit in the search reports it, where it belongs
            break
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


def _network_steps(step, prefix, grid):
    """One unfitted clone of a :class:`~cnncodes.CNNCodes` step per setting of its parameters
    in ``grid`` (none for another step: fitting a FineTune trains it)."""
    from sklearn.base import clone
    from sklearn.model_selection import ParameterGrid

    from ..estimators.codes import CNNCodes

    if not isinstance(step, CNNCodes):
        return []
    grids = [grid] if isinstance(grid, dict) else list(grid)
    settings = {}
    for params in ParameterGrid(grids):
        own = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
        settings.setdefault(repr(sorted(own.items())), own)
    return [clone(step).set_params(**own) for own in settings.values()]


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
def parallel_search(pipe, step, prefix, grid, paths, scoring, fits, progress, n_jobs):
    """Context of a search with ``n_jobs`` parallel fits on loky workers: yields the scoring
    to search with (counting fits into a ``grid search`` bar unless ``progress`` is False)."""
    from joblib import parallel_config
    from sklearn.metrics import check_scoring

    from ..images.load import known_digests
    from ..utils.progress import Progress

    cpus = os.cpu_count() or 1
    workers = cpus if n_jobs is None or n_jobs < 0 else min(n_jobs, cpus)
    setup = (_network_steps(step, prefix, grid), known_digests(paths))
    config = parallel_config(
        backend="loky",
        inner_max_num_threads=max(1, cpus // max(1, workers)),
        initializer=prepare_worker,
        initargs=setup,
    )
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
