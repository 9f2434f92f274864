"""What every command shares: option builders, parsers of option values, output, usage errors.

A command module is a pair ``add_<command>_parser(subparsers)`` / ``run_<command>(args) -> int``
built from these pieces; the library does the work, so nothing here computes codes or fits.
Light on purpose: no torch, torchvision or scikit-learn at import (``--help``, ``--version`` and
``cache info`` must start fast).

The option builders and the parsers of option values are in :mod:`._options` (re-exported here,
so that a command imports everything it shares from one place); this module keeps the exit
statuses, the parser and output classes, the options' translation into library arguments, the
data loading and output checks, and the shared lines of results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

from ..errors import UsageError  # a mistake in the command line or its inputs: exit 2
from ..images.datasets import load_dataset
from ..spec import PREPROCESSING_KEYS, Weights, is_model_callable
from ..utils.diskspace import check_free_space
from ..utils.files import display, file_format
from ..utils.jsonable import jsonable
from ._options import (  # noqa: F401 - re-exported: the commands import them from here
    DEFAULT_MODEL,
    _add_cache_dir_option,
    _add_compute_options,
    _add_data_options,
    _add_engine_options,
    _add_folds_options,
    _add_held_out_options,
    _add_model_arg_option,
    _add_model_options,
    _add_output_options,
    _add_preprocessing_options,
    _add_runtime_options,
    _add_trust_model_code_option,
    _add_view_options,
    _add_weights_options,
    _at_least_two,
    _count,
    _crop,
    _floats,
    _fraction,
    _int_at_least,
    _int_where,
    _model_arg,
    _ModelArgs,
    _n_jobs,
    _Once,
    _positive_float,
    _positive_int,
    _seed,
    _sizes,
    _views,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_DEBUG_HINT = (
    "run with --debug (cnncodes --debug COMMAND ...) or CNNCODES_DEBUG=1 for the traceback"
)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become :class:`UsageError` (one line, no usage dump)."""

    def error(self, message):
        command = self.prog.removeprefix("cnncodes").strip()
        raise UsageError(f"{command + ': ' if command else ''}{message} (see '{self.prog} --help')")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples in epilogs as written (descriptions are wrapped by :func:`_fill`)."""


def _fill(text):
    return textwrap.fill(text, 88)


class _Output:
    """Where a command's words go: results to stdout, notes to stderr; ``--json`` prints only
    the final JSON object on stdout; ``--quiet`` silences everything else."""

    def __init__(self, args):
        self.json = bool(getattr(args, "json", False))
        self.quiet = bool(getattr(args, "quiet", False))

    @property
    def progress(self):
        """The ``progress`` argument for the library: off when quiet, else a bar on a terminal
        and a line every few seconds in a log file (long runs only)."""
        return False if self.quiet else None

    def note(self, message):
        """Progress and notes, on stderr."""
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def warn(self, message):
        """A warning on stderr, worded as Python's warnings are shown (even with --quiet)."""
        print(f"cnncodes: warning: {message}", file=sys.stderr, flush=True)

    def result(self, data, lines):
        """The command's result: ``data`` as JSON with ``--json``, else ``lines`` on stdout."""
        if self.json:
            print(json.dumps(jsonable(data), indent=1))
        elif not self.quiet:
            for line in lines:
                print(line)


