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
from .cache import CacheWarning, list_configs, resolve_cache_dir
from .datasets import DatasetError, load_dataset
from .extract import PRECISIONS, extract_codes, spec_from_config
from .images import ImageLoadError, file_digest
from .models import list_layers, resolve_layers, resolve_spec
from .pooling import POOLINGS

__all__ = ["main", "build_parser", "COMMANDS"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
OUT_FORMATS = (".h5", ".hdf5", ".npz")
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
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
            print(json.dumps(data, indent=1, default=_json_default))
        elif not self.quiet:
            for line in lines:
                print(line)


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, (tuple, set)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


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
    for prefix in ("sha256:", "state-sha256:"):
        if weights_id.startswith(prefix):
            return weights_id[: len(prefix) + 12] + "..."
    return weights_id


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


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return value


def _count(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 0") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 0")
    return value


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
        help="accept images that resolve outside DATA's folder (../, absolute paths, symbolic "
        "links); refused by default",
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
    group.add_argument("--interpolation", choices=_INTERPOLATIONS, help="resize interpolation")


def _add_model_options(parser, *, model=True, layers=True):
    """The network: --model, --weights, --seed, --layer, --pooling and the preprocessing."""
    group = parser.add_argument_group("model")
    if model:
        group.add_argument(
            "--model",
            "-m",
            required=True,
            metavar="M",
            help="torchvision model name (resnet50, mobilenet_v2, ...) or package.module:callable",
        )
    _add_weights_options(group)
    if layers:
        group.add_argument(
            "--layer",
            "-l",
            action="append",
            metavar="L",
            help="graph-node name (see 'cnncodes layers M'); repeat for several layers, whose "
            "codes are concatenated in order (default: penultimate, the input of the last "
            "linear layer)",
        )
        group.add_argument(
            "--pooling",
            "-p",
            choices=POOLINGS,
            default="avg",
            help="how spatial maps become vectors (default: %(default)s)",
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
        help="image-decoding processes, 0 to decode in the main process (default: min(4, CPUs))",
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


def _spec_from_args(args, model=None):
    """Resolve --model/--weights/--seed and the preprocessing overrides (no weights loaded)."""
    return resolve_spec(
        model if model is not None else args.model,
        args.weights,
        seed=args.seed,
        resize=args.resize,
        crop=args.crop,
        mean=args.mean,
        std=args.std,
        interpolation=args.interpolation,
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
    try:
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
    except ImageLoadError as exc:
        raise UsageError(f"{exc} (--on-error skip leaves unreadable images out)") from None
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
    config_json = json.dumps(config, sort_keys=True, default=_json_default)
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
    data = {
        "model": spec.model,
        "weights": spec.weights_id,
        "input_size": [3, h, w],
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
        f"{spec.model} [{_short_weights(spec.weights_id)}], input 3x{h}x{w}: {len(infos)} layers"
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
    return root, os.path.isdir(root)


def _config_summary(store, info):
    config = info["config"]
    return {
        "key": store.key,
        "model": config.get("model"),
        "weights": config.get("weights"),
        "layer": config.get("layer"),
        "pooling": config.get("pooling"),
        "precision": config.get("precision"),
        "rows": info["rows"],
        "unique": info["unique"],
        "features": info["features"],
        "shards": info["shards"],
        "size_mb": round(info["bytes"] / 1e6, 3),
        "path": store.path,
    }


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
    output.result(data, lines)
    return EXIT_OK


_TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 5e-2}


def _hash_data(args, output):
    """``{content hash: path}`` of DATA's readable files."""
    dataset = _load_data(args, output)
    by_digest = {}
    for path in dataset.paths:
        try:
            by_digest.setdefault(file_digest(path), path)
        except ImageLoadError:
            continue
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
    except ValueError as exc:
        return {"status": "not re-checked", "reason": str(exc).replace("\n", " ")}
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
    parser.add_argument(
        "--per-class", type=int, default=20, help="images per class measured (default: 20)"
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
    """Run the demo and print its table."""
    from .demo import run_demo

    output = _Output(args)
    report = run_demo(
        args.out_dir,
        cache_dir=_cache_dir_from_args(args),
        shots=args.shots,
        progress=output.progress,
        log=(lambda line: None) if output.json else output.note,
    )
    output.result(report, [])
    if not output.json:
        output.note(
            "With ImageNet weights on this machine, run the same comparison on your own folder: "
            "cnncodes advise DATA --model resnet50 --weights IMAGENET1K_V1 (the file goes in "
            "$TORCH_HOME/hub/checkpoints), or --weights /path/to/checkpoint.pth."
        )
    return EXIT_OK


# ----------------------------------------------------------------------------- main

# One add_<command>_parser per command, in --help order; each sets ``run`` to its run_<command>.
COMMANDS = [
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
        except (UsageError, DatasetError, ValueError) as exc:
            if debug:
                traceback.print_exc()
            _error(exc)
            return EXIT_USAGE
        except BrokenPipeError:  # e.g. `cnncodes layers resnet50 | head`
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
            return EXIT_FAILURE
        except Exception as exc:
            if debug:
                traceback.print_exc()
            _error(f"{type(exc).__name__}: {exc} ({_DEBUG_HINT})")
            return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
