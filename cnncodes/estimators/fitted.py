"""A fitted model, afterwards: its runtime settings, its moved or changed weights, predictions.

This is what ``cnncodes predict`` runs; the command line only parses, prints and writes files.
A fitted model is a Pipeline with a :class:`~cnncodes.transformers.CNNCodes` step (or a search
over one), usually made by :func:`~cnncodes.experiment.run_experiment` and loaded with
:func:`cnncodes.persistence.load`:

>>> model = persistence.load("model.skops")  # doctest: +SKIP
>>> predict_images(model, new_paths, proba=True).head()  # doctest: +SKIP

Before any image goes through the network, :func:`verify_model` checks that the extractor is
rebuilt exactly as it was fitted (same checkpoint bytes, architecture and preprocessing), so a
prediction never mixes codes of two different networks.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import UsageError
from ..params import ON_ERROR, check_choice
from .search import filter_readable
from .steps import RUNTIME_PARAMS, network_step

__all__ = [
    "RUNTIME_PARAMS",
    "predict_images",
    "relocate_weights",
    "set_runtime",
    "split_pipeline",
    "verify_model",
]


def set_runtime(estimator, **params):
    """Set the runtime parameters of a fitted model's network step; returns ``estimator``.

    Only :data:`~cnncodes.estimators.steps.RUNTIME_PARAMS` may change on a fitted model (batch
    size, workers, device, cache folder, progress, engine, Ray address): what it computes stays
    exactly what it was fitted with. ``estimator`` is a fitted Pipeline, FineTune or search.

    Examples
    --------
    >>> set_runtime(pipe, batch_size=64, device="cpu")  # doctest: +SKIP
    """
    network_step(estimator)[0].set_runtime(**params)
    return estimator


def relocate_weights(estimator, path):
    """Point a fitted model's network step at its checkpoint file in a new place.

    A saved model records the checkpoint's absolute path and SHA-256; on another machine, or
    after the file moved, give its new path here. The file must have the SHA-256 the model was
    fitted with, so the codes (and the cache, keyed by content) stay exactly the same.

    A fitted :class:`~cnncodes.finetune.FineTune` holds its fine-tuned weights itself and never
    reads the checkpoint it started from: it is returned unchanged.

    Raises
    ------
    cnncodes.models.WeightsError
        The file is missing or has other contents (both SHA-256 named).
    ValueError
        The model was not fitted with a checkpoint file.

    Examples
    --------
    >>> model = persistence.load("model.skops")  # doctest: +SKIP
    >>> relocate_weights(model, "/data/weights/finetuned.pth")  # doctest: +SKIP
    """
    network_step(estimator)[0].relocate_weights(path)
    return estimator


def verify_model(estimator):
    """Check that a fitted model's network can be rebuilt exactly as it was fitted.

    A checkpoint file must still have the SHA-256 it had at fit time, and the architecture (for
    the user's own, also the code its ``forward()`` runs) and preprocessing that its names
    resolve to today must equal the fitted ones (a user's model code or a library upgrade can
    change them). A model saved by an older cnncodes, whose fingerprint did not cover
    ``forward()``, is accepted while its modules match, with a warning. Nothing is loaded but
    file hashes and the architecture on the meta device.

    A fitted :class:`~cnncodes.finetune.FineTune` holds its weights and preprocessing itself:
    only its architecture is checked (its weights must still fit the network its name builds).

    Raises
    ------
    cnncodes.models.WeightsError
        The checkpoint is missing or changed (both SHA-256 are named).
    cnncodes.models.ModelError
        The architecture or preprocessing differs (both are named).
    ValueError
        The estimator has no network step (no CNNCodes step, not a FineTune).
    """
    network_step(estimator)[0].verify()


def split_pipeline(estimator):
    """``(feature part, classifier)`` of a Pipeline, so the codes are made once for all
    outputs; ``(None, estimator)`` for a model that reads the images itself."""
    steps = getattr(estimator, "steps", None)
    if steps is not None and len(steps) > 1:
        return estimator[:-1], estimator[-1]
    return None, estimator


def _scores(clf, X, proba, one_pass=False):
    """(predicted labels, score of the predicted class, probabilities or None, score kind).

    ``one_pass``: the model reads the images itself and predicts the most probable class, so
    its probabilities give the labels too (one pass through its network instead of two).
    """
    if one_pass and hasattr(clf, "predict_proba"):
        p = clf.predict_proba(X)
        predicted = clf.classes_[p.argmax(axis=1)]
        return predicted, p.max(axis=1), (p if proba else None), "probability"
    predicted = clf.predict(X)
    if hasattr(clf, "predict_proba"):
        p = clf.predict_proba(X)
        return predicted, p.max(axis=1), (p if proba else None), "probability"
    if hasattr(clf, "decision_function"):
        d = np.asarray(clf.decision_function(X), dtype=np.float64)
        # Binary classifiers give one value, positive for classes_[1]: its size is the margin.
        return predicted, (np.abs(d) if d.ndim == 1 else d.max(axis=1)), None, "decision"
    return predicted, np.full(len(predicted), np.nan), None, "none"


def _model_input(features, step, paths, on_error):
    """(what the model's last step takes for the readable images, {index: reason} of the
    unreadable ones).

    A model that reads the images itself (no feature part: the network step is the model) gets
    the paths its step can read, every file screened before any batch goes through the network.
    When the network step opens the pipeline (the recipes' shape), each image goes through the
    network once, unreadable ones dropped on the way; otherwise they are screened first with
    :func:`~cnncodes.search.filter_readable` (the screening's codes land in the cache, if there
    is one).
    """
    if features is None:
        kept, _, skipped = step.screen(paths)
        if skipped and on_error == "raise":
            from ..images.load import ImageLoadError

            raise ImageLoadError(skipped[0].path, skipped[0].reason)
        return kept, {s.index: s.reason for s in skipped}
    if on_error == "skip" and features.steps[0][1] is step:
        step.set_params(on_error="skip")  # the caller restores it
        result = step.extract(paths)
        errors = {s.index: s.reason for s in result.skipped}
        X = np.asarray(result.concatenated(), dtype=np.float32)
        if not len(X):
            return X, errors
        for _name, transformer in features.steps[1:]:
            if transformer is not None and transformer != "passthrough":
                X = transformer.transform(X)
        return X, errors
    errors = {}
    if on_error == "skip":
        paths, _, skipped = filter_readable(paths, extractor=features)
        errors = {s.index: s.reason for s in skipped}
    if not paths:
        return np.empty((0, 0)), errors
    return features.transform(paths), errors


def predict_images(estimator, paths, *, labels=None, proba=False, on_error="raise"):
    """Predict the class of each image, one row per input image.

    Parameters
    ----------
    estimator : fitted Pipeline with a CNNCodes step, or fitted FineTune
        Or a fitted search (GridSearchCV, ...) over one: its ``best_estimator_`` is used. A
        :class:`~cnncodes.finetune.FineTune` predicts from the images itself (its own weights:
        the checkpoint it started from is not needed).
    paths : sequence of image paths
    labels : sequence, optional
        True labels (a labelled folder): added as ``true_label``.
    proba : bool
        Add one ``proba_<class>`` column per class (classifiers with ``predict_proba`` only).
    on_error : {"raise", "skip"}
        ``"skip"``: an unreadable image gets a row with an empty ``label`` and its ``error``.

    Returns
    -------
    pandas.DataFrame
        ``path``, ``label`` (predicted), ``score`` (probability of the predicted class, or the
        classifier's decision value), ``score_kind``, optionally ``true_label``, ``proba_*`` and,
        with ``on_error="skip"``, ``error``. The text columns hold Python strings (object dtype):
        ``path`` is each path as given, a name that is not UTF-8 included (its undecodable bytes
        as surrogate escapes, as :func:`os.fsdecode` gives them); to print or write one, use
        :func:`cnncodes.utils.files.display`.
    """
    check_choice(on_error, "on_error", ON_ERROR)
    paths = [os.fspath(p) for p in paths]
    estimator = getattr(estimator, "best_estimator_", estimator)
    features, clf = split_pipeline(estimator)
    if proba and not hasattr(clf, "predict_proba"):
        raise UsageError(
            f"the model's classifier ({type(clf).__name__}) gives no probabilities; predict "
            "without proba (a decision score is reported instead)"
        )
    verify_model(estimator)
    classes = [str(c) for c in estimator.classes_]
    step, _ = network_step(estimator)
    previous = step.on_error
    step.set_params(on_error="raise")
    try:
        X, errors = _model_input(features, step, paths, on_error)
        if len(X):
            predicted, score, probabilities, kind = _scores(
                clf, X, proba, one_pass=features is None
            )
        else:
            predicted, score, probabilities, kind = [], [], None, "none"
    finally:
        step.set_params(on_error=previous)
    return _prediction_table(paths, labels, proba, on_error, classes, errors,
                             predicted, score, probabilities, kind)  # fmt: skip


def _prediction_table(paths, labels, proba, on_error, classes, errors, predicted, score,
                      probabilities, kind):  # fmt: skip
    """:func:`predict_images`' DataFrame: one row per input path, in order."""
    import pandas as pd

    rows = []
    k = 0
    for i, path in enumerate(paths):
        row = {"path": path}
        if i in errors:
            row.update(label=None, score=np.nan, score_kind=kind)
        else:
            row.update(label=str(predicted[k]), score=float(score[k]), score_kind=kind)
            if probabilities is not None:
                row.update({f"proba_{c}": float(v) for c, v in zip(classes, probabilities[k])})
            k += 1
        if labels is not None:
            row["true_label"] = str(labels[i])
        if on_error == "skip":
            row["error"] = errors.get(i)
        rows.append(row)
    columns = ["path", "label", "score", "score_kind"]
    if labels is not None:
        columns.append("true_label")
    if proba:
        columns += [f"proba_{c}" for c in classes]
    if on_error == "skip":
        columns.append("error")
    # Object columns, not pandas' UTF-8 string dtype: a path (or class folder) whose name is not
    # UTF-8 stays as the OS gives it (undecodable bytes as surrogate escapes, os.fsencode gives
    # the name back); display it with cnncodes.utils.files.display.
    table = pd.DataFrame(rows, columns=columns, dtype=object)
    return table.astype({c: float for c in columns if c == "score" or c.startswith("proba_")})
