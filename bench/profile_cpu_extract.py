"""Where CPU extraction time goes: a cProfile split of one ``extract_codes`` call and a
torch.profiler summary of the network's operators, for ResNet-18 and MobileNetV2.

Usage::

    .venv/bin/python bench/profile_cpu_extract.py            # 200 JPEGs of 500x375
    .venv/bin/python bench/profile_cpu_extract.py --n 64
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402
import torch  # noqa: E402
from cnncodes.extract import CPU_FORWARD_BATCH, extract_codes  # noqa: E402
from cnncodes.models import build_extractor, build_model, resolve_layers, resolve_spec  # noqa: E402

from cnncodes.extraction.fold import _fold_batchnorm  # noqa: E402
from cnncodes.images import load as _images  # noqa: E402

# Functions whose cumulative time makes up the split (file fragment, function name).
PARTS = {
    "network forward": ("fx/graph_module.py", "__call__"),
    "waiting for the decoding thread": ("queue.py", "get"),
    "hash files": ("cnncodes/images.py", "file_digest"),
    "build model (init weights, trace, fold BN)": ("cnncodes/models.py", "build_model"),
    "build extractor (FX trace)": ("cnncodes/layers.py", "build_extractor"),
    "pooling": ("cnncodes/pooling.py", "pool"),
}


def split(stats):
    out = {}
    for label, (fragment, name) in PARTS.items():
        total = 0.0
        for (filename, _line, func), row in stats.stats.items():
            if fragment in filename and func == name:
                total = max(total, row[3])  # cumulative time of the outermost entry
        out[label] = total
    return out


def decode_seconds(paths, spec):
    from cnncodes.extraction.decode import _Decode

    work = _Decode([(None, p) for p in paths], spec.preprocessing)
    with C.Meter() as meter:
        for i in range(len(work)):
            work[i]
    return meter.seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    args = ap.parse_args(argv)
    C.print_machine()
    paths = C.make_jpegs(args.n)
    for model in args.models.split(","):
        spec = resolve_spec(model, "none")
        extract_codes(paths[:8], spec, "penultimate", cache_dir=None, progress=False)  # warm-up
        _images._DIGESTS.clear()
        prof = cProfile.Profile()
        with C.Meter() as meter:
            prof.enable()
            extract_codes(paths, spec, "penultimate", cache_dir=None, progress=False)
            prof.disable()
        stats = pstats.Stats(prof)
        print(
            f"\n## {model}: {args.n} images in {meter.seconds:.2f} s "
            f"({args.n / meter.seconds:.1f} img/s under cProfile)"
        )
        for label, seconds in split(stats).items():
            print(f"  {label}: {seconds:.2f} s ({100 * seconds / meter.seconds:.0f}%)")
        # cProfile sees only this thread; decoding runs in a background thread, so time it alone.
        decode = decode_seconds(paths, spec)
        print(
            f"  decode + resize + crop, timed alone on 1 thread: {decode:.2f} s "
            f"({1000 * decode / len(paths):.2f} ms/image; overlaps the network)"
        )

        layers = resolve_layers(spec, "penultimate")
        extractor = build_extractor(build_model(spec), layers)
        _fold_batchnorm(extractor)
        extractor = extractor.to(memory_format=torch.channels_last)
        x = torch.randn(CPU_FORWARD_BATCH, 3, 224, 224).contiguous(
            memory_format=torch.channels_last
        )
        with torch.inference_mode():
            extractor(x)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as p:
                for _ in range(3):
                    extractor(x)
        print(
            f"torch.profiler, 3 forward passes of {CPU_FORWARD_BATCH} images (folded, channels_last):"
        )
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
