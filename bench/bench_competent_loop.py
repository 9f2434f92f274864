"""CPU extraction: cnncodes.extract_codes against a competent user's own loop (issue 21, item 6).

``bench_cpu_extract.py`` compares against a naive per-image loop (batch of one). This one compares
against what a competent user writes by hand: torchvision's ``create_feature_extractor(model,
return_nodes=[layer])``, a ``torch.utils.data.DataLoader`` (``num_workers`` 0 and 2, both reported,
the faster one is the baseline) decoding with Pillow and applying the weights-style transform
(Resize 256, CenterCrop 224, ToTensor, Normalize: the same resize and crop as cnncodes' spec), batch
32, fp32, ``torch.inference_mode()``, the model in eval mode, global average pooling of the layer.
cnncodes runs ``extract_codes`` with ``cache_dir=None``, fp32, batch 32 and its default workers.
Both sides use the same seeded, untrained network (``weights="none"``; weight values do not change
speed), built by ``cnncodes.models.build_model`` so their codes can be compared (cosine >= 0.999 on
every image, else the comparison is not fair). Runs are interleaved, medians reported.

For resnet18 it also measures the machine's limit: the network alone (up to layer4 + average
pooling) on pre-decoded tensors at batch 32, plain fp32 as the user runs it and the way cnncodes
runs it on the CPU (BatchNorm folded, channels_last).

Usage::

    .venv/bin/python bench/bench_competent_loop.py            # 200 JPEGs, 3 repetitions
    .venv/bin/python bench/bench_competent_loop.py --n 64 --reps 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from cnncodes.extract import CPU_FORWARD_BATCH, extract_codes  # noqa: E402
from cnncodes.models import build_extractor, build_model, resolve_layers, resolve_spec  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms as T  # noqa: E402
from torchvision.models.feature_extraction import create_feature_extractor  # noqa: E402

from cnncodes.extraction.fold import _fold_batchnorm  # noqa: E402
from cnncodes.images import load as _images_load  # noqa: E402

#: The layer each side pools (average over the spatial positions): mobilenet_v2's ``features``
#: (what its classifier pools, 1,280 channels) and resnet18's ``layer4`` (= its ``avgpool``).
LAYERS = {"mobilenet_v2": "features", "resnet18": "layer4"}
BATCH = 32


class Files(Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB"))


def user_transform(spec):
    pre = spec.preprocessing
    return T.Compose(
        [
            T.Resize(pre.resize[0] if len(pre.resize) == 1 else pre.resize),
            T.CenterCrop(pre.crop),
            T.ToTensor(),
            T.Normalize(pre.mean, pre.std),
        ]
    )


def user_loop(paths, model, workers):
    """The competent user's loop, model construction included (as the user would run it)."""
    spec = resolve_spec(model, "none")
    layer = LAYERS[model]
    net = create_feature_extractor(build_model(spec).eval(), return_nodes=[layer])
    loader = DataLoader(
        Files(paths, user_transform(spec)), batch_size=BATCH, shuffle=False, num_workers=workers
    )
    rows = []
    with torch.inference_mode():
        for batch in loader:
            rows.append(net(batch)[layer].mean(dim=(2, 3)).numpy())
    return np.concatenate(rows)


def cnncodes_loop(paths, model):
    _images_load._DIGESTS.clear()  # no help from hashes memoised by an earlier repetition
    spec = resolve_spec(model, "none")
    result = extract_codes(
        paths,
        spec,
        LAYERS[model],
        "avg",
        cache_dir=None,
        batch_size=BATCH,
        precision="fp32",
        progress=False,
    )
    return result.concatenated()


def cosine_min(a, b):
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


