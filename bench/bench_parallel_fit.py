"""``cnncodes fit --n-jobs 2`` against ``--n-jobs 1`` on cached codes (issue 21, item 2).

The hymenoptera layer sweep (``--pipeline layer_sweep_svm``, resnet18 untrained, 4 layers x
2 poolings x the recipe's SVM grid: 280 candidates x 5 folds = 1,400 fits) through the command
line, the cache filled once before timing. Runs alternate (n_jobs 1, n_jobs 2, ...); for each
the wall time of the whole command, the seconds of its grid search (its final ``grid search:
1,400/1,400 fits in ...`` line), how many ``grid search:`` progress lines it printed, and the
cores other processes kept busy meanwhile (the machine is shared).

Usage::

    .venv/bin/python bench/bench_parallel_fit.py --reps 3
    git archive c3e230d | tar -x -C /tmp/before   # a commit to compare with, side by side
    .venv/bin/python bench/bench_parallel_fit.py --trees before=/tmp/before,after=$PWD
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _seconds(line):
    """Seconds of a final ``grid search: N/M fits in 1 min 5 s, ...`` line."""
    text = line.split(" in ", 1)[1].split(",")[0]
    total = 0.0
    for value, unit in re.findall(r"([\d.]+) (min|s|h)", text):
        total += float(value) * {"s": 1, "min": 60, "h": 3600}[unit]
    return total


def run_fit(data, cache, n_jobs, model, root=ROOT):
    cmd = [sys.executable, "-m", "cnncodes", "fit", data, "--pipeline", "layer_sweep_svm"]
    cmd += ["--model", model, "--weights", "none", "--cache-dir", cache, "--n-jobs", str(n_jobs)]
    env = dict(os.environ, PYTHONPATH=root)
    with C.Meter() as meter:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=root)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("grid search: ")]
    progress = [ln for ln in lines if "/" in ln]
    final = [ln for ln in progress if " in " in ln]
    return {
        "seconds": meter.seconds,
        "cpu_s": meter.cpu_seconds,
        "search_s": _seconds(final[-1]) if final else None,
        "progress_lines": len(progress),
        "example": progress[len(progress) // 2] if progress else None,
        "foreign_cores": meter.foreign_cores,
        "load": os.getloadavg()[0],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--jobs", default="1,2", help="n_jobs values to alternate (default 1,2)")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--cache-dir", default=os.path.join(C.OUT, "parallel_fit_cache"))
    ap.add_argument("--out", default="parallel_fit.json")
    ap.add_argument(
        "--trees",
        default=f"this={ROOT}",
        help="LABEL=PATH,...: source trees to run the command from, alternated (to compare "
        "commits side by side: git archive one into a folder); default this checkout",
    )
    args = ap.parse_args(argv)
    data = os.path.join(C.ASSETS, "data", "hymenoptera", "train")
    if not os.path.isdir(data):
        sys.exit(f"{data} is missing: this bench needs the real photos")
    info = C.print_machine()
    start = time.perf_counter()
    run_fit(data, args.cache_dir, 1, args.model)  # fills the cache (or finds it warm)
    print(f"cache filled/read, one run: {time.perf_counter() - start:.0f} s", flush=True)
    jobs = [int(j) for j in args.jobs.split(",")]
    trees = dict(item.split("=", 1) for item in args.trees.split(","))
    cases = [(label, j) for label in trees for j in jobs]
    runs = {case: [] for case in cases}
    for rep in range(args.reps):
        for label, j in cases:
            r = run_fit(data, args.cache_dir, j, args.model, trees[label])
            runs[label, j].append(r)
            print(
                f"rep {rep + 1} {label} n_jobs {j}: {r['seconds']:.1f} s, CPU {r['cpu_s']:.1f} s "
                f"(search {r['search_s']} s), {r['progress_lines']} progress line(s), other "
                f"processes {r['foreign_cores']:.2f} cores, load {r['load']:.1f}; "
                f"e.g. {r['example']!r}",
                flush=True,
            )
    print()
    print(
        "| tree | n_jobs | median s (command) | median CPU s | median s (search) | runs | lines |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, j in cases:
        s = [r["seconds"] for r in runs[label, j]]
        cpu = [r["cpu_s"] for r in runs[label, j]]
        g = [r["search_s"] for r in runs[label, j] if r["search_s"] is not None]
        gm = f"{statistics.median(g):.1f}" if g else "-"
        lines = ", ".join(str(r["progress_lines"]) for r in runs[label, j])
        print(
            f"| {label} | {j} | {C.med(s):.1f} | {C.med(cpu):.1f} | {gm} | {C.fmt_runs(s)} | "
            f"{lines} |"
        )
    foreign = [r["foreign_cores"] for case in cases for r in runs[case]]
    print(f"other processes' load: median {C.med(foreign):.2f} cores (of {os.cpu_count()})")
    C.save_json(args.out, {"machine": info, "runs": {f"{k[0]} {k[1]}": v for k, v in runs.items()}})


if __name__ == "__main__":
    main()
