"""The options the commands share: one builder per flag group, and the parsers of their values.

A command's ``add_<command>_parser`` is built from these (through :mod:`cnncodes.cli._core`,
which re-exports them); each flag shared by several commands is defined once, here. Light on
purpose, like :mod:`._core`: no torch, torchvision or scikit-learn at import.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import UsageError
from ..images.views import VIEW_REDUCES, VIEW_SETS, expand_views
from ..params import ENGINES, POOLINGS, PRECISIONS
from ..spec import INTERPOLATIONS


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

#: --model of every command when not given (``fit``: the recipe's, resnet50 for every bundled one).
DEFAULT_MODEL = "resnet50"


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


def _add_weights_options(group, seed_help=None):
    """--weights and --seed (the network's seed; ``seed_help`` where it seeds more)."""
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
        metavar="N",
        help=seed_help
        or "seed of the network's random initialisation with --weights none (default: %(default)s)",
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
    seed_help=None,
):
    """The network: --model, --weights, --seed, --model-arg, --layer, --pooling and the
    preprocessing (with ``views``, also --views, --view-reduce, --view-seed; ``view_search``:
    --views repeatable).

    --model defaults to resnet50 in every command; with ``required=False`` (``fit``), --model and
    --pooling default to None: the recipe decides (every bundled recipe: resnet50).
    """
    group = parser.add_argument_group("model")
    if model:
        group.add_argument(
            "--model",
            "-m",
            default=DEFAULT_MODEL if required else None,
            metavar="M",
            help="torchvision model name (resnet50, mobilenet_v2, ...), timm:NAME or "
            "package.module:callable (default: "
            + (f"{DEFAULT_MODEL})" if required else f"the recipe's, {DEFAULT_MODEL})"),
        )
    _add_weights_options(group, seed_help)
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


class _Deprecated(argparse.Action):
    """An old spelling of an option: stores into the new one's ``dest``, with a one-line
    warning on stderr naming the new spelling (hidden from --help)."""

    def __init__(self, option_strings, dest, new=None, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        sys.stderr.write(
            f"cnncodes: warning: {option_string} is deprecated: use {self.new} (same meaning)\n"
        )
        setattr(namespace, self.dest, values)


def _add_compute_options(group):
    """--batch-size, --num-workers (the old --workers still works), --device."""
    group.add_argument(
        "--batch-size",
        type=_positive_int,
        default=32,
        metavar="N",
        help="images per forward pass; on the CPU the codes are bit-identical whatever N, on a "
        "GPU they may differ by float rounding (default: %(default)s)",
    )
    group.add_argument(
        "--num-workers",
        type=_count,
        metavar="N",
        help="image-decoding processes (num_workers), 0 to decode in the main process (default: "
        "on a GPU, CPUs - 1 up to 16; on the CPU, 0 with up to 4 CPUs, else 4)",
    )
    group.add_argument(  # the spelling before --num-workers
        "--workers",
        dest="num_workers",
        type=_count,
        action=_Deprecated,
        new="--num-workers",
        help=argparse.SUPPRESS,
    )
    group.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)"
    )


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
