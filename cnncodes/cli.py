"""The ``cnncodes`` command line: a thin argparse front end over the library (nothing imports it).

Every command is a pair ``add_<command>_parser(subparsers)`` / ``run_<command>(args) -> int``,
registered in :data:`COMMANDS`; shared options come from the ``_add_*_options`` builders and
shared steps from helpers such as :func:`_spec_from_args` and :func:`_load_data`, so a new command
is one more pair of functions.

Exit status: 0 on success, 2 for a usage or input error (one line on stderr starting
``cnncodes: error:``, no traceback), 1 for anything else, 130 when interrupted.
``CNNCODES_DEBUG=1`` prints the traceback of any error.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import random
import secrets
import sys
import textwrap
import traceback
import warnings

import numpy as np

from . import __version__
from ._json import jsonable
from .cache import CacheWarning, list_configs, resolve_cache_dir
from .datasets import DatasetError, load_dataset, load_files
from .extract import GPU_DECODER, PRECISIONS, extract_codes, resolve_device, spec_from_config
from .images import ImageLoadError, file_digests
from .models import (
    default_preprocessing_note,
    describe_preprocessing,
    list_layers,
    resolve_layers,
    resolve_spec,
)
from .pooling import POOLINGS
from .spec import INTERPOLATIONS, Weights

__all__ = ["main", "build_parser", "COMMANDS"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
OUT_FORMATS = (".h5", ".hdf5", ".npz")
_DEBUG_HINT = "run with CNNCODES_DEBUG=1 for the traceback"


class UsageError(Exception):
    """A mistake in the command line or its inputs: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become :class:`UsageError` (one line, no usage dump)."""

    def error(self, message):
        command = self.prog.removeprefix("cnncodes").strip()
        raise UsageError(f"{command + ': ' if command else ''}{message} (see '{self.prog} --help')")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples in epilogs as written (descriptions are wrapped by :func:`_fill`)."""


def _fill(text):
    return textwrap.fill(text, 88)


# ----------------------------------------------------------------------------- output


def _display(path):
    """A path printable on any terminal (undecodable file-name bytes shown as ``\\xNN``)."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


class _Output:
    """Where a command's words go: results to stdout, notes to stderr; ``--json`` prints only
    the final JSON object on stdout; ``--quiet`` silences everything else."""

    def __init__(self, args):
        self.json = bool(getattr(args, "json", False))
        self.quiet = bool(getattr(args, "quiet", False))

    @property
    def progress(self):
        """The ``progress`` argument for the library: off when quiet, else on a terminal."""
        return False if self.quiet else None

    def note(self, message):
        """Progress and warnings, on stderr."""
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

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


# ----------------------------------------------------------------------------- argument types


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


_positive_int = _int_at_least(1, "a positive integer")
_at_least_two = _int_at_least(2, "an integer >= 2")
_count = _int_at_least(0, "an integer >= 0")
_n_jobs = _int_where(lambda v: v == -1 or v > 0, "a positive integer, or -1 for all CPUs")
_seed = _int_where(lambda v: 0 <= v < 2**32, "an integer from 0 to 2**32 - 1")


# ----------------------------------------------------------------------------- shared options


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


def _add_weights_options(group):
    """--weights and --seed."""
    group.add_argument(
        "--weights",
        metavar="W",
        help="DEFAULT, a torchvision weights name (IMAGENET1K_V1, ResNet50_Weights.IMAGENET1K_V1), "
        "'none' (random initialisation from --seed), or a checkpoint file path "
        "(default: DEFAULT for torchvision models)",
    )
    group.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random initialisation with --weights none (default: %(default)s)",
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


def _add_model_options(parser, *, model=True, layers=True, required=True, layer_help=None):
    """The network: --model, --weights, --seed, --layer, --pooling and the preprocessing.

    With ``required=False`` (``fit``), --model and --pooling default to None: the recipe decides.
    """
    group = parser.add_argument_group("model")
    if model:
        group.add_argument(
            "--model",
            "-m",
            required=required,
            metavar="M",
            help="torchvision model name (resnet50, mobilenet_v2, ...) or package.module:callable"
            + ("" if required else " (default: the recipe's, resnet50)"),
        )
    _add_weights_options(group)
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
            choices=POOLINGS,
            default="avg" if required else None,
            help="how spatial maps become vectors (default: "
            + ("%(default)s)" if required else "the recipe's)"),
        )
    _add_preprocessing_options(parser.add_argument_group("preprocessing"))


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
        help="images per forward pass; never changes the codes (default: %(default)s)",
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


# ----------------------------------------------------------------------------- shared steps


def _preprocessing_from_args(args):
    """The preprocessing options given on the command line (the rest keep their defaults)."""
    given = {
        "resize": args.resize,
        "crop": args.crop,
        "mean": args.mean,
        "std": args.std,
        "interpolation": args.interpolation,
        "impl": None if args.impl == "pil" else args.impl,
    }
    return {k: v for k, v in given.items() if v is not None}


def _spec_from_args(args, model=None):
    """Resolve --model/--weights/--seed and the preprocessing overrides (no weights loaded)."""
    return resolve_spec(
        model if model is not None else args.model,
        args.weights,
        seed=args.seed,
        **_preprocessing_from_args(args),
    )


def _load_data(args, output=None):
    """DATA as an :class:`~cnncodes.datasets.ImageDataset` (a note on stderr says what was found)."""
    dataset = load_dataset(args.data, allow_outside_root=args.allow_outside_root)
    if output is not None:
        counts = dataset.counts()
        what = f"{len(counts)} class{'es' if len(counts) != 1 else ''}" if counts else "unlabelled"
        output.note(f"{len(dataset)} images in {_display(dataset.root)} ({what})")
    return dataset


def _cache_dir_from_args(args):
    return None if getattr(args, "no_cache", False) else args.cache_dir


def _check_out_path(path, formats):
    """The --out file: a known extension and an existing folder, checked before any work."""
    if path is None:
        return None
    ext = os.path.splitext(path)[1].lower()
    if ext not in formats:
        raise UsageError(
            f"--out {path!r}: unknown extension {ext or '(none)'!r}; use one of {', '.join(formats)}"
        )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"--out {path!r}: folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"--out {path!r} is a folder")
    return os.path.abspath(path)


@contextlib.contextmanager
def _atomic_output(path):
    """Yield a temporary path beside ``path``; on success it is fsync-ed and renamed onto it."""
    folder = os.path.dirname(path)
    tmp = os.path.join(
        folder, f".{os.path.basename(path)}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    )
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _skipped_json(skipped):
    return [{"path": s.path, "reason": s.reason} for s in skipped]


def _note_skipped(output, skipped, limit=20):
    if not skipped:
        return
    output.note(f"skipped {len(skipped)} unreadable image(s):")
    for s in skipped[:limit]:
        output.note(f"  {_display(s.path)}: {s.reason}")
    if len(skipped) > limit:
        output.note(f"  ... and {len(skipped) - limit} more")


# ----------------------------------------------------------------------------- extract

_EXTRACT_EPILOG = """\
examples:
  # codes of resnet50's penultimate layer (ImageNet weights) for a folder of class folders
  cnncodes extract photos/ --model resnet50 --out codes.h5

  # two layers of a local checkpoint, max-pooled, from a CSV manifest (path,label)
  cnncodes extract train.csv --model mobilenet_v2 --weights mobilenet_v2.pth \\
      --layer features.14 --layer features.18 --pooling max --out codes.npz

  # an untrained network on small inputs, machine-readable report, bad images left out
  cnncodes extract photos/ --model resnet18 --weights none --resize 40 --crop 32 \\
      --on-error skip --json

