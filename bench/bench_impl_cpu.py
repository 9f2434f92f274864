"""CPU: the two preprocessing implementations side by side, ``impl="pil"`` against ``impl="torch"``.

On the same JPEGs (500x375, about 55 KB) and the same untrained network (resnet18 by default),
default preprocessing (shorter side 256, centre crop 224, bilinear), no cache:

- agreement: mean and largest absolute difference of the preprocessed uint8 pixels, and the cosine
  similarity of the codes of every image;
- decode + resize + crop alone, one image at a time (:func:`cnncodes.extract.preprocess` on
  Pillow's decoding against :func:`cnncodes.extract.preprocess_bytes`);
- ``extract_codes`` end to end, runs of the two interleaved, medians reported.

The GPU measurement of ``impl="torch"`` is in ``bench_gpu.py``. Timed runs wait for a quiet
machine and are repeated when other processes were busy (see ``_common.Quiet``).

Usage::

    .venv/bin/python bench/bench_impl_cpu.py            # 200 JPEGs, resnet18, 3 repetitions
    .venv/bin/python bench/bench_impl_cpu.py --n 40 --reps 1 --max-foreign -1   # quick check
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

IMPLS = ("pil", "torch")


def pixels(path, spec):
    from cnncodes.extract import preprocess, preprocess_bytes

    from cnncodes.images import load_image_bytes, read_file

    data = read_file(path)
    if spec.preprocessing.impl == "pil":
        return preprocess(load_image_bytes(data, name=path), spec.preprocessing)
    return preprocess_bytes(data, spec.preprocessing, name=path)


def extract(paths, spec):
    from cnncodes.extract import extract_codes

    from cnncodes.images import load as _images

    _images._DIGESTS.clear()  # hash every file again, as a fresh process would
    result = extract_codes(paths, spec, "avgpool", cache_dir=None, device="cpu", progress=False)
    assert result.computed == len(paths)
    return result.codes["avgpool"]


def main(argv=None):
    from cnncodes.models import resolve_spec

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="impl_cpu.json")
    C.add_quiet_args(ap)
    args = ap.parse_args(argv)
    quiet = C.quiet_from_args(args)
    info = C.print_machine()
    paths = C.make_jpegs(args.n)
    print(f"{args.n} JPEGs of 500x375 (mean {C.folder_bytes(paths):.1f} KB), {args.model}")
    specs = {impl: resolve_spec(args.model, "none", impl=impl) for impl in IMPLS}

    diffs = torch.cat(
        [(pixels(p, specs["pil"]).int() - pixels(p, specs["torch"]).int()).flatten() for p in paths]
    ).abs()
    agreement = {"pixels_mean_abs": diffs.float().mean().item(), "pixels_max": int(diffs.max())}

    extract(paths[:8], specs["pil"])  # warm-up: page cache, first-call costs
    extract(paths[:8], specs["torch"])
    runs = {f"{impl}: preprocessing alone": [] for impl in IMPLS}
    runs.update({f"{impl}: extract_codes": [] for impl in IMPLS})
    codes = {}
    for rep in range(args.reps):
        for impl in IMPLS:
            meter, _ = quiet.run(impl, lambda s=specs[impl]: [pixels(p, s) for p in paths])
            runs[f"{impl}: preprocessing alone"].append(len(paths) / meter.seconds)
        for impl in IMPLS:
            meter, codes[impl] = quiet.run(impl, extract, paths, specs[impl])
            runs[f"{impl}: extract_codes"].append(len(paths) / meter.seconds)
        print(f"rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in runs.items()))
    a, b = codes["pil"], codes["torch"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    agreement.update(codes_cosine_min=float(cos.min()), codes_cosine_median=float(np.median(cos)))
    print()
    print(
        f"agreement: pixels mean |diff| {agreement['pixels_mean_abs']:.4f}, max "
        f"{agreement['pixels_max']}; codes cosine min {agreement['codes_cosine_min']:.7f}"
    )
    print(f"| {args.model}, {args.n} JPEGs, CPU | images/s (median of {args.reps}) | runs |")
    print("|---|---|---|")
    for k, v in runs.items():
        print(f"| {k} | {C.med(v):.1f} | {C.fmt_runs(v)} |")
    C.save_json(
        args.out,
        {
            "machine": info,
            "model": args.model,
            "n_images": args.n,
            "agreement": agreement,
            "runs": runs,
            "medians": {k: C.med(v) for k, v in runs.items()},
            "discarded_runs": quiet.discarded,
        },
    )


if __name__ == "__main__":
    main()
