"""``cnncodes fit``: grid-search a recipe, evaluate it, save the model and a report."""

from __future__ import annotations

import argparse
import difflib

import numpy as np

from ..errors import InputTypeError
from ..spec import describe_preprocessing
from ..utils.diskspace import naming_write_failures
from ..utils.jsonable import jsonable, skipped_json
from ._core import (
    EXIT_OK,
    UsageError,
    _add_data_options,
    _add_engine_options,
    _add_folds_options,
    _add_held_out_options,
    _add_model_options,
    _add_runtime_options,
    _cache_dir_from_args,
    _check_engine_args,
    _check_out_path,
    _check_report_dir,
    _fill,
    _fmt,
    _Formatter,
    _load_labelled,
    _load_test,
    _n_jobs,
    _note_skipped,
    _Output,
    _preprocessing_from_args,
    _report_lines,
    _runtime_from_args,
    _saved_model_lines,
    _table,
    _test_metrics_lines,
)

_FIT_EPILOG = """\
examples:
  # scenario 1: a linear probe on resnet50's top-layer codes, a quarter of the images held out
  cnncodes fit photos/ --pipeline linear_probe --model resnet50 --test-size 0.25 \\
      --out model.skops --report report/

  # scenario 3: sweep four depths of a local checkpoint with SVMs, separate test folder
  cnncodes fit train/ --pipeline layer_sweep_svm --model mobilenet_v2 --weights mnv2.pth \\
      --layer features.3 --layer features.6 --layer features.13 --layer features.18 \\
      --test test/ --report report/ --n-jobs 2

  # several --layer: linear_probe concatenates their codes; --layer-mode sweep tries each
  cnncodes fit photos/ --pipeline linear_probe --model resnet50 --layer layer3 \\
      --layer avgpool --layer-mode sweep --test-size 0.25

  # your own recipe file (defines build(**overrides) -> (pipeline, param_grid))
  cnncodes fit photos/ --pipeline my_recipe.py --model resnet18 --json

Recipes: linear_probe (scenario 1), linear_svm (1), layer_sweep_svm (3), sgd (larger sets),
finetune_head and finetune_top (2 and 4: a FineTune, the learning rate and freeze depth swept).
Every image goes through the network once per configuration before the search starts; the
folds and candidates read the cache. --report DIR writes metrics.json, cv_results.csv,
confusion_matrix.png, layer_sweep.png (layer sweeps) and config.json (how to reproduce the run).
"""

_OTHER_MODE = {
    "sweep": "--layer-mode concat: one code concatenating them",
    "concat": "--layer-mode sweep: one candidate per layer",
}


def _layer_help(by_mode):
    """--layer's help: what several layers mean, recipe by recipe (from the registry)."""
    sweep = ", ".join(by_mode.get("sweep", ())) or "none"
    concat = ", ".join(by_mode.get("concat", ())) or "none"
    return (
        "graph-node name (see 'cnncodes layers M'); repeat for several. What several mean is "
        f"the recipe's: swept, one candidate each, by {sweep}; concatenated into one code by "
        f"{concat} (--layer-mode chooses; default: the recipe's layers, e.g. penultimate)"
    )


