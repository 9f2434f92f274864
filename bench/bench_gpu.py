"""GPU: ResNet-50 average-pool codes from JPEG files, end to end, in images per second.

Three measurements on the same JPEGs (500x375, about 55 KB), same network (ResNet-50, untrained:
weight values do not change speed), bf16 autocast and channels_last everywhere, batch 256:

- model alone: random tensors already on the GPU, forward to ``avgpool`` (the ceiling);
- standard loader: ``torch.utils.data.DataLoader`` over Pillow + torchvision transforms
  (Resize 256, CenterCrop 224, ToTensor, Normalize) with ``cpu_count - 1`` workers, pinned
  memory, codes copied back to the CPU (how most tools do it);
- cnncodes: ``extract_codes(paths, resnet50, "avgpool", device="cuda", cache_dir=None)``, end to
  end from the files (hashing included), with its default and with ``cpu_count - 1`` workers;
- cnncodes ``impl="torch"``: the same call with ``resolve_spec(..., impl="torch")``: JPEGs decoded
  by nvJPEG (batched), oriented, resized and cropped on the GPU, in a background thread on a
  second CUDA stream (no worker processes).

Before timing, the codes of the ``torch`` path are compared with those of the default ``pil`` path
on the first images (cosine similarity, printed and saved).

Runs are interleaved and repeated; medians are reported. The issue's goal is 5,000 images/s on one
H100 (reference on that machine: ResNet-50 forward 6,220 images/s fp32 and 12,850 bf16 +
channels_last at batch 256; nvJPEG decode + resize + crop + normalise alone 6,011 images/s).

This needs CUDA and exits with a message without it. ``--device cpu`` runs the same code on the
CPU with a handful of images, only to check that the script works; its numbers mean nothing.

Usage::

    .venv/bin/python bench/bench_gpu.py                  # 10,000 JPEGs, 3 repetitions, CUDA
    .venv/bin/python bench/bench_gpu.py --quick          # 2,560 JPEGs
    .venv/bin/python bench/bench_gpu.py --device cpu --n 64 --batch-size 16   # smoke test only
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402
import torch  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PilFiles(torch.utils.data.Dataset):
    """The standard way: Pillow open, torchvision transforms, one image per item."""

    def __init__(self, paths):
        from torchvision import transforms as T

        self.paths = paths
        self.transform = T.Compose(
            [T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)]
        )

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB"))


def resnet50_trunk(device):
    """ResNet-50 up to avgpool (fc replaced by identity), eval, channels_last, on ``device``."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None).eval()
    net.fc = torch.nn.Identity()
    net.requires_grad_(False)
    return net.to(device, memory_format=torch.channels_last)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_alone(net, device, batch_size, n, dtype):
    x = torch.randn(batch_size, 3, 224, 224, device=device).contiguous(
        memory_format=torch.channels_last
    )
    batches = max(1, n // batch_size)
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32),
    ):
        net(x)
        sync(device)
        start = time.perf_counter()
        for _ in range(batches):
            codes = net(x).float()
        sync(device)
    del codes
    return batches * batch_size / (time.perf_counter() - start)


def standard_loader(net, device, paths, batch_size, workers, dtype):
    loader = torch.utils.data.DataLoader(
        PilFiles(paths),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    out = []
    start = time.perf_counter()
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32),
    ):
        for x in loader:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            out.append(net(x).float().cpu())
    sync(device)
    seconds = time.perf_counter() - start
    assert sum(len(o) for o in out) == len(paths)
    return len(paths) / seconds


def cnncodes_codes(paths, device, batch_size, workers, precision, impl="pil"):
    """``(images/s, codes)`` of one uncached cnncodes extraction."""
    from cnncodes.extract import extract_codes
    from cnncodes.models import resolve_spec

    from cnncodes.images import load as _images

    _images._DIGESTS.clear()  # hash every file again, as a fresh process would
    spec = resolve_spec("resnet50", "none", impl=impl)
    start = time.perf_counter()
    res = extract_codes(
        paths,
        spec,
        "avgpool",
        cache_dir=None,
        device=str(device),
        batch_size=batch_size,
        num_workers=workers,
        precision=precision,
        progress=False,
    )
    sync(device)
    seconds = time.perf_counter() - start
    assert res.computed == len(paths), res.computed
    return len(paths) / seconds, res.codes["avgpool"]


