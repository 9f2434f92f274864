"""Evaluation of a classifier on codes: the held-out split, metrics and the search's tables.

What :func:`~cnncodes.experiment.run_experiment` reports, in pieces that any estimator trained on
labelled images can reuse: :func:`check_labelled` and :func:`stratified_split` before the fit,
:func:`classification_metrics` on its predictions, :func:`cv_table` and :func:`layer_table` on a
fitted search. Plain functions on labels and fitted searches; no network, no images read.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError

__all__ = [
    "check_labelled",
    "classification_metrics",
    "cv_table",
    "held_out_metrics",
    "layer_table",
    "stratified_split",
]


def check_labelled(paths, labels, name):
    """Refuse images without labels, or with a label count other than the image count; ``name``
    (``"training data"``, ``"test data"``) says which images in the message."""
    if labels is None:
        raise UsageError(
            f"{name}: the images have no labels; use class sub-folders or a manifest with a "
            "'label' column"
        )
    if len(labels) != len(paths):
        raise UsageError(f"{name}: {len(paths)} images but {len(labels)} labels")


def stratified_split(paths, labels, test_size, seed):
    """Hold out a stratified fraction of labelled images, refusing splits that cannot be used.

    The held-out part must be able to hold one image of each class, and every class must keep
    at least 2 training images (cross-validation needs 2 of each): a class of fewer than 3
    images, or a fraction too small or too large for that, is refused with what to change.

    Parameters
    ----------
    paths, labels : sequences of the same length
    test_size : float
        The fraction held out, between 0 and 1 (rounded up to whole images).
    seed : int
        Seed of the split.

    Returns
    -------
    train_paths, train_labels, test_paths, test_labels : lists
        Each part in input order.

    Examples
    --------
    >>> paths = [f"{c}{i}.png" for c in "ab" for i in range(4)]
    >>> train, train_labels, test, test_labels = stratified_split(paths, list("aaaabbbb"), 0.25, 0)
    >>> len(train), test_labels
    (6, ['a', 'b'])
    """
    from sklearn.model_selection import train_test_split

    if not 0 < test_size < 1:
        raise UsageError(f"test_size={test_size!r}: expected a fraction between 0 and 1")
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    n_test = int(np.ceil(test_size * len(paths)))
    if n_test < len(classes):
        raise UsageError(
            f"test_size={test_size}: {n_test} test image(s) cannot hold one of each of the "
            f"{len(classes)} classes; use a larger fraction or a separate test set"
        )
    small = [str(c) for c, n in zip(classes, counts) if n < 3]
    if small:
        raise UsageError(
            f"test_size={test_size}: class(es) {', '.join(map(repr, small))} have fewer than 3 "
            "images, too few to hold one out and still cross-validate; add images or give a "
            "separate test set"
        )

    def too_few(n_train):
        return UsageError(
            f"test_size={test_size}: leaves {n_train} training image(s) for {len(classes)} "
            "classes, fewer than 2 of some class; cross-validation needs at least 2 of each: "
            "hold out a smaller fraction"
        )

    if len(paths) - n_test < 2 * len(classes):
        raise too_few(len(paths) - n_test)
    idx = np.arange(len(paths))
    train_idx, test_idx = train_test_split(
        idx, test_size=test_size, stratify=labels, random_state=seed
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    left, left_counts = np.unique(labels[train_idx], return_counts=True)
    if len(left) < len(classes) or left_counts.min() < 2:
        raise too_few(len(train_idx))
    return (
        [paths[i] for i in train_idx],
        labels[train_idx].tolist(),
        [paths[i] for i in test_idx],
        labels[test_idx].tolist(),
    )


def _short_param(name):
    """``cnncodes__layer`` -> ``layer``, ``clf__C`` -> ``C`` (for tables)."""
    return name.split("__")[-1]


def classification_metrics(y_true, y_pred, labels=None):
    """Accuracy, balanced accuracy, per-class precision/recall/support and the confusion matrix.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
    labels : list, optional
        Class order of the per-class entries and the confusion matrix (default: the sorted union).

    Returns
    -------
    dict
        ``n``, ``accuracy``, ``balanced_accuracy``, ``per_class`` (``{label: {"precision",
        "recall", "f1", "support"}}``), ``labels`` and ``confusion_matrix`` (rows: true class,
        columns: predicted class, in ``labels`` order).

    Examples
    --------
    >>> m = classification_metrics(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    >>> m["accuracy"], m["balanced_accuracy"], m["per_class"]["b"]["precision"]
    (0.75, 0.75, 0.6666666666666666)
    """
    import warnings

    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if labels is None:
        labels = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    labels = list(labels)
    with warnings.catch_warnings():
        # A class never predicted has no precision (reported as 0) - not worth a warning here.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, zero_division=0
        )
    present = support > 0
    balanced = float(np.mean(recall[present])) if present.any() else float("nan")
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced,
        "per_class": {
            str(label): {
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(s),
            }
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
        "labels": [str(label) for label in labels],
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def held_out_metrics(y_true, y_pred, classes, overlap=0):
    """:func:`classification_metrics` of the held-out images, with ``overlap_with_training``
    (how many of them are also training images) and, where there are any, ``unseen_classes``
    (their classes that training never saw)."""
    metrics = classification_metrics(y_true, y_pred, labels=classes)
    metrics["overlap_with_training"] = overlap
    unseen = sorted(set(y_true) - set(classes))
    if unseen:
        metrics["unseen_classes"] = unseen
    return metrics


def cv_table(search):
    """Every candidate of a fitted search, best first.

    Columns: ``rank``, one column per parameter that varies between candidates (named by its
    last ``__`` part, e.g. ``layer``, ``C``), ``mean``, ``std`` (of the cross-validated test
    score) and ``fit_seconds`` (mean per fold). Parameter values keep their type (a ``C`` stays
    a float, so JSON output stays numeric); a list of layers is joined with ``+``; a parameter
    a candidate does not have is None.
    """
    import pandas as pd

    results = search.cv_results_
    params = results["params"]
    names = []
    for p in params:
        for k in p:
            if k not in names:
                names.append(k)
    varying = [
        k for k in names if len({repr(p.get(k, "-")) for p in params}) > 1 or len(params) == 1
    ]
    rows = []
    for i, p in enumerate(params):
        row = {"rank": int(results["rank_test_score"][i])}
        for k in varying:
            v = p.get(k)
            if isinstance(v, (list, tuple)):
                v = "+".join(map(str, v))
            row[_short_param(k)] = v
        row["mean"] = float(results["mean_test_score"][i])
        row["std"] = float(results["std_test_score"][i])
        row["fit_seconds"] = float(results["mean_fit_time"][i])
        rows.append(row)
    # Object columns: pandas would otherwise turn ints into floats next to a missing value.
    table = pd.DataFrame(rows, dtype=object)
    table = table.astype({"rank": int, "mean": float, "std": float, "fit_seconds": float})
    return table.sort_values(["rank", "mean"], ascending=[True, False], kind="stable").reset_index(
        drop=True
    )


def _layer_label(layer):
    """A layer, or a multi-layer entry joined with ``+`` (as in :func:`cv_table`)."""
    return layer if isinstance(layer, str) else "+".join(map(str, layer))


def layer_table(search, param="cnncodes__layer"):
    """The best cross-validated score of every swept layer, and which layer won.

    Parameters
    ----------
    search : fitted GridSearchCV (or any search with ``cv_results_`` and ``best_params_``)
    param : str, default="cnncodes__layer"
        The grid parameter holding the layer.

    Returns
    -------
    pandas.DataFrame
        One row per layer, in sweep order: ``layer``, ``mean_test_score``, ``std_test_score``
        (of that layer's best candidate), ``params`` (that candidate's other parameters) and
        ``best`` (True for the layer of ``search.best_params_``).

    Examples
    --------
    >>> search.fit(paths, labels)  # doctest: +SKIP
    >>> print(layer_table(search).to_string(index=False))  # doctest: +SKIP
    """
    import pandas as pd

    results = getattr(search, "cv_results_", None)
    if results is None:
        raise UsageError("layer_table needs a fitted search (it has no cv_results_)")
    column = f"param_{param}"
    if column not in results:
        swept = [k[len("param_") :] for k in results if k.startswith("param_")]
        raise UsageError(
            f"the search did not sweep {param!r}; it swept {', '.join(swept) or 'nothing'}"
        )
    rows = {}
    for i, params in enumerate(results["params"]):
        if param not in params:
            continue
        label = _layer_label(params[param])
        score = results["mean_test_score"][i]
        row = rows.get(label)
        better = row is None or (
            np.isfinite(score)
            and (not np.isfinite(row["mean_test_score"]) or score > row["mean_test_score"])
        )
        if better:
            rows[label] = {
                "layer": label,
                "mean_test_score": float(score),
                "std_test_score": float(results["std_test_score"][i]),
                "params": {k: v for k, v in params.items() if k != param},
            }
    best = _layer_label(search.best_params_[param]) if param in search.best_params_ else None
    table = pd.DataFrame(
        list(rows.values()), columns=["layer", "mean_test_score", "std_test_score", "params"]
    )
    table["best"] = table["layer"] == best
    return table