def add_fit_parser(subparsers):
    """``cnncodes fit DATA --pipeline NAME ...``."""
    from ..workflows import recipes

    names = recipes.available()
    by_mode = {}
    for name in names:
        by_mode.setdefault(recipes.layer_mode(name), []).append(name)
    parser = subparsers.add_parser(
        "fit",
        help="grid-search a recipe on labelled images, evaluate it, save the model",
        description=_fill(
            "Run a recipe's grid search (stratified cross-validation) on the labelled images of "
            "DATA, print every candidate's score, the best parameters and the held-out metrics "
            "(accuracy, balanced accuracy, per-class precision and recall), and save the best "
            "pipeline refitted on all training images."
        ),
        epilog=_FIT_EPILOG,
        formatter_class=_Formatter,
    )
    _add_data_options(parser)
    parser.add_argument(
        "--pipeline",
        "-P",
        default="linear_probe",
        metavar="NAME|PATH",
        help=f"a recipe ({', '.join(names)}) or a .py file defining "
        "build(**overrides) (default: %(default)s)",
    )
    parser.add_argument(
        "--layer-mode",
        choices=recipes.LAYER_MODES,
        help="what several --layer mean: sweep (one candidate per layer) or concat (one code "
        "concatenating them); default: the recipe's (sweep for "
        f"{', '.join(by_mode.get('sweep', ())) or 'none'}, concat for the others)",
    )
    _add_model_options(
        parser,
        required=False,
        layer_help=_layer_help(by_mode),
        views="stack (every view a training row, their mean to predict: cnncodes.ViewStack "
        "around the recipe's classifier) (default: mean)",
        view_search=True,
    )
    evaluation = parser.add_argument_group("evaluation")
    _add_held_out_options(evaluation)
    _add_folds_options(
        evaluation, "cross-validation folds, lowered to the smallest class (default: %(default)s)"
    )
    evaluation.add_argument(
        "--scoring",
        type=_scoring,
        default=None,
        metavar="S",
        help="the search's score: accuracy (default), balanced_accuracy, f1_macro, ...",
    )
    evaluation.add_argument(
        "--n-jobs",
        type=_n_jobs,
        default=None,
        metavar="N",
        help="parallel fits of the search (-1: one per CPU)",
    )
    _add_runtime_options(parser)
    _add_engine_options(parser)
    out = parser.add_argument_group("results")
    out.add_argument(
        "--out", "-o", metavar="FILE", help="save the fitted pipeline: .joblib or .skops"
    )
    out.add_argument(
        "--report",
        metavar="DIR",
        help="write metrics.json, cv_results.csv, plots and config.json into DIR (an earlier "
        "report there is replaced as a whole)",
    )
    parser.set_defaults(run=run_fit)


