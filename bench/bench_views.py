"""Codes of several views (issue 14, item 3): centre vs flip vs ten crops vs random crops.

MobileNetV2 with the asset's ImageNet weights (trained on (x - 128) / 128: mean = std = 0.5),
resized to 256 and cropped to 224 (the ten-crop protocol; with a plain 224 resize the corner
crops of a square image would all be the centre), penultimate codes (1280-d), the
``linear_probe`` recipe (StandardScaler + logistic regression, ``C`` over 13 decades).
On ``../shared/assets`` hymenoptera (train + val, 398 photos, 2 classes) and sign-language
digits (2,062 images, 10 classes; ``--subsample sign_digits=700`` for a stratified subset).
Phases:

- ``extract``: every view's codes into a private cache (``--cache-dir``, default under /tmp),
  one view after another; seconds and images per second of each view, cold, to
  ``bench/out/views_extract.json``: the extraction cost of a setting is the sum over its views.
- ``decode``: what decoding a view costs, against the network's time per image: Pillow
  read + decode + resize + view of 100 hymenoptera images for ``center``, ``flip``,
  ``crop:tl`` and ``rrc:0:0``, interleaved, median of 5 rounds, to ``bench/out/views_decode.json``.
- ``evaluate``: per dataset and setting, side by side, the held-out accuracy of a
  stratified 30% split (seed 0; grid search with 5-fold CV on the 70%) and the best mean 5-fold
  CV accuracy on the 70%, with the fit seconds (codes read from the cache), to
  ``bench/out/views_evaluate.json``.

Usage::

    .venv/bin/python bench/bench_views.py extract [--rrc 10] [--subsample sign_digits=700]
    .venv/bin/python bench/bench_views.py decode
    .venv/bin/python bench/bench_views.py evaluate [--rrc 10] [--subsample sign_digits=700]
        [--datasets hymenoptera] [--only ten_crop-stack] [--cs -4 2] [--out NAME]

bench/RESULTS.md section 11 ran ``extract`` on both datasets (sign digits subsampled to 700),
``extract --datasets hymenoptera --rrc 10``, ``decode``, and ``evaluate`` per dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402
import numpy as np  # noqa: E402

WEIGHTS = C.MOBILENET_WEIGHTS
DATASETS = C.REAL_DATASETS
NETWORK = dict(
    model="mobilenet_v2", weights=WEIGHTS, mean=0.5, std=0.5, resize=256, crop=224, precision="fp32"
)


def settings(rrc):
    """``(name, views, view_reduce)`` of every setting compared."""
    out = [
        ("center", "center", "mean"),
        ("flip-mean", "flip", "mean"),
        ("flip-stack", "flip", "stack"),
        ("ten_crop-mean", "ten_crop", "mean"),
        ("ten_crop-stack", "ten_crop", "stack"),
    ]
    if rrc:
        out += [(f"rrc{rrc}-mean", rrc, "mean"), (f"rrc{rrc}-stack", rrc, "stack")]
    return out


def load(name, subsample=None):
    """(paths, labels) of a dataset; ``subsample``: at most that many images, stratified (seed 0)."""
    from cnncodes.datasets import load_dataset
    from sklearn.model_selection import train_test_split

    paths, labels = [], []
    for root in DATASETS[name]:
        data = load_dataset(root)
        paths += list(data.paths)
        labels += list(data.labels)
    paths, labels = np.asarray(paths), np.asarray(labels)
    if subsample and subsample < len(paths):
        paths, _, labels, _ = train_test_split(
            paths, labels, train_size=subsample, stratify=labels, random_state=0
        )
    return paths, labels


def extract(args):
    from cnncodes.extract import extract_codes
    from cnncodes.models import resolve_spec
    from cnncodes.views import expand_views

    spec = resolve_spec(
        NETWORK["model"], NETWORK["weights"], mean=0.5, std=0.5, resize=256, crop=224
    )
    # Centre and mirror first: the cheap settings are complete first.
    views = ["center", "flip"] + [
        v for v in expand_views("ten_crop") if v not in ("center", "flip")
    ]
    views += expand_views(args.rrc) if args.rrc else []
    out = {"machine": C.machine(), "network": NETWORK, "views": {}}
    path = os.path.join(C.OUT, "views_extract.json")
    if os.path.exists(path):
        with open(path) as f:
            out["views"] = json.load(f).get("views", {})
    for name in args.datasets:
        paths, _ = load(name, args.subsample.get(name))
        for view in views:
            started = time.perf_counter()
            result = extract_codes(
                list(paths),
                spec.with_view(view),
                "penultimate",
                cache_dir=args.cache_dir,
                precision="fp32",
                progress=None,
            )
            seconds = time.perf_counter() - started
            entry = {"images": len(paths), "computed": result.computed, "seconds": seconds}
            if result.computed:
                out["views"][f"{name}/{view}"] = entry
            print(name, view, entry, flush=True)
            os.makedirs(C.OUT, exist_ok=True)
            with open(path, "w") as f:
                json.dump(out, f, indent=1)


def decode(args):
    import statistics

    from cnncodes.models import resolve_spec

    from cnncodes.extraction.decode import _Decode
    from cnncodes.images import file_digest

    spec = resolve_spec(NETWORK["model"], WEIGHTS, mean=0.5, std=0.5, resize=256, crop=224)
    paths, _ = load("hymenoptera")
    items = [(file_digest(p), p) for p in paths[:100]]
    views = ["center", "flip", "crop:tl", "rrc:0:0"]
    times = {v: [] for v in views}
    for _ in range(5):
        for view in views:
            work = _Decode(items, spec.with_view(view).preprocessing)
            started = time.perf_counter()
            for i in range(len(work)):
                assert work[i][3] is None
            times[view].append((time.perf_counter() - started) / len(items))
    out = {v: {"median_ms_per_image": 1000 * statistics.median(t)} for v, t in times.items()}
    print(json.dumps(out, indent=1))
    with open(os.path.join(C.OUT, "views_decode.json"), "w") as f:
        json.dump({"machine": C.machine(), "decode": out}, f, indent=1)


def evaluate(args):
    from sklearn.model_selection import GridSearchCV, train_test_split

    import pipelines

    out = {"machine": C.machine(), "network": NETWORK, "subsample": args.subsample, "results": []}
    for name in args.datasets:
        paths, labels = load(name, args.subsample.get(name))
        train_x, test_x, train_y, test_y = train_test_split(
            paths, labels, test_size=0.3, stratify=labels, random_state=0
        )
        cv = pipelines.make_cv(train_y, n_splits=5)
        for setting, views, reduce in settings(args.rrc):
            if args.only and setting not in args.only:
                continue
            options = (
                {}
                if args.cs is None
                else {"Cs": np.logspace(*args.cs, int(args.cs[1] - args.cs[0]) + 1)}
            )
            pipe, grid = pipelines.get("linear_probe").build(
                cache_dir=args.cache_dir, views=views, view_reduce=reduce, **NETWORK, **options
            )
            started = time.perf_counter()
            search = GridSearchCV(pipe, grid, cv=cv, n_jobs=1)
            search.fit(list(train_x), train_y)
            fit_seconds = time.perf_counter() - started
            accuracy = float(np.mean(search.predict(list(test_x)) == test_y))
            row = {
                "dataset": name,
                "setting": setting,
                "train": len(train_x),
                "test": len(test_x),
                "cv_accuracy": float(search.best_score_),
                "cv_std": float(search.cv_results_["std_test_score"][search.best_index_]),
                "test_accuracy": accuracy,
                "Cs": len(next(v for k, v in grid.items() if k.endswith("C"))),
                "best_C": next(v for k, v in search.best_params_.items() if k.endswith("C")),
                "fit_seconds": fit_seconds,
            }
            out["results"].append(row)
            print(json.dumps(row), flush=True)
            name_out = f"views_evaluate{'_' + args.out if args.out else ''}.json"
            with open(os.path.join(C.OUT, name_out), "w") as f:
                json.dump(out, f, indent=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["extract", "decode", "evaluate"])
    parser.add_argument("--rrc", type=int, default=0, help="also N random resized crops")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument(
        "--subsample",
        nargs="*",
        default=[],
        metavar="NAME=N",
        help="a stratified subsample (seed 0) of a dataset, e.g. sign_digits=700",
    )
    parser.add_argument(
        "--cs",
        nargs=2,
        type=float,
        metavar=("LO", "HI"),
        help="C from 10**LO to 10**HI, one per decade (default: the recipe's 1e-6 ... 1e6)",
    )
    parser.add_argument("--only", nargs="*", help="evaluate only these settings (rrc10-mean, ...)")
    parser.add_argument("--out", default=None, help="the result file's suffix (default: none)")
    parser.add_argument("--cache-dir", default="/tmp/cnncodes-bench-views-cache")
    args = parser.parse_args()
    args.subsample = {k: int(v) for k, _, v in (item.partition("=") for item in args.subsample)}
    if not os.path.isdir(C.ASSETS):
        sys.exit(f"needs the real assets at {C.ASSETS}")
    {"extract": extract, "decode": decode, "evaluate": evaluate}[args.phase](args)


if __name__ == "__main__":
    main()