def forward_limit(paths, model, reps):
    """Images/s of the network alone on pre-decoded tensors at batch 32 (medians of ``reps``)."""
    spec = resolve_spec(model, "none")
    layer = LAYERS[model]
    transform = user_transform(spec)
    n = min(len(paths), 4 * BATCH)
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[:n]])
    plain = create_feature_extractor(build_model(spec).eval(), return_nodes=[layer])
    tuned = build_extractor(build_model(spec), resolve_layers(spec, layer))
    _fold_batchnorm(tuned)
    tuned = tuned.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    chunk = min(BATCH, CPU_FORWARD_BATCH)
    out = {"plain_fp32_b32": [], f"folded_channels_last_b{chunk}": []}
    with torch.inference_mode():
        plain(x[:BATCH])
        tuned(xc[:chunk])
        for _ in range(reps):
            C.wait_quiet()
            t = time.perf_counter()
            for s in range(0, n, BATCH):
                plain(x[s : s + BATCH])[layer].mean(dim=(2, 3))
            out["plain_fp32_b32"].append(n / (time.perf_counter() - t))
            C.wait_quiet()
            t = time.perf_counter()
            for s in range(0, n, chunk):
                tuned(xc[s : s + chunk])
            out[f"folded_channels_last_b{chunk}"].append(n / (time.perf_counter() - t))
    return {"images": n, "runs": out, "median": {k: C.med(v) for k, v in out.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(LAYERS))
    parser.add_argument("--out", default="competent_loop.json")
    C.add_quiet_args(parser)
    args = parser.parse_args()
    quiet = C.quiet_from_args(args)

    C.print_machine()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    paths = C.make_jpegs(args.n)
    print(f"{len(paths)} JPEGs 500x375, {C.folder_bytes(paths):.0f} KB each", flush=True)
    report = {
        "machine": C.machine(),
        "loadavg_start": os.getloadavg(),
        "n": len(paths),
        "reps": args.reps,
        "batch": BATCH,
        "models": {},
    }
    sides = {
        "cnncodes": lambda m: cnncodes_loop(paths, m),
        "user_workers0": lambda m: user_loop(paths, m, 0),
        "user_workers2": lambda m: user_loop(paths, m, 2),
    }
    for model in args.models:
        print(f"\n== {model}, layer {LAYERS[model]} + avg", flush=True)
        times = {k: [] for k in sides}
        foreign = {k: [] for k in sides}
        codes = {}
        for k, fn in sides.items():  # warm-up (imports, first allocations), not timed
            codes[k] = fn(model)
        for rep in range(args.reps):
            for k, fn in sides.items():
                meter, codes[k] = quiet.run(f"{model} {k}", fn, model)
                times[k].append(meter.seconds)
                foreign[k].append(meter.foreign_cores)
                print(
                    f"  rep {rep + 1} {k:14s} {meter.seconds:6.2f} s "
                    f"{len(paths) / meter.seconds:6.1f} img/s (foreign {meter.foreign_cores:.2f})",
                    flush=True,
                )
        ips = {k: len(paths) / C.med(v) for k, v in times.items()}
        baseline = max(("user_workers0", "user_workers2"), key=lambda k: ips[k])
        cos = {k: cosine_min(codes["cnncodes"], codes[k]) for k in sides if k != "cnncodes"}
        entry = {
            "layer": LAYERS[model],
            "seconds": times,
            "foreign_cores": foreign,
            "images_per_s": ips,
            "baseline": baseline,
            "ratio": ips["cnncodes"] / ips[baseline],
            "ratio_vs_workers0": ips["cnncodes"] / ips["user_workers0"],
            "ratio_vs_workers2": ips["cnncodes"] / ips["user_workers2"],
            "cosine_min": cos,
            "dims": codes["cnncodes"].shape[1],
        }
        for k in sides:
            print(f"  {k:14s} median {ips[k]:6.1f} img/s  runs {C.fmt_runs(times[k], ' s')}")
        print(f"  ratio cnncodes / {baseline}: {entry['ratio']:.2f}x; cosine min {cos}", flush=True)
        if model == "resnet18":
            entry["forward_limit"] = forward_limit(paths, model, args.reps)
            print(f"  forward alone (img/s): {entry['forward_limit']['median']}", flush=True)
        report["models"][model] = entry
    report["loadavg_end"] = os.getloadavg()
    report["discarded_runs"] = quiet.discarded
    print(f"\nload average at end: {os.getloadavg()}")
    C.save_json(args.out, report)


if __name__ == "__main__":
    main()