def _scoring(text):
    from sklearn.metrics import get_scorer_names

    names = get_scorer_names()
    if text not in names:
        close = difflib.get_close_matches(text, names, n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a scikit-learn scorer{hint} (e.g. accuracy, balanced_accuracy, "
            "f1_macro; all: sklearn.metrics.get_scorer_names())"
        )
    return text


def _codes_overrides(args):
    """CNNCodes parameters given on the command line (None: the recipe's default)."""
    runtime = _runtime_from_args(args, auto=None)
    given = {
        "model": getattr(args, "model", None),
        "weights": args.weights,
        "model_kwargs": args.model_kwargs,
        **_preprocessing_from_args(args),
        "layer": args.layer,
        "pooling": args.pooling,
        "num_workers": runtime["num_workers"],
        "precision": runtime["precision"],
        "device": runtime["device"],
        "views": args.views[0] if args.views and len(args.views) == 1 else None,
        "view_reduce": args.view_reduce,
        "view_seed": args.view_seed,
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    overrides["seed"] = args.seed
    overrides["batch_size"] = runtime["batch_size"]
    overrides["cache_dir"] = _cache_dir_from_args(args)
    if args.views and len(args.views) > 1:
        overrides["view_sets"] = list(args.views)  # a recipe option: the grid searches them
    if args.engine != "local":
        overrides["engine"] = args.engine
        overrides["ray_address"] = args.address
    return overrides


def _param_cell(value):
    """A grid value for the candidates table: floats to 4 significant digits."""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return value


def _fit_preprocessing(result):
    """(values, source) of the best pipeline's preprocessing, from the run's configuration."""
    config = result.config
    return config["extractor"]["preprocessing"], config.get("preprocessing_source")


def _layer_line(result, n_given):
    """Which layers the run used and how; with several --layer, how to get the other meaning."""
    from ..workflows.experiment import describe_layers

    plan = result.config["layer"]
    line = describe_layers(plan)
    if n_given > 1:
        line += f" ({_OTHER_MODE[plan['mode']]})"
    return line


def _fit_lines(result, test_note, out_path, written, limit=15, n_layers_given=0):
    metrics = result.metrics
    table = result.table
    params = [c for c in table.columns if c not in ("rank", "mean", "std", "fit_seconds")]
    rows = [
        [r["rank"], *(_param_cell(r[p]) for p in params), _fmt(r["mean"]), _fmt(r["std"])]
        for r in table.head(limit).to_dict("records")
    ]
    cv = metrics["cv"]
    lines = [
        f"{result.recipe}: {cv['n_candidates']} candidate(s) x {cv['n_splits']} folds, "
        f"cross-validated {metrics['scoring']} (mean and std over folds)",
        _layer_line(result, n_layers_given),
    ]
    lines += _table(["rank", *params, "mean", "std"], rows, right=("rank", "mean", "std"))
    if len(table) > limit:
        lines.append(f"... {len(table) - limit} more candidates (--report DIR: cv_results.csv)")
    best = ", ".join(f"{k}={v}" for k, v in metrics["best_params"].items()) or "(no parameters)"
    lines.append(
        f"best: {best}  (cv {metrics['scoring']} {_fmt(cv['best_score'])} "
        f"+- {_fmt(cv['best_std'])})"
    )
    if result.layers is not None:
        lines.append("best score per layer:")
        lines += [
            f"  {'*' if r.best else ' '} {r.layer}: {_fmt(r.mean_test_score)} "
            f"+- {_fmt(r.std_test_score)}"
            for r in result.layers.itertuples()
        ]
    evaluated = metrics["test"]
    if evaluated is None:
        evaluated = cv.get("predictions")
        head = "no held-out images (--test DATA2 or --test-size F); cross-validated predictions"
    else:
        head = f"test ({test_note}, {evaluated['n']} images)"
    if evaluated is not None:
        lines += _test_metrics_lines(head, evaluated)
    lines.append(f"preprocessing: {describe_preprocessing(*_fit_preprocessing(result))}")
    views = result.config.get("views")
    if views is not None:
        lines.append(f"views: {views['reduce']} of {', '.join(views['views'])}")
    duplicates = metrics.get("duplicates")
    if duplicates is not None:
        shared = duplicates["test_in_train"]
        lines.append(
            "same content (SHA-256): "
            + ("" if shared is None else f"{shared} test image(s) also in training, ")
            + f"{duplicates['within_train']} training image(s) repeating another"
        )
    lines += _saved_model_lines(out_path, result.estimator)
    lines += _report_lines(written)
    return lines


def _fit_summary(result, dataset, out_path, written):
    """The --json summary of the run."""
    preprocessing, source = _fit_preprocessing(result)
    return {
        "command": "fit",
        "data": dataset.root,
        "recipe": result.recipe,
        "layer": result.config["layer"],
        "metrics": result.metrics,
        "candidates": result.table.to_dict("records"),
        "layers": None
        if result.layers is None
        else [
            {
                "layer": r.layer,
                "mean_test_score": r.mean_test_score,
                "std_test_score": r.std_test_score,
                "best": bool(r.best),
            }
            for r in result.layers.itertuples()
        ],
        "extraction": result.extraction,
        "preprocessing": {**preprocessing, "source": source},
        "skipped": {p: skipped_json(items) for p, items in result.skipped.items()},
        "out": out_path,
        "report": written or None,
        "seconds": round(result.seconds, 3),
    }


def run_fit(args):
    """Grid-search the recipe; print the table and metrics; save the model and the report."""
    from ..estimators import persistence
    from ..workflows.experiment import run_experiment

    output = _Output(args)
    _check_engine_args(args)
    if args.layer_mode is not None and not args.layer:
        raise UsageError(
            f"--layer-mode {args.layer_mode} says what several --layer mean; give the layers "
            "(e.g. --layer layer3 --layer layer4), or leave it out for the recipe's own"
        )
    out_path = _check_out_path(args.out, persistence.FORMATS)
    _check_report_dir(args.report, [("--out", out_path)])
    dataset = _load_labelled(args, output, "fit")
    test_set, test_note = _load_test(args)
    test = None if test_set is None else (test_set.paths, test_set.labels)
    try:
        result = run_experiment(
            dataset.paths,
            dataset.labels,
            args.pipeline,
            overrides=_codes_overrides(args),
            test=test,
            test_size=args.test_size,
            cv=args.cv,  # --cv accepts 2 and more only
            scoring=args.scoring,
            n_jobs=args.n_jobs,
            random_state=args.random_state,
            on_error=args.on_error,
            progress=output.progress,
            log=output.note,
            layer_mode=args.layer_mode,
        )
    except InputTypeError as exc:  # a recipe option the recipe does not take
        if "'view_sets'" in str(exc):
            raise UsageError(
                f"--views given {len(args.views)} times: --pipeline {args.pipeline} does not "
                "search over views (it has no view_sets option; linear_probe has); give one "
                "--views"
            ) from None
        raise
    if out_path is not None:
        with naming_write_failures(out_path, "the model (--out)"):
            persistence.save(result.estimator, out_path)
    written = {}
    if args.report is not None:
        from ..workflows.report import write_report

        written = write_report(result, args.report)
    for items in result.skipped.values():
        _note_skipped(output, items)
    summary = _fit_summary(result, dataset, out_path, written)
    lines = _fit_lines(result, test_note, out_path, written, n_layers_given=len(args.layer or ()))
    output.result(jsonable(summary), lines)
    return EXIT_OK
