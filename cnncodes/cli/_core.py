"""What every command shares: option builders, parsers of option values, output, usage errors.

A command module is a pair ``add_<command>_parser(subparsers)`` / ``run_<command>(args) -> int``
built from these pieces; the library does the work, so nothing here computes codes or fits.
Light on purpose: no torch, torchvision or scikit-learn at import (``--help``, ``--version`` and
``cache info`` must start fast).

Over the project's ~600-line guide, for a reason: it is a flat list of small builders and parsers
(about 50, none over 60 lines), one per shared flag or value, so that each flag shared by the
commands is defined once; splitting it by flag group would only move the imports around.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

from ..errors import UsageError  # a mistake in the command line or its inputs: exit 2
from ..images.datasets import load_dataset
from ..images.views import VIEW_REDUCES, VIEW_SETS, expand_views
from ..params import ENGINES, POOLINGS, PRECISIONS
from ..spec import INTERPOLATIONS, PREPROCESSING_KEYS, Weights, is_model_callable
from ..utils.files import display, file_format
from ..utils.jsonable import jsonable

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


def _sizes(text):
    """``224`` -> 224; ``224,160`` or ``224x160`` -> (224, 160)."""
    parts = text.replace("x", ",").split(",")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected an int or HEIGHT,WIDTH (e.g. 224 or 224,160)"
        ) from None
    if len(values) > 2 or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected one or two positive ints")
    return values[0] if len(values) == 1 else tuple(values)


def _crop(text):
    """Like :func:`_sizes`, plus ``none`` (or 0): no centre crop."""
    if text.strip().lower() in ("none", "0"):
        return 0
    return _sizes(text)


def _floats(text):
    """``0.5`` -> 0.5; ``0.485,0.456,0.406`` -> a triple."""
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a number or three comma-separated numbers (R,G,B)"
        ) from None
    if len(values) not in (1, 3):
        raise argparse.ArgumentTypeError(f"{text!r}: expected one value or three (R,G,B)")
    return values[0] if len(values) == 1 else tuple(values)


def _int_where(ok, what):
    """An argparse type: an int for which ``ok(value)``, else an error saying ``what`` is expected."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {what}")
        return value

    return parse


def _int_at_least(minimum, what):
    """An argparse type: an int >= ``minimum``."""
    return _int_where(lambda value: value >= minimum, what)


def _fraction(text):
    """A number strictly between 0 and 1 (--test-size, --valid-size)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a fraction such as 0.25") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a fraction between 0 and 1")
    return value


def _positive_float(text):
    """A finite number above 0 (learning rates)."""
    try:
        value = float(text)
    except ValueError:
        value = None
    # `not value > 0` also refuses nan.
    if value is None or not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number such as 1e-3")
    return value


_positive_int = _int_at_least(1, "a positive integer")
_at_least_two = _int_at_least(2, "an integer >= 2")
_count = _int_at_least(0, "an integer >= 0")
_n_jobs = _int_where(lambda v: v == -1 or v > 0, "a positive integer, or -1 for all CPUs")
_seed = _int_where(lambda v: 0 <= v < 2**32, "an integer from 0 to 2**32 - 1")


def _add_data_options(parser, *, positional=True):
    """DATA (a class-folder tree or a CSV manifest) and --allow-outside-root."""
    if positional:
        parser.add_argument(
            "data",
            metavar="DATA",
            help="a folder whose sub-folders name the classes (read recursively), or a CSV "
            "manifest with a 'path' column and optionally a 'label' column",
        )
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="accept images that resolve outside DATA's folder through ../ or symbolic links "
        "(refused by default); a manifest's absolute paths are always accepted",
    )


def _add_held_out_options(
    group,
    *,
    required=False,
    test_size_help="hold out this stratified fraction of DATA for the evaluation (e.g. 0.25)",
):
    """--test DATA2 or --test-size F (one of them), read by :func:`_load_labelled`."""
    held_out = group.add_mutually_exclusive_group(required=required)
    held_out.add_argument(
        "--test", metavar="DATA2", help="labelled images to evaluate on (folder or CSV manifest)"
    )
    held_out.add_argument("--test-size", type=_fraction, metavar="F", help=test_size_help)


def _add_folds_options(group, cv_help):
    """--cv K and --random-state N, the folds of a cross-validated search and their seed."""
    group.add_argument("--cv", type=_at_least_two, default=5, metavar="K", help=cv_help)
    group.add_argument(
        "--random-state",
        type=_seed,
        default=0,
        metavar="N",
        help="seed of the test split and the folds (default: %(default)s)",
    )


def _add_weights_options(group):
    """--weights and --seed."""
    group.add_argument(
        "--weights",
        metavar="W",
        help="DEFAULT, a torchvision weights name (IMAGENET1K_V1, ResNet50_Weights.IMAGENET1K_V1), "
        "a timm pretrained tag (c3_in1k), 'none' (random initialisation from --seed), or a "
        "checkpoint file path (default: DEFAULT for torchvision and timm models)",
    )
    group.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random initialisation with --weights none (default: %(default)s)",
    )


def _model_arg(text):
    """``KEY=VALUE`` of --model-arg: VALUE as JSON where it parses (5, 0.5, true, null, "x"),
    else as the string itself."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected KEY=VALUE, e.g. --model-arg num_classes=5"
        )
    try:
        value = json.loads(value)
    except ValueError:
        pass  # a bare word: the string itself
    return key.strip(), value