Codes are cached by image content (--cache-dir, default ./cache): a second run on the same
images computes nothing. Read an .h5 output with plain h5py:
  f = h5py.File("codes.h5"); X = f["codes"][:]; paths = f["paths"].asstr()[:]
"""


def add_extract_parser(subparsers):
    """``cnncodes extract DATA --model M ...``."""
    parser = subparsers.add_parser(
        "extract",
        help="compute (and cache) the CNN codes of a folder or a manifest",
        description=_fill(
            "Compute the CNN codes of every image in DATA: the pooled activations of "
            "one or more layers of a frozen network. Codes come from the cache where possible."
        ),
        epilog=_EXTRACT_EPILOG,
        formatter_class=_Formatter,
    )
    _add_data_options(parser)
    _add_model_options(parser)
    _add_runtime_options(parser)
    parser.add_argument(
        "--out",
        "-o",
        metavar="FILE",
        help="write the codes with paths, labels and configuration to FILE: .h5 (HDF5) or .npz",
    )
    parser.set_defaults(run=run_extract)


def run_extract(args):
    """Extract codes for DATA; print a summary; optionally write them to --out."""
    output = _Output(args)
    out_path = _check_out_path(args.out, OUT_FORMATS)
    dataset = _load_data(args, output)
    spec = _spec_from_args(args)
    layers = resolve_layers(spec, args.layer or ["penultimate"])
    result = extract_codes(
        dataset.paths,
        spec,
        layers,
        args.pooling,
        cache_dir=_cache_dir_from_args(args),
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        precision=args.precision,
        on_error=args.on_error,
        progress=output.progress,
    )
    if out_path is not None:
        _write_codes(out_path, dataset, result, spec, args.pooling)
    _note_skipped(output, result.skipped)
    widths = {layer: codes.shape[1] for layer, codes in result.codes.items()}
    precision = next(iter(result.configs.values()))["precision"]
    cache_root = resolve_cache_dir(_cache_dir_from_args(args))
    summary = {
        "command": "extract",
        "data": dataset.root,
        "source": dataset.kind,
        "images": len(dataset),
        "computed": result.computed,
        "cached": result.cached,
        "skipped": len(result.skipped),
        "skipped_files": _skipped_json(result.skipped),
        "model": spec.model,
        "weights": spec.weights_id,
        "layers": list(result.codes),
        "pooling": args.pooling,
        "precision": precision,
        "features": int(sum(widths.values())),
        "features_per_layer": widths,
        "classes": dataset.counts() or None,
        "cache_dir": cache_root,
        "seconds": round(result.seconds, 3),
        "out": out_path,
    }
    lines = [
        f"{len(dataset)} images: {result.computed} computed, {result.cached} cached, "
        f"{len(result.skipped)} skipped in {result.seconds:.1f} s",
        f"codes: {len(result.kept)} x {summary['features']} float32 from "
        + ", ".join(f"{layer} ({w})" for layer, w in widths.items())
        + f", pooling {args.pooling}, {spec.model} [{_short_weights(spec.weights_id)}], {precision}",
    ]
    lines.append(f"cache: {cache_root}" if cache_root else "cache: off")
    if out_path:
        lines.append(f"wrote {_display(out_path)}")
    output.result(summary, lines)
    return EXIT_OK


def _write_codes(path, dataset, result, spec, pooling):
    """Write codes, paths, labels, kept indices and the configuration to .h5 or .npz, atomically.

    Rows are the images that have a code (``kept`` gives their positions in DATA); ``paths`` and
    ``labels`` follow the rows.
    """
    kept = np.asarray(result.kept, dtype=np.int64)
    codes = np.ascontiguousarray(result.concatenated(), dtype=np.float32)
    paths = [_display(dataset.paths[i]) for i in kept]
    labels = [dataset.labels[i] for i in kept] if dataset.labels is not None else None
    layers = list(result.codes)
    config = {
        "cnncodes_version": __version__,
        "spec": spec.to_dict(),
        "layers": layers,
        "pooling": pooling,
        "configs": result.configs,
        "source": {"kind": dataset.kind, "root": _display(dataset.root)},
        "skipped": _skipped_json(result.skipped),
    }
    config_json = json.dumps(jsonable(config), sort_keys=True)
    with _atomic_output(path) as tmp:
        if path.lower().endswith(".npz"):
            arrays = {
                "codes": codes,
                "paths": np.array(paths, dtype=str),
                "kept": kept,
                "config": np.array(config_json),
            }
            if labels is not None:
                arrays["labels"] = np.array(labels, dtype=str)
            if len(layers) > 1:
                for layer, arr in result.codes.items():
                    arrays[f"layers/{layer}"] = arr
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        else:
            import h5py

            text = h5py.string_dtype("utf-8")
            with h5py.File(tmp, "w") as f:
                f.create_dataset("codes", data=codes)
                f.create_dataset("paths", data=np.array(paths, dtype=object), dtype=text)
                if labels is not None:
                    f.create_dataset("labels", data=np.array(labels, dtype=object), dtype=text)
                f.create_dataset("kept", data=kept)
                if len(layers) > 1:
                    group = f.create_group("layers")
                    for layer, arr in result.codes.items():
                        group.create_dataset(layer, data=arr)
                f.attrs["config"] = config_json
                f.attrs["configs"] = json.dumps(result.configs, sort_keys=True)
                f.attrs["layers"] = json.dumps(layers)
                f.attrs["cnncodes_version"] = __version__


# ----------------------------------------------------------------------------- layers

_LAYERS_EPILOG = """\
examples:
  cnncodes layers resnet50
  cnncodes layers mobilenet_v2 --weights none --resize 160 --crop 128
  cnncodes layers my_package.nets:small_cnn --json

