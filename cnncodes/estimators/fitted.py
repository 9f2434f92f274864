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
import sys
import warnings

import numpy as np

from ..errors import UsageError
from ..networks.models import spec_of
from ..spec import ModelError
from .search import _find_codes_step, filter_readable

__all__ = [
    "RUNTIME_PARAMS",
    "predict_images",
    "relocate_weights",
    "set_runtime",
    "verify_model",
]

#: CNNCodes parameters that change how codes are computed but never their values (nor the cache
#: key): the only ones :func:`set_runtime` changes on a fitted model.
RUNTIME_PARAMS = ("batch_size", "num_workers", "device", "cache_dir", "progress")


def set_runtime(estimator, **params):
    """Set the runtime parameters of a fitted pipeline's extractor; returns ``estimator``.

    Only :data:`RUNTIME_PARAMS` may change on a fitted model (batch size, workers, device,
    cache folder, progress): what it computes stays exactly what it was fitted with. A fitted
    :class:`~cnncodes.finetune.FineTune` takes the same parameters itself.

    Examples
    --------
    >>> set_runtime(pipe, batch_size=64, device="cpu")  # doctest: +SKIP
    """
    unknown = sorted(set(params) - set(RUNTIME_PARAMS))
    if unknown:
        raise UsageError(
            f"set_runtime: {', '.join(map(repr, unknown))} would change the model's codes; "
            f"only {', '.join(RUNTIME_PARAMS)} may change on a fitted model"
        )
    estimator = getattr(estimator, "best_estimator_", estimator)
    if is_fine_tune(estimator):  # the network is the estimator: same parameters
        return estimator.set_params(**params)
    _, prefix = _find_codes_step(estimator)
    estimator.set_params(**{f"{prefix}{k}": v for k, v in params.items()})
    return estimator


