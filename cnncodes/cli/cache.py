"""``cnncodes cache info|verify``: list the cache's configurations; check and re-check them."""

from __future__ import annotations

import os

from ..extraction.verify import config_summary
from ..spec import describe_preprocessing
from ..store.cache import (
    list_configs,
    resolve_cache_dir,
)
from ..utils.files import display
from ._core import (
    EXIT_FAILURE,
    EXIT_OK,
    UsageError,
    _add_cache_dir_option,
    _add_compute_options,
    _add_data_options,
    _add_output_options,
    _add_trust_model_code_option,
    _count,
    _fill,
    _Formatter,
    _load_data,
    _Output,
    _Parser,
    _runtime_from_args,
    _short_weights,
    _table,
    _trust_model_code,
)

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

    _add_verify_parser(commands)


def _add_verify_parser(commands):
    """``cnncodes cache verify [--data DATA ...]``."""
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
        "  cnncodes cache verify --data photos/ --trust-model-code mymodels:resnet20\n"
        "      # configurations of your own architecture: its code runs only if you allow it\n"
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
    _add_trust_model_code_option(
        verify,
        named_in="a configuration's config.json",
        every="every callable the configurations name",
        where="",
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


def _preprocessing_cell(values):
    """A stored configuration's preprocessing in one line (as written, if not understood)."""
    try:
        return describe_preprocessing(values)
    except (KeyError, TypeError):  # a configuration written by another version
        return repr(values)


def _model_cell(summary):
    """The model, with its builder's arguments where given: ``resnet18(num_classes=3)``."""
    kwargs = summary.get("model_kwargs")
    if not kwargs:
        return summary["model"]
    return f"{summary['model']}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


def run_cache_info(args):
    """List the configurations in the cache."""
    output = _Output(args)
    root, exists = _existing_cache_root(args)
    configs = [config_summary(s, i) for s, i in list_configs(root)] if exists else []
    data = {"cache_dir": root, "configs": configs}
    if not exists:
        lines = [f"no cache at {display(root)}"]
    elif not configs:
        lines = [f"{display(root)}: no configurations"]
    else:
        total = sum(c["size_mb"] for c in configs)
        lines = [f"{display(root)}: {len(configs)} configuration(s), {total:.1f} MB"]
        rows = [
            [
                c["key"][:12],
                _model_cell(c),
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


def run_cache_verify(args):
    """Check every shard; with --data, recompute a sample of codes; exit 1 on any problem."""
    from ..extraction.verify import verify_cache

    output = _Output(args)
    if args.sample == 0 and args.data:
        raise UsageError("--sample 0 recomputes nothing; drop --data or give --sample N >= 1")
    trust = _trust_model_code(args)
    root, _ = _existing_cache_root(args)
    paths = _load_data(args, output).paths if args.data else None
    data = verify_cache(
        root,
        paths,
        compact=args.compact,
        seed=args.seed,
        log=output.note,
        sample=args.sample,
        weights_path=args.weights,
        trust_model_code=trust,
        **_runtime_from_args(args),
        progress=output.progress,
    )
    exists = data.pop("exists")
    lines = _verify_lines(root, exists, data["configs"], data["warnings"], paths, args.sample)
    for u in data["unaccounted"]:
        lines.append(f"PROBLEM {display(u['folder'])}: not a configuration ({u['problem']})")
    if data["removed_temporaries"]:
        lines.append(
            f"removed {len(data['removed_temporaries'])} temporary file(s) left by killed runs"
        )
    output.result(data, lines)
    return EXIT_OK if data["ok"] else EXIT_FAILURE


def _verify_lines(root, exists, reports, cache_warnings, paths, sample):
    if not exists:
        return [f"no cache at {display(root)}"]
    lines = [f"{display(root)}: {len(reports)} configuration(s)"]
    for r in reports:
        head = (
            f"{r['key'][:12]}  {r['model']} [{_short_weights(str(r['weights']))}] {r['layer']} "
            f"{r['pooling']} {r['precision']}: {r['shards']} shard(s), {r['rows']} rows"
        )
        integrity = "integrity ok" if not r["problems"] else f"{len(r['problems'])} BAD shard(s)"
        lines.append(f"{head}: {integrity}")
        for p in r["problems"]:
            lines.append(f"  PROBLEM {display(p['shard'])}: {p['problem']}")
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
    if paths is None and sample == 0:
        lines.append("codes not re-checked (integrity only, as --sample 0 asks)")
    elif paths is None:
        lines.append(
            "codes not re-checked (integrity only): pass --data DATA, the images the cache was "
            "filled from, to recompute a sample"
        )
    return lines