Shapes are (channels, height, width) for the input size of the weights' preprocessing (change it
with --resize/--crop); code sizes are what each --pooling makes of the layer ('-': not possible).
"""


def add_layers_parser(subparsers):
    """``cnncodes layers MODEL``."""
    parser = subparsers.add_parser(
        "layers",
        help="list a model's layers with output shapes and code sizes",
        description=_fill(
            "List the graph nodes of MODEL that can be used as --layer, with their "
            "output shape and the code size under each pooling. The penultimate layer (the input of "
            "the last linear layer, the default --layer) is marked with '*'. No weights are loaded."
        ),
        epilog=_LAYERS_EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "model", metavar="MODEL", help="torchvision name or package.module:callable"
    )
    group = parser.add_argument_group("model")
    _add_weights_options(group)
    _add_preprocessing_options(parser.add_argument_group("preprocessing"))
    _add_output_options(parser, quiet=False)
    parser.set_defaults(run=run_layers)


def run_layers(args):
    """Print the layer table of a model."""
    output = _Output(args)
    spec = _spec_from_args(args, model=args.model)
    infos = list_layers(spec)
    try:
        penultimate = resolve_layers(spec, ["penultimate"])[0]
    except ValueError:
        penultimate = None
    h, w = spec.preprocessing.input_size
    note = default_preprocessing_note(spec)
    if note:
        output.note(note)
    data = {
        "model": spec.model,
        "weights": spec.weights_id,
        "input_size": [3, h, w],
        "preprocessing": {
            **spec.preprocessing.to_dict(),
            "source": dict(spec.preprocessing.source),
        },
        "penultimate": penultimate,
        "layers": [
            {"name": i.name, "shape": list(i.shape), "code_sizes": dict(i.code_sizes)}
            for i in infos
        ],
    }
    rows = [
        [
            ("* " if i.name == penultimate else "  ") + i.name,
            "x".join(map(str, i.shape)),
            *(i.code_sizes.get(p) for p in POOLINGS),
        ]
        for i in infos
    ]
    lines = [
        f"{spec.model} [{_short_weights(spec.weights_id)}], input 3x{h}x{w}: {len(infos)} layers",
        f"preprocessing: {spec.preprocessing.describe()}",
    ]
    lines += _table(["  layer", "shape", *POOLINGS], rows, right=POOLINGS)
    if penultimate is not None:
        lines.append(f"* penultimate = {penultimate} (the default --layer)")
    output.result(data, lines)
    return EXIT_OK


# ----------------------------------------------------------------------------- cache

_CACHE_EPILOG = """\
examples:
  cnncodes cache info
  cnncodes cache info --cache-dir /data/cnncodes-cache --json
  cnncodes cache verify                       # integrity of every shard
  cnncodes cache verify --data photos/ --sample 20 --weights mobilenet_v2.pth
