"""Checking a code cache: shard integrity, and stored codes recomputed from the images.

The algorithm behind ``cnncodes cache verify``; the command only parses, calls :func:`verify_cache`
and prints. Torch is imported only to recompute codes, so an integrity check stays light.
"""

from __future__ import annotations

import os
import random
import warnings

import numpy as np

from ..images.load import ImageLoadError, file_digests
from ..store.cache import CacheWarning, list_configs, remove_stale_temporaries, resolve_cache_dir

__all__ = ["TOLERANCES", "config_summary", "recheck_codes", "verify_cache"]

#: Largest difference, absolute and relative to the stored value, between a recomputed and a
#: stored code that still counts as equal, per precision: the same network on another device or
#: batch split differs by float rounding, and half precisions round coarsely.
TOLERANCES = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 5e-2}


def config_summary(store, info):
    """A configuration of the cache as a JSON-ready dict: its key, what made it, its size.

    ``store`` and ``info`` are a pair from :func:`~cnncodes.cache.list_configs`.
    """
    config = info["config"]
    summary = {
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
    if config.get("model_kwargs"):  # only where given, as in the configuration itself
        summary["model_kwargs"] = config["model_kwargs"]
    return summary


def _not_rechecked(reason):
    return {"status": "not re-checked", "reason": str(reason).replace("\n", " ")}


def recheck_codes(
    store,
    by_digest,
    *,
    sample=8,
    rng=None,
    weights_path=None,
    trust_model_code=False,
    batch_size=32,
    num_workers=None,
    device="auto",
    progress=None,
    log=None,
):
    """Recompute up to ``sample`` of ``store``'s codes from the images and compare; a verdict.

    Parameters
    ----------
    store : cnncodes.cache.CodeStore
    by_digest : dict
        ``{content hash: image path}`` of the images at hand; only those the store holds are
        sampled.
    weights_path, trust_model_code
        As for :func:`~cnncodes.extract.spec_from_config`: a configuration naming its own model
        code is rebuilt only if ``trust_model_code`` allows it.
    log : callable, optional
        Receives a line before the recomputation.

    Returns
    -------
    dict
        ``status`` ``"ok"`` or ``"mismatch"`` with ``checked``, ``mismatched``, ``max_abs_diff``
        and ``tolerance`` (:data:`TOLERANCES`); or ``"not re-checked"`` with the ``reason``.
    """
    from .extract import extract_codes

    rng = random.Random() if rng is None else rng
    config = store.config
    index = store.index()
    candidates = sorted(d for d in by_digest if d in index)
    if not candidates:
        return _not_rechecked("none of the DATA images is stored here")
    spec = _rebuilt_spec(config, weights_path, trust_model_code, device)
    if isinstance(spec, dict):
        return spec
    chosen = rng.sample(candidates, min(sample, len(candidates)))
    if log is not None:
        log(f"  recomputing {len(chosen)} code(s) of {store.key[:12]} ({config.get('layer')})")
    try:
        result = extract_codes(
            [by_digest[d] for d in chosen],
            spec,
            [config["layer"]],
            config["pooling"],
            cache_dir=None,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            precision=config["precision"],
            on_error="skip",
            progress=progress,
        )
    except ValueError as exc:  # weights unavailable offline, model not importable, ...
        return _not_rechecked(exc)
    kept = [chosen[i] for i in result.kept]
    if not kept:
        return _not_rechecked("the sampled images could not be read")
    return _compare(result.codes[config["layer"]], store.read(kept), config["precision"])


def _rebuilt_spec(config, weights_path, trust_model_code, device):
    """The spec that made ``config``'s codes, or the verdict saying why they cannot be remade
    here (on ``device``)."""
    from .extract import GPU_DECODER, resolve_device, spec_from_config

    try:
        spec = spec_from_config(
            config, weights_path=weights_path, trust_model_code=trust_model_code
        )
        resolved = resolve_device(device)
    except ValueError as exc:
        return _not_rechecked(exc)
    if str(config.get("decode", "")).endswith(GPU_DECODER) and resolved.type != "cuda":
        return _not_rechecked("decoded by nvJPEG: needs --device cuda")
    return spec


def _compare(fresh, stored, precision):
    """The verdict on recomputed codes against the stored ones, under :data:`TOLERANCES`."""
    tol = TOLERANCES.get(precision, 1e-4)
    diff = np.abs(fresh.astype(np.float64) - stored)
    bad = int(np.sum(np.any(diff > tol + tol * np.abs(stored), axis=1)))
    return {
        "status": "mismatch" if bad else "ok",
        "checked": len(stored),
        "mismatched": bad,
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "tolerance": tol,
    }


def verify_cache(cache_dir="auto", paths=None, *, compact=False, seed=None, log=None, **recheck):
    """Check every shard of a cache; with ``paths``, also recompute a sample of stored codes.

    Temporary files that killed runs left are removed first. A folder whose ``config.json`` is
    missing or damaged gets it back from its shards' own record of their configuration; a folder
    that cannot be accounted for makes the report not ok. A configuration whose shards are
    all sound is merged into one shard with ``compact=True``.

    Parameters
    ----------
    cache_dir : str, os.PathLike or "auto"
    paths : list of str, optional
        The images the cache was filled from (the cache stores content hashes, not paths):
        codes are recomputed for up to ``sample`` of them per configuration
        (:func:`recheck_codes`, which takes the remaining keyword arguments).
    seed : int, optional
        Seed of the random sample (None: a fresh one).

    Returns
    -------
    dict
        ``cache_dir``, ``exists``, ``ok`` (no bad shard and no mismatch), ``configs`` (each
        :func:`config_summary` with ``problems``, and ``recheck``/``compacted_shards`` when
        done), ``warnings`` (the cache's, deduplicated), ``rechecked``,
        ``removed_temporaries``, ``recovered`` (folders whose ``config.json`` was written again
        from their shards) and ``unaccounted`` (``{"folder", "problem"}`` of each folder that is
        no configuration it can check: these make ``ok`` false).

    Examples
    --------
    >>> report = verify_cache("cache", paths=data.paths, sample=4)  # doctest: +SKIP
    >>> report["ok"], [c["recheck"]["status"] for c in report["configs"]]  # doctest: +SKIP
    (True, ['ok'])
    """
    root = resolve_cache_dir(cache_dir)
    exists = os.path.isdir(root)
    by_digest = None
    if paths is not None:
        by_digest = {}
        for path, digest in zip(paths, file_digests(paths)):
            if not isinstance(digest, ImageLoadError):
                by_digest.setdefault(digest, path)
    rng = random.Random(seed)
    reports, failed = [], False
    # Left by killed runs: the probe of a writable cache in the cache folder, shards in the making
    # in the configurations' folders.
    # Any writer-named temporary of the folder (an --out file written there, say), not only the
    # cache's own.
    removed = remove_stale_temporaries(root, prefix=None) if exists else []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CacheWarning)
        # A folder whose config.json is gone or damaged gets it back from its shards; one
        # nothing accounts for is a problem (its rows would go unchecked).
        scan = {"recovered": [], "unaccounted": []}
        stores = list_configs(root, recover=True, report=scan) if exists else []
        failed = bool(scan["unaccounted"])
        for store, info in stores:
            removed += store.remove_stale_temporaries()
            report = config_summary(store, info)
            problems = [
                {"shard": path, "problem": problem}
                for path, problem in store.check_shards()
                if problem is not None
            ]
            report["problems"] = problems
            failed = failed or bool(problems)
            if by_digest is not None:
                report["recheck"] = recheck_codes(store, by_digest, rng=rng, log=log, **recheck)
                failed = failed or report["recheck"]["status"] == "mismatch"
            if compact and not problems:
                report["compacted_shards"] = store.compact(blocking=True)
            reports.append(report)
    cache_warnings = sorted(
        {str(w.message) for w in caught if issubclass(w.category, CacheWarning)}
    )
    return {
        "cache_dir": root,
        "exists": exists,
        "ok": not failed,
        "configs": reports,
        "warnings": cache_warnings,
        "rechecked": by_digest is not None,
        "removed_temporaries": removed,
        "recovered": scan["recovered"],
        "unaccounted": scan["unaccounted"],
    }
