"""Post-processing of CNN codes in the recipes: none, L2, PCA-whitening, both (two orders).

Real MobileNetV2 ImageNet codes (``../shared/assets``, mean = std = 0.5 as in the earlier
recipe tables) of the real hymenoptera photos (train and val pooled, 398 images) and
sign-language digits (2,062), each split 70/30 stratified (seed 0). For every recipe
(``linear_probe``, ``linear_svm``, ``sgd``, ``layer_sweep_svm``) and every post-processing
variant, in one run: the recipe's own grid (its ``cnncodes`` step replaced by the cached code
matrix, so that only the post-processing and the classifier differ) searched by 5-fold
stratified CV on the training part, then the held-out 30% scored with the refitted best; the
best CV score, the test accuracy and the search's wall time and CPU time.

Variants (each inserted before the recipe's scaler or classifier; ``linear_svm`` keeps its
signed-power sweep in front):

- ``none``: no L2 normalisation, no PCA;
- ``l2``: ``Normalizer(norm="l2")``;
- ``pca``: ``PCA(whiten=True, n_components=F)``, F the fraction of variance kept;
- ``l2+pca`` and ``pca+l2``: both, in each order;
- ``l2?``: L2 normalisation on and off in the grid, the search choosing.

The codes are extracted once per dataset into a private cache (``--cache-dir``, default under
/tmp) and kept as ``.npy`` beside it, so a second run only fits.

Usage::

    .venv/bin/python bench/bench_postprocess.py                  # everything
    .venv/bin/python bench/bench_postprocess.py --extract-only   # fill the cache
    .venv/bin/python bench/bench_postprocess.py --recipes linear_probe --datasets hymenoptera
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402
import numpy as np  # noqa: E402

WEIGHTS = C.MOBILENET_WEIGHTS
# Named as in earlier results (bench/RESULTS.md section 12).
DATASETS = {
    "hymenoptera": C.REAL_DATASETS["hymenoptera"],
    "sign_language_digits": C.REAL_DATASETS["sign_digits"],
}
#: The layer_sweep_svm recipe's default MobileNetV2 layers (early to top) and poolings.
SWEEP_LAYERS = ["features.4.conv.0", "features.7.conv.0", "features.14.conv.0", "features.18"]
POOLINGS = ("avg", "max")


def images(name):
    """Paths and labels of a dataset (class folders; several roots are pooled)."""
    from cnncodes.datasets import load_dataset

    paths, labels = [], []
    for root in DATASETS[name]:
        data = load_dataset(root)
        paths += [os.fspath(p) for p in data.paths]
        labels += list(data.labels)
    return np.asarray(paths), np.asarray(labels)


def codes(name, cache_dir):
    """``{(layer, pooling): codes}`` of every image of ``name`` (rows in :func:`images` order)."""
    from cnncodes.extract import extract_codes
    from cnncodes.models import resolve_spec

    paths, labels = images(name)
    spec = resolve_spec("mobilenet_v2", WEIGHTS, mean=0.5, std=0.5)
    out = {}
    for pooling in POOLINGS:
        stored = {
            layer: os.path.join(cache_dir, f"{name}-{layer}-{pooling}.npy")
            for layer in SWEEP_LAYERS
        }
        if not all(os.path.isfile(p) for p in stored.values()):
            started = time.perf_counter()
            result = extract_codes(list(paths), spec, SWEEP_LAYERS, pooling, cache_dir=cache_dir)
            print(
                f"{name} {pooling}: {result.computed} images through the network, "
                f"{result.cached} cached, {time.perf_counter() - started:.0f} s",
                flush=True,
            )
            for layer, path in stored.items():
                np.save(path, result.codes[layer])
        for layer, path in stored.items():
            out[layer, pooling] = np.load(path)
    return out, labels


def post_steps(variant, fraction):
    """The (name, transformer) steps of a variant: ``none``, ``l2``, ``pca``, ``l2+pca``, ..."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import Normalizer

    make = {
        "l2": lambda: ("l2", Normalizer(norm="l2")),
        "pca": lambda: ("whiten", PCA(n_components=fraction, whiten=True, random_state=0)),
    }
    return [] if variant == "none" else [make[part]() for part in variant.split("+")]


def recipe_pipeline(recipe, variant, fraction, sweep=None):
    """The recipe's pipeline on code matrices with ``variant``'s post-processing, and its grid.

    The recipe's own L2 and whitening steps (and their grid keys) are replaced by the variant's,
    inserted after the ``cnncodes`` (now ``"passthrough"``) and ``power`` steps.
    """
    from sklearn.pipeline import Pipeline

    import pipelines

    options = sweep if recipe == "layer_sweep_svm" and sweep else {}
    pipe, grid = pipelines.get(recipe).build(model="mobilenet_v2", weights="none", **options)
    ours = ("l2", "whiten")
    steps = [(n, s) for n, s in pipe.steps if n not in ours]
    steps[0] = ("cnncodes", "passthrough")
    at = 2 if steps[1][0] == "power" else 1
    grids = [grid] if isinstance(grid, dict) else grid
    grids = [{k: v for k, v in g.items() if k.split("__")[0] not in ours} for g in grids]
    if variant == "l2?":  # L2 normalisation on and off, chosen by the search
        from sklearn.preprocessing import Normalizer

        steps[at:at] = [("l2", "passthrough")]
        grids = [{"l2": ["passthrough", Normalizer(norm="l2")], **g} for g in grids]
    else:
        steps[at:at] = post_steps(variant, fraction)
    return Pipeline(steps), grids