"""


def add_cache_parser(subparsers):
    """``cnncodes cache info|verify``."""
    parser = subparsers.add_parser(
        "cache",
        help="inspect and verify the code cache",
        description=_fill("Inspect (info) and verify (verify) the code cache."),
        epilog=_CACHE_EPILOG,
        formatter_class=_Formatter,
    )
    commands = parser.add_subparsers(
        dest="cache_command", required=True, metavar="{info,verify}", parser_class=_Parser
    )
    info = commands.add_parser(
        "info",
        help="list the configurations in the cache with counts and sizes",
        description=_fill(
            "List every configuration (model, weights, layer, pooling, precision) in "
            "the cache, with its number of stored codes, code length, shards and size on disk."
        ),
        epilog="examples:\n  cnncodes cache info\n  cnncodes cache info --cache-dir D --json\n",
        formatter_class=_Formatter,
    )
    _add_cache_dir_option(info, no_cache=False)
    _add_output_options(info, quiet=False)
    info.set_defaults(run=run_cache_info)

    verify = commands.add_parser(
        "verify",
        help="check shard integrity and recompute a sample of stored codes",
        description=_fill(
            "Check the integrity of every shard (layout and checksum; exit status 1 on "
            "any problem). With --data, also recompute the codes of up to --sample images of DATA "
            "that the cache holds, for every configuration, and compare them with the stored codes. "
            "The cache stores image content hashes, not paths, so recomputing needs the images."
        ),
        epilog="examples:\n  cnncodes cache verify\n"
        "  cnncodes cache verify --data photos/ --sample 20\n"
        "  cnncodes cache verify --data photos/ --weights ckpt.pth   # configs from a checkpoint\n"
        "  cnncodes cache verify --compact   # and merge the shards of sound configurations\n",
        formatter_class=_Formatter,
    )
    _add_cache_dir_option(verify, no_cache=False)
    verify.add_argument(
        "--data",
        metavar="DATA",
        help="images the cache was filled from (folder or CSV manifest), to recompute a sample",
    )
    _add_data_options(verify, positional=False)
    verify.add_argument(
        "--sample",
        type=_count,
        default=8,
        metavar="N",
        help="images recomputed per configuration (default: %(default)s)",
    )
    verify.add_argument(
        "--weights",
        action="append",
        metavar="PATH",
        help="checkpoint file(s) behind configurations made from a file (only its SHA-256 is "
        "stored); repeat for several",
    )
    verify.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="seed of the random sample (default: a fresh one each run)",
    )
    verify.add_argument(
        "--compact", action="store_true", help="merge the shards of every sound configuration"
    )
    _add_compute_options(verify.add_argument_group("runtime"))
    _add_output_options(verify)
    verify.set_defaults(run=run_cache_verify)


def _existing_cache_root(args):
    root = resolve_cache_dir(args.cache_dir)
    exists = os.path.isdir(root)
    if not exists and args.cache_dir != "auto":
        # A folder named on purpose that is not there is more likely a typo than an empty cache.
        raise UsageError(f"--cache-dir {args.cache_dir!r}: no such folder")
    return root, exists


def _config_summary(store, info):
    config = info["config"]
    return {
        "key": store.key,
        "model": config.get("model"),
        "weights": config.get("weights"),
        "layer": config.get("layer"),
        "pooling": config.get("pooling"),
        "precision": config.get("precision"),
        "preprocessing": config.get("preprocessing"),
        "rows": info["rows"],
        "unique": info["unique"],
        "features": info["features"],
        "shards": info["shards"],
        "size_mb": round(info["bytes"] / 1e6, 3),
        "path": store.path,
    }


def _preprocessing_cell(values):
    """A stored configuration's preprocessing in one line (as written, if not understood)."""
    try:
        return describe_preprocessing(values)
    except (KeyError, TypeError):  # a configuration written by another version
        return repr(values)


def run_cache_info(args):
    """List the configurations in the cache."""
    output = _Output(args)
    root, exists = _existing_cache_root(args)
    configs = [_config_summary(s, i) for s, i in list_configs(root)] if exists else []
    data = {"cache_dir": root, "configs": configs}
    if not exists:
        lines = [f"no cache at {_display(root)}"]
    elif not configs:
        lines = [f"{_display(root)}: no configurations"]
    else:
        total = sum(c["size_mb"] for c in configs)
        lines = [f"{_display(root)}: {len(configs)} configuration(s), {total:.1f} MB"]
        rows = [
            [
                c["key"][:12],
                c["model"],
                _short_weights(str(c["weights"])),
                c["layer"],
                c["pooling"],
                c["precision"],
                c["rows"],
                c["unique"],
                c["features"],
                c["shards"],
                f"{c['size_mb']:.2f}",
            ]
            for c in configs
        ]
        numbers = ("rows", "unique", "features", "shards", "MB")
        lines += _table(
            ["key", "model", "weights", "layer", "pooling", "precision", *numbers], rows, numbers
        )
        # Configurations that differ only in preprocessing must not look the same.
        lines.append("preprocessing:")
        lines += [f"{c['key'][:12]}  {_preprocessing_cell(c['preprocessing'])}" for c in configs]
    output.result(data, lines)
    return EXIT_OK


_TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 5e-2}


def _hash_data(args, output):
    """``{content hash: path}`` of DATA's readable files."""
    dataset = _load_data(args, output)
    by_digest = {}
    for path, digest in zip(dataset.paths, file_digests(dataset.paths)):
        if not isinstance(digest, ImageLoadError):
            by_digest.setdefault(digest, path)
    return by_digest


