"""CPU extraction throughput: cnncodes.extract_codes against a naive per-image loop.

The naive loop is how img2vec-style tools work: open each file with Pillow, apply the weights-style
torchvision transform (Resize 256, CenterCrop 224, ToTensor, Normalize), forward a batch of one
through the whole model with a forward hook on the code layer. cnncodes runs on the same files with
the same seeded, untrained model (``weights="none"``: weight values do not change speed), no cache
(``cache_dir=None``), so both sides measure compute. Runs are interleaved (naive, cnncodes, naive,
...) and medians of the repetitions are reported with their ratio.

bf16 counts only if its codes agree with fp32 (cosine >= 0.999 on every image) and downstream
accuracy is unchanged (cross-validated logistic regression on a small 2-class image set); it is
measured on a subset first, and on all images only where it is faster than fp32.

Usage::

    .venv/bin/python bench/bench_cpu_extract.py            # 500 JPEGs, 3 repetitions
    .venv/bin/python bench/bench_cpu_extract.py --quick    # 100 JPEGs, 3 repetitions
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
import torchvision  # noqa: E402
from cnncodes.extract import CPU_FORWARD_BATCH, extract_codes  # noqa: E402
from cnncodes.models import build_extractor, build_model, resolve_layers, resolve_spec  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from cnncodes.extraction.fold import _fold_batchnorm  # noqa: E402
from cnncodes.images import load as _images  # noqa: E402

# The module whose output the naive loop hooks, matching cnncodes' "penultimate" layer.
NAIVE_HOOK = {"resnet18": "avgpool", "mobilenet_v2": "classifier.0", "resnet50": "avgpool"}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def naive_codes(paths, model):
    """img2vec-style: per image, Pillow open, torchvision transform, forward a batch of one."""
    torch.manual_seed(0)
    net = torchvision.models.get_model(model, weights=None).eval()
    grabbed = {}

    def hook(_module, _inputs, output):
        grabbed["x"] = output

    dict(net.named_modules())[NAIVE_HOOK[model]].register_forward_hook(hook)
    transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])
    rows = []
    with torch.no_grad():
        for path in paths:
            image = Image.open(path).convert("RGB")
            net(transform(image).unsqueeze(0))
            rows.append(grabbed["x"].flatten(1)[0].numpy().copy())
    return np.stack(rows)


def cnncodes_codes(paths, model, precision, **kwargs):
    _images._DIGESTS.clear()  # no help from hashes memoised by an earlier repetition
    spec = resolve_spec(model, "none")
    result = extract_codes(
        paths,
        spec,
        "penultimate",
        "avg",
        cache_dir=None,
        precision=precision,
        progress=False,
        **kwargs,
    )
    return result.concatenated()


def cosine_min(a, b):
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


FOREIGN = []  # other processes' CPU use during each timed run, in cores (noise indicator)
QUIET = C.Quiet()  # replaced in main() by the command-line settings


def timed(fn, *args, **kwargs):
    label = f"{fn.__name__} {args[1] if len(args) > 1 else ''} {len(args[0])} images"
    meter, out = QUIET.run(label, fn, *args, **kwargs)
    FOREIGN.append(meter.foreign_cores)
    return meter.seconds, out


def matmul_peak(dtype, size=2048, reps=5):
    """GFLOP/s of one large matrix product (all threads): what this CPU's cores can do at best."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def network_ceiling(model, batch_size, reps=3):
    """Images/s of the network alone on random input, the naive way and the cnncodes way."""
    spec = resolve_spec(model, "none")
    layers = resolve_layers(spec, "penultimate")
    naive_net = build_model(spec)
    tuned = build_extractor(build_model(spec), layers)
    _fold_batchnorm(tuned)
    tuned = tuned.to(memory_format=torch.channels_last)
    chunk = min(batch_size, CPU_FORWARD_BATCH)  # what extract_codes does on the CPU
    x1 = torch.randn(1, 3, 224, 224)
    xb = torch.randn(batch_size, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    key = f"folded_channels_last_b{chunk}"
    out = {"naive_b1": [], key: [], key + "_bf16": []}
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    with torch.inference_mode():
        naive_net(x1)
        tuned(xb[:chunk])
        with bf16:
            tuned(xb[:chunk])
        for _ in range(reps):
            t = time.perf_counter()
            for _ in range(batch_size):
                naive_net(x1)
            out["naive_b1"].append(batch_size / (time.perf_counter() - t))
            t = time.perf_counter()
            for start in range(0, batch_size, chunk):
                tuned(xb[start : start + chunk])
            out[key].append(batch_size / (time.perf_counter() - t))
            t = time.perf_counter()
            for start in range(0, batch_size, chunk):
                with bf16:
                    tuned(xb[start : start + chunk])
            out[key + "_bf16"].append(batch_size / (time.perf_counter() - t))
    return {k: C.med(v) for k, v in out.items()}


def flops_per_image(model):
    from torch.utils.flop_counter import FlopCounterMode

    net = build_model(resolve_spec(model, "none"))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.randn(1, 3, 224, 224))
    return counter.get_total_flops()


