"""``cnncodes predict``: label images with a model saved by ``cnncodes fit`` or ``finetune``."""

from __future__ import annotations

import os

from ..images.datasets import load_dataset, load_files
from ..utils.files import atomic_path, display
from ..utils.jsonable import jsonable
from ._core import (
    EXIT_OK,
    UsageError,
    _add_cache_dir_option,
    _add_compute_options,
    _add_output_options,
    _add_trust_model_code_option,
    _cache_dir_from_args,
    _check_out_path,
    _fill,
    _fmt,
    _Formatter,
    _Output,
    _runtime_from_args,
    _table,
    _trust_model_code,
)

_PREDICT_EPILOG = """\
examples:
  cnncodes predict model.skops new-photos/ --out predictions.csv
  cnncodes predict model.skops a.jpg b.jpg c.png --proba --json
  cnncodes predict model.joblib test.csv --on-error skip --out predictions.csv

A folder of class folders (or a manifest with labels) adds a true_label column and the accuracy.
A .skops file only loads the types known to be safe; name others with --trust if you trust the
file. A .joblib file runs code when loaded: use only your own. A model on your own architecture
(--model package.module:callable at fit) names code that rebuilds its network; in either format
it runs only if you allow it: --trust-model-code mymodels:resnet20 (torchvision models and
cnncodes.demo_data:digits_net need nothing).
"""


def add_predict_parser(subparsers):
    """``cnncodes predict MODEL DATA_OR_FILES...``."""
    parser = subparsers.add_parser(
        "predict",
        help="predict the class of images with a model saved by 'cnncodes fit' or 'finetune'",
        description=_fill(
            "Predict one row per image: path, predicted label, and the probability of that "
            "label (or the classifier's decision score); with --proba, every class's "
            "probability. The model's extractor is verified first: a checkpoint whose SHA-256 "
            "changed, or a model that now builds differently, is refused. A model saved by "
            "'cnncodes finetune' holds its fine-tuned weights: it needs no checkpoint file."
        ),
        epilog=_PREDICT_EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("model_file", metavar="MODEL", help="a .skops or .joblib file")
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="DATA_OR_FILES",
        help="a folder (of images or of class folders), a CSV manifest, or image files",
    )
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="accept relative manifest entries and links that resolve outside their folder "
        "(absolute entries are always accepted)",
    )
    parser.add_argument("--proba", action="store_true", help="add one probability column per class")
    parser.add_argument(
        "--weights",
        metavar="PATH",
        help="the model's checkpoint file in a new place (another machine, a moved file); it "
        "must have the SHA-256 the model was fitted with",
    )
    parser.add_argument(
        "--trust",
        action="append",
        metavar="TYPE",
        help=".skops only: a further type to accept (module.QualName); repeat for several",
    )
    _add_trust_model_code_option(parser)
    group = parser.add_argument_group("runtime")
    _add_cache_dir_option(group)
    _add_compute_options(group)
    group.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="an unreadable image stops the run (raise) or gets a row with its error (skip) "
        "(default: %(default)s)",
    )
    _add_output_options(group)
    parser.add_argument("--out", "-o", metavar="FILE", help="write the predictions to FILE (.csv)")
    parser.set_defaults(run=run_predict)


def _predict_inputs(args):
    """Paths and labels (or None) from folders, manifests and files, in the order given."""
    paths, labels, files = [], [], []
    for item in args.inputs:
        if os.path.isdir(item) or item.lower().endswith(".csv"):
            dataset = load_dataset(item, allow_outside_root=args.allow_outside_root)
            paths += dataset.paths
            labels += dataset.labels or [None] * len(dataset)
        else:
            files.append(item)
    if files:
        loose = load_files(files)
        paths += loose.paths
        labels += [None] * len(loose)
    return paths, (labels if all(label is not None for label in labels) else None)


def _load_model(args, output):
    """The saved model (a search: its best estimator), its runtime and weights set from
    ``args``."""
    from ..estimators import persistence
    from ..estimators.fitted import relocate_weights, set_runtime, split_pipeline
    from ..estimators.steps import network_step

    estimator = persistence.load(
        args.model_file, trusted=args.trust, trust_model_code=_trust_model_code(args)
    )
    estimator = getattr(estimator, "best_estimator_", estimator)  # a saved search: its best
    try:
        step, _ = network_step(estimator)
    except UsageError:
        raise UsageError(
            f"{args.model_file}: not a cnncodes model (no CNNCodes step, not a FineTune); "
            "save one with 'cnncodes fit --out' or 'cnncodes finetune --out'"
        ) from None
    classifier = split_pipeline(estimator)[1]
    if args.proba and not hasattr(classifier, "predict_proba"):
        raise UsageError(
            f"--proba: the classifier of {args.model_file} ({type(classifier).__name__}) gives "
            "no probabilities; leave --proba out (the score column then holds its decision value)"
        )
    if args.weights is not None and step.holds_weights:
        output.note(
            f"--weights {args.weights}: not needed, {display(args.model_file)} holds its "
            "fine-tuned weights itself"
        )
    elif args.weights is not None:
        relocate_weights(estimator, args.weights)
    given = _runtime_from_args(args, auto=None)
    runtime = {"progress": output.progress, "batch_size": given.pop("batch_size")}
    runtime["cache_dir"] = _cache_dir_from_args(args)
    runtime.update((k, v) for k, v in given.items() if v is not None)
    set_runtime(estimator, **runtime)
    return estimator


