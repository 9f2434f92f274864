"""Does `cnncodes rank` (LogME) order candidates as a trained linear probe does, and how much faster?

On real data (hymenoptera/train, and a stratified subsample of the sign-language digits), over
candidates from three networks: the real ImageNet MobileNetV2 (four layers x avg and max pooling),
the real CIFAR-10 ResNet-20 at 32 px (three stages and its 64-d top) and an untrained MobileNetV2
(two layers: the floor). For every candidate (network x layer x pooling):

- LogME, LEEP and NCE from :func:`cnncodes.workflows.rank` (the codes extracted and cached once);
- the 5-fold stratified cross-validated accuracy of a linear probe on the same cached codes
  (StandardScaler + LogisticRegression, the best of a small C grid).

Reports Kendall's tau between LogME and the probe's accuracy (goal >= 0.6 per dataset), the top-1
agreement, and the wall time of the scoring against the probe grid (goal >= 20x), both on codes
already cached; the extraction is timed separately (it is what both pay once).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import nullcontext

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

CS = (0.01, 0.1, 1.0, 10.0)


def candidates(assets):
    """The candidates: (dict for rank, short label)."""
    weights = os.path.join(assets, "weights")
    mnv2_layers = ["features.4.conv.0", "features.7.conv.0", "features.14.conv.0", "features.18"]
    return [
        {
            "model": "mobilenet_v2",
            "weights": os.path.join(weights, "mobilenet_v2_imagenet.pth"),
            "mean": 0.5,
            "std": 0.5,
            "layers": mnv2_layers,
            "poolings": ["avg", "max"],
            "name": "mnv2-imagenet",
        },
        {
            "model": "tests.resnet_cifar:resnet20",
            "weights": os.path.join(weights, "resnet20_cifar10.th"),
            "resize": 32,
            "crop": 32,
            "layers": ["layer1", "layer2", "layer3", "flatten"],
            "name": "resnet20-cifar",
        },
        {
            "model": "mobilenet_v2",
            "weights": "none",
            "layers": ["features.14.conv.0", "features.18"],
            "name": "mnv2-untrained",
        },
    ]


def subsample(labels, per_class, seed=0):
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        keep.extend(rng.permutation(idx)[:per_class].tolist())
    return np.sort(np.array(keep, dtype=int))


def probe(codes, y, seed=0):
    """Best mean 5-fold accuracy over CS, and its wall time."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    t0 = time.perf_counter()
    scores = []
    for c in CS:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        scores.append(cross_val_score(clf, codes, y, cv=cv).mean())
    return float(max(scores)), time.perf_counter() - t0


def _probe_all(table, cands, paths, y, cache_dir):
    """The probe's accuracy of each row (codes read from the cache) and the grid's seconds."""
    from cnncodes import extract_codes
    from cnncodes.workflows.rank import _spec

    by_name = {c["name"]: c for c in cands}
    accs, probe_seconds = [], 0.0
    for row in table.itertuples():
        spec = _spec(by_name[row.candidate], 0)
        codes = extract_codes(paths, spec, row.layer, row.pooling, cache_dir=cache_dir,
                              progress=False).codes[row.layer]  # fmt: skip
        acc, sec = probe(codes, y)
        accs.append(acc)
        probe_seconds += sec
    return accs, probe_seconds


def demo_candidates(demo):
    """The demo's candidates (``cnncodes demo``'s output folder): its small CNN pretrained on
    digits 0-4 (five layers x avg and max, and its 64-d top) and the same network untrained."""
    checkpoint = os.path.join(demo, "digits_net_source.pth")
    layers = ["features.3", "features.7", "features.9", "features.10", "features.11"]
    return [
        {
            "model": "cnncodes.demo_data:digits_net",
            "weights": checkpoint,
            "layers": layers,
            "poolings": ["avg", "max"],
            "name": "digits-pretrained",
        },
        {
            "model": "cnncodes.demo_data:digits_net",
            "weights": checkpoint,
            "layers": ["flatten"],
            "name": "digits-pretrained-top",
        },
        {
            "model": "cnncodes.demo_data:digits_net",
            "weights": "none",
            "layers": ["features.7", "flatten"],
            "name": "digits-untrained",
        },
    ]


