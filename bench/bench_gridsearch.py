"""GridSearchCV with CNNCodes inside a Pipeline (warm cache) against the same search on arrays.

Both searches run the same classifier grid (StandardScaler + LogisticRegression, C over
``10**-4 .. 10**2``) with the same stratified 5-fold split:

- pipeline: ``GridSearchCV(Pipeline([("codes", CNNCodes(...)), ("scale", ...), ("clf", ...)]))``
  fitted on image *paths*; the cache was filled once before timing, so every fold reads codes;
- arrays: ``GridSearchCV(Pipeline([("scale", ...), ("clf", ...)]))`` fitted on the precomputed
  code matrix.

Runs are interleaved (pipeline, arrays, pipeline, ...); the medians' ratio is reported, and both
searches are checked to score every candidate identically. Images: the real
``hymenoptera/train`` set from ``../shared/assets`` when present, else a generated 2-class set.

Usage::

    .venv/bin/python bench/bench_gridsearch.py           # 3 repetitions
    .venv/bin/python bench/bench_gridsearch.py --quick   # fewer C values, 3 repetitions
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, StratifiedKFold  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402


def dataset(quick):
    root = os.path.join(C.ASSETS, "data", "hymenoptera", "train")
    if os.path.isdir(root):
        paths, labels = [], []
        for label, cls in enumerate(sorted(os.listdir(root))):
            folder = os.path.join(root, cls)
            for name in sorted(os.listdir(folder)):
                paths.append(os.path.join(folder, name))
                labels.append(label)
        return "hymenoptera/train (real photos)", paths, np.array(labels)
    paths, labels = C.two_class_images(n_per_class=60 if quick else 120, size=128)
    return "generated 2-class images", paths, labels


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n-jobs", type=int, default=1, help="GridSearchCV n_jobs (both searches)")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--out", default="gridsearch.json")
    C.add_quiet_args(ap)
    args = ap.parse_args(argv)
    quiet = C.quiet_from_args(args)
    try:
        from cnncodes.transformers import CNNCodes
    except ImportError as exc:
        sys.exit(f"cnncodes.transformers.CNNCodes is not available yet ({exc})")

    info = C.print_machine()
    name, paths, y = dataset(args.quick)
    cache = os.path.join(C.OUT, "gridsearch_cache")
    codes_step = CNNCodes(model=args.model, weights="none", cache_dir=cache, progress=False)
    start = time.perf_counter()
    X_codes = codes_step.fit_transform(paths)  # fills the cache (or reads it if already warm)
    print(
        f"{name}: {len(paths)} images, codes {X_codes.shape}; cache filled/read in "
        f"{time.perf_counter() - start:.1f} s",
        flush=True,
    )
    grid_c = np.logspace(-4, 2, 4 if args.quick else 7)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)

    def classifier():
        return [("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=2000))]

    def pipeline_search():
        pipe = Pipeline([("codes", CNNCodes(model=args.model, weights="none", cache_dir=cache))])
        pipe.steps.extend(classifier())
        search = GridSearchCV(pipe, {"clf__C": grid_c}, cv=cv, n_jobs=args.n_jobs)
        return search.fit(paths, y)

    def array_search():
        search = GridSearchCV(Pipeline(classifier()), {"clf__C": grid_c}, cv=cv, n_jobs=args.n_jobs)
        return search.fit(X_codes, y)

    pipeline_search()  # warm-up: imports, memoised resolution
    array_search()
    times = {"pipeline": [], "arrays": []}
    foreign = {"pipeline": [], "arrays": []}
    cpu = {"pipeline": [], "arrays": []}
    for rep in range(args.reps):
        for label, fn in (("pipeline", pipeline_search), ("arrays", array_search)):
            m, result = quiet.run(label, fn)
            times[label].append(m.seconds)
            foreign[label].append(m.foreign_cores)
            cpu[label].append(m.cpu_seconds)
            if label == "pipeline":
                p_scores = result.cv_results_["mean_test_score"]
            else:
                a_scores = result.cv_results_["mean_test_score"]
        same = bool(np.allclose(p_scores, a_scores, rtol=0, atol=1e-12))
        print(
            f"rep {rep + 1}: pipeline {times['pipeline'][-1]:.2f} s, arrays "
            f"{times['arrays'][-1]:.2f} s ({times['pipeline'][-1] / times['arrays'][-1]:.2f}x); "
            f"identical scores: {same}; other processes' load {foreign['pipeline'][-1]:.2f} / "
            f"{foreign['arrays'][-1]:.2f} cores",
            flush=True,
        )
        assert same, (p_scores, a_scores)
    fits = len(grid_c) * cv.get_n_splits() + 1
    med_p, med_a = C.med(times["pipeline"]), C.med(times["arrays"])
    ratio = med_p / med_a
    print()
    print(f"| search ({len(grid_c)} C x 5 folds + refit = {fits} fits) | median s | runs |")
    print("|---|---|---|")
    print(f"| CNNCodes in Pipeline, warm cache | {med_p:.2f} | {C.fmt_runs(times['pipeline'])} |")
    print(f"| precomputed arrays | {med_a:.2f} | {C.fmt_runs(times['arrays'])} |")
    print(
        f"ratio {ratio:.2f}x (goal <= 1.3x); overhead per fit {(med_p - med_a) / fits * 1000:.0f} ms"
    )
    # CPU time, all threads of this process (BLAS uses both cores): a second view when other
    # processes load the machine, which stretches wall time far more than CPU time.
    cpu_p, cpu_a = C.med(cpu["pipeline"]), C.med(cpu["arrays"])
    print(
        f"CPU time (this process), medians: pipeline {cpu_p:.2f} s, arrays {cpu_a:.2f} s, "
        f"ratio {cpu_p / cpu_a:.2f}x (per run: "
        + ", ".join(f"{p / a:.2f}" for p, a in zip(cpu["pipeline"], cpu["arrays"]))
        + ")"
    )
    C.save_json(
        args.out,
        {
            "machine": info,
            "dataset": name,
            "n_images": len(paths),
            "grid_C": grid_c.tolist(),
            "fits": fits,
            "times": times,
            "foreign_cores": foreign,
            "discarded_runs": quiet.discarded,
            "ratio_per_rep": [p / a for p, a in zip(times["pipeline"], times["arrays"])],
            "median_pipeline_s": med_p,
            "median_arrays_s": med_a,
            "ratio": ratio,
            "cpu_seconds": cpu,
            "median_pipeline_cpu_s": cpu_p,
            "median_arrays_cpu_s": cpu_a,
            "cpu_ratio": cpu_p / cpu_a,
        },
    )


if __name__ == "__main__":
    main()