class _ModelArgs(argparse.Action):
    """Collects repeated --model-arg KEY=VALUE into one dict (``args.model_kwargs``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        key, value = values
        given = dict(getattr(namespace, self.dest) or {})
        if key in given:
            raise UsageError(
                f"{option_string} {key} given twice ({given[key]!r}, then {value!r}): give it once"
            )
        given[key] = value
        setattr(namespace, self.dest, given)


def _add_model_arg_option(group):
    """--model-arg KEY=VALUE (repeatable): keyword arguments of the model's builder."""
    group.add_argument(
        "--model-arg",
        dest="model_kwargs",
        action=_ModelArgs,
        type=_model_arg,
        metavar="KEY=VALUE",
        help="a keyword argument of the model's builder (torchvision, timm or your callable), "
        "e.g. num_classes=5 for a checkpoint fine-tuned on 5 classes; VALUE is read as JSON "
        "(5, 0.5, true, null) where it parses, else as a string; repeat for several",
    )


def _add_preprocessing_options(group):
    """--resize/--crop/--mean/--std/--interpolation: overrides of the weights' own transform."""
    group.add_argument(
        "--resize",
        type=_sizes,
        metavar="N|H,W",
        help="resize the shorter side to N, or to exactly H,W (default: the weights' own)",
    )
    group.add_argument(
        "--crop",
        type=_crop,
        metavar="N|H,W|none",
        help="centre crop (default: the weights' own; 'none' needs --resize H,W)",
    )
    group.add_argument("--mean", type=_floats, metavar="M|R,G,B", help="normalisation mean")
    group.add_argument("--std", type=_floats, metavar="S|R,G,B", help="normalisation std")
    group.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize interpolation")
    group.add_argument(
        "--impl",
        choices=("pil", "torch"),
        default="pil",
        help="preprocessing implementation: pil (Pillow decodes and resizes on the CPU) or torch "
        "(JPEG files decoded by torchvision on the extraction device, nvJPEG on a GPU; resize and "
        "crop as tensor operations; bilinear or bicubic only); part of the cache key (default: "
        "%(default)s)",
    )