def run_dataset(
    name, root, per_class, assets, cache_dir, blas_threads=None, probe_grid=True, cands=None
):
    from scipy.stats import kendalltau
    from threadpoolctl import threadpool_limits

    from cnncodes import load_dataset
    from cnncodes.workflows.rank import rank

    dataset = load_dataset(root)
    labels = np.asarray(dataset.labels)
    keep = subsample(labels, per_class) if per_class else np.arange(len(labels))
    paths = [dataset.paths[i] for i in keep]
    y = labels[keep]
    print(f"\n== {name}: {len(paths)} of {len(labels)} images, {len(set(y))} classes", flush=True)
    cands = cands or candidates(assets)
    t0 = time.perf_counter()
    first_table = rank(paths, y, cands, cache_dir=cache_dir, progress=False)
    first = time.perf_counter() - t0
    limits = threadpool_limits(blas_threads, user_api="blas") if blas_threads else nullcontext()
    with limits:
        t0 = time.perf_counter()  # again, every code from the cache: the ranking on cached codes
        table = rank(paths, y, cands, cache_dir=cache_dir, progress=False, timing_images=0)
        cached = time.perf_counter() - t0
        table["seconds_per_image"] = first_table["seconds_per_image"].to_numpy()
        table["estimated_seconds"] = table["seconds_per_image"] * len(labels)
        if probe_grid:
            accs, probe_seconds = _probe_all(table, cands, paths, y, cache_dir)
        else:  # --timing-only: the ranking and its timings, no probe
            accs, probe_seconds = [float("nan")] * len(table), float("nan")
    table["probe_acc"] = accs
    tau = kendalltau(table["logme"], table["probe_acc"]).statistic
    print(table[["rank", "candidate", "layer", "pooling", "width", "logme", "leep", "nce",
                 "probe_acc", "seconds_per_image"]].to_string(index=False))  # fmt: skip
    best_probe = table.loc[table["probe_acc"].fillna(-1.0).idxmax()]
    result = {
        "dataset": name,
        "n_images": len(paths),
        "n_total": len(labels),
        "n_candidates": len(table),
        "kendall_tau_logme_probe": float(tau),
        "top1_logme": f"{table.iloc[0].candidate} {table.iloc[0].layer} {table.iloc[0].pooling}",
        "top1_probe": f"{best_probe.candidate} {best_probe.layer} {best_probe.pooling}",
        "blas_threads": blas_threads,
        "load_average": os.getloadavg(),
        "rank_seconds_first_run": first,
        "extract_seconds_first_run": first_table.attrs["extract_seconds"],
        "rank_seconds_cached": cached,
        "score_seconds": table.attrs["score_seconds"],
        "probe_grid_seconds": probe_seconds,
        "speedup_scoring": probe_seconds / table.attrs["score_seconds"],
        "speedup_cached_rank": probe_seconds / cached,
        "rows": table.to_dict(orient="records"),
    }
    print(
        f"tau(LogME, probe) = {tau:.3f}; top-1 LogME: {result['top1_logme']}, top-1 probe: "
        f"{result['top1_probe']}; scoring {table.attrs['score_seconds']:.2f} s, cached rank "
        f"{cached:.1f} s, probe grid {probe_seconds:.1f} s -> {result['speedup_scoring']:.0f}x "
        f"(scoring), {result['speedup_cached_rank']:.1f}x (whole cached rank call)",
        flush=True,
    )
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--assets", default=C.ASSETS, help="the shared assets folder")
    ap.add_argument("--digits-per-class", type=int, default=40)
    ap.add_argument("--cache-dir", default=os.path.join(C.OUT, "rank-cache"))
    ap.add_argument(
        "--blas-threads",
        type=int,
        help="limit BLAS threads while scoring and probing (both alike; default: as is)",
    )
    ap.add_argument(
        "--timing-only", action="store_true", help="rank and time the extraction; no probe grid"
    )
    ap.add_argument(
        "--demo",
        metavar="DIR",
        help="rank on the demo instead: the output folder of `cnncodes demo` (its 871 target "
        "test images, digits 5-9)",
    )
    args = ap.parse_args(argv)
    if args.demo:
        C.print_machine()
        print(f"load average at start: {os.getloadavg()}", flush=True)
        root = os.path.join(args.demo, "data", "target_test")
        common = (args.assets, args.cache_dir, args.blas_threads, not args.timing_only)
        result = run_dataset("demo digits 5-9", root, None, *common, demo_candidates(args.demo))
        print(f"load average at end: {os.getloadavg()}")
        C.save_json("bench_rank_demo", {"machine": C.machine(), "results": [result]})
        return
    if not os.path.isdir(args.assets):
        sys.exit(f"needs the real assets at {args.assets} (--assets DIR)")
    C.print_machine()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    data = os.path.join(args.assets, "data")
    common = (args.assets, args.cache_dir, args.blas_threads, not args.timing_only)
    results = [
        run_dataset("hymenoptera/train", os.path.join(data, "hymenoptera", "train"), None, *common),
        run_dataset(
            "sign_language_digits",
            os.path.join(data, "sign_language_digits"),
            args.digits_per_class,
            *common,
        ),
    ]
    print(f"load average at end: {os.getloadavg()}")
    name = f"bench_rank_blas{args.blas_threads}" if args.blas_threads else "bench_rank"
    name += "_timing" if args.timing_only else ""
    C.save_json(
        name, {"machine": C.machine(), "blas_threads": args.blas_threads, "results": results}
    )


if __name__ == "__main__":
    main()
