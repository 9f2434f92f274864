"""``cnncodes extract``: compute (and cache) the codes of a folder or manifest, optionally to a file."""

from __future__ import annotations

from ..images.views import expand_views
from ..store.cache import (
    resolve_cache_dir,
)
from ..store.export import FORMATS, PARQUET_LAYOUTS, check_format_available, write_codes
from ..utils.diskspace import naming_write_failures
from ..utils.files import display
from ..utils.jsonable import skipped_json
from ._core import (
    EXIT_OK,
    UsageError,
    _add_data_options,
    _add_engine_options,
    _add_model_options,
    _add_runtime_options,
    _cache_dir_from_args,
    _check_engine_args,
    _check_out_path,
    _fill,
    _Formatter,
    _load_data,
    _note_skipped,
    _Output,
    _runtime_from_args,
    _short_weights,
    _spec_from_args,
)

_EXTRACT_EPILOG = """\
examples:
  # codes of resnet50's penultimate layer (ImageNet weights) for a folder of class folders
  cnncodes extract photos/ --model resnet50 --out codes.h5

  # two layers of a local checkpoint, max-pooled, from a CSV manifest (path,label)
  cnncodes extract train.csv --model mobilenet_v2 --weights mobilenet_v2.pth \\
      --layer features.14 --layer features.18 --pooling max --out codes.npz

  # a table for pandas, polars or DuckDB (needs pyarrow): path, label, codes
  cnncodes extract photos/ --model resnet50 --out codes.parquet

  # an untrained network on small inputs, machine-readable report, bad images left out
  cnncodes extract photos/ --model resnet18 --weights none --resize 40 --crop 32 \\
      --on-error skip --json

Codes are cached by image content (--cache-dir, default ./cache): a second run on the same
images computes nothing. Read an .h5 output with plain h5py (paths are the file names' bytes,
so that names that are not UTF-8 open too; display_paths is the printable form):
  f = h5py.File("codes.h5"); X = f["codes"][:]; paths = [os.fsdecode(p) for p in f["paths"][:]]
A .parquet output is a table, one row per image: path (printable), label, kept, path_bytes and
the codes as one fixed-size list column "codes" (--parquet-layout wide: one column per feature),
the configuration in the schema metadata ("cnncodes.config"):
  df = pandas.read_parquet("codes.parquet"); X = numpy.stack(df["codes"])
Every format reads with cnncodes.export.read_codes("codes.h5") (.codes, .paths, .labels, .config).
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
    _add_model_options(
        parser, views="stack, refused here: extract writes one row per image (default: mean)"
    )
    _add_runtime_options(parser)
    _add_engine_options(parser, actors=True)
    parser.add_argument(
        "--out",
        "-o",
        metavar="FILE",
        help="write the codes with paths, labels and configuration to FILE: .h5 (HDF5), .npz "
        "or .parquet (needs pyarrow: pip install 'cnncodes[parquet]')",
    )
    parser.add_argument(
        "--parquet-layout",
        choices=PARQUET_LAYOUTS,
        help="codes in an --out FILE.parquet: one fixed-size list column 'codes' (list, the "
        "default) or one float32 column per feature, LAYER__POOLINGi (wide)",
    )
    parser.set_defaults(run=run_extract)


def _check_out(args):
    """``(--out path or None, parquet layout or None)``, checked before any image is read."""
    out_path = _check_out_path(args.out, FORMATS)
    parquet = out_path is not None and out_path.lower().endswith(".parquet")
    if args.parquet_layout is not None and not parquet:
        raise UsageError(
            f"--parquet-layout {args.parquet_layout!r} applies only to an --out FILE.parquet"
        )
    if out_path is not None:
        try:
            check_format_available(out_path, "--out ")
        except ImportError as exc:
            raise UsageError(str(exc)) from None
    return out_path, (args.parquet_layout or "list") if parquet else None


def _views_from_args(args):
    """The views options of the extraction (empty for the centre crop alone)."""
    if args.view_reduce == "stack":
        raise UsageError(
            "--view-reduce stack gives several rows per image; extract writes one row per "
            "image: use --view-reduce mean or max (or cnncodes fit --view-reduce stack)"
        )
    return {
        "views": "center" if args.views is None else args.views,
        "view_seed": 0 if args.view_seed is None else args.view_seed,
        "view_reduce": args.view_reduce or "mean",
    }


def _extractor(args, spec, views):
    """``(extract_codes or extract_views, its views options)``; bad views fail here."""
    from ..extraction.extract import extract_codes, extract_views

    if views["views"] == "center":
        return extract_codes, {}
    try:
        for view in expand_views(views["views"], views["view_seed"]):
            spec.with_view(view)
    except UsageError as exc:
        raise UsageError(f"--views {args.views}: {exc}") from None
    return extract_views, views


def run_extract(args):
    """Extract codes for DATA; print a summary; optionally write them to --out."""
    from ..networks.layers import resolve_layers

    output = _Output(args)
    _check_engine_args(args)
    out_path, layout = _check_out(args)
    views = _views_from_args(args)
    dataset = _load_data(args, output)
    spec = _spec_from_args(args)
    layers = resolve_layers(spec, args.layer or ["penultimate"])
    # Normalisation is never silent: resolve_spec warns (PreprocessingWarning) about a checkpoint
    # normalised with ImageNet's default.
    output.note(f"preprocessing: {spec.preprocessing.describe()}")
    extract, views = _extractor(args, spec, views)
    result = extract(
        dataset.paths,
        spec,
        layers,
        args.pooling,
        **views,
        cache_dir=_cache_dir_from_args(args),
        **_runtime_from_args(args),
        on_error=args.on_error,
        progress=output.progress,
        engine=args.engine,
        ray_address=args.address,
        ray_actors=args.ray_actors,
    )
    if out_path is not None:
        with naming_write_failures(out_path, "the codes (--out)"):
            write_codes(out_path, result, dataset, spec, args.pooling, parquet_layout=layout)
    _note_skipped(output, result.skipped)
    summary = _summary(args, dataset, spec, result, out_path, layout)
    output.result(summary, _lines(args, dataset, spec, result, summary))
    return EXIT_OK


def _summary(args, dataset, spec, result, out_path, layout):
    widths = {layer: codes.shape[1] for layer, codes in result.codes.items()}
    return {
        "command": "extract",
        "data": dataset.root,
        "source": dataset.kind,
        "images": len(dataset),
        "computed": result.computed,
        "cached": result.cached,
        "skipped": len(result.skipped),
        "skipped_files": skipped_json(result.skipped),
        "model": spec.model,
        "weights": spec.weights_id,
        "layers": list(result.codes),
        "pooling": args.pooling,
        "preprocessing": {
            **spec.preprocessing.to_dict(),
            "source": dict(spec.preprocessing.source),
        },
        "precision": next(iter(result.configs.values()))["precision"],
        "views": list(result.views),
        "view_reduce": result.view_reduce,
        "features": int(sum(widths.values())),
        "features_per_layer": widths,
        "classes": dataset.counts() or None,
        "cache_dir": resolve_cache_dir(_cache_dir_from_args(args)),
        "seconds": round(result.seconds, 3),
        "out": out_path,
        "parquet_layout": layout,
    }


def _lines(args, dataset, spec, result, summary):
    widths, cache_root = summary["features_per_layer"], summary["cache_dir"]
    lines = [
        f"{len(dataset)} images: {result.computed} computed, {result.cached} cached, "
        f"{len(result.skipped)} skipped in {result.seconds:.1f} s",
        f"codes: {len(result.kept)} x {summary['features']} float32 from "
        + ", ".join(f"{layer} ({w})" for layer, w in widths.items())
        + f", pooling {args.pooling}, {spec.model} [{_short_weights(spec.weights_id)}], "
        f"{summary['precision']}",
    ]
    if result.view_reduce is not None:
        lines.append(
            f"views: {result.view_reduce} of {len(result.views)}: {', '.join(result.views)}"
        )
    lines.append(f"cache: {cache_root}" if cache_root else "cache: off")
    if summary["out"]:
        how = {
            "list": " (codes as one list column 'codes')",
            "wide": " (codes as one column per feature)",
        }
        lines.append(f"wrote {display(summary['out'])}{how.get(summary['parquet_layout'], '')}")
    return lines
