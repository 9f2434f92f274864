"""``cnncodes demo``: the offline demo (does pre-training help with a few labelled images?)."""

from __future__ import annotations

from ._core import (
    EXIT_OK,
    _add_cache_dir_option,
    _add_output_options,
    _cache_dir_from_args,
    _fill,
    _Formatter,
    _Output,
)


def add_demo_parser(subparsers):
    """``cnncodes demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="offline demo: does pre-training help with a few labelled images?",
        description=_fill(
            "Build a small real image dataset from scikit-learn's handwritten digits, pretrain a "
            "small CNN on digits 0-4, and on digits 5-9 with a few labelled images per class "
            "compare codes of the pretrained network (top and earlier layer) with an untrained "
            "network and raw pixels. A second run reuses the checkpoint and the cached codes."
        ),
        formatter_class=_Formatter,
    )
    parser.add_argument("--out-dir", default="demo-output", help="default: %(default)s")
    parser.add_argument(
        "--shots", type=int, default=5, help="labelled images per class (default: 5)"
    )
    _add_cache_dir_option(parser)
    _add_output_options(parser)
    parser.set_defaults(run=run_demo_command)


def run_demo_command(args):
    """Run the demo; its table and verdict are the result (stdout), progress goes to stderr."""
    from ..workflows.demo import local_imagenet_weights, run_demo, summary_lines

    output = _Output(args)
    report = run_demo(
        args.out_dir,
        cache_dir=_cache_dir_from_args(args),
        shots=args.shots,
        progress=output.progress,
        log=output.note,
        log_table=False,
    )
    output.result(report, summary_lines(report))
    local = local_imagenet_weights()
    if local:
        model, weights = local[0]
        output.note(
            f"ImageNet weights found on this machine ({', '.join(f'{m} {w}' for m, w in local)}):"
            f" compare layers on your own folder with: cnncodes advise DATA --model {model} "
            f"--weights {weights}"
        )
    else:
        output.note(
            "To run the same comparison with ImageNet weights on your own folder, put a "
            "torchvision weights file in $TORCH_HOME/hub/checkpoints (e.g. resnet50-0676ba61.pth) "
            "and run: cnncodes advise DATA --model resnet50 --weights IMAGENET1K_V1 (or pass a "
            "checkpoint: --weights /path/to/checkpoint.pth)"
        )
    return EXIT_OK