def _views(text):
    """--views: a named set of views, or a count of random resized crops."""
    value = int(text) if text.strip().isdigit() else text
    try:
        expand_views(value, name="--views")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _add_view_options(group, stack_help, search=False):
    """--views, --view-reduce, --view-seed (:mod:`cnncodes.views`); with ``search``, --views may
    be repeated (a list: the sets of views a recipe searches over)."""
    group.add_argument(
        "--views",
        type=_views,
        action="append" if search else "store",
        metavar="V",
        help="views of each image to code: " + ", ".join(VIEW_SETS) + " (centre and its "
        "mirror; torchvision's five crops; the five and their mirrors), or N random resized "
        "crops; each view's codes are cached (default: center)"
        + (
            "; repeat to search over several sets (recipes with the view_sets option, e.g. "
            "linear_probe)"
            if search
            else ""
        ),
    )
    group.add_argument(
        "--view-reduce",
        choices=VIEW_REDUCES,
        help="how an image's views become its codes: their mean or max, or " + stack_help,
    )
    group.add_argument(
        "--view-seed",
        type=int,
        metavar="S",
        help="seed of the random resized crops of --views N (default: 0)",
    )


def _add_model_options(
    parser,
    *,
    model=True,
    layers=True,
    required=True,
    layer_help=None,
    model_args=True,
    views=False,
    view_search=False,
):
    """The network: --model, --weights, --seed, --model-arg, --layer, --pooling and the
    preprocessing (with ``views``, also --views, --view-reduce, --view-seed; ``view_search``:
    --views repeatable).

    With ``required=False`` (``fit``), --model and --pooling default to None: the recipe decides.
    """
    group = parser.add_argument_group("model")
    if model:
        group.add_argument(
            "--model",
            "-m",
            required=required,
            metavar="M",
            help="torchvision model name (resnet50, mobilenet_v2, ...), timm:NAME or "
            "package.module:callable" + ("" if required else " (default: the recipe's, resnet50)"),
        )
    _add_weights_options(group)
    if model_args:
        _add_model_arg_option(group)
    if layers:
        group.add_argument(
            "--layer",
            "-l",
            action="append",
            metavar="L",
            help=layer_help
            or "graph-node name (see 'cnncodes layers M'); repeat for several layers, whose "
            "codes are concatenated in order (default: penultimate, the input of the last "
            "linear layer)",
        )
        group.add_argument(
            "--pooling",
            "-p",
            action=_Once,
            choices=POOLINGS,
            default="avg" if required else None,
            help="how spatial maps become vectors (default: "
            + ("%(default)s)" if required else "the recipe's)"),
        )
    preprocessing = parser.add_argument_group("preprocessing")
    _add_preprocessing_options(preprocessing)
    if views:
        _add_view_options(preprocessing, views, view_search)


def _add_output_options(parser, *, quiet=True):
    """--json (and --quiet)."""
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object with the results on stdout"
    )
    if quiet:
        parser.add_argument(
            "--quiet", "-q", action="store_true", help="no progress bar and no messages"
        )


def _add_cache_dir_option(parser, *, no_cache=True):
    """--cache-dir (and --no-cache)."""
    if no_cache:
        parser = parser.add_mutually_exclusive_group()
    parser.add_argument(
        "--cache-dir",
        metavar="D",
        default="auto",
        help="the code cache folder (default: $CNNCODES_CACHE, else ./cache)",
    )
    if no_cache:
        parser.add_argument(
            "--no-cache", action="store_true", help="neither read nor write the code cache"
        )


def _add_compute_options(group):
    """--batch-size, --workers, --device."""
    group.add_argument(
        "--batch-size",
        type=_positive_int,
        default=32,
        metavar="N",
        help="images per forward pass; on the CPU the codes are bit-identical whatever N, on a "
        "GPU they may differ by float rounding (default: %(default)s)",
    )
    group.add_argument(
        "--workers",
        type=_count,
        metavar="N",
        help="image-decoding processes, 0 to decode in the main process (default: on a GPU, CPUs - 1 "
        "up to 16; on the CPU, 0 with up to 4 CPUs, else 4)",
    )
    group.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)"
    )