def _table(headers, rows, right=()):
    """Plain-text table; columns named in ``right`` are right-aligned."""
    cells = [[str(c) for c in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            cell.rjust(w) if headers[i] in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(parts).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _short_weights(weights_id):
    """``sha256:<64 hex>`` shortened for tables."""
    return Weights.parse(weights_id).short_identity


def _runtime_from_args(args, *, auto="auto"):
    """``batch_size``, ``num_workers``, ``device`` and (where the command has --precision)
    ``precision`` as given on the command line.

    ``auto`` replaces the value ``"auto"`` of --device and --precision: the library functions take
    ``"auto"`` itself, the estimators None (their default, resolved when they run).
    """
    runtime = {
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "device": args.device,
    }
    if hasattr(args, "precision"):
        runtime["precision"] = args.precision
    return {
        k: auto if k in ("device", "precision") and v == "auto" else v for k, v in runtime.items()
    }


def _check_engine_args(args):
    if args.address is not None and args.engine != "ray":
        raise UsageError(f"--address {args.address!r} applies only to --engine ray")
    if getattr(args, "ray_actors", None) is not None and args.engine != "ray":
        raise UsageError(f"--ray-actors {args.ray_actors} applies only to --engine ray")
    if args.engine == "ray":
        from ..extraction.ray_engine import require_ray

        try:
            require_ray()
        except ImportError as exc:  # before any image is read
            raise UsageError(f"--engine ray: {exc}") from None


def _preprocessing_from_args(args):
    """The preprocessing options given on the command line (the rest keep their defaults)."""
    given = {key: getattr(args, key) for key in PREPROCESSING_KEYS}
    given["impl"] = None if args.impl == "pil" else args.impl
    return {k: v for k, v in given.items() if v is not None}


def _spec_from_args(args):
    """Resolve --model/--weights/--seed and the preprocessing overrides (no weights loaded)."""
    from ..networks.models import spec_of

    return spec_of(args)


def _load_data(args, output=None):
    """DATA as an :class:`~cnncodes.datasets.ImageDataset` (a note on stderr says what was found)."""
    dataset = load_dataset(args.data, allow_outside_root=args.allow_outside_root)
    if output is not None:
        counts = dataset.counts()
        what = f"{len(counts)} class{'es' if len(counts) != 1 else ''}" if counts else "unlabelled"
        # A manifest is named by its file: two manifests in one folder are told apart.
        where = args.data if dataset.kind == "manifest" else dataset.root
        output.note(f"{len(dataset)} images in {display(where)} ({what})")
    return dataset


def _load_labelled(args, output, command):
    """DATA as by :func:`_load_data`, refused unless labelled (``command`` needs the labels)."""
    dataset = _load_data(args, output)
    if dataset.labels is None:
        raise UsageError(
            f"{args.data}: {command} needs labelled images (class sub-folders, or a manifest "
            "with a 'label' column)"
        )
    return dataset


def _load_test(args):
    """The held-out images of --test DATA2 (which must be labelled) or --test-size F:
    ``(test set or None, note or None)``; the note tells the output where they came from."""
    if args.test is not None:
        test_set = load_dataset(args.test, allow_outside_root=args.allow_outside_root)
        if test_set.labels is None:
            raise UsageError(f"--test {args.test}: the test images need labels")
        return test_set, display(args.test if test_set.kind == "manifest" else test_set.root)
    if args.test_size is not None:
        return None, f"{args.test_size:g} of DATA held out"
    return None, None


def _check_report_dir(path, outputs=()):
    """--report DIR: a path that does not exist yet, or a folder holding an earlier report only
    (replaced as a whole), where the disk has room, and none of ``outputs`` (``(option, path)``
    of the command's other files) inside it (checked before any work)."""
    if path is None:
        return
    from ..workflows.report import check_report_folder

    check_report_folder(path, "--report")
    folder = os.path.realpath(path)
    for option, other in outputs:
        if other is not None and os.path.realpath(other).startswith(folder + os.sep):
            raise UsageError(
                f"{option} {display(other)} is inside --report {display(path)}: a report "
                "replaces its folder as a whole; save the file beside the report folder"
            )
    check_free_space(path, f"--report {display(path)}")


def _cache_dir_from_args(args):
    return None if getattr(args, "no_cache", False) else args.cache_dir


def _check_out_path(path, formats, option="--out"):
    """The --out file (or ``option``'s): a known extension and an existing folder, checked
    before any work."""
    if path is None:
        return None
    file_format(path, formats, f"{option} ")  # an unknown extension: a UsageError naming it
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path!r}: folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{option} {path!r} is a folder")
    check_free_space(folder, f"{option} {display(path)}")
    return os.path.abspath(path)


def _note_skipped(output, skipped, limit=20):
    if not skipped:
        return
    output.note(f"skipped {len(skipped)} unreadable image(s):")
    for s in skipped[:limit]:
        output.note(f"  {display(s.path)}: {s.reason}")
    if len(skipped) > limit:
        output.note(f"  ... and {len(skipped) - limit} more")


def _fmt(value, digits=3):
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def _test_metrics_lines(head, evaluated):
    """Accuracy, balanced accuracy and the per-class table of ``evaluated`` (from
    :func:`~cnncodes.evaluation.classification_metrics`), after ``head``."""
    lines = [
        f"{head}: accuracy {_fmt(evaluated['accuracy'])}, balanced accuracy "
        f"{_fmt(evaluated['balanced_accuracy'])}"
    ]
    lines += _table(
        ["class", "precision", "recall", "support"],
        [
            [c, _fmt(m["precision"]), _fmt(m["recall"]), m["support"]]
            for c, m in evaluated["per_class"].items()
        ],
        right=("precision", "recall", "support"),
    )
    return lines


def _saved_model_lines(out_path, estimator):
    """Where --out saved the model, and the flags its own model code will need to predict."""
    if not out_path:
        return []
    from ..estimators.persistence import BUILTIN_MODEL_CALLABLES, model_callables

    lines = [f"saved model: {display(out_path)}"]
    own = [c for c in model_callables(estimator) if c not in BUILTIN_MODEL_CALLABLES]
    if own:
        flags = " ".join(f"--trust-model-code {c}" for c in own)
        lines.append(f"it names your model code: predict with {flags}")
    return lines


def _report_lines(written):
    """The --report folder and the files written in it (``written``: name -> path)."""
    if not written:
        return []
    folder = os.path.dirname(next(iter(written.values())))
    return [f"report: {display(folder)} ({', '.join(written)})"]


def _trust_model_code(args):
    """``--trust-model-code``: False (not given), True (given alone) or the names given."""
    if args.trust_model_code is None:
        return False
    names = args.trust_model_code
    if any(not name for name in names):
        return True
    for name in names:
        if not is_model_callable(name):
            raise UsageError(
                f"--trust-model-code {name!r}: expected package.module:callable, e.g. "
                f"mymodels:resnet20 ({args.trust_model_code_hint})"
            )
    return names
