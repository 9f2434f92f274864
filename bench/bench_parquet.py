"""Parquet codes files: one list column ``codes`` against one column per feature (issue 14, item 5).

Writes the same random float32 codes through :func:`cnncodes.export.write_codes` with
``parquet_layout="list"`` and ``"wide"``, interleaved, and reports per shape the median of
``--reps`` runs of writing, reading with :func:`~cnncodes.export.read_codes`, reading with
``pandas.read_parquet``, and the file sizes; the ratios (wide / list) are the result.

    .venv/bin/python bench/bench_parquet.py --reps 5    # --reps 1: quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import _common as C
import numpy as np
from cnncodes.datasets import ImageDataset
from cnncodes.export import read_codes, write_codes
from cnncodes.extract import ExtractionResult
from cnncodes.models import resolve_spec

# (images, features): ResNet-50 avgpool; layer3 (1,024 channels) with pyramid pooling (1+4+16).
SHAPES = ((1000, 2048), (200, 21504))


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def bench(n, d, reps, folder):
    import pandas as pd

    rng = np.random.default_rng(0)
    result = ExtractionResult(
        codes={"layer": rng.standard_normal((n, d)).astype(np.float32)}, kept=np.arange(n)
    )
    paths = [f"/data/class{i % 10}/img{i:06d}.jpg" for i in range(n)]
    dataset = ImageDataset(paths, [f"class{i % 10}" for i in range(n)], "/data", "folder")
    spec = resolve_spec("resnet18", "none")
    times = {
        (layout, what): []
        for layout in ("list", "wide")
        for what in ("write", "read_codes", "pandas")
    }
    sizes = {}
    for rep in range(reps + 1):  # the first round warms up (imports, allocator) and is dropped
        for layout in ("list", "wide"):
            path = os.path.join(folder, f"{layout}.parquet")
            options = {"parquet_layout": layout}
            write = _timed(write_codes, path, result, dataset, spec, "avg", **options)
            times[layout, "write"].append(write)
            times[layout, "read_codes"].append(_timed(read_codes, path))
            times[layout, "pandas"].append(_timed(pd.read_parquet, path))
            sizes[layout] = os.path.getsize(path)
            if rep == 0:
                for what in ("write", "read_codes", "pandas"):
                    times[layout, what].clear()
    med = {
        f"{layout} {what} s": round(statistics.median(v), 4) for (layout, what), v in times.items()
    }
    ratios = {
        f"wide/list {what}": round(
            statistics.median(times["wide", what]) / statistics.median(times["list", what]), 2
        )
        for what in ("write", "read_codes", "pandas")
    }
    ratios["wide/list size"] = round(sizes["wide"] / sizes["list"], 2)
    return {"images": n, "features": d, "raw MB": round(n * d * 4 / 1e6, 1),
            "list MB": round(sizes["list"] / 1e6, 1), "wide MB": round(sizes["wide"] / 1e6, 1),
            **med, **ratios}  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default="parquet.json")
    args = parser.parse_args()
    info = C.print_machine()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for n, d in SHAPES:
            rows.append(bench(n, d, args.reps, folder))
            print(json.dumps(rows[-1]), flush=True)
    C.save_json(args.out, {"machine": info, "reps": args.reps, "results": rows})


if __name__ == "__main__":
    main()
