"""``cnncodes compare``: linear probe, SVM layer sweep and two fine-tunings on one split."""

from __future__ import annotations

import argparse

import numpy as np

from ..workflows.compare import APPROACHES
from ._core import (
    EXIT_FAILURE,
    EXIT_OK,
    UsageError,
    _add_data_options,
    _add_folds_options,
    _add_held_out_options,
    _add_model_options,
    _add_runtime_options,
    _cache_dir_from_args,
    _check_report_dir,
    _fill,
    _fmt,
    _Formatter,
    _load_labelled,
    _load_test,
    _Output,
    _positive_int,
    _preprocessing_from_args,
    _report_lines,
    _runtime_from_args,
    _table,
)
from .finetune import _add_tuning_options

_ROWS = [name for name, _ in APPROACHES]


def _row_name(text):
    """--skip ROW: a row of :data:`~cnncodes.workflows.compare.APPROACHES`."""
    if text not in _ROWS:
        raise argparse.ArgumentTypeError(f"{text!r}: not a row; the rows: {', '.join(_ROWS)}")
    return text


_COMPARE_EPILOG = """\
examples:
  # a quarter of the photos held out; 5 epochs for each fine-tuning
  cnncodes compare photos/ --model resnet50 --weights IMAGENET1K_V1 --test-size 0.25 \\
      --report compare-report/

  # a local checkpoint, a separate test folder, your own depths
  cnncodes compare train/ --model mobilenet_v2 --weights mnv2.pth --test test/ \\
      --layer features.7.conv.0 --layer features.14.conv.0 --freeze features.13 --epochs 10

The four rows, on the same training and test images: a linear probe on the top layer's codes
(linear_probe, C by cross-validation), SVMs on earlier layers (layer_sweep_svm: its default
layers for the model, or --layer), the top blocks fine-tuned (frozen up to --freeze, default
the finetune_top recipe's first depth; the head starts from a probe) and every layer
fine-tuned. seconds: the whole training of a row (for the code rows extraction, the grid
search and the held-out prediction; codes already cached cost nothing, so 'network' says how
many training images were computed).
images/s: training images (x epochs, for fine-tuning) per second; for the code rows the
training images computed per second, 'cached' where every code came from the cache.
--skip ROW leaves a row out (e.g. --skip finetune_all, the slowest).
"""


def add_compare_parser(subparsers):
    """``cnncodes compare DATA --model M ...``."""
    parser = subparsers.add_parser(
        "compare",
        help="linear probe, SVM layer sweep and fine-tuning side by side on one split",
        description=_fill(
            "Fit four transfer approaches on the same training images of DATA and evaluate "
            "them on the same held-out images: a linear probe on top-layer codes, SVMs on "
            "earlier layers, fine-tuning of the top blocks, fine-tuning of everything. Prints "
            "held-out accuracy, training time and images per second of each."
        ),
        epilog=_COMPARE_EPILOG,
        formatter_class=_Formatter,
    )
    _add_data_options(parser)
    _add_model_options(
        parser,
        layers=False,
        model_args=False,
        seed_help="seed of the network: its initialisation with --weights none, and the "
        "fine-tuning rows' training (FineTune's seed) (default: %(default)s)",
    )
    parser.add_argument(
        "--layer",
        "-l",
        action="append",
        metavar="L",
        help="a layer for the SVM row to sweep; repeat for several (default: the "
        "layer_sweep_svm recipe's for the model, else its last three blocks)",
    )
    evaluation = parser.add_argument_group("evaluation")
    _add_held_out_options(
        evaluation,
        required=True,
        test_size_help="hold out this stratified fraction of DATA (the split 'cnncodes fit' makes)",
    )
    _add_folds_options(evaluation, "cross-validation folds of the code rows (default: %(default)s)")
    evaluation.add_argument(
        "--skip",
        action="append",
        type=_row_name,
        default=[],
        metavar="ROW",
        help=f"leave this row out ({', '.join(_ROWS)}); repeat for several",
    )
    tuning = parser.add_argument_group("fine-tuning")
    tuning.add_argument(
        "--freeze",
        metavar="NODE",
        help="the top-blocks row keeps the network frozen up to this node (default: the "
        "finetune_top recipe's first depth, e.g. layer3 for a ResNet)",
    )
    _add_tuning_options(
        tuning,
        epochs=5,
        augment="none",
        epochs_type=_positive_int,
        helps={
            "epochs": "epochs of each fine-tuning (default: %(default)s)",
            "lr": "learning rate of the new head; the pretrained layers train at a tenth "
            "(default: %(default)s)",
            "augment": "train-time augmentation of the fine-tuning rows; 'none' lets a frozen "
            "part's activations come from the code cache (default: %(default)s)",
        },
    )
    _add_runtime_options(parser)
    parser.add_argument(
        "--report", metavar="DIR", help="write compare.json and compare.png into DIR"
    )
    parser.set_defaults(run=run_compare)