def _runtime_from_args(args, *, auto="auto"):
    """``batch_size``, ``num_workers``, ``device`` and (where the command has --precision)
    ``precision`` as given on the command line.

    ``auto`` replaces the value ``"auto"`` of --device and --precision: the library functions take
    ``"auto"`` itself, the estimators None (their default, resolved when they run).
    """
    runtime = {"batch_size": args.batch_size, "num_workers": args.workers, "device": args.device}
    if hasattr(args, "precision"):
        runtime["precision"] = args.precision
    return {
        k: auto if k in ("device", "precision") and v == "auto" else v for k, v in runtime.items()
    }


class _Once(argparse.Action):
    """A single-valued option given twice is an error, not "the last one wins": beside the
    repeatable --layer, a second --pooling reads as a request for both."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = f"_{self.dest}_given"
        if getattr(namespace, seen, False):
            first = getattr(namespace, self.dest)
            raise UsageError(
                f"{self.option_strings[0]} given twice ({first!r}, then {values!r}): give it once"
                + (
                    "; a recipe that sweeps poolings (layer_sweep_svm) compares them"
                    if self.dest == "pooling"
                    else ""
                )
            )
        setattr(namespace, seen, True)
        setattr(namespace, self.dest, values)


def _add_engine_options(parser, *, actors=False):
    """--engine, --address (and --ray-actors): where the codes are computed."""
    group = parser.add_argument_group("scale-out")
    group.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="compute the codes the cache lacks in this process (local) or on a Ray cluster "
        "(ray: needs pip install -e '.[ray]' and a cache folder every node sees); the same "
        "codes (default: %(default)s)",
    )
    group.add_argument(
        "--address",
        metavar="auto|HOST:PORT",
        help="with --engine ray: the cluster to join (default: a local Ray for the run)",
    )
    if actors:
        group.add_argument(
            "--ray-actors",
            type=_positive_int,
            metavar="N",
            help="with --engine ray: actors running the network (default: one per GPU of the "
            "cluster, else one per CPU)",
        )


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


def _add_trust_model_code_option(
    parser, *, named_in="the file", every="every callable the file names", where=", after the data"
):
    """--trust-model-code [CALLABLE ...], read by :func:`_trust_model_code`."""
    parser.add_argument(
        "--trust-model-code",
        action="append",
        nargs="?",
        const="",
        metavar="CALLABLE",
        # One name per flag (nargs="?"), so that the flag may stand before the positionals.
        help=f"allow the model's own architecture (package.module:callable, named in {named_in}) "
        f"to be imported and run; repeat the flag for several. Alone, without a name: allow {every}. "
        "Torchvision models need nothing",
    )
    parser.set_defaults(trust_model_code_hint=f"to allow {every}, give the flag alone{where}")


def _add_runtime_options(parser):
    """How the work runs and reports: cache, batches, device, precision, errors, output."""
    group = parser.add_argument_group("runtime")
    _add_cache_dir_option(group)
    _add_compute_options(group)
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="fp32 (the default on a CPU), bf16 (the default on a GPU) or fp16; part of the "
        "cache key (default: %(default)s)",
    )
    group.add_argument(
        "--on-error",
        choices=("raise", "skip"),
        default="raise",
        help="an unreadable image stops the run (raise) or is left out and reported (skip) "
        "(default: %(default)s)",
    )
    _add_output_options(group)


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


def _check_report_dir(path):
    """--report DIR: a folder, or a path that does not exist yet (checked before any work)."""
    if path is not None and os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--report {path!r} exists and is not a folder")


def _cache_dir_from_args(args):
    return None if getattr(args, "no_cache", False) else args.cache_dir


def _check_out_path(path, formats, option="--out"):
    """The --out file (or ``option``'s): a known extension and an existing folder, checked
    before any work."""
    if path is None:
        return None
    try:
        file_format(path, formats, f"{option} ")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path!r}: folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{option} {path!r} is a folder")
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