def relocate_weights(estimator, path):
    """Point a fitted pipeline's extractor at its checkpoint file in a new place.

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
    import dataclasses

    from sklearn.utils.validation import check_is_fitted

    if is_fine_tune(getattr(estimator, "best_estimator_", estimator)):
        return estimator
    step, _ = _find_codes_step(getattr(estimator, "best_estimator_", estimator))
    check_is_fitted(step)
    spec = step.spec_
    if spec.weights_spec.kind != "checkpoint":
        raise UsageError(
            f"weights={os.fspath(path)!r}: this model was fitted with {spec.weights_id}, not a "
            "checkpoint file, so there is no file to relocate"
        )
    path = spec.weights_spec.verify(path)
    step.weights = path
    step.spec_ = dataclasses.replace(spec, weights=path)
    return estimator


def verify_model(estimator):
    """Check that a fitted pipeline's extractor can be rebuilt exactly as it was fitted.

    A checkpoint file must still have the SHA-256 it had at fit time, and the architecture (for
    the user's own, also the code its ``forward()`` runs) and preprocessing that its names
    resolve to today must equal the fitted ones (a user's model code or a library upgrade can
    change them). A model saved by an older cnncodes, whose fingerprint did not cover
    ``forward()``, is accepted while its modules match, with a warning. Nothing is loaded but
    file hashes and the architecture on the meta device.

    Raises
    ------
    cnncodes.models.WeightsError
        The checkpoint is missing or changed (both SHA-256 are named).
    cnncodes.models.ModelError
        The architecture or preprocessing differs (both are named).
    ValueError
        The estimator has no fitted CNNCodes step.

    A fitted :class:`~cnncodes.finetune.FineTune` holds its weights and preprocessing itself:
    only its architecture is checked (its weights must still fit the network its name builds).
    """
    from sklearn.utils.validation import check_is_fitted

    if is_fine_tune(estimator):
        from ..networks.architectures import _arch_id

        check_is_fitted(estimator, "state_dict_")
        fitted = estimator.spec_
        now = _arch_id(fitted.model, fitted.weights_spec.name, fitted.model_kwargs)
        if now != fitted.arch_id:
            raise ModelError(
                f"{fitted.model} no longer builds the architecture this fine-tuned model was "
                f"trained on (fingerprint {fitted.arch_id} at fit time, {now} now; its modules "
                "or its forward() code changed); fine-tune again"
            )
        return
    step, _ = _find_codes_step(estimator)
    check_is_fitted(step)
    step._verify_weights()
    fitted = step.spec_
    weights = fitted.weights if fitted.weights_spec.kind != "callable" else None
    now = spec_of(step, model=fitted.model, weights=weights, seed=fitted.seed)
    legacy = "+" not in fitted.arch_id and now.arch_id.partition("+")[0] == fitted.arch_id
    if legacy and now.arch_id != fitted.arch_id:
        # Saved before forward() was part of the fingerprint: its modules still match.
        warnings.warn(
            f"this model was saved by an older cnncodes, whose fingerprint of {fitted.model} "
            "did not cover its forward() code: an edit of forward() since the fit cannot be "
            "detected (its codes are read from the cache as they were); refit to be sure",
            stacklevel=2,
        )
    elif now.arch_id != fitted.arch_id:
        raise ModelError(
            f"{fitted.model} no longer builds the architecture this model was fitted with "
            f"(fingerprint {fitted.arch_id} at fit time, {now.arch_id} now; its modules or "
            "its forward() code changed); refit"
        )
    if now.weights_id != fitted.weights_id:
        raise ModelError(
            f"{fitted.model} weights are now {now.weights_id}, but the model was fitted with "
            f"{fitted.weights_id}; refit, or restore the original weights"
        )
    if now.preprocessing != fitted.preprocessing:
        raise ModelError(
            f"{fitted.model} preprocessing is now {now.preprocessing.to_dict()}, but the model "
            f"was fitted with {fitted.preprocessing.to_dict()}; refit"
        )


def is_fine_tune(estimator):
    """Whether ``estimator`` is a :class:`~cnncodes.finetune.FineTune`, without importing the
    fine-tuning package (its skorch is optional): a FineTune that exists has imported it."""
    module = sys.modules.get("cnncodes.estimators.finetune.estimator")
    return module is not None and isinstance(estimator, module.FineTune)


def _fine_tune_scores(model, paths, proba, on_error):
    """What :func:`_scores` gives, and the unreadable images, for a FineTune: it predicts from
    the image files itself, in one pass. Every file is decoded first, so an unreadable one stops
    the run naming it (or is left out) before any batch goes through the network."""
    from ..images.load import ImageLoadError

    readable, _, skipped = filter_readable(paths)
    if skipped and on_error == "raise":
        raise ImageLoadError(skipped[0].path, skipped[0].reason)
    errors = {s.index: s.reason for s in skipped}
    if not readable:
        return [], [], None, "none", errors
    p = model.predict_proba(readable)
    predicted = model.classes_[p.argmax(axis=1)]
    return predicted, p.max(axis=1), (p if proba else None), "probability", errors


def _split_pipeline(estimator):
    """(feature part, classifier) of a Pipeline, so the codes are made once for all outputs."""
    steps = getattr(estimator, "steps", None)
    if steps is not None and len(steps) > 1:
        return estimator[:-1], estimator[-1]
    return None, estimator


def _scores(clf, X, proba):
    """(predicted labels, score of the predicted class, probabilities or None, score kind)."""
    predicted = clf.predict(X)
    if hasattr(clf, "predict_proba"):
        p = clf.predict_proba(X)
        return predicted, p.max(axis=1), (p if proba else None), "probability"
    if hasattr(clf, "decision_function"):
        d = np.asarray(clf.decision_function(X), dtype=np.float64)
        # Binary classifiers give one value, positive for classes_[1]: its size is the margin.
        return predicted, (np.abs(d) if d.ndim == 1 else d.max(axis=1)), None, "decision"
    return predicted, np.full(len(predicted), np.nan), None, "none"


def _codes_for_prediction(estimator, features, step, paths, on_error):
    """(classifier input for the readable images, {index: reason} of the unreadable ones).

    When the CNNCodes step opens the pipeline (the recipes' shape), each image goes through the
    network once, unreadable ones dropped on the way; otherwise they are screened first with
    :func:`~cnncodes.search.filter_readable` (the screening's codes land in the cache, if there is one).
    """
    leading = features is not None and features.steps[0][1] is step
    if on_error == "skip" and leading:
        step.set_params(on_error="skip")  # the caller restores it
        result = step._extract(paths)
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
        paths, _, skipped = filter_readable(paths, extractor=estimator)
        errors = {s.index: s.reason for s in skipped}
    if not paths:
        return np.empty((0, 0)), errors
    return (paths if features is None else features.transform(paths)), errors


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
        with ``on_error="skip"``, ``error``.
    """
    if on_error not in ("raise", "skip"):
        raise UsageError(f"on_error={on_error!r}: choose 'raise' or 'skip'")
    paths = [os.fspath(p) for p in paths]
    estimator = getattr(estimator, "best_estimator_", estimator)
    features, clf = _split_pipeline(estimator)
    if proba and not hasattr(clf, "predict_proba"):
        raise UsageError(
            f"the model's classifier ({type(clf).__name__}) gives no probabilities; predict "
            "without proba (a decision score is reported instead)"
        )
    verify_model(estimator)
    classes = [str(c) for c in estimator.classes_]
    if is_fine_tune(estimator):
        predicted, score, probabilities, kind, errors = _fine_tune_scores(
            estimator, paths, proba, on_error
        )
        return _prediction_table(paths, labels, proba, on_error, classes, errors,
                                 predicted, score, probabilities, kind)  # fmt: skip
    step, prefix = _find_codes_step(estimator)
    previous = step.on_error
    estimator.set_params(**{f"{prefix}on_error": "raise"})
    try:
        X, errors = _codes_for_prediction(estimator, features, step, paths, on_error)
        if len(X):
            predicted, score, probabilities, kind = _scores(clf, X, proba)
        else:
            predicted, score, probabilities, kind = [], [], None, "none"
    finally:
        estimator.set_params(**{f"{prefix}on_error": previous})
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
    return pd.DataFrame(rows, columns=columns)
