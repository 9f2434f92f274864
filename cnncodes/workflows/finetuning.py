"""A fine-tuning run: one :class:`~cnncodes.FineTune` fitted once, evaluated on held-out images.

This is what ``cnncodes finetune`` runs; the command line only parses the options, keeps the
per-epoch state file, prints and writes files. The data side is the experiment's
(:mod:`cnncodes.workflows.rundata`): the same split, checks, duplicate report, held-out metrics
and data entries of the configuration as :func:`~cnncodes.experiment.run_experiment`, whose
:class:`~cnncodes.experiment.ExperimentResult` it returns.

>>> ft = FineTune(model="resnet18", freeze="layer3", epochs=5)  # doctest: +SKIP
>>> result = run_finetune(train.paths, train.labels, ft, test_size=0.25)  # doctest: +SKIP
>>> result.metrics["test"]["accuracy"], result.metrics["training"]["epochs"]  # doctest: +SKIP
(0.95, 5)
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time

import numpy as np

from ..errors import UsageError
from ..estimators import steps as _runs
from ..utils.jsonable import jsonable
from .evaluation import held_out_metrics
from .experiment import ExperimentResult, run_locally
from .rundata import (
    check_on_error,
    data_config,
    library_versions,
    prepare_data,
    renamed_seed,
    report_duplicates,
)

__all__ = [
    "finetune_config",
    "fit_interruptibly",
    "probe_baseline",
    "run_finetune",
    "training_summary",
]

#: Parameters of a FineTune left out of the run's configuration: where its state goes, bars.
_NOT_CONFIG = ("checkpoint", "progress")


def fit_interruptibly(estimator, paths, labels):
    """``estimator.fit(paths, labels)``, where Ctrl-C raises :class:`KeyboardInterrupt` after it.

    skorch ends training quietly on a KeyboardInterrupt (its early stopping raises one), so an
    interrupted fit would otherwise return as if complete: evaluated, saved, its state removed.
    """
    interrupted = []

    def on_interrupt(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_interrupt) if main_thread else None
    try:
        estimator.fit(paths, labels)
    finally:
        if main_thread:  # None: a handler installed outside Python, restored as the default
            signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
    if interrupted:
        raise KeyboardInterrupt
    return estimator


def training_summary(ft):
    """Seconds and images per second of a fitted FineTune's epochs (validation included)."""
    history = ft.history_
    seconds = sum(row.get("dur", 0.0) for row in history)
    images = ft.n_train_ * len(history)
    return {
        "epochs": len(history),
        "train_images": ft.n_train_,
        "fit_seconds": round(ft.fit_seconds_, 3),
        "epoch_seconds": round(seconds, 3),
        "images_per_second": round(images / seconds, 2) if seconds > 0 else None,
        "trunk_cached": bool(ft.trunk_cached_),
    }


def _screen_test(data, on_error):
    """Decode the test images up front, as the training images are: an unreadable one stops
    the run now (``on_error="raise"``), not after the epochs. Returns the skipped ones."""
    from ..estimators.search import filter_readable

    if data.test_paths is None:
        return []
    paths, labels, skipped = filter_readable(data.test_paths, data.test_labels)
    if skipped and on_error == "raise":
        from ..images.load import ImageLoadError

        raise ImageLoadError(skipped[0].path, skipped[0].reason)
    if not paths:
        raise UsageError("no readable test images")
    data.test_paths, data.test_labels = paths, labels
    return skipped


def _validation(ft, labels):
    """How many of the training images the fit holds out for validation, in words."""
    size = ft.valid_size
    if size == "auto":
        from ..estimators.finetune.training import auto_valid_size

        size, _ = auto_valid_size(labels)
    n = math.ceil(size * len(labels)) if size else 0
    return f"{n} of them for validation" if n else "no validation split"


def _fit(ft, data, log):
    """Fit once (in one Ray session with ``engine="ray"``); the fitted model then runs locally."""
    log(
        f"fine-tuning {ft.model} on {len(data.paths)} images ({_validation(ft, data.labels)}): "
        f"freeze={ft.freeze}, {ft.epochs} epoch(s)"
    )
    on_ray = getattr(ft, "engine", "local") == "ray"
    if on_ray:
        from ..extraction.ray_engine import ray_session

        session = ray_session(ft.ray_address)
    else:
        session = contextlib.nullcontext()
    # One Ray session for the run's extractions (the probe's codes, the frozen trunk's).
    with session:
        fit_interruptibly(ft, data.paths, data.labels)
    if on_ray:
        run_locally(ft)