def decode_ms(paths):
    """Milliseconds per image to read, decode, resize and crop (cnncodes' worker code, 1 thread)."""
    from cnncodes.extract import preprocess

    pre = resolve_spec("resnet18", "none").preprocessing
    start = time.perf_counter()
    for p in paths:
        preprocess(_images.load_image_bytes(_images.read_file(p)), pre)
    return 1000 * (time.perf_counter() - start) / len(paths)


def bf16_downstream(model, kwargs):
    """CV accuracy of a logistic regression on fp32 vs bf16 codes of a small 2-class image set."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    paths, y = C.two_class_images(n_per_class=40, size=128)
    spec = resolve_spec(model, "none", resize=112, crop=96)
    codes = {}
    for precision in ("fp32", "bf16"):
        res = extract_codes(
            paths,
            spec,
            "penultimate",
            "avg",
            cache_dir=None,
            precision=precision,
            progress=False,
            **kwargs,
        )
        codes[precision] = res.concatenated()
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000))
    pred = {p: cross_val_predict(clf, codes[p], y, cv=cv) for p in codes}
    return {
        "images": len(paths),
        "cv_accuracy_fp32": float((pred["fp32"] == y).mean()),
        "cv_accuracy_bf16": float((pred["bf16"] == y).mean()),
        "predictions_differing": int((pred["fp32"] != pred["bf16"]).sum()),
        "cosine_min": cosine_min(codes["fp32"], codes["bf16"]),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100 images instead of 500")
    ap.add_argument("--n", type=int, default=None, help="number of JPEGs (default 500)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument(
        "--batch-size", type=int, default=None, help="cnncodes batch_size (default: its own)"
    )
    ap.add_argument(
        "--num-workers", type=int, default=None, help="cnncodes num_workers (default: its own)"
    )
    ap.add_argument("--bf16-images", type=int, default=32, help="subset for the bf16 speed probe")
    ap.add_argument("--skip-bf16", action="store_true")
    ap.add_argument("--out", default="cpu_extract.json")
    C.add_quiet_args(ap)
    args = ap.parse_args(argv)
    global QUIET
    QUIET = C.quiet_from_args(args)
    n = args.n or (100 if args.quick else 500)
    info = C.print_machine()
    paths = C.make_jpegs(n)
    print(f"{n} JPEGs of 500x375, mean {C.folder_bytes(paths):.1f} KB", flush=True)
    kwargs = {}
    if args.batch_size is not None:
        kwargs["batch_size"] = args.batch_size
    if args.num_workers is not None:
        kwargs["num_workers"] = args.num_workers
    report = {"machine": info, "n_images": n, "reps": args.reps, "cnncodes_kwargs": kwargs}
    report["decode_ms_per_image_1_thread"] = decode_ms(paths[:100])
    print(f"decode+resize+crop: {report['decode_ms_per_image_1_thread']:.2f} ms/image (1 thread)")
    C.wait_quiet(QUIET.max_foreign or 0.1, timeout=QUIET.quiet_timeout)
    report["matmul_peak_gflops"] = {
        "fp32": matmul_peak(torch.float32),
        "bf16": matmul_peak(torch.bfloat16),
    }
    print(
        "matrix product peak (2048^3, all threads): "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in report["matmul_peak_gflops"].items()),
        flush=True,
    )
    models = args.models.split(",")
    per_model = {}
    for model in models:
        # Warm-up (imports, oneDNN kernel creation); not timed.
        naive_codes(paths[:4], model)
        cnncodes_codes(paths[:4], model, "fp32", **kwargs)
        per_model[model] = {"naive_s": [], "fp32_s": []}
    for rep in range(args.reps):
        for model in models:
            t_naive, a = timed(naive_codes, paths, model)
            t_ours, b = timed(cnncodes_codes, paths, model, "fp32", **kwargs)
            r = per_model[model]
            r["naive_s"].append(t_naive)
            r["fp32_s"].append(t_ours)
            r["agreement_cosine_min"] = cosine_min(a, b)
            r.setdefault("foreign_cores", []).append(FOREIGN[-2:])
            print(
                f"rep {rep + 1} {model}: naive {n / t_naive:.1f} img/s, cnncodes fp32 "
                f"{n / t_ours:.1f} img/s ({t_naive / t_ours:.2f}x); codes agree, cosine min "
                f"{r['agreement_cosine_min']:.6f}; other processes' load "
                f"{FOREIGN[-2]:.2f} / {FOREIGN[-1]:.2f} cores",
                flush=True,
            )
    for model in models:
        r = per_model[model]
        r["naive_img_s"] = n / C.med(r["naive_s"])
        r["fp32_img_s"] = n / C.med(r["fp32_s"])
        r["ratio_fp32"] = C.med(r["naive_s"]) / C.med(r["fp32_s"])
        r["ratio_fp32_per_rep"] = [a / b for a, b in zip(r["naive_s"], r["fp32_s"])]
        r["flops_per_image"] = flops_per_image(model)
        bs = kwargs.get("batch_size", 32)
        ceiling_meter, r["network_alone_img_s"] = QUIET.run(
            f"network alone {model}", network_ceiling, model, bs
        )
        r["network_alone_foreign_cores"] = ceiling_meter.foreign_cores
        r["headline"] = {"precision": "fp32", "ratio": r["ratio_fp32"]}
        if not args.skip_bf16:
            sub = paths[: args.bf16_images]
            t32, c32 = timed(cnncodes_codes, sub, model, "fp32", **kwargs)
            t16, c16 = timed(cnncodes_codes, sub, model, "bf16", **kwargs)
            bf = {
                "subset": len(sub),
                "fp32_img_s": len(sub) / t32,
                "bf16_img_s": len(sub) / t16,
                "cosine_min_vs_fp32": cosine_min(c32, c16),
                "mkldnn_bf16_supported": info["mkldnn_bf16"],
            }
            bf["downstream"] = bf16_downstream(model, kwargs)
            bf["accurate"] = bool(
                bf["cosine_min_vs_fp32"] >= 0.999
                and bf["downstream"]["cosine_min"] >= 0.999
                and bf["downstream"]["cv_accuracy_bf16"] == bf["downstream"]["cv_accuracy_fp32"]
            )
            bf["faster"] = bf["bf16_img_s"] > bf["fp32_img_s"]
            if bf["accurate"] and bf["faster"]:
                ts_n, ts_b = [], []
                for _ in range(args.reps):
                    ts_n.append(timed(naive_codes, paths, model)[0])
                    ts_b.append(timed(cnncodes_codes, paths, model, "bf16", **kwargs)[0])
                bf["naive_s_full"], bf["bf16_s_full"] = ts_n, ts_b
                bf["ratio_full"] = C.med(ts_n) / C.med(ts_b)
                if bf["ratio_full"] > r["ratio_fp32"]:
                    r["headline"] = {"precision": "bf16", "ratio": bf["ratio_full"]}
            r["bf16"] = bf
            print(f"{model} bf16: {bf}", flush=True)
    print()
    print(
        f"| model | naive img/s | cnncodes fp32 img/s | ratio (median of {args.reps}) | per-rep ratios |"
    )
    print("|---|---|---|---|---|")
    for model in models:
        r = per_model[model]
        print(
            f"| {model} | {r['naive_img_s']:.1f} | {r['fp32_img_s']:.1f} | {r['ratio_fp32']:.2f}x | "
            f"{C.fmt_runs(r['ratio_fp32_per_rep'])} |"
        )
    for model in models:
        r = per_model[model]
        gflop = r["flops_per_image"] / 1e9
        alone = r["network_alone_img_s"]
        print(
            f"{model}: {gflop:.2f} GFLOP/image; network alone (random input) "
            + ", ".join(f"{k} {v:.1f} img/s = {v * gflop:.0f} GFLOP/s" for k, v in alone.items())
            + f"; headline precision {r['headline']['precision']} {r['headline']['ratio']:.2f}x"
        )
    report["models"] = per_model
    report["discarded_runs"] = QUIET.discarded
    report["quiet"] = {"max_foreign": QUIET.max_foreign, "retries": QUIET.retries}
    C.save_json(args.out, report)
    return report


if __name__ == "__main__":
    main()
