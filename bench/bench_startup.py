"""Start-up time of ``import cnncodes.cache`` and light CLI commands (issue 12, item 9).

Each command runs in a fresh Python process; the script reports the median wall time of
``--reps`` runs per command and per source tree, runs interleaved, and which heavy packages
(torch, torchvision, sklearn) each command imported. Give two trees to compare (e.g. an
exported older commit and this one):

    git archive OLD | tar -x -C /tmp/old
    .venv/bin/python bench/bench_startup.py /tmp/old .
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HEAVY = ("torch", "torchvision", "sklearn")
PROBE = (
    "import sys, runpy\n"
    "sys.argv = {argv!r}\n"
    "{body}\n"
    "print('HEAVY=' + ','.join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)\n"
)


def commands(cache_dir):
    main = (
        "from cnncodes.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass"
    )
    return {
        "import cnncodes.cache": ("import cnncodes.cache", ["x"]),
        "import cnncodes": ("import cnncodes", ["x"]),
        "cnncodes --version": (main, ["cnncodes", "--version"]),
        "cnncodes --help": (main, ["cnncodes", "--help"]),
        "cnncodes cache info": (main, ["cnncodes", "cache", "info", "--cache-dir", cache_dir]),
    }


def run_once(tree, body, argv):
    code = PROBE.format(argv=argv, body=body, heavy=HEAVY)
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=os.path.abspath(tree),  # `python -c` puts the working folder first on sys.path
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - start
    heavy = done.stderr.rsplit("HEAVY=", 1)[1].strip()
    return seconds, heavy


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="+", help="source trees (folders holding cnncodes/)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default="bench/out/startup.json")
    args = parser.parse_args()
    cache_dir = tempfile.mkdtemp()
    table = {}
    for _ in range(args.reps):
        for name, (body, argv) in commands(cache_dir).items():
            for tree in args.trees:
                seconds, heavy = run_once(tree, body, argv)
                entry = table.setdefault(name, {}).setdefault(tree, {"s": [], "heavy": heavy})
                entry["s"].append(seconds)
    result = {}
    for name, trees in table.items():
        medians = {tree: statistics.median(v["s"]) for tree, v in trees.items()}
        result[name] = {
            tree: {"median_s": round(m, 3), "imports": trees[tree]["heavy"] or "-"}
            for tree, m in medians.items()
        }
        cells = "  ".join(
            f"{tree}: {m:.3f} s [{trees[tree]['heavy'] or '-'}]" for tree, m in medians.items()
        )
        ratio = ""
        if len(args.trees) == 2:
            ratio = f"  ratio {medians[args.trees[0]] / medians[args.trees[1]]:.1f}x"
        print(f"{name:24s} {cells}{ratio}", flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