def _accuracy(table, labels):
    """``n``, ``accuracy`` and ``balanced_accuracy`` of the predicted rows, or None."""
    from ..workflows.evaluation import classification_metrics

    done = table[table["label"].notna()] if labels is not None else []
    if not len(done):
        return None
    metrics = classification_metrics(done["true_label"], done["label"])
    return {k: metrics[k] for k in ("n", "accuracy", "balanced_accuracy")}


def _result_lines(table, rows, labels, accuracy, out_path):
    """The table printed (at most 20 rows when they are also written to a file)."""
    shown = rows[:20] if out_path else rows
    columns = ["path", "label", "score"] + (["true_label"] if labels is not None else [])
    # --proba: one p(CLASS) column per class, from the proba_<class> columns of the table.
    probas = [c for c in table.columns if c.startswith("proba_")]
    heads = [f"p({c[len('proba_') :]})" for c in probas]
    lines = _table(
        columns + heads,
        [
            [
                r["path"],
                r["label"] if isinstance(r["label"], str) else "(skipped)",
                _fmt(r["score"]),
                *([r["true_label"]] if labels is not None else []),
                *(_fmt(r[c]) for c in probas),
            ]
            for r in shown
        ],
        right=("score", *heads),
    )
    if len(shown) < len(rows):
        lines.append(f"... {len(rows) - len(shown)} more rows in {display(out_path)}")
    score_kind = table["score_kind"].iloc[0] if len(table) else "none"
    kind = "probability" if score_kind == "probability" else "decision value"
    lines.append(f"score: the {kind} of the predicted label")
    if probas:
        lines.append("p(CLASS): the probability of each class")
    if accuracy is not None:
        lines.append(
            f"accuracy on {accuracy['n']} labelled image(s): {_fmt(accuracy['accuracy'])} "
            f"(balanced {_fmt(accuracy['balanced_accuracy'])})"
        )
    if out_path:
        lines.append(f"wrote {display(out_path)}")
    return lines


_TEXT_COLUMNS = ("path", "label", "true_label", "error")


def _shown(table):
    """``table`` with its text printable and writable as UTF-8: a name that is not UTF-8 shown
    with ``\\xNN`` for its undecodable bytes (as ``extract`` writes ``display_paths``)."""
    table = table.copy()
    for column in _TEXT_COLUMNS:
        if column in table:
            table[column] = [display(v) if isinstance(v, str) else v for v in table[column]]
    return table


def run_predict(args):
    """Predict every input image; print a table or JSON; optionally write a CSV."""
    from ..estimators.fitted import predict_images

    output = _Output(args)
    out_path = _check_out_path(args.out, (".csv",))
    estimator = _load_model(args, output)
    paths, labels = _predict_inputs(args)
    output.note(f"{len(paths)} image(s) to predict with {display(args.model_file)}")
    if labels is not None:
        known = {str(c) for c in estimator.classes_}
        unseen = sorted({str(label) for label in labels} - known)
        if unseen:
            output.warn(
                f"class(es) the model never learned: {', '.join(unseen)} (it knows "
                f"{', '.join(sorted(known))}); their images can only be predicted wrong"
            )
    table = predict_images(
        estimator, paths, labels=labels, proba=args.proba, on_error=args.on_error
    )
    accuracy = _accuracy(table, labels)
    table = _shown(table)
    if out_path is not None:
        with atomic_path(out_path) as tmp:
            table.to_csv(tmp, index=False)
    failed = table["label"].isna()
    for row in table[failed].itertuples():
        output.note(f"skipped {row.path}: {row.error}")
    rows = table.to_dict("records")
    data = {
        "command": "predict",
        "model": os.path.abspath(args.model_file),
        "images": len(table),
        "skipped": int(failed.sum()),
        "accuracy": accuracy,
        "out": out_path,
        "predictions": rows,
    }
    output.result(jsonable(data), _result_lines(table, rows, labels, accuracy, out_path))
    return EXIT_OK