def _recheck(store, by_digest, args, rng, output):
    """Recompute a sample of ``store``'s codes from DATA; a JSON-ready verdict."""
    config = store.config
    index = store.index()
    candidates = sorted(d for d in by_digest if d in index)
    if not candidates:
        return {"status": "not re-checked", "reason": "none of the DATA images is stored here"}
    try:
        spec = spec_from_config(config, weights_path=args.weights)
        device = resolve_device(args.device)
    except ValueError as exc:
        return {"status": "not re-checked", "reason": str(exc).replace("\n", " ")}
    if str(config.get("decode", "")).endswith(GPU_DECODER) and device.type != "cuda":
        return {"status": "not re-checked", "reason": "decoded by nvJPEG: needs --device cuda"}
    sample = rng.sample(candidates, min(args.sample, len(candidates)))
    output.note(f"  recomputing {len(sample)} code(s) of {store.key[:12]} ({config.get('layer')})")
    try:
        result = extract_codes(
            [by_digest[d] for d in sample],
            spec,
            [config["layer"]],
            config["pooling"],
            cache_dir=None,
            batch_size=args.batch_size,
            num_workers=args.workers,
            device=args.device,
            precision=config["precision"],
            on_error="skip",
            progress=output.progress,
        )
    except ValueError as exc:  # weights unavailable offline, model not importable, ...
        return {"status": "not re-checked", "reason": str(exc).replace("\n", " ")}
    kept = [sample[i] for i in result.kept]
    if not kept:
        return {"status": "not re-checked", "reason": "the sampled images could not be read"}
    fresh = result.codes[config["layer"]]
    stored = store.read(kept)
    tol = _TOLERANCE.get(config["precision"], 1e-4)
    diff = np.abs(fresh.astype(np.float64) - stored)
    bad = int(np.sum(np.any(diff > tol + tol * np.abs(stored), axis=1)))
    return {
        "status": "mismatch" if bad else "ok",
        "checked": len(kept),
        "mismatched": bad,
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "tolerance": tol,
    }


def run_cache_verify(args):
    """Check every shard; with --data, recompute a sample of codes; exit 1 on any problem."""
    output = _Output(args)
    if args.sample == 0 and args.data:
        raise UsageError("--sample 0 recomputes nothing; drop --data or give --sample N >= 1")
    root, exists = _existing_cache_root(args)
    by_digest = _hash_data(args, output) if args.data else None
    rng = random.Random(args.seed)
    reports, failed = [], False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CacheWarning)
        stores = list_configs(root) if exists else []
        for store, info in stores:
            report = _config_summary(store, info)
            problems = [
                {"shard": path, "problem": problem}
                for path, problem in store.check_shards()
                if problem is not None
            ]
            report["problems"] = problems
            failed = failed or bool(problems)
            if by_digest is not None:
                report["recheck"] = _recheck(store, by_digest, args, rng, output)
                failed = failed or report["recheck"]["status"] == "mismatch"
            if args.compact and not problems:
                report["compacted_shards"] = store.compact(blocking=True)
            reports.append(report)
    cache_warnings = sorted(
        {str(w.message) for w in caught if issubclass(w.category, CacheWarning)}
    )
    data = {
        "cache_dir": root,
        "ok": not failed,
        "configs": reports,
        "warnings": cache_warnings,
        "rechecked": by_digest is not None,
    }
    output.result(data, _verify_lines(root, exists, reports, cache_warnings, by_digest))
    return EXIT_FAILURE if failed else EXIT_OK


def _verify_lines(root, exists, reports, cache_warnings, by_digest):
    if not exists:
        return [f"no cache at {_display(root)}"]
    lines = [f"{_display(root)}: {len(reports)} configuration(s)"]
    for r in reports:
        head = (
            f"{r['key'][:12]}  {r['model']} [{_short_weights(str(r['weights']))}] {r['layer']} "
            f"{r['pooling']} {r['precision']}: {r['shards']} shard(s), {r['rows']} rows"
        )
        integrity = "integrity ok" if not r["problems"] else f"{len(r['problems'])} BAD shard(s)"
        lines.append(f"{head}: {integrity}")
        for p in r["problems"]:
            lines.append(f"  PROBLEM {_display(p['shard'])}: {p['problem']}")
        check = r.get("recheck")
        if check is not None:
            if check["status"] == "not re-checked":
                lines.append(f"  not re-checked ({check['reason']})")
            else:
                lines.append(
                    f"  re-checked {check['checked']} code(s): "
                    f"{'ok' if check['status'] == 'ok' else 'MISMATCH'} "
                    f"({check['mismatched']} differ; max abs diff {check['max_abs_diff']:.3g}, "
                    f"tolerance {check['tolerance']:g})"
                )
        if r.get("compacted_shards"):
            lines.append(f"  compacted {r['compacted_shards']} shards into one")
    for w in cache_warnings:
        lines.append(f"warning: {w}")
    if by_digest is None:
        lines.append(
            "codes not re-checked (integrity only): pass --data DATA, the images the cache was "
            "filled from, to recompute a sample"
        )
    return lines


# ----------------------------------------------------------------------------- fit

