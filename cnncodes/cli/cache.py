"""``cnncodes cache info|verify``: list the cache's configurations; check and re-check them."""

from __future__ import annotations

import os
import random
import warnings

import numpy as np

from .._choices import describe_preprocessing
from ..cache import (
    CacheWarning,
    list_configs,
    remove_stale_temporaries,
    resolve_cache_dir,
)
from ..images import ImageLoadError, file_digests
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
    _display,
    _fill,
    _Formatter,
    _load_data,
    _Output,
    _Parser,
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


def _recheck(store, by_digest, args, trust, rng, output):
    """Recompute a sample of ``store``'s codes from DATA; a JSON-ready verdict."""
    from ..extract import GPU_DECODER, extract_codes, resolve_device, spec_from_config

    config = store.config
    index = store.index()
    candidates = sorted(d for d in by_digest if d in index)
    if not candidates:
        return {"status": "not re-checked", "reason": "none of the DATA images is stored here"}
    try:
        spec = spec_from_config(config, weights_path=args.weights, trust_model_code=trust)
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
    trust = _trust_model_code(args)
    root, exists = _existing_cache_root(args)
    by_digest = _hash_data(args, output) if args.data else None
    rng = random.Random(args.seed)
    reports, failed = [], False
    # Left by killed runs: the probe of a writable cache in the cache folder, shards in the making
    # in the configurations' folders.
    removed = remove_stale_temporaries(root) if exists else []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CacheWarning)
        stores = list_configs(root) if exists else []
        for store, info in stores:
            removed += store.remove_stale_temporaries()
            report = _config_summary(store, info)
            problems = [
                {"shard": path, "problem": problem}
                for path, problem in store.check_shards()
                if problem is not None
            ]
            report["problems"] = problems
            failed = failed or bool(problems)
            if by_digest is not None:
                report["recheck"] = _recheck(store, by_digest, args, trust, rng, output)
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
        "removed_temporaries": removed,
    }
    lines = _verify_lines(root, exists, reports, cache_warnings, by_digest, args.sample)
    if removed:
        lines.append(f"removed {len(removed)} temporary file(s) left by killed runs")
    output.result(data, lines)
    return EXIT_FAILURE if failed else EXIT_OK


def _verify_lines(root, exists, reports, cache_warnings, by_digest, sample):
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
    if by_digest is None and sample == 0:
        lines.append("codes not re-checked (integrity only, as --sample 0 asks)")
    elif by_digest is None:
        lines.append(
            "codes not re-checked (integrity only): pass --data DATA, the images the cache was "
            "filled from, to recompute a sample"
        )
    return lines
