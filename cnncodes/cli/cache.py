"""``cnncodes cache info|verify|prune|clear``: list the cache's configurations; check and
re-check them; remove some or all of them."""

from __future__ import annotations

import argparse
import os
import re
import time

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
  cnncodes cache prune --older-than 30d --dry-run
  cnncodes cache prune --max-size 20GB       # least recently used configurations first
  cnncodes cache clear --yes
"""


def add_cache_parser(subparsers):
    """``cnncodes cache info|verify|prune|clear``."""
    parser = subparsers.add_parser(
        "cache",
        help="inspect, verify, prune and clear the code cache",
        description=_fill(
            "Inspect (info), verify (verify), prune (prune) and clear (clear) the code cache."
        ),
        epilog=_CACHE_EPILOG,
        formatter_class=_Formatter,
    )
    commands = parser.add_subparsers(
        dest="cache_command",
        required=True,
        metavar="{info,verify,prune,clear}",
        parser_class=_Parser,
    )
    info = commands.add_parser(
        "info",
        help="list the configurations in the cache with counts and sizes",
        description=_fill(
            "List every configuration (model, weights, layer, pooling, precision) in "
            "the cache, with its view, number of stored codes, code length, shards, size on disk "
            "and last use (the last read, stamped at most once a minute, or the last write)."
        ),
        epilog="examples:\n  cnncodes cache info\n  cnncodes cache info --cache-dir D --json\n",
        formatter_class=_Formatter,
    )
    _add_cache_dir_option(info, no_cache=False)
    _add_output_options(info, quiet=False)
    info.set_defaults(run=run_cache_info)

    _add_verify_parser(commands)
    _add_prune_parsers(commands)


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


def _info_summary(store, info):
    """:func:`config_summary` with the view, the bytes of the whole folder and the last use."""
    from ..store.prune import config_usage

    usage = config_usage(store, info)
    return {**config_summary(store, info), **{k: usage[k] for k in ("view", "bytes", "last_used")}}


def run_cache_info(args):
    """List the configurations in the cache."""
    output = _Output(args)
    root, exists = _existing_cache_root(args)
    configs = [_info_summary(s, i) for s, i in list_configs(root)] if exists else []
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
                c["view"],
                c["precision"],
                c["rows"],
                c["unique"],
                c["features"],
                c["shards"],
                f"{c['size_mb']:.2f}",
                _when(c["last_used"]),
            ]
            for c in configs
        ]
        numbers = ("rows", "unique", "features", "shards", "MB")
        head = ["key", "model", "weights", "layer", "pooling", "view", "precision"]
        lines += _table([*head, *numbers, "last used"], rows, numbers)
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


_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _size(text):
    """``500MB``, ``20G``, ``1.5GiB``, ``1000000`` (bytes) -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(I?)B?\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a size such as 500MB, 20GB, 1.5GiB or bytes"
        )
    number, unit, binary = m.groups()
    scale = 1024 ** "_KMGT".index(unit) if binary and unit else _UNITS[unit]
    return int(float(number) * scale)


def _age(text):
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smhdw])\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected an age such as 30d, 12h, 90m, 45s or 2w"
        )
    return float(m.group(1)) * _AGE_UNITS[m.group(2)]


def _when(epoch):
    return "-" if epoch is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch))


