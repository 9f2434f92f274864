"""Cost of the architecture fingerprint of a user's own network (issue 12, item 2).

A ``package.module:callable`` model's ``arch_id`` covers what its ``forward()`` computes: the
torch.fx graph code, or, for a network FX cannot trace, the source of its own classes and module.
This measures that part against the modules-only fingerprint (``repr`` and parameter shapes, all
torchvision names use) and against the rest of what a first ``fit`` resolves (meta network,
layer names, layer shapes), for MobileNetV2 given as a user callable, traceable and not. Each is
computed once per process and model (memoised); the numbers are per computation.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time

import _common as C

USER_MODULE = """
import torch
import torchvision


def traced():
    return torchvision.models.mobilenet_v2()


class Branching(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torchvision.models.mobilenet_v2()

    def forward(self, x):
        if x.abs().amax() > 1e6:  # a branch on tensor values: FX cannot trace it
            x = x / 2
        return self.net(x)


def untraceable():
    return Branching()
"""


def _ms(fn, reps):
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main(argv=None):
    from cnncodes import architectures, layers, models

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default="fingerprint.json")
    args = ap.parse_args(argv)
    info = C.print_machine()
    os.makedirs(C.OUT, exist_ok=True)
    with open(os.path.join(C.OUT, "bench_user_mobilenet.py"), "w") as f:
        f.write(USER_MODULE)
    sys.path.insert(0, C.OUT)
    importlib.invalidate_caches()
    rows = {}
    for name in ("traced", "untraceable"):
        model = f"bench_user_mobilenet:{name}"
        net = architectures._meta_model(model, None)

        def first_fit_resolution(model=model):
            architectures._meta_model_memo.cache_clear()
            architectures._arch_id_memo.cache_clear()
            layers._resolve_layers_memo.cache_clear()
            layers._layer_shapes_memo.cache_clear()
            spec = models.resolve_spec(model, "none")
            layers.layer_shapes(spec, layers.resolve_layers(spec, ["penultimate"]))

        rows[name] = {
            "modules_ms": _ms(lambda net=net: architectures._arch_fingerprint(net), args.reps),
            "code_ms": _ms(
                lambda net=net, m=model: architectures._code_fingerprint(net, m), args.reps
            ),
            "first_fit_resolution_ms": _ms(first_fit_resolution, args.reps),
        }
        r = rows[name]
        r["code_vs_resolution"] = r["code_ms"] / r["first_fit_resolution_ms"]
    print(
        f"| MobileNetV2 as a user callable | modules fp (ms) | code fp (ms) | whole first "
        f"resolution (ms) | code fp / resolution | (median of {args.reps})"
    )
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['modules_ms']:.1f} | {r['code_ms']:.1f} | "
            f"{r['first_fit_resolution_ms']:.0f} | {r['code_vs_resolution']:.2f} |"
        )
    C.save_json(args.out, {"machine": info, "reps": args.reps, "results": rows})


if __name__ == "__main__":
    main()