_FIT_EPILOG = """\
examples:
  # scenario 1: a linear probe on resnet50's top-layer codes, a quarter of the images held out
  cnncodes fit photos/ --pipeline linear_probe --model resnet50 --test-size 0.25 \\
      --out model.skops --report report/

  # scenario 3: sweep four depths of a local checkpoint with SVMs, separate test folder
  cnncodes fit train/ --pipeline layer_sweep_svm --model mobilenet_v2 --weights mnv2.pth \\
      --layer features.3 --layer features.6 --layer features.13 --layer features.18 \\
      --test test/ --report report/ --n-jobs 2

  # your own recipe file (defines build(**overrides) -> (pipeline, param_grid))
  cnncodes fit photos/ --pipeline my_recipe.py --model resnet18 --json

Recipes: linear_probe (scenario 1), linear_svm (1), layer_sweep_svm (3), sgd (larger sets).
Every image goes through the network once per configuration before the search starts; the
folds and candidates read the cache. --report DIR writes metrics.json, cv_results.csv,
confusion_matrix.png, layer_sweep.png (layer sweeps) and config.json (how to reproduce the run).
"""

_FIT_LAYER_HELP = (
    "graph-node name (see 'cnncodes layers M'); repeat for several. A recipe that sweeps layers "
    "(layer_sweep_svm) tries each one; other recipes concatenate their codes (default: the "
    "recipe's, e.g. penultimate)"
)