def _add_prune_parsers(commands):
    """``cnncodes cache prune ...`` and ``cnncodes cache clear ...``."""
    prune = commands.add_parser(
        "prune",
        help="remove configurations by model, by age or to a size budget",
        description=_fill(
            "Remove whole configurations: those of --model, those not used for --older-than, "
            "then the least recently used ones until the cache fits --max-size. Together, "
            "--model narrows what may go. A configuration being written or compacted right "
            "now is left alone (reported as busy); readers elsewhere recompute what went."
        ),
        epilog="examples:\n  cnncodes cache prune --older-than 30d --dry-run\n"
        "  cnncodes cache prune --max-size 20GB\n"
        "  cnncodes cache prune --model resnet18 --older-than 2w --json\n",
        formatter_class=_Formatter,
    )
    clear = commands.add_parser(
        "clear",
        help="remove every configuration (or those of one model)",
        description=_fill(
            "Remove every configuration in the cache (only those of --model if given). "
            "Removing everything needs --yes. Folders that are not configurations are kept."
        ),
        epilog="examples:\n  cnncodes cache clear --dry-run\n  cnncodes cache clear --yes\n"
        "  cnncodes cache clear --model resnet18\n",
        formatter_class=_Formatter,
    )
    for parser in (prune, clear):
        _add_cache_dir_option(parser, no_cache=False)
        parser.add_argument("--model", metavar="NAME", help="only configurations of this model")
        parser.add_argument(
            "--dry-run", action="store_true", help="remove nothing: list what would be removed"
        )
    prune.add_argument(
        "--older-than", type=_age, metavar="AGE", help="not used for AGE (30d, 12h, 90m, 2w)"
    )
    prune.add_argument(
        "--max-size",
        type=_size,
        metavar="SIZE",
        help="remove least recently used configurations until the cache fits SIZE (20GB, 500MB)",
    )
    clear.add_argument(
        "--yes", action="store_true", help="confirm removing every configuration of the cache"
    )
    for parser, run in ((prune, run_cache_prune), (clear, run_cache_clear)):
        _add_output_options(parser, quiet=False)
        parser.set_defaults(run=run)


def _removal_lines(root, report):
    verb = "would remove" if report["dry_run"] else "removed"
    mb = report["freed_bytes"] / 1e6
    lines = [
        f"{display(root)}: {verb} {len(report['removed'])} configuration(s), {mb:.1f} MB; "
        f"{report['kept']} kept, {report['bytes_after'] / 1e6:.1f} MB"
    ]
    rows = [
        [
            r["key"][:12],
            r["model"],
            r["layer"],
            r["pooling"],
            r["view"],
            r["rows"],
            f"{r['bytes'] / 1e6:.2f}",
            _when(r["last_used"]),
            r["reason"],
        ]
        for r in report["removed"]
    ]
    if rows:
        headers = ["key", "model", "layer", "pooling", "view", "rows", "MB", "last used", "why"]
        lines += _table(headers, rows, ("rows", "MB"))
    for b in report["busy"]:
        lines.append(f"left alone, being written or compacted now: {b['key'][:12]} {b['model']}")
    return lines


def _empty_report(root, dry_run):
    return {
        "cache_dir": root,
        "dry_run": dry_run,
        "removed": [],
        "busy": [],
        "kept": 0,
        "bytes_before": 0,
        "bytes_after": 0,
        "freed_bytes": 0,
    }


def run_cache_prune(args):
    """Remove configurations by model, age or size budget."""
    from ..store.prune import prune

    output = _Output(args)
    if args.model is None and args.older_than is None and args.max_size is None:
        raise UsageError(
            "cache prune needs --model, --older-than or --max-size "
            "(cnncodes cache clear --yes removes everything)"
        )
    root, exists = _existing_cache_root(args)
    if not exists:
        output.result(_empty_report(root, args.dry_run), [f"no cache at {display(root)}"])
        return EXIT_OK
    report = prune(
        root,
        model=args.model,
        older_than=args.older_than,
        max_bytes=args.max_size,
        dry_run=args.dry_run,
    )
    output.result(report, _removal_lines(root, report))
    return EXIT_OK


def run_cache_clear(args):
    """Remove every configuration (or those of --model); everything needs --yes."""
    from ..store.prune import clear

    output = _Output(args)
    root, exists = _existing_cache_root(args)
    if not exists:
        output.result(_empty_report(root, args.dry_run), [f"no cache at {display(root)}"])
        return EXIT_OK
    if args.model is None and not args.yes and not args.dry_run:
        n = len(list_configs(root))
        raise UsageError(
            f"cache clear removes every configuration in {display(root)} ({n} now): "
            "pass --yes to do it, --dry-run to list them, or --model NAME for one model's"
        )
    report = clear(root, model=args.model, dry_run=args.dry_run)
    output.result(report, _removal_lines(root, report))
    return EXIT_OK
