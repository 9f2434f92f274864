"""Warm against cold extraction of the same images: what the cache saves.

Each repetition starts from an empty cache folder and times three calls of
``extract_codes(paths, resnet18 untrained, "penultimate", cache_dir=...)`` on the same JPEGs:

- cold: in a fresh process, nothing cached: every image goes through the network;
- warm, same process: the same call again right after, in that process (file hashes memoised);
- warm, fresh process: the same call in a new interpreter (nothing memoised in memory: every file
  is read and hashed again, every shard index read from disk).

Each time is measured inside the process around the call (imports excluded) and also as the whole
subprocess' wall time (interpreter start and ``import torch`` included: what a CLI user waits).
The warm calls are checked to compute nothing (``computed == 0``). Where
``cnncodes.transformers.CNNCodes`` exists, a warm ``CNNCodes(...).fit_transform`` in a third
fresh process is timed too.

Usage::

    .venv/bin/python bench/bench_warm_cache.py           # 1,000 JPEGs of 500x375, 3 repetitions
    .venv/bin/python bench/bench_warm_cache.py --quick   # 200 JPEGs
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

MODEL = "resnet18"


def child(args):
    """Runs in the subprocess: time the requested calls, print one JSON line."""
    t_import = time.perf_counter()
    from cnncodes.extract import extract_codes
    from cnncodes.models import resolve_spec

    import_s = time.perf_counter() - t_import
    with open(args.paths_file) as f:
        paths = json.load(f)
    out = {"import_s": import_s, "calls": [], "gc_s": []}
    for label in args.calls.split(","):
        # Python's full garbage collection walks every object of a torch process (~420,000,
        # ~0.2 s here) whenever its counters say so; after a cold run that lands in the next
        # call. Collected before each timed call, and reported, so it is charged to no call.
        gc_start = time.perf_counter()
        gc.collect()
        out["gc_s"].append(time.perf_counter() - gc_start)
        if label == "sklearn":
            from cnncodes.transformers import CNNCodes

            start, cpu = time.perf_counter(), time.process_time()
            est = CNNCodes(model=MODEL, weights="none", cache_dir=args.cache, progress=False)
            codes = est.fit_transform(paths)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            out["calls"].append(
                {"label": label, "seconds": seconds, "cpu_s": cpu, "shape": list(codes.shape)}
            )
            continue
        start, cpu = time.perf_counter(), time.process_time()
        spec = resolve_spec(MODEL, "none")
        res = extract_codes(paths, spec, "penultimate", cache_dir=args.cache, progress=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        out["calls"].append(
            {
                "label": label,
                "seconds": seconds,
                "cpu_s": cpu,
                "computed": res.computed,
                "cached": res.cached,
                "checksum": float(res.concatenated().astype("float64").sum()),
            }
        )
    print(json.dumps(out))


def run_child(paths_file, cache, calls):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--paths-file", paths_file]
    cmd += ["--cache", cache, "--calls", calls]
    env = dict(os.environ)
    env["PYTHONPATH"] = C.ROOT + os.pathsep + env.get("PYTHONPATH", "")
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=C.ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"child failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 images instead of 1,000")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="warm_cache.json")
    C.add_quiet_args(ap)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--paths-file", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--calls", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)

    n = args.n or (200 if args.quick else 1000)
    info = C.print_machine()
    paths = C.make_jpegs(n)
    print(f"{n} JPEGs of 500x375, mean {C.folder_bytes(paths):.1f} KB; model {MODEL} untrained")
    work = os.path.join(C.OUT, "warm_cache")
    os.makedirs(work, exist_ok=True)
    paths_file = os.path.join(work, "paths.json")
    with open(paths_file, "w") as f:
        json.dump(paths, f)
    try:
        import cnncodes.transformers  # noqa: F401

        has_sklearn = True
    except ImportError:
        has_sklearn = False
    quiet = C.quiet_from_args(args)

    def cold_then_warm(cache):
        shutil.rmtree(cache, ignore_errors=True)  # a repeated (disturbed) run starts cold again
        return run_child(paths_file, cache, "cold,warm_same")

    rows = []
    for rep in range(args.reps):
        cache = os.path.join(work, f"cache-{rep}")
        m1, first = quiet.run("cold + warm same process", cold_then_warm, cache)
        m2, second = quiet.run("warm fresh process", run_child, paths_file, cache, "warm_fresh")
        meters = [m1, m2]
        third = None
        if has_sklearn:
            m3, third = quiet.run("CNNCodes warm fresh", run_child, paths_file, cache, "sklearn")
            meters.append(m3)
        cold, warm_same = first["calls"]
        warm_fresh = second["calls"][0]
        assert cold["computed"] == n, cold
        assert warm_same["computed"] == 0 and warm_fresh["computed"] == 0, (warm_same, warm_fresh)
        assert warm_same["checksum"] == cold["checksum"] == warm_fresh["checksum"]
        row = {
            "cold_s": cold["seconds"],
            "warm_same_s": warm_same["seconds"],
            "warm_fresh_s": warm_fresh["seconds"],
            "cold_process_s": first["process_wall_s"] - warm_same["seconds"],
            "warm_fresh_process_s": second["process_wall_s"],
            "import_s": second["import_s"],
            # CPU time of the calls (all threads of the process; the cold one includes torch's
            # threads, which spin while waiting when other processes hold the cores).
            "cold_cpu_s": cold["cpu_s"],
            "warm_same_cpu_s": warm_same["cpu_s"],
            "warm_fresh_cpu_s": warm_fresh["cpu_s"],
            "foreign_cores": [m.foreign_cores for m in meters],
        }
        if has_sklearn:
            row["sklearn_warm_fresh_s"] = third["calls"][0]["seconds"]
            row["sklearn_warm_fresh_cpu_s"] = third["calls"][0]["cpu_s"]
        rows.append(row)
        print(
            f"rep {rep + 1}: cold {row['cold_s']:.2f} s, warm same process "
            f"{row['warm_same_s']:.3f} s, warm fresh process {row['warm_fresh_s']:.3f} s "
            f"(whole process {row['warm_fresh_process_s']:.2f} s)"
            + (
                f", CNNCodes.fit_transform warm fresh process {row['sklearn_warm_fresh_s']:.3f} s"
                if has_sklearn
                else ""
            )
            + "; other processes' load "
            + " / ".join(f"{f:.2f}" for f in row["foreign_cores"])
            + " cores",
            flush=True,
        )
        shutil.rmtree(cache, ignore_errors=True)
    summary = {k: C.med([r[k] for r in rows]) for k in rows[0] if k != "foreign_cores"}
    ratios = {
        "cold/warm_same": summary["cold_s"] / summary["warm_same_s"],
        "cold/warm_fresh": summary["cold_s"] / summary["warm_fresh_s"],
        "cold/warm_fresh (whole processes)": summary["cold_process_s"]
        / summary["warm_fresh_process_s"],
    }
    if has_sklearn:
        ratios["cold/CNNCodes.fit_transform warm_fresh"] = (
            summary["cold_s"] / summary["sklearn_warm_fresh_s"]
        )
    print()
    print(f"| measure (median of {args.reps}) | seconds | images/s |")
    print("|---|---|---|")
    for k, v in summary.items():
        print(f"| {k} | {v:.3f} | {n / v:,.0f} |")
    print()
    for k, v in ratios.items():
        print(f"ratio {k}: {v:,.0f}x")
    C.save_json(
        args.out,
        {
            "machine": info,
            "n_images": n,
            "runs": rows,
            "medians": summary,
            "ratios": ratios,
            "discarded_runs": quiet.discarded,
        },
    )


if __name__ == "__main__":
    main()