def add_fit_parser(subparsers):
    """``cnncodes fit DATA --pipeline NAME ...``."""
    import pipelines

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
        help=f"a recipe ({', '.join(pipelines.available())}) or a .py file defining "
        "build(**overrides) (default: %(default)s)",
    )
    _add_model_options(parser, required=False, layer_help=_FIT_LAYER_HELP)
    evaluation = parser.add_argument_group("evaluation")
    held_out = evaluation.add_mutually_exclusive_group()
    held_out.add_argument(
        "--test", metavar="DATA2", help="labelled images to evaluate on (folder or CSV manifest)"
    )
    held_out.add_argument(
        "--test-size",
        type=_fraction,
        metavar="F",
        help="hold out this stratified fraction of DATA for the evaluation (e.g. 0.25)",
    )
    evaluation.add_argument(
        "--cv",
        type=_at_least_two,
        default=5,
        metavar="K",
        help="cross-validation folds, lowered to the smallest class (default: %(default)s)",
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
    evaluation.add_argument(
        "--random-state",
        type=_seed,
        default=0,
        metavar="N",
        help="seed of the test split and the folds (default: %(default)s)",
    )
    _add_runtime_options(parser)
    out = parser.add_argument_group("results")
    out.add_argument(
        "--out", "-o", metavar="FILE", help="save the fitted pipeline: .joblib or .skops"
    )
    out.add_argument(
        "--report",
        metavar="DIR",
        help="write metrics.json, cv_results.csv, plots and config.json into DIR",
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


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a fraction such as 0.25") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a fraction between 0 and 1")
    return value


def _codes_overrides(args):
    """CNNCodes parameters given on the command line (None: the recipe's default)."""
    given = {
        "model": getattr(args, "model", None),
        "weights": args.weights,
        **_preprocessing_from_args(args),
        "layer": args.layer,
        "pooling": args.pooling,
        "num_workers": args.workers,
        "precision": None if args.precision == "auto" else args.precision,
        "device": None if args.device == "auto" else args.device,
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    overrides["seed"] = args.seed
    overrides["batch_size"] = args.batch_size
    overrides["cache_dir"] = _cache_dir_from_args(args)
    return overrides


def _fmt(value, digits=3):
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def _param_cell(value):
    """A grid value for the candidates table: floats to 4 significant digits."""
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return value


def _fit_preprocessing(result):
    """(values, source) of the best pipeline's preprocessing, from the run's configuration."""
    config = result.config
    return config["extractor"]["preprocessing"], config.get("preprocessing_source")


def _fit_lines(result, test_note, out_path, written, limit=15):
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
        f"cross-validated {metrics['scoring']} (mean and std over folds)"
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
        lines.append(
            f"{head}: accuracy {_fmt(evaluated['accuracy'])}, balanced accuracy "
            f"{_fmt(evaluated['balanced_accuracy'])}"
        )
        lines += _table(
            ["class", "precision", "recall", "support"],
            [
                [c, _fmt(m["precision"]), _fmt(m["recall"]), m["support"]]
                for c, m in evaluated["per_class"].items()
            ],
            right=("precision", "recall", "support"),
        )
    lines.append(f"preprocessing: {describe_preprocessing(*_fit_preprocessing(result))}")
    duplicates = metrics.get("duplicates")
    if duplicates is not None:
        shared = duplicates["test_in_train"]
        lines.append(
            "same content (SHA-256): "
            + ("" if shared is None else f"{shared} test image(s) also in training, ")
            + f"{duplicates['within_train']} training image(s) repeating another"
        )
    if out_path:
        lines.append(f"saved model: {_display(out_path)}")
        from .persistence import BUILTIN_MODEL_CALLABLES, model_callables

        own = [c for c in model_callables(result.estimator) if c not in BUILTIN_MODEL_CALLABLES]
        if own:
            flags = " ".join(f"--trust-model-code {c}" for c in own)
            lines.append(f"it names your model code: predict with {flags}")
    if written:
        folder = os.path.dirname(next(iter(written.values())))
        lines.append(f"report: {_display(folder)} ({', '.join(written)})")
    return lines


def run_fit(args):
    """Grid-search the recipe; print the table and metrics; save the model and the report."""
    from . import persistence
    from .experiment import run_experiment

    output = _Output(args)
    out_path = _check_out_path(args.out, persistence.FORMATS)
    if args.report is not None and os.path.exists(args.report) and not os.path.isdir(args.report):
        raise UsageError(f"--report {args.report!r} exists and is not a folder")
    dataset = _load_data(args, output)
    if dataset.labels is None:
        raise UsageError(
            f"{args.data}: fit needs labelled images (class sub-folders, or a manifest with a "
            "'label' column)"
        )
    test = None
    test_note = None
    if args.test is not None:
        test_set = load_dataset(args.test, allow_outside_root=args.allow_outside_root)
        if test_set.labels is None:
            raise UsageError(f"--test {args.test}: the test images need labels")
        test = (test_set.paths, test_set.labels)
        test_note = _display(test_set.root)
    elif args.test_size is not None:
        test_note = f"{args.test_size:g} of DATA held out"
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
            seed=args.random_state,
            on_error=args.on_error,
            progress=output.progress,
            log=output.note,
        )
    except TypeError as exc:  # a recipe option the recipe does not take
        raise UsageError(str(exc)) from None
    if out_path is not None:
        persistence.save(result.estimator, out_path)
    written = {}
    if args.report is not None:
        from .report import write_report

        written = write_report(result, args.report)
    for items in result.skipped.values():
        _note_skipped(output, items)
    preprocessing, source = _fit_preprocessing(result)
    summary = {
        "command": "fit",
        "data": dataset.root,
        "recipe": result.recipe,
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
        "skipped": {p: _skipped_json(items) for p, items in result.skipped.items()},
        "out": out_path,
        "report": written or None,
        "seconds": round(result.seconds, 3),
    }
    output.result(jsonable(summary), _fit_lines(result, test_note, out_path, written))
    return EXIT_OK


# ----------------------------------------------------------------------------- predict

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
        help="predict the class of images with a model saved by 'cnncodes fit'",
        description=_fill(
            "Predict one row per image: path, predicted label, and the probability of that "
            "label (or the classifier's decision score); with --proba, every class's "
            "probability. The model's extractor is verified first: a checkpoint whose SHA-256 "
            "changed, or a model that now builds differently, is refused."
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
    parser.add_argument(
        "--trust-model-code",
        action="append",
        nargs="*",
        metavar="CALLABLE",
        help="allow the model's own architecture (package.module:callable, named in the file) "
        "to be imported and run; repeat or list several. Alone, without a name: allow every "
        "callable the file names. Torchvision models need nothing",
    )
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


def _trust_model_code(args):
    """``--trust-model-code``: False (not given), True (given alone) or the names given."""
    if args.trust_model_code is None:
        return False
    names = [name for group in args.trust_model_code for name in group]
    if any(not group for group in args.trust_model_code):
        return True
    for name in names:
        module, _, attr = name.partition(":")
        if not module or not attr:
            raise UsageError(
                f"--trust-model-code {name!r}: expected package.module:callable, e.g. "
                "mymodels:resnet20 (to allow every callable the file names, give the flag "
                "alone, after the data)"
            )
    return names


def run_predict(args):
    """Predict every input image; print a table or JSON; optionally write a CSV."""
    from . import persistence
    from .experiment import (
        _split_pipeline,
        classification_metrics,
        predict_images,
        relocate_weights,
    )
    from .transformers import _find_codes_step

    output = _Output(args)
    out_path = _check_out_path(args.out, (".csv",))
    estimator = persistence.load(
        args.model_file, trusted=args.trust, trust_model_code=_trust_model_code(args)
    )
    estimator = getattr(estimator, "best_estimator_", estimator)  # a saved search: its best
    try:
        step, prefix = _find_codes_step(estimator)
    except ValueError:
        raise UsageError(
            f"{args.model_file}: not a cnncodes model (no CNNCodes step); save one with "
            "'cnncodes fit --out'"
        ) from None
    classifier = _split_pipeline(estimator)[1]
    if args.proba and not hasattr(classifier, "predict_proba"):
        raise UsageError(
            f"--proba: the classifier of {args.model_file} ({type(classifier).__name__}) gives "
            "no probabilities; leave --proba out (the score column then holds its decision value)"
        )
    if args.weights is not None:
        relocate_weights(estimator, args.weights)
    runtime = {"progress": output.progress, "batch_size": args.batch_size}
    runtime["cache_dir"] = _cache_dir_from_args(args)
    if args.workers is not None:
        runtime["num_workers"] = args.workers
    if args.device != "auto":
        runtime["device"] = args.device
    estimator.set_params(**{f"{prefix}{k}": v for k, v in runtime.items()})
    paths, labels = _predict_inputs(args)
    output.note(f"{len(paths)} image(s) to predict with {_display(args.model_file)}")
    if labels is not None:
        known = {str(c) for c in estimator.classes_}
        unseen = sorted({str(label) for label in labels} - known)
        if unseen:
            output.note(
                f"warning: class(es) the model never learned: {', '.join(unseen)} (it knows "
                f"{', '.join(sorted(known))}); their images can only be predicted wrong"
            )
    table = predict_images(
        estimator, paths, labels=labels, proba=args.proba, on_error=args.on_error
    )
    accuracy = None
    if labels is not None:
        done = table[table["label"].notna()]
        if len(done):
            metrics = classification_metrics(done["true_label"], done["label"])
            accuracy = {k: metrics[k] for k in ("n", "accuracy", "balanced_accuracy")}
    if out_path is not None:
        with _atomic_output(out_path) as tmp:
            table.to_csv(tmp, index=False)
    failed = table["label"].isna()
    for row in table[failed].itertuples():
        output.note(f"skipped {_display(row.path)}: {row.error}")
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
    score_kind = table["score_kind"].iloc[0] if len(table) else "none"
    shown = rows[:20] if out_path else rows
    columns = ["path", "label", "score"] + (["true_label"] if labels is not None else [])
    lines = _table(
        columns,
        [
            [
                _display(r["path"]),
                r["label"] if isinstance(r["label"], str) else "(skipped)",
                _fmt(r["score"]),
                *([r["true_label"]] if labels is not None else []),
            ]
            for r in shown
        ],
        right=("score",),
    )
    if len(shown) < len(rows):
        lines.append(f"... {len(rows) - len(shown)} more rows in {_display(out_path)}")
    kind = "probability" if score_kind == "probability" else "decision value"
    lines.append(f"score: the {kind} of the predicted label")
    if accuracy is not None:
        lines.append(
            f"accuracy on {accuracy['n']} labelled image(s): {_fmt(accuracy['accuracy'])} "
            f"(balanced {_fmt(accuracy['balanced_accuracy'])})"
        )
    if out_path:
        lines.append(f"wrote {_display(out_path)}")
    output.result(jsonable(data), lines)
    return EXIT_OK


# ----------------------------------------------------------------------------- advise

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
            "the recipe and the command to run, with the reasons."
        ),
        epilog=_ADVISE_EPILOG,
        formatter_class=_Formatter,
    )
    _add_data_options(parser)
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="resnet50", help="default: %(default)s")
    _add_weights_options(group)
    _add_preprocessing_options(parser.add_argument_group("preprocessing"))
    parser.add_argument(
        "--per-class",
        type=_at_least_two,
        default=20,
        metavar="N",
        help="images per class measured, at least 2 (default: %(default)s)",
    )
    _add_cache_dir_option(parser)
    _add_output_options(parser)
    parser.set_defaults(run=run_advise)


