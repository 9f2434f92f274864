"""``cnncodes advise``: which transfer-learning scenario and recipe suit a dataset."""

from __future__ import annotations

from ..params import SMALL_PER_CLASS
from ._core import (
    DEFAULT_MODEL,
    EXIT_OK,
    _add_cache_dir_option,
    _add_data_options,
    _add_output_options,
    _add_preprocessing_options,
    _add_weights_options,
    _at_least_two,
    _cache_dir_from_args,
    _fill,
    _Formatter,
    _load_labelled,
    _Output,
    _preprocessing_from_args,
    _seed,
)

_ADVISE_EPILOG = """\
examples:
  cnncodes advise photos/ --model resnet50
  cnncodes advise photos/ --model mobilenet_v2 --weights mobilenet_v2.pth --json
"""


def add_advise_parser(subparsers):
    """``cnncodes advise DATA``."""
    parser = subparsers.add_parser(
        "advise",
        help="recommend a transfer-learning scenario and recipe for a dataset",
        description=_fill(
            "Count images per class (small or large) and measure how close DATA is to what the "
            "network was trained on (cross-validated accuracy of top-layer against earlier-layer "
            "codes on a subsample, and the pretrained classifier's confidence); name scenario 1-4, "
            "the recipe and the command to run, with the reasons. Large means a median of "
            f"{SMALL_PER_CLASS:,} or more images per class: then the command fine-tunes "
            "(cnncodes finetune), with 'cnncodes compare' to measure what that gains over codes."
        ),
        epilog=_ADVISE_EPILOG,
        formatter_class=_Formatter,
    )
    _add_data_options(parser)
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        "-m",
        default=DEFAULT_MODEL,
        metavar="M",
        help="torchvision model name (resnet50, mobilenet_v2, ...), timm:NAME or "
        "package.module:callable (default: %(default)s)",
    )
    _add_weights_options(group)
    _add_preprocessing_options(parser.add_argument_group("preprocessing"))
    parser.add_argument(
        "--per-class",
        type=_at_least_two,
        default=20,
        metavar="N",
        help="images per class measured, at least 2 (default: %(default)s)",
    )
    parser.add_argument(
        "--random-state",
        type=_seed,
        default=0,
        metavar="N",
        help="seed of the measured subsample and its cross-validation folds (default: %(default)s)",
    )
    _add_cache_dir_option(parser)
    _add_output_options(parser)
    parser.set_defaults(run=run_advise)


def run_advise(args):
    """Print the recommendation."""
    from ..workflows.advise import advise

    output = _Output(args)
    dataset = _load_labelled(args, output, "advise")
    result = advise(
        dataset.paths,
        dataset.labels,
        model=args.model,
        weights=args.weights,
        seed=args.seed,
        random_state=args.random_state,
        per_class=args.per_class,
        preprocessing=_preprocessing_from_args(args),
        data_label=args.data,
        cache_dir=_cache_dir_from_args(args),
        progress=output.progress,
    )
    what = f"recipe {result.recipe}" if result.recipe else "fine-tuning (cnncodes finetune)"
    lines = [f"scenario {result.scenario}: {what}"]
    lines += [f"  - {r}" for r in result.reasons]
    if result.compare_command:  # scenarios 2 and 4
        lines.append(f"compare: {result.compare_command}")
        lines.append(f"baseline: {result.baseline_command}")
    lines.append(f"run: {result.command}")
    output.result(result.to_dict(), lines)
    return EXIT_OK