def probe_baseline(ft, data, predicted, log):
    """The fine-tuned model's accuracy beside LP-FT's linear probe's on the same held-out images
    (the test images, else the validation ones), where the probe's codes come from the cache
    anyway: ``init_head="probe"``, or a head trained on cached codes (``freeze="all"``).

    The probe is the one ``init_head="probe"`` starts from: a logistic regression on the
    standardised codes of ``layer_`` of the images ``fit`` trained on (its validation split
    left out). A run that ends below it is said in one line to ``log``. Returns
    ``{"images", "n", "probe_accuracy", "finetune_accuracy", "below_probe"}``, or None where
    there is no probe to compare with (or no held-out image).

    ``predicted``: the fine-tuned model's predictions of ``data.test_paths`` (None: no test).
    """
    head_on_codes = ft.freeze == "all" and getattr(ft, "trunk_cached_", False)
    if not (ft.init_head == "probe" or head_on_codes) or ft.cache_dir in (None, False):
        return None
    from ..estimators.finetune.plan import fit_probe
    from ..estimators.finetune.training import stratified_split

    classes = np.asarray([str(c) for c in ft.classes_])
    train = ft.extract(data.paths, on_error="skip")  # what fit read: cached
    codes = train.codes[ft.layer_]
    labels = np.asarray([str(c) for c in np.asarray(data.labels)[train.kept]])
    index = {c: i for i, c in enumerate(classes)}
    encoded = np.array([index[c] for c in labels], dtype=np.int64)  # fit's encoding
    fit_rows, valid_rows = stratified_split(encoded, ft.valid_size_, ft.seed)
    probe = fit_probe(codes[fit_rows], encoded[fit_rows])
    if predicted is not None:
        test = ft.extract(data.test_paths, on_error="skip")
        truth = np.asarray([str(c) for c in np.asarray(data.test_labels)[test.kept]])
        mine = np.asarray([str(c) for c in np.asarray(predicted)[test.kept]])
        theirs = classes[probe.predict(test.codes[ft.layer_])]
        images = "test"
    elif len(valid_rows):
        truth = labels[valid_rows]
        kept_paths = [data.paths[i] for i in train.kept]
        mine = np.asarray([str(c) for c in ft.predict([kept_paths[i] for i in valid_rows])])
        theirs = classes[probe.predict(codes[valid_rows])]
        images = "validation"
    else:
        return None
    result = {
        "images": images,
        "n": len(truth),
        "probe_accuracy": round(float(np.mean(theirs == truth)), 4),
        "finetune_accuracy": round(float(np.mean(mine == truth)), 4),
    }
    result["below_probe"] = result["finetune_accuracy"] < result["probe_accuracy"]
    if result["below_probe"]:
        log(
            f"fine-tuning ended below the linear probe on the same {result['n']} {images} "
            f"images: accuracy {result['finetune_accuracy']:.3f}, the probe's "
            f"{result['probe_accuracy']:.3f} (a logistic regression on the codes of "
            f"{ft.layer_}, what init_head='probe' starts from)"
        )
    return result


def run_finetune(
    paths,
    labels,
    estimator,
    *,
    test=None,
    test_size=None,
    random_state=0,
    on_error=None,
    log=None,
    seed=None,
):
    """Fine-tune ``estimator`` once on labelled images and evaluate it on held-out ones.

    Parameters
    ----------
    paths, labels : sequences
        The training images (all of them, when ``test_size`` splits off the test images).
    estimator : FineTune
        Unfitted; fitted in place (its own ``valid_size`` holds out the validation images of
        every epoch; ``checkpoint`` and ``resume`` keep and continue the per-epoch state).
    test : (paths, labels), optional
        Held-out images.
    test_size : float, optional
        Instead of ``test``: hold out this stratified fraction of ``paths``, seeded by
        ``random_state`` (the split :func:`~cnncodes.experiment.run_experiment` makes).
    random_state : int, default 0
        Seed of the test split (the estimator's own ``seed`` seeds its training).
    on_error : {"raise", "skip"}, optional
        Unreadable test images stop the run before training, or are left out and reported
        (default: the estimator's ``on_error``, which also rules the training images).
    log : callable, optional
        Receives one-line notes on what is happening.
    seed : int, optional
        Deprecated name of ``random_state`` (a FutureWarning).

    Returns
    -------
    ExperimentResult
        ``estimator``: the fitted FineTune; ``metrics``: ``test`` (held-out metrics or None),
        ``duplicates``, ``history`` (one row per epoch), ``training``
        (:func:`training_summary`) and ``probe`` (:func:`probe_baseline`: the linear probe's
        accuracy beside the fine-tuned model's, or None); ``config``: what reproduces the run; ``skipped``:
        ``{"train": [], "test": [...]}``. ``search``, ``table`` and ``layers`` are None.

    Raises
    ------
    KeyboardInterrupt
        Ctrl-C during training (the state kept by ``checkpoint`` stays for ``resume``).
    """
    log = log or (lambda line: None)
    started = time.perf_counter()
    ft, _ = _runs.network_step(estimator)
    on_error = ft.on_error if on_error is None else on_error
    check_on_error(on_error)
    random_state = renamed_seed(seed, random_state, "run_finetune")
    data = prepare_data(paths, labels, test=test, test_size=test_size, seed=random_state)
    skipped = {"train": [], "test": _screen_test(data, on_error)}
    _fit(ft, data, log)
    duplicates = report_duplicates(data, log)
    metrics = {
        "test": None,
        "duplicates": duplicates,
        "history": ft.history_,
        "training": training_summary(ft),
    }
    if data.test_paths is not None:
        log(f"evaluating on {len(data.test_paths)} test images")
        classes = [str(c) for c in ft.classes_]
        predicted = ft.predict(data.test_paths)
        overlap = duplicates["test_in_train"] or 0
        metrics["test"] = held_out_metrics(data.test_labels, predicted, classes, overlap)
    else:
        predicted = None
    metrics["probe"] = probe_baseline(ft, data, predicted, log)
    return ExperimentResult(
        search=None,
        estimator=ft,
        recipe="finetune",
        metrics=metrics,
        table=None,
        layers=None,
        config=finetune_config(ft, data),
        skipped=skipped,
        seconds=time.perf_counter() - started,
    )


def finetune_config(ft, data):
    """The configuration of a fine-tuning run: the command line, the FineTune's parameters, its
    network and preprocessing, the split, the data and the versions (JSON-ready)."""
    params = {k: v for k, v in ft.get_params().items() if k not in _NOT_CONFIG}
    return {
        "argv": list(sys.argv),
        "params": jsonable(params),
        "extractor": jsonable(ft.spec_.to_dict()),
        "preprocessing_source": dict(ft.spec_.preprocessing.source),
        "layer": ft.layer_,
        "split": data.split,
        **data_config(data.paths, data.labels, data.test_paths, data.test_labels),
        "versions": library_versions(),
    }
