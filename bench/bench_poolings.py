"""One pass for every layer and pooling (issue 21, item 1): a 4-layer x 2-pooling extraction
against one layer and one pooling, on the same images, cold cache each time.

Both sides run ``extract_codes`` on the same generated JPEGs with resnet18 (untrained, fixed seed:
the network's cost does not depend on its weights), each into a fresh cache folder so that every
image goes through the network; runs alternate (one, sweep, one, sweep, ...) and the medians'
ratio is reported. Goal: the sweep's extraction at most 1.1x the single configuration's.

Usage::

    .venv/bin/python bench/bench_poolings.py            # 200 JPEGs, 3 repetitions
    .venv/bin/python bench/bench_poolings.py --n 64 --reps 1
"""

from __future__ import annotations

import argparse
import tempfile
import time

from _common import fmt_runs, make_jpegs, med, print_machine, save_json

from cnncodes import extract_codes, resolve_spec

LAYERS = ["layer1", "layer2", "layer3", "layer4"]
POOLINGS = ["avg", "max"]


def _time(paths, spec, layers, pooling):
    with tempfile.TemporaryDirectory(prefix="bench-poolings-") as cache:
        started = time.perf_counter()
        result = extract_codes(paths, spec, layers, pooling, cache_dir=cache, batch_size=32)
        seconds = time.perf_counter() - started
    assert result.computed == len(paths)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default="poolings.json")
    args = parser.parse_args()
    print_machine()
    paths = make_jpegs(args.n)
    spec = resolve_spec("resnet18", "none", resize=160, crop=128)
    _time(paths[:8], spec, ["layer4"], "avg")  # warm-up: imports, threads
    one, sweep = [], []
    for _ in range(args.reps):
        one.append(_time(paths, spec, ["layer4"], "avg"))
        sweep.append(_time(paths, spec, LAYERS, POOLINGS))
        print(f"one configuration {one[-1]:.2f} s, 4 layers x 2 poolings {sweep[-1]:.2f} s")
    ratio = med(sweep) / med(one)
    print(f"| extraction of {args.n} JPEGs, resnet18 at 128 px | median s | runs |")
    print("|---|---|---|")
    print(f"| layer4, avg | {med(one):.2f} | {fmt_runs(one)} |")
    print(f"| layer1-4 x avg, max (8 configurations) | {med(sweep):.2f} | {fmt_runs(sweep)} |")
    print(f"ratio {ratio:.2f}x (goal <= 1.1x)")
    save_json(args.out, {"one": one, "sweep": sweep, "ratio": ratio, "n": args.n})


if __name__ == "__main__":
    main()
