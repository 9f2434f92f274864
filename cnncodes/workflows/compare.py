"""Four ways to transfer a pretrained network, side by side on one train/test split.

:func:`compare_approaches` is what ``cnncodes compare`` runs. On the same training images, and
evaluated on the same held-out images, it fits:

========================  ==============================================================
``linear_probe``          a logistic regression on the top layer's codes, its ``C``
                          swept by cross-validation (the ``linear_probe`` recipe)
``layer_sweep_svm``       SVMs on codes of earlier layers, layer, pooling, kernel and
                          ``C`` chosen by cross-validation (the ``layer_sweep_svm`` recipe)
``finetune_top``          the last blocks fine-tuned with a new head started from a probe
                          (LP-FT), frozen up to the ``finetune_top`` recipe's first depth
``finetune_all``          every layer fine-tuned (``freeze="none"``), the same head
========================  ==============================================================

Each row reports the held-out accuracy, the seconds its training took (for the code rows the
whole run of :func:`~cnncodes.experiment.run_experiment`: extraction of the codes the cache did
not hold, the grid search and the refit, and also the prediction of the held-out images; for the
fine-tuning rows the fit) and the images per second: for fine-tuning the training images times
the epochs run, for the code rows the training images that went through the network (codes
already in the cache cost nothing: a row whose codes were all cached has no images per second).
``skip`` leaves rows out.

Examples
--------
>>> result = compare_approaches(paths, labels, model="resnet18", test_size=0.25,
...                             epochs=3)  # doctest: +SKIP
>>> result.table()[["approach", "accuracy", "seconds"]]  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..errors import InputTypeError, UsageError
from ..utils.jsonable import jsonable, skipped_json
from . import recipes
from .rundata import prepare_data

__all__ = ["APPROACHES", "Comparison", "compare_approaches"]

#: The rows of a comparison, in order: (name, what it is).
APPROACHES = (
    ("linear_probe", "linear probe, top layer"),
    ("layer_sweep_svm", "SVM, layer sweep"),
    ("finetune_top", "fine-tune the top blocks"),
    ("finetune_all", "fine-tune everything"),
)

#: The network's settings shared by every row (CNNCodes and FineTune both take them).
_NETWORK = ("model", "weights", "seed", "resize", "crop", "mean", "std", "interpolation")
_RUNTIME = ("cache_dir", "batch_size", "num_workers", "device", "precision")


@dataclass
class Comparison:
    """What :func:`compare_approaches` returns.

    Attributes
    ----------
    rows : list of dict
        One per approach (:data:`APPROACHES`): ``approach``, ``description``, ``accuracy``,
        ``balanced_accuracy`` (held out), ``seconds``, ``images_per_second`` (None where no
        image went through the network: codes all from the cache), ``epochs``
        (fine-tuning; None for codes), ``settings`` (the chosen or given parameters),
        ``network_images`` (images pushed through the network while training; codes read
        from the cache are not counted), ``train_sha256`` and ``test_sha256`` (fingerprints
        of the (path, label) lists each row saw: equal across rows), ``metrics``. A row whose
        training failed has None for its numbers and ``error`` (the others are kept; only when
        every row fails does :func:`compare_approaches` raise).
    split : dict
        ``{"test_size", "seed"}``, or ``{"test": "given"}``.
    n_train, n_test : int
    skipped : dict
        ``{"train": [...], "test": [...]}``: unreadable images left out (``on_error="skip"``).
    config : dict
        The settings of the comparison (JSON-ready).
    seconds : float
    """

    rows: list
    split: dict
    n_train: int
    n_test: int
    skipped: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    seconds: float = 0.0

    def table(self):
        """The rows as a DataFrame (without the per-row metrics)."""
        import pandas as pd

        return pd.DataFrame([{k: v for k, v in r.items() if k != "metrics"} for r in self.rows])

    def to_dict(self):
        """JSON-ready form."""
        return jsonable(
            {
                "rows": self.rows,
                "split": self.split,
                "n_train": self.n_train,
                "n_test": self.n_test,
                "skipped": {part: skipped_json(items) for part, items in self.skipped.items()},
                "config": self.config,
                "seconds": round(self.seconds, 3),
            }
        )


def _sweep_layers(network, layers):
    """The layers of the SVM row: the user's, else what :func:`~cnncodes.advise.sweep_layers`
    says the ``layer_sweep_svm`` recipe sweeps (what ``cnncodes advise`` suggests too)."""
    if layers:
        return list(layers)
    from .advise import sweep_layers

    shape = {k: network[k] for k in _NETWORK[2:] if network.get(k) is not None}
    return sweep_layers(network["model"], **shape)


def _check_freeze(network, freeze):
    """Refuse an unknown ``freeze`` node (closest names given) before anything runs."""
    if freeze is None:
        return
    from ..estimators.finetune.network import check_freeze
    from ..networks.models import build_model, resolve_spec

    shape = {k: network[k] for k in _NETWORK[2:] if network.get(k) is not None}
    spec = resolve_spec(network["model"], "none", **shape)
    check_freeze(freeze, build_model(spec), network["model"])


def _code_row(name, result):
    seconds = result.seconds
    computed = result.extraction.get("computed", 0)
    test = result.metrics["test"]
    chosen = {k.split("__")[-1]: v for k, v in result.metrics["best_params"].items()}
    if "layer" not in chosen:  # the grid did not choose one: the (resolved) layers it used
        chosen["layers"] = result.config["layers"]
    return {
        "approach": name,
        "accuracy": test["accuracy"],
        "balanced_accuracy": test["balanced_accuracy"],
        "seconds": seconds,
        # Only where images went through the network: cached codes make no speed.
        "images_per_second": computed / seconds if computed and seconds > 0 else None,
        "epochs": None,
        "settings": {**chosen, "cv_score": result.metrics["cv"]["best_score"]},
        "network_images": computed,
        "train_sha256": result.config["train"]["sha256"],
        "test_sha256": result.config["test"]["sha256"],
        "metrics": test,
    }


def _finetune_row(name, estimator, train, test):
    from .evaluation import classification_metrics
    from .rundata import _data_fingerprint

    (train_paths, train_labels), (test_paths, test_labels) = train, test
    started = time.perf_counter()
    estimator.fit(train_paths, train_labels)
    seconds = time.perf_counter() - started
    predicted = estimator.predict(test_paths)
    classes = [str(c) for c in estimator.classes_]
    metrics = classification_metrics(test_labels, [str(p) for p in predicted], labels=classes)
    epochs = len(estimator.history_)
    return {
        "approach": name,
        "accuracy": metrics["accuracy"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "seconds": seconds,
        "images_per_second": estimator.n_train_ * epochs / seconds if epochs else None,
        "epochs": epochs,
        "settings": {
            "freeze": estimator.freeze,
            "lr": estimator.lr,
            "layers": [estimator.layer_],
            "init_head": estimator.init_head,
            "augment": estimator.augment,
            "trunk_cached": bool(estimator.trunk_cached_),
        },
        "network_images": None,
        "train_sha256": _data_fingerprint(train_paths, train_labels),
        "test_sha256": _data_fingerprint(test_paths, test_labels),
        "metrics": metrics,
    }


def _failed_row(name, exc, train, test):
    """The row of an approach whose training failed: its reason, no numbers."""
    from .rundata import _data_fingerprint

    return {
        "approach": name,
        "accuracy": None,
        "balanced_accuracy": None,
        "seconds": None,
        "images_per_second": None,
        "epochs": None,
        "settings": {},
        "network_images": None,
        "train_sha256": _data_fingerprint(*train),
        "test_sha256": _data_fingerprint(*test),
        "metrics": None,
        "error": f"{type(exc).__name__}: {exc}",
    }


def compare_approaches(
    paths,
    labels,
    *,
    model="resnet50",
    weights=None,
    test=None,
    test_size=None,
    layers=None,
    freeze=None,
    epochs=5,
    lr=1e-3,
    augment="none",
    cv=5,
    seed=0,
    random_state=0,
    skip=(),
    preprocessing=None,
    recipe_options=None,
    on_error="raise",
    progress=None,
    log=None,
    **runtime,
):
    """Fit the four approaches of :data:`APPROACHES` on one split and evaluate them side by side.

    Parameters
    ----------
    paths, labels : sequences
        The labelled images (all of them, when ``test_size`` holds some out).
    model, weights : str
        The pretrained network (as for :class:`~cnncodes.CNNCodes`).
    test : (paths, labels), optional
        Held-out images; or
    test_size : float, optional
        hold out this stratified fraction of ``paths`` (the split ``cnncodes fit`` makes).
    layers : list of str, optional
        The layers the SVM row sweeps (default: the ``layer_sweep_svm`` recipe's for the model,
        else the network's last three blocks).
    freeze : str, optional
        The node up to which the top-blocks row stays frozen (default: the ``finetune_top``
        recipe's first depth).
    epochs, lr, augment :
        The fine-tuning rows' epochs, head learning rate (the pretrained layers train at a tenth)
        and augmentation.
    cv : int
        Folds of the code rows' grid searches.
    seed : int
        Seed of the network's random initialisation (``weights="none"``) and of fine-tuning.
    random_state : int
        Seed of the test split and of the folds.
    skip : sequence of str
        Rows (names of :data:`APPROACHES`) left out, e.g. ``["finetune_all"]``; an unknown name
        is refused, naming the rows.
    preprocessing : dict, optional
        ``resize``, ``crop``, ``mean``, ``std``, ``interpolation`` overrides.
    recipe_options : dict, optional
        Per recipe name, options of its ``build`` (e.g. ``{"linear_probe": {"Cs": [1.0]}}``).
    on_error : {"raise", "skip"}
    progress : bool or None
    log : callable, optional
        Receives one-line notes.
    **runtime
        ``cache_dir``, ``batch_size``, ``num_workers``, ``device``, ``precision``.

    Returns
    -------
    Comparison

    Raises
    ------
    ValueError
        Bad split, unknown ``freeze`` node or layer (the closest names given), bad parameters;
        raised before any row is fitted.
    """
    log = log or (lambda line: None)
    started = time.perf_counter()
    _check_arguments(runtime, test, test_size, epochs)
    skip = _check_skip(skip)
    data, split = _split(paths, labels, test, test_size, random_state)
    network = {"model": model, "weights": weights, "seed": seed, **(preprocessing or {})}
    network = {k: v for k, v in network.items() if v is not None}
    runtime = {k: v for k, v in runtime.items() if v is not None}
    options = dict(recipe_options or {})
    # Everything that can be wrong is refused before the first row spends minutes.
    sweep, top, freeze = _check_rows(network, runtime, options, layers, freeze)
    skipped = _leave_out_unreadable(data, on_error)
    log(
        f"compare: {len(data.paths)} training and {len(data.test_paths)} test images, the same "
        "for every approach"
    )
    fine = dict(epochs=epochs, lr=lr, augment=augment, init_head="probe", on_error=on_error)
    fine["progress"] = progress is not False  # a line per epoch unless told to be quiet
    top.set_params(freeze=freeze, **fine)
    common = dict(cv=cv, random_state=random_state, on_error=on_error, progress=progress, log=log)
    rows = _fit_rows(
        [row for row in _approaches(sweep, top, freeze, epochs) if row[0] not in skip],
        data,
        {**network, **runtime},
        options,
        common,
        log,
    )
    config = {
        "network": network,
        "runtime": runtime,
        "sweep_layers": sweep,
        "freeze": freeze,
        "epochs": epochs,
        "lr": lr,
        "augment": augment,
        "cv": cv,
        "skip": skip,
        "recipe_options": options,
    }
    return Comparison(
        rows=rows,
        split=split,
        n_train=len(data.paths),
        n_test=len(data.test_paths),
        skipped=skipped,
        config=jsonable(config),
        seconds=time.perf_counter() - started,
    )


def _approaches(sweep, top, freeze, epochs):
    """The four rows, in :data:`APPROACHES` order: ``(name, description, what fits it)``."""
    return [
        (
            "linear_probe",
            "top-layer codes, logistic regression, C by cross-validation",
            {"recipe": "linear_probe"},
        ),
        (
            "layer_sweep_svm",
            f"SVMs on {', '.join(sweep)}",
            {"recipe": "layer_sweep_svm", "layer": sweep},
        ),
        ("finetune_top", f"frozen up to {freeze!r}, {epochs} epoch(s)", {"estimator": top}),
        (
            "finetune_all",
            f"every layer, {epochs} epoch(s)",
            {"estimator": top.__class__(**{**top.get_params(), "freeze": "none"})},
        ),
    ]


def _check_arguments(runtime, test, test_size, epochs):
    unknown = sorted(set(runtime) - set(_RUNTIME))
    if unknown:
        raise InputTypeError(
            f"compare_approaches() got unknown argument(s) {', '.join(map(repr, unknown))}; "
            f"runtime settings: {', '.join(_RUNTIME)}"
        )
    if (test is None) == (test_size is None):
        raise UsageError(
            "compare_approaches needs held-out images: give test=(paths, labels) or test_size "
            "(a fraction such as 0.25), one of them"
        )
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise UsageError(f"epochs={epochs!r}: expected an int >= 1")


def _check_skip(skip):
    """``skip`` as a list of row names, each a row of :data:`APPROACHES`, not every one."""
    skip = [skip] if isinstance(skip, str) else list(skip or ())
    names = [name for name, _ in APPROACHES]
    for name in skip:
        if name not in names:
            raise UsageError(f"skip={name!r}: not a row; the rows: {', '.join(names)}")
    if set(names) <= set(skip):
        raise UsageError("skip: every row skipped, nothing to compare; leave one row in")
    return skip


def _split(paths, labels, test, test_size, random_state):
    """The run's images (:func:`~cnncodes.workflows.rundata.prepare_data`, the split ``cnncodes
    fit`` makes) and the ``split`` entry of the comparison."""
    data = prepare_data(paths, labels, test=test, test_size=test_size, seed=random_state)
    return data, data.split if data.split is not None else {"test": "given"}


def _check_rows(network, runtime, options, layers, freeze):
    """``(layers the SVM row sweeps, the top-blocks FineTune, its freeze node)``, checked."""
    from ..networks.models import resolve_layers, resolve_spec

    sweep = _sweep_layers(network, layers)
    spec = resolve_spec(**{"weights": None, **network})
    resolve_layers(spec, sweep)
    _check_freeze(network, freeze)
    top, top_grid = recipes.get("finetune_top").build(
        **network, **runtime, **options.get("finetune_top", {})
    )
    return sweep, top, freeze if freeze is not None else top_grid["freeze"][0]


def _leave_out_unreadable(data, on_error):
    """With ``on_error="skip"``: one set of images for every row, unreadable ones left out once,
    here. Returns ``{"train": [...], "test": [...]}``."""
    skipped = {"train": [], "test": []}
    if on_error == "skip":
        from ..estimators.search import filter_readable

        data.paths, data.labels, skipped["train"] = filter_readable(data.paths, data.labels)
        data.test_paths, data.test_labels, skipped["test"] = filter_readable(
            data.test_paths, data.test_labels
        )
    return skipped


def _fit_rows(attempts, data, network, options, common, log):
    """One row per ``(name, what, how)`` attempt: a recipe's experiment (``how["recipe"]``, with
    more overrides) or a FineTune fitted once (``how["estimator"]``). A failed row says why and
    the others are kept; if every row fails, the first failure is raised."""
    from .experiment import run_experiment

    train, held_out = (data.paths, data.labels), (data.test_paths, data.test_labels)
    rows, failures = [], []
    for name, what, how in attempts:
        log(f"{name}: {what}")
        try:
            if "estimator" in how:
                rows.append(_finetune_row(name, how["estimator"], train, held_out))
                continue
            extra = {k: v for k, v in how.items() if k != "recipe"}
            overrides = {**network, **extra, **options.get(name, {})}
            result = run_experiment(
                *train, how["recipe"], overrides=overrides, test=held_out, **common
            )
            rows.append(_code_row(name, result))
        except Exception as exc:  # the other rows' results are kept, and this one says why
            failures.append(exc)
            log(f"{name}: failed: {type(exc).__name__}: {exc}")
            rows.append(_failed_row(name, exc, train, held_out))
    if len(failures) == len(attempts):
        raise failures[0]  # nothing to compare: the first reason, as an error
    described = dict(APPROACHES)
    for row in rows:
        row["description"] = described[row["approach"]]
    return rows
