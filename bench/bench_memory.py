"""Peak memory of extraction: 10,000 against 1,000 images (goal: growth under 100 MB).

Each run is a fresh subprocess that imports cnncodes, records its RSS, extracts codes of N small
PNGs (64x64, ``resize=40, crop=32``) with an untrained ResNet-18 into an empty cache folder (codes
are committed to the cache in shards as they are made), and reports its RSS high-water mark during
the extraction. ``ru_maxrss`` alone cannot show that: it never goes down, and ``import torch``
already peaks around 700 MB here, above anything the extraction adds. So the kernel's high-water
mark (``VmHWM``) is reset after the imports (``/proc/self/clear_refs``, Linux) and read after the
call; ``ru_maxrss`` (self and children) is reported as well, and used where the reset is not
available.
Two configurations: ``layer3`` with average pooling, and the early ``layer1`` (64 x 8 x 8 maps)
with pyramid pooling. Runs alternate 1,000 / 10,000 and are repeated; medians are reported.

Usage::

    .venv/bin/python bench/bench_memory.py           # 1,000 vs 10,000 images, 3 repetitions
    .venv/bin/python bench/bench_memory.py --quick   # 500 vs 5,000 images, 3 repetitions
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

CONFIGS = {
    "layer3-avg": {"layers": "layer3", "pooling": "avg"},
    "layer1-pyramid": {"layers": "layer1", "pooling": "pyramid"},
}


def _status_mb(field):
    """``VmRSS`` / ``VmHWM`` of this process from /proc (Linux), in MB; None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak():
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(args):
    import resource

    def maxrss_mb():
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        return own, kids

    import numpy as np  # noqa: F401
    from cnncodes.extract import extract_codes
    from cnncodes.models import resolve_spec

    with open(args.paths_file) as f:
        paths = json.load(f)[: args.n]
    config = CONFIGS[args.config]
    spec = resolve_spec("resnet18", "none", resize=40, crop=32)
    # ru_maxrss never goes down, and importing torch alone peaks high; the kernel's VmHWM can be
    # reset, so the peak of the extraction itself is measured from here.
    before, _ = maxrss_mb()
    reset = _reset_peak()
    rss_before = _status_mb("VmRSS")
    start = time.perf_counter()
    res = extract_codes(
        paths,
        spec,
        config["layers"],
        config["pooling"],
        cache_dir=args.cache,
        progress=False,
        num_workers=args.num_workers,
    )
    seconds = time.perf_counter() - start
    own, kids = maxrss_mb()
    hwm = _status_mb("VmHWM") if reset else None
    print(
        json.dumps(
            {
                "n": len(paths),
                "computed": res.computed,
                "code_bytes": int(res.concatenated().nbytes),
                "rss_before_mb": rss_before,
                "maxrss_before_mb": before,
                "maxrss_mb": own,
                "children_maxrss_mb": kids,
                "hwm_reset": reset,
                # The peak during extraction where it could be isolated, else the process' peak.
                "peak_mb": hwm if hwm is not None else own,
                "seconds": seconds,
            }
        )
    )


def run_child(paths_file, n, config, cache, num_workers):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--paths-file", paths_file]
    cmd += ["--n", str(n), "--config", config, "--cache", cache]
    if num_workers is not None:
        cmd += ["--num-workers", str(num_workers)]
    env = dict(os.environ)
    env["PYTHONPATH"] = C.ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=C.ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="500 vs 5,000 images")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--num-workers", type=int, default=None, help="default: cnncodes' own")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", default="memory.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--paths-file", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)

    small, large = (500, 5000) if args.quick else (1000, 10000)
    info = C.print_machine()
    start = time.perf_counter()
    paths = C.make_pngs(large, size=64)
    print(f"{large} PNGs of 64x64 ready in {time.perf_counter() - start:.0f} s", flush=True)
    work = os.path.join(C.OUT, "memory")
    os.makedirs(work, exist_ok=True)
    paths_file = os.path.join(work, "paths.json")
    with open(paths_file, "w") as f:
        json.dump(paths, f)
    results = {}
    for rep in range(args.reps):
        for config in args.configs.split(","):
            for n in (small, large):
                cache = os.path.join(work, "cache")
                shutil.rmtree(cache, ignore_errors=True)
                r = run_child(paths_file, n, config, cache, args.num_workers)
                shards = sum(len(files) for _, _, files in os.walk(cache))
                shutil.rmtree(cache, ignore_errors=True)
                assert r["computed"] == n, r
                r["cache_files"] = shards
                results.setdefault(config, {}).setdefault(n, []).append(r)
                print(
                    f"rep {rep + 1} {config} n={n}: peak RSS during extraction "
                    f"{r['peak_mb']:.0f} MB (RSS before {r['rss_before_mb']:.0f} MB; ru_maxrss "
                    f"{r['maxrss_mb']:.0f} MB, of which imports {r['maxrss_before_mb']:.0f}; "
                    f"children {r['children_maxrss_mb']:.0f} MB), codes "
                    f"{r['code_bytes'] / 1e6:.1f} MB, {r['seconds']:.1f} s",
                    flush=True,
                )
    print()
    print(f"| configuration | peak RSS {small:,} (MB) | peak RSS {large:,} (MB) | growth (MB) |")
    print("|---|---|---|---|")
    summary = {}
    for config, by_n in results.items():
        p_small = C.med([r["peak_mb"] for r in by_n[small]])
        p_large = C.med([r["peak_mb"] for r in by_n[large]])
        growth = p_large - p_small
        codes = C.med([r["code_bytes"] for r in by_n[large]]) / 1e6
        summary[config] = {
            "peak_small_mb": p_small,
            "peak_large_mb": p_large,
            "growth_mb": growth,
            "codes_large_mb": codes,
            "seconds_large": C.med([r["seconds"] for r in by_n[large]]),
        }
        print(
            f"| {config} | {p_small:.0f} | {p_large:.0f} | {growth:+.0f} (codes returned: {codes:.1f}) |"
        )
    C.save_json(
        args.out,
        {"machine": info, "small": small, "large": large, "runs": results, "summary": summary},
    )


if __name__ == "__main__":
    main()