def cnncodes_run(paths, device, batch_size, workers, precision, impl="pil"):
    return cnncodes_codes(paths, device, batch_size, workers, precision, impl)[0]


def agreement(paths, device, batch_size, precision):
    """Cosine similarity of ``impl="torch"`` codes against ``impl="pil"`` codes: (min, median)."""
    import numpy as np

    a = cnncodes_codes(paths, device, batch_size, None, precision, "pil")[1]
    b = cnncodes_codes(paths, device, batch_size, None, precision, "torch")[1]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(cos.min()), float(np.median(cos))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (smoke test)")
    ap.add_argument("--quick", action="store_true", help="2,560 images instead of 10,000")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--num-workers", type=int, default=None, help="default: cpu_count - 1")
    ap.add_argument("--out", default="gpu.json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "bench_gpu.py measures CUDA throughput, but torch.cuda.is_available() is False here "
            f"(torch {torch.__version__}, {os.cpu_count()} CPUs, no usable NVIDIA GPU). Run it on a "
            "machine with an NVIDIA GPU, or use --device cpu --n 64 to check the script only."
        )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size; the standard setting
    n = args.n or (2560 if args.quick else 10000)
    workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 2) - 1)
    info = C.print_machine()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        print(f"gpu: {info['gpu']}", flush=True)
    start = time.perf_counter()
    paths = C.make_jpegs(n)
    print(
        f"{n} JPEGs of 500x375 (mean {C.folder_bytes(paths):.1f} KB) ready in "
        f"{time.perf_counter() - start:.0f} s; batch {args.batch_size}, {workers} loader workers",
        flush=True,
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    precision = "bf16" if device.type == "cuda" else "fp32"
    net = resnet50_trunk(device)
    # Warm-up: page cache, cuDNN autotuning, worker start-up paths.
    warm = paths[: min(len(paths), 2 * args.batch_size)]
    standard_loader(net, device, warm, args.batch_size, workers, dtype)
    cnncodes_run(warm, device, args.batch_size, workers, precision)
    cnncodes_run(warm, device, args.batch_size, None, precision, "torch")
    cos_min, cos_median = agreement(warm, device, args.batch_size, precision)
    print(
        f"impl='torch' against impl='pil' codes ({len(warm)} images, {precision}): cosine min "
        f"{cos_min:.6f}, median {cos_median:.6f}",
        flush=True,
    )
    runs = {"model alone (random tensors)": [], f"standard DataLoader, {workers} workers": []}
    runs["cnncodes, default workers"] = []
    runs[f"cnncodes, {workers} workers"] = []
    runs["cnncodes impl='torch'"] = []
    for rep in range(args.reps):
        keys = list(runs)
        runs[keys[0]].append(model_alone(net, device, args.batch_size, n, dtype))
        runs[keys[1]].append(standard_loader(net, device, paths, args.batch_size, workers, dtype))
        runs[keys[2]].append(cnncodes_run(paths, device, args.batch_size, None, precision))
        runs[keys[3]].append(cnncodes_run(paths, device, args.batch_size, workers, precision))
        runs[keys[4]].append(
            cnncodes_run(paths, device, args.batch_size, None, precision, impl="torch")
        )
        print(f"rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} img/s" for k, v in runs.items()))
    print()
    print(f"| path ({device}) | images/s (median of {args.reps}) | runs |")
    print("|---|---|---|")
    for k, v in runs.items():
        print(f"| {k} | {C.med(v):,.0f} | {C.fmt_runs(v)} |")
    if device.type == "cpu":
        print("(--device cpu is a smoke test of this script; these numbers are not a benchmark)")
    C.save_json(
        args.out,
        {
            "machine": info,
            "device": str(device),
            "n_images": n,
            "batch_size": args.batch_size,
            "workers": workers,
            "torch_vs_pil_cosine": {"min": cos_min, "median": cos_median, "images": len(warm)},
            "runs": runs,
            "medians": {k: C.med(v) for k, v in runs.items()},
        },
    )


if __name__ == "__main__":
    main()