def run_advise(args):
    """Print the recommendation."""
    from .advise import advise

    output = _Output(args)
    dataset = _load_data(args, output)
    if dataset.labels is None:
        raise UsageError(
            f"{args.data}: advise needs labelled images (class sub-folders or a label column)"
        )
    result = advise(
        dataset.paths,
        dataset.labels,
        model=args.model,
        weights=args.weights,
        seed=args.seed,
        per_class=args.per_class,
        preprocessing=_preprocessing_from_args(args),
        data_label=args.data,
        cache_dir=_cache_dir_from_args(args),
        progress=output.progress,
    )
    lines = [f"scenario {result.scenario}: recipe {result.recipe or '(fine-tuning; see below)'}"]
    lines += [f"  - {r}" for r in result.reasons]
    lines.append(f"run: {result.command}")
    output.result(result.to_dict(), lines)
    return EXIT_OK


# ----------------------------------------------------------------------------- demo


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
    from .demo import local_imagenet_weights, run_demo, summary_lines

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


# ----------------------------------------------------------------------------- main

# One add_<command>_parser per command, in --help order; each sets ``run`` to its run_<command>.
COMMANDS = [
    add_fit_parser,
    add_predict_parser,
    add_extract_parser,
    add_layers_parser,
    add_cache_parser,
    add_advise_parser,
    add_demo_parser,
]


def build_parser():
    """The ``cnncodes`` argument parser with every registered command."""
    parser = _Parser(
        prog="cnncodes",
        description=_fill(
            "CNN codes from frozen pretrained networks, cached in HDF5, for "
            "scikit-learn. Run 'cnncodes COMMAND --help' for the options and examples of a command."
        ),
        epilog="exit status: 0 success, 2 usage or input error, 1 other error, 130 interrupted\n"
        "CNNCODES_CACHE sets the default cache folder; CNNCODES_DEBUG=1 shows tracebacks.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"cnncodes {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    for add in COMMANDS:
        add(subparsers)
    return parser


def _error(message):
    print(f"cnncodes: error: {' '.join(str(message).split(chr(10)))}", file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"cnncodes: warning: {message}", file=sys.stderr)


def main(argv=None):
    """Run the command line; returns the exit status (the console script exits with it).

    Examples
    --------
    >>> main(["layers", "resnet18", "--weights", "none", "--json"])  # doctest: +SKIP
    0
    """
    debug = os.environ.get("CNNCODES_DEBUG", "") not in ("", "0")
    # `--model package.module:callable` finds the user's modules in the working folder, as
    # `python -m` would (appended: it never shadows an installed package).
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    with warnings.catch_warnings():
        warnings.simplefilter("default", CacheWarning)  # a bad cache file is recomputed, not fatal
        warnings.showwarning = _show_warning
        try:
            args = build_parser().parse_args(argv)
            return int(args.run(args) or EXIT_OK)
        except SystemExit as exc:  # --help, --version
            if exc.code is None:
                return EXIT_OK
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        except KeyboardInterrupt:
            print(
                "cnncodes: interrupted (codes computed so far are kept in the cache)",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        except ImageLoadError as exc:  # only commands with --on-error let one through
            if debug:
                traceback.print_exc()
            _error(f"{exc} (--on-error skip carries on without unreadable images, listing them)")
            return EXIT_USAGE
        except (UsageError, DatasetError, ValueError) as exc:
            if debug:
                traceback.print_exc()
            _error(exc)
            return EXIT_USAGE
        except BrokenPipeError:  # e.g. `cnncodes layers resnet50 | head`
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
            return EXIT_FAILURE
        except OSError as exc:  # a folder that cannot be written, a full disk, ...
            if debug:
                traceback.print_exc()
            _error(exc)
            return EXIT_FAILURE
        except Exception as exc:
            if debug:
                traceback.print_exc()
            _error(f"{type(exc).__name__}: {exc} ({_DEBUG_HINT})")
            return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
