"""Are CPU codes bit-identical across batch sizes? (issue 12, item 4; no timing).

Runs the extractor as ``extract_codes`` builds it (BatchNorm folded, channels_last, fp32, CPU) on
random inputs and compares each image's code from passes of 1, 2, 3, 5, 8 and 13 images (and at
every position of a pass of 8) with its code from one pass of all of them; then the same with a
lone image run as a pair of itself, as ``extract_codes`` does.

    .venv/bin/python bench/check_batch_determinism.py                 # three nets, small inputs
    .venv/bin/python bench/check_batch_determinism.py resnet18 224    # one net, one input size
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cnncodes.models import build_extractor, build_model, resolve_layers, resolve_spec  # noqa: E402
from cnncodes.pooling import pool  # noqa: E402

from cnncodes.extraction.fold import _fold_batchnorm  # noqa: E402

CASES = [("tests.tiny_nets:tiny_cnn", 32), ("resnet18", 64), ("mobilenet_v2", 96)]
SIZES = (1, 2, 3, 5, 8, 13)


def check(model, size, n=13, pad=False):
    spec = resolve_spec(model, "none", seed=0, resize=size, crop=size)
    layers = resolve_layers(spec, ["penultimate"])
    extractor = build_extractor(build_model(spec), layers)
    _fold_batchnorm(extractor)
    extractor = extractor.to(memory_format=torch.channels_last)
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))

    def run(part):
        lone = pad and len(part) == 1
        if lone:
            part = torch.cat([part, part])
        with torch.inference_mode():
            out = extractor(part.contiguous(memory_format=torch.channels_last))[layers[0]]
        code = pool(out, "avg").numpy()
        return code[:1] if lone else code

    whole = run(x)
    scale = float(np.abs(whole).max())
    for batch in SIZES:
        codes = np.concatenate([run(x[s : s + batch]) for s in range(0, n, batch)])
        lone = "yes" if n % batch == 1 or batch == 1 else "no"
        diff = float(np.abs(codes - whole).max()) / scale
        print(
            f"{model}@{size} pad={pad} passes of {batch:2d} (a pass of one: {lone:3s}): "
            f"identical={np.array_equal(codes, whole)} max rel diff={diff:.2g}"
        )
    same = all(
        np.array_equal(run(torch.cat([x[1 : 1 + p], x[:1], x[1 + p : 8]]))[p], whole[0])
        for p in range(8)
    )
    print(f"{model}@{size} pad={pad} any position in a pass of 8: identical={same}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?")
    parser.add_argument("size", nargs="?", type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    for model, size in [(args.model, args.size)] if args.model else CASES:
        for pad in (False, True):
            check(model, size, pad=pad)


if __name__ == "__main__":
    main()