def run_recipe(recipe, variant, fraction, features, y, train, test, sweep=None):
    """Best CV score, test accuracy, best parameters and search seconds of one recipe/variant.

    ``features`` maps (layer, pooling) to code matrices; the recipe's grid over
    ``cnncodes__layer`` / ``cnncodes__pooling`` becomes one search per code matrix, the best
    mean CV score choosing among them (the same folds for every search).
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    pipe, grids = recipe_pipeline(recipe, variant, fraction, sweep)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    by_codes = {}
    for g in grids:
        layers = g.pop("cnncodes__layer", ["features.18"])
        poolings = g.pop("cnncodes__pooling", ["avg"])
        for layer in layers:
            for pooling in poolings:
                by_codes.setdefault((layer, pooling), []).append(g)
    best = None
    warned = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    for key, sub in by_codes.items():
        X = features[key]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            search = GridSearchCV(pipe, sub, cv=cv, error_score="raise").fit(X[train], y[train])
        warned += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        if best is None or search.best_score_ > best[1].best_score_:
            best = (key, search)
    seconds = time.perf_counter() - started
    # This process's CPU time: other jobs on a shared machine stretch wall time far more.
    cpu_seconds = time.process_time() - cpu_started
    key, search = best
    params = dict(search.best_params_)
    if len(by_codes) > 1:
        params = {"layer": key[0], "pooling": key[1], **params}
    return {
        "recipe": recipe,
        "variant": variant,
        "fraction": fraction if "pca" in variant else None,
        "cv": round(float(search.best_score_), 4),
        "test": round(float(search.score(features[key][test], y[test])), 4),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "best_params": {
            k: (v if isinstance(v, (int, float, str)) else repr(v)) for k, v in params.items()
        },
        "convergence_warnings": warned,
        "n_components": _components(search.best_estimator_),
    }


def _components(pipe):
    pca = dict(pipe.steps).get("whiten")
    return None if pca is None or pca == "passthrough" else int(pca.n_components_)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument(
        "--recipes",
        nargs="+",
        default=["linear_probe", "linear_svm", "sgd", "layer_sweep_svm"],
    )
    ap.add_argument("--variants", nargs="+", default=["none", "l2", "pca", "l2+pca", "pca+l2"])
    ap.add_argument(
        "--fractions", nargs="+", type=float, default=[0.95], help="PCA variance kept (each)"
    )
    ap.add_argument(
        "--sweep-layers",
        nargs="+",
        choices=SWEEP_LAYERS,
        help="layer_sweep_svm: sweep only these layers (default: the recipe's four)",
    )
    ap.add_argument(
        "--sweep-poolings",
        nargs="+",
        choices=POOLINGS,
        help="layer_sweep_svm: sweep only these poolings (default: avg and max)",
    )
    ap.add_argument("--cache-dir", default="/tmp/cnncodes-bench-postprocess")
    ap.add_argument("--extract-only", action="store_true")
    ap.add_argument("--out", default="postprocess.json")
    ap.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="BLAS threads while fitting (default 1: on a loaded 2-core machine two threads "
        "made a PCA of 224 x 1280 codes 100x slower, 4 s against 0.04 s)",
    )
    args = ap.parse_args(argv)
    if not os.path.isfile(WEIGHTS):
        sys.exit(f"needs the real assets at {C.ASSETS}")
    from sklearn.model_selection import train_test_split
    from threadpoolctl import threadpool_limits

    os.makedirs(args.cache_dir, exist_ok=True)
    info = C.print_machine()
    sweep = {}
    if args.sweep_layers:
        sweep["layers"] = args.sweep_layers
    if args.sweep_poolings:
        sweep["poolings"] = args.sweep_poolings
    rows = []
    for name in args.datasets:
        features, y = codes(name, args.cache_dir)
        if args.extract_only:
            continue
        index = np.arange(len(y))
        train, test = train_test_split(index, test_size=0.3, stratify=y, random_state=0)
        print(f"\n{name}: {len(train)} training, {len(test)} test images", flush=True)
        for recipe in args.recipes:
            for variant in args.variants:
                for fraction in args.fractions if "pca" in variant else [None]:
                    with threadpool_limits(args.blas_threads):
                        row = run_recipe(recipe, variant, fraction, features, y, train, test, sweep)
                    row["dataset"] = name
                    rows.append(row)
                    label = variant if fraction is None else f"{variant} ({fraction:g})"
                    print(
                        f"| {recipe} | {label} | {row['cv']:.3f} | {row['test']:.3f} | "
                        f"{row['seconds']:.1f} | {row['cpu_seconds']:.1f} | {row['best_params']} | "
                        f"{row['n_components']} | {row['convergence_warnings']} |",
                        flush=True,
                    )
    if rows:
        C.save_json(
            args.out,
            {"machine": info, "blas_threads": args.blas_threads, "sweep": sweep, "rows": rows},
        )


if __name__ == "__main__":
    main()
