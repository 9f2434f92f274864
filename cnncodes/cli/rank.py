"""``cnncodes rank``: score candidate networks, layers and poolings on a dataset without training."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ..params import POOLINGS
from ..spec import INTERPOLATIONS
from ._core import (
    EXIT_OK,
    _add_data_options,
    _add_runtime_options,
    _at_least_two,
    _cache_dir_from_args,
    _crop,
    _fill,
    _floats,
    _Formatter,
    _load_labelled,
    _Output,
    _report_lines,
    _seed,
    _sizes,
    _table,
)

_RANK_EPILOG = """\
each --model starts a candidate; the --weights, --layer, --pooling, --resize, --crop, --mean,
--std and --interpolation after it (before the next --model) belong to it alone.

examples:
  cnncodes rank photos/ --model resnet50 --model mobilenet_v2 --per-class 30
  cnncodes rank photos/ --model mobilenet_v2 --weights mnv2.pth --mean 0.5 --std 0.5 \\
      --layer features.14.conv.0 --layer features.18 --pooling avg --pooling max \\
      --model mymodels:resnet20 --weights resnet20.th --resize 32 --crop 32 \\
      --model resnet18 --weights none --json --report rank-report/
"""

#: Per-candidate options: ``(flags, key of the candidate dict, argparse type, choices, help)``.
_PER_CANDIDATE = (
    (("--weights",), "weights", str, None, "its weights (as in 'cnncodes extract')"),
    (
        ("--layer", "-l"),
        "layers",
        str,
        None,
        "a layer to score, repeat for several (default: the layer_sweep_svm recipe's sweep for "
        "the model family, else the last three block outputs and the penultimate layer)",
    ),
    (("--pooling", "-p"), "poolings", str, POOLINGS, "repeat for several (default: avg)"),
    (("--resize",), "resize", _sizes, None, "N or H,W (default: the weights' own)"),
    (("--crop",), "crop", _crop, None, "N, H,W or none (default: the weights' own)"),
    (("--mean",), "mean", _floats, None, "normalisation mean, M or R,G,B"),
    (("--std",), "std", _floats, None, "normalisation std, S or R,G,B"),
    (("--interpolation",), "interpolation", str, INTERPOLATIONS, "resize interpolation"),
)
_REPEATABLE = ("layers", "poolings")


class _Candidate(argparse.Action):
    """--model starts a candidate (a dict in ``args.candidates``); the other per-candidate
    options set a key of the latest one (``layers`` and ``poolings`` accumulate)."""

    def __call__(self, parser, namespace, values, option_string=None):
        candidates = list(getattr(namespace, "candidates", None) or [])
        if self.dest == "model":
            candidates.append({"model": values})
        elif not candidates:
            raise UsageError(
                f"rank: {option_string} {values} comes before any --model: each --model starts a "
                "candidate and the options after it belong to it (see 'cnncodes rank --help')"
            )
        elif self.dest in _REPEATABLE:
            candidates[-1].setdefault(self.dest, []).append(values)
        elif self.dest in candidates[-1]:
            raise UsageError(
                f"rank: {option_string} given twice for --model {candidates[-1]['model']} "
                f"({candidates[-1][self.dest]!r}, then {values!r}): give it once per model"
            )
        else:
            candidates[-1][self.dest] = values
        namespace.candidates = candidates


def add_rank_parser(subparsers):
    """``cnncodes rank DATA --model M [...] --model M2 [...]``."""
    parser = subparsers.add_parser(
        "rank",
        help="rank networks, layers and poolings for a dataset before training (LogME, LEEP, NCE)",
        description=_fill(
            "Extract each candidate's codes (cached) on DATA, or a stratified subsample of it "
            "(--per-class), and score them without training: LogME (You et al. 2021, the "
            "evidence of a Bayesian linear model, per layer) and, where the network keeps its "
            "source classifier, LEEP (Nguyen et al. 2020) and NCE (Tran et al. 2019) from its "
            "predicted classes. Higher is better. The table also gives each code's width, the "
            "seconds per image its extraction took and the estimated time to extract all of "
            "DATA. Never downloads anything."
        ),
        epilog=_RANK_EPILOG,
        formatter_class=_Formatter,
    )
    _add_data_options(parser)
    group = parser.add_argument_group(
        "candidates (each --model starts one; the options after it are its own)"
    )
    group.add_argument(
        "--model",
        "-m",
        dest="model",
        action=_Candidate,
        metavar="M",
        help="a candidate network: torchvision name, timm:NAME or package.module:callable; "
        "repeat for several",
    )
    for flags, key, kind, choices, text in _PER_CANDIDATE:
        group.add_argument(
            *flags, dest=key, action=_Candidate, type=kind, choices=choices, help=text
        )
    parser.set_defaults(candidates=None)
    parser.add_argument(
        "--per-class",
        type=_at_least_two,
        metavar="N",
        help="score a stratified subsample of at most N images per class (default: every image)",
    )
    parser.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="seed of the subsample and of untrained (--weights none) networks (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--report",
        metavar="DIR",
        help="write rank.json and rank.png (LogME per candidate, as bars) as the folder DIR",
    )
    _add_runtime_options(parser)
    parser.set_defaults(run=run_rank)


def run_rank(args):
    """Print the ranking table (or its JSON), and write the report."""
    from ..workflows.rank import check_rank_folder, rank, rank_to_dict, write_rank_report

    if not args.candidates:
        raise UsageError("rank: give at least one --model (see 'cnncodes rank --help')")
    check_rank_folder(args.report)
    output = _Output(args)
    dataset = _load_labelled(args, output, "rank")
    table = rank(
        dataset.paths,
        dataset.labels,
        args.candidates,
        per_class=args.per_class,
        seed=args.seed,
        cache_dir=_cache_dir_from_args(args),
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        precision=args.precision,
        on_error=args.on_error,
        progress=output.progress,
    )
    data = rank_to_dict(table)
    lines = _rank_lines(table)
    if args.report:
        written = write_rank_report(table, args.report)
        data["report"] = written
        lines += _report_lines(written)
    output.result(data, lines)
    return EXIT_OK


def _fmt(value, digits=3):
    return "-" if value != value else f"{value:.{digits}f}"


def _rank_lines(table):
    """The table as text, with a line on what was scored and how long it took."""
    a = table.attrs
    headers = ["#", "candidate", "layer", "pooling", "width", "LogME", "LEEP", "NCE"]
    headers += ["ms/img", "all images"]
    rows = [
        [r.rank, r.candidate, r.layer, r.pooling, r.width]
        + [_fmt(r.logme), _fmt(r.leep), _fmt(r.nce), f"{r.seconds_per_image * 1000:.1f}"]
        + [_duration(r.estimated_seconds)]
        for r in table.itertuples()
    ]
    right = ("#", "width", "LogME", "LEEP", "NCE", "ms/img", "all images")
    lines = _table(headers, rows, right=right)
    lines.append(
        f"scored on {a['n_scored']} of {a['n_images']} images ({a['n_classes']} classes) in "
        f"{a['seconds']:.1f} s ({a['extract_seconds']:.1f} s extracting, "
        f"{a['score_seconds']:.2f} s scoring); higher scores transfer better; 'all images': "
        "estimated time to extract the whole dataset"
    )
    return lines


def _duration(seconds):
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