def _cell(value):
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value))
    return value


def _settings(row):
    """The settings of a row in one cell: ``C=1, layers=flatten``."""
    shown = {k: v for k, v in row["settings"].items() if k != "cv_score"}
    return ", ".join(f"{k}={_cell(v)}" for k, v in shown.items())


def _number(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def _speed(row):
    """The images/s cell: "cached" for a code row whose codes all came from the cache."""
    if row["images_per_second"] is None and row["network_images"] == 0:
        return "cached"
    return _number(row["images_per_second"])


def _compare_lines(result, test_note, written):
    rows = [
        [
            r["approach"],
            _fmt(r["accuracy"]),
            _fmt(r["balanced_accuracy"]),
            _number(r["seconds"]),
            _speed(r),
            r["network_images"],
            f"failed: {r['error']}" if "error" in r else _settings(r),
        ]
        for r in result.rows
    ]
    lines = [
        f"{result.n_train} training images, test: {test_note} ({result.n_test} images), the "
        "same for every approach"
    ]
    lines += _table(
        ["approach", "accuracy", "balanced", "seconds", "images/s", "network", "settings"],
        rows,
        right=("accuracy", "balanced", "seconds", "images/s", "network"),
    )
    lines += _report_lines(written)
    return lines


def run_compare(args):
    """Fit the four approaches; print the table; write the report."""
    from ..workflows.compare import compare_approaches

    output = _Output(args)
    preprocessing = _preprocessing_from_args(args)
    if "impl" in preprocessing:
        raise UsageError(
            f"--impl {args.impl}: fine-tuning decodes images with Pillow only; leave --impl out"
        )
    _check_report_dir(args.report)
    dataset = _load_labelled(args, output, "compare")
    test_set, test_note = _load_test(args)
    test = None if test_set is None else (test_set.paths, test_set.labels)
    result = compare_approaches(
        dataset.paths,
        dataset.labels,
        model=args.model,
        weights=args.weights,
        test=test,
        test_size=args.test_size,
        layers=args.layer,
        freeze=args.freeze,
        epochs=args.epochs,
        lr=args.lr,
        augment=args.augment,
        cv=args.cv,
        seed=args.seed,
        random_state=args.random_state,
        skip=args.skip,
        preprocessing=preprocessing,
        on_error=args.on_error,
        progress=output.progress,
        log=output.note,
        cache_dir=_cache_dir_from_args(args),
        **_runtime_from_args(args, auto=None),
    )
    written = {}
    if args.report is not None:
        from ..workflows.report import write_comparison

        written = write_comparison(result, args.report)
    summary = {
        "command": "compare",
        "data": dataset.root,
        **result.to_dict(),
        "report": written or None,
    }
    output.result(summary, _compare_lines(result, test_note, written))
    failed = [r["approach"] for r in result.rows if "error" in r]
    if failed:
        output.warn(f"{', '.join(failed)} failed (the reason is in the table); the others stand")
        return EXIT_FAILURE
    return EXIT_OK
