"""The Ray engine on one machine against the local engine, and the parts a scale-out projection needs.

Same generated JPEGs (500x375), same untrained seeded ResNet-18, penultimate codes, fp32, each run
into a fresh cache folder (the Ray engine hands codes over through it; the local engine writes
the same shards). Runs are interleaved (local, ray, local, ...) in one process, medians reported
with their ratio. Ray is started once before the runs (``ray.init``, reported separately); each
Ray run includes its actors' start (they import torch and build the network) and its hashing.
The codes of both engines are compared (bit-identical on the CPU).

Measured parts for the projection: decode rate of one CPU (``_decode_block``, Pillow policy),
forward rate of one actor thread (:class:`~cnncodes.extraction.loop.Forward` on decoded pixels,
one torch thread as a Ray CPU actor has), and the cache's commit rate for 2,048-wide codes
(ResNet-50 penultimate) in shards of 256 rows.

Usage::

    .venv/bin/python bench/bench_ray.py              # 1,000 JPEGs, 3 repetitions
    .venv/bin/python bench/bench_ray.py --quick      # 200 JPEGs, 1 repetition
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402
import numpy as np  # noqa: E402

MODEL = "resnet18"


def _fresh(root, name):
    path = os.path.join(root, name)
    shutil.rmtree(path, ignore_errors=True)
    return path


def decode_rate(paths, spec):
    """Images/s of one CPU decoding as a Ray decode task does."""
    from cnncodes.extraction.ray_engine import _decode_block

    batch = {
        "digest": np.array([f"{i:064x}" for i in range(len(paths))], dtype=object),
        "path": np.array(paths, dtype=object),
    }
    t0 = time.perf_counter()
    out = _decode_block(batch, spec.preprocessing)
    seconds = time.perf_counter() - t0
    assert not any(out["reason"])
    return len(paths) / seconds, out["pixels"]


def forward_rate(pixels, spec, threads=1):
    """Images/s of the forward step alone with ``threads`` torch threads (a CPU actor has 1)."""
    import torch

    from cnncodes.extraction.loop import Forward

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        forward = Forward(spec, ["avgpool"], "avg", torch.device("cpu"), "fp32", 32)
        forward(Forward.stack(list(pixels[:8])))  # warm-up
        t0 = time.perf_counter()
        for start in range(0, len(pixels), 32):
            forward(Forward.stack(list(pixels[start : start + 32])))
        return len(pixels) / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(saved)


def write_rate(root, width=2048, rows=256, shards=20):
    """Rows/s and MB/s of committing shards of ``rows`` x ``width`` float32 codes (fsync'd)."""
    from cnncodes.cache import CodeStore

    store = CodeStore(root, {"bench": "write", "width": width})
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((rows, width)).astype(np.float32)
    keys = [[f"{s:032x}{r:032x}" for r in range(rows)] for s in range(shards)]
    t0 = time.perf_counter()
    for k in keys:
        store.write(k, codes)
    seconds = time.perf_counter() - t0
    return rows * shards / seconds, rows * shards * width * 4 / seconds / 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 JPEGs, 1 repetition")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    n, reps = (200, 1) if args.quick else (args.images, args.reps)
    info = C.print_machine()
    paths = C.make_jpegs(n)
    print(f"{len(paths)} JPEGs of 500x375", flush=True)

    import ray
    from cnncodes.extract import extract_codes
    from cnncodes.models import resolve_spec

    spec = resolve_spec(MODEL, "none", seed=0)
    layer = "penultimate"
    work = tempfile.mkdtemp(prefix="bench-ray-", dir=C.OUT if os.path.isdir(C.OUT) else None)
    results = {"images": len(paths), "model": MODEL, "machine": info, "local": [], "ray": []}

    t0 = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="WARNING")
    results["ray_init_s"] = time.perf_counter() - t0
    results["ray_cpus"] = ray.cluster_resources().get("CPU")
    print(f"ray.init: {results['ray_init_s']:.2f} s, {results['ray_cpus']} CPUs", flush=True)

    codes = {}
    for rep in range(reps):
        for engine in ("local", "ray"):
            cache = _fresh(work, f"{engine}-{rep}")
            with C.Meter() as meter:
                result = extract_codes(paths, spec, layer, cache_dir=cache, engine=engine)
            assert result.computed == len(paths), result.computed
            codes[engine] = result.concatenated()
            results[engine].append({"seconds": meter.seconds, "foreign": meter.foreign_cores})
            print(
                f"rep {rep} {engine}: {meter.seconds:.2f} s "
                f"({len(paths) / meter.seconds:.1f} img/s, foreign load "
                f"{meter.foreign_cores:.2f} cores)",
                flush=True,
            )
    ray.shutdown()
    results["identical"] = bool(np.array_equal(codes["local"], codes["ray"]))
    local = C.med([r["seconds"] for r in results["local"]])
    on_ray = C.med([r["seconds"] for r in results["ray"]])
    results["median_s"] = {"local": local, "ray": on_ray}
    results["ratio"] = on_ray / local
    print(
        f"median: local {local:.2f} s, ray {on_ray:.2f} s: ratio {results['ratio']:.2f}x; "
        f"codes identical: {results['identical']}",
        flush=True,
    )

    # The parts.
    sample = paths[:128]
    results["decode_img_s_per_cpu"], pixels = decode_rate(sample, spec)
    results["forward_img_s_1_thread"] = forward_rate(pixels, spec, threads=1)
    rows_s, mb_s = write_rate(_fresh(work, "write"))
    results["write_rows_s_2048"], results["write_mb_s"] = rows_s, mb_s
    print(
        f"decode {results['decode_img_s_per_cpu']:.1f} img/s per CPU; forward (1 thread) "
        f"{results['forward_img_s_1_thread']:.1f} img/s; cache commit {rows_s:,.0f} rows/s of "
        f"2,048 floats ({mb_s:.0f} MB/s)",
        flush=True,
    )
    shutil.rmtree(work, ignore_errors=True)
    out = os.path.join(C.OUT, "bench_ray.json")
    os.makedirs(C.OUT, exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1, default=str)
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
