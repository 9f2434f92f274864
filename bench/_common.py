"""Shared helpers of the benchmarks: generated images, machine description, timing summaries.

Nothing here downloads anything. Images are generated with numpy and Pillow into ``bench/out/``
(git-ignored) and reused by later runs when their recipe has not changed.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "out")
#: The shared assets: ``../shared/assets`` beside the checkout, or $CNNCODES_BENCH_ASSETS (a
#: git worktree elsewhere).
ASSETS = os.environ.get("CNNCODES_BENCH_ASSETS") or os.path.join(ROOT, "..", "shared", "assets")
#: The real ImageNet MobileNetV2 weights of the assets (BatchNorm folded; mean = std = 0.5).
MOBILENET_WEIGHTS = os.path.join(ASSETS, "weights", "mobilenet_v2_imagenet.pth")
#: The real datasets of the assets, as folders of class folders: hymenoptera's train and val
#: pooled (398 photos, 2 classes), and the 2,062 sign-language digits (10 classes).
REAL_DATASETS = {
    "hymenoptera": [
        os.path.join(ASSETS, "data", "hymenoptera", "train"),
        os.path.join(ASSETS, "data", "hymenoptera", "val"),
    ],
    "sign_digits": [os.path.join(ASSETS, "data", "sign_language_digits")],
}

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _smooth_noise(rng, width, height):
    """A photo-like float image: noise at several spatial scales, upsampled bicubically."""
    out = np.zeros((height, width, 3), np.float32)
    for cells, amplitude in ((4, 90), (16, 40), (64, 25), (160, 35), (250, 30)):
        rows = max(2, height * cells // width)
        small = rng.normal(0.0, 1.0, (rows, cells, 3)).astype(np.float32)
        small = (small - small.min()) / (np.ptp(small) + 1e-6)
        up = Image.fromarray((small * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
        out += amplitude * (np.asarray(up, np.float32) / 255.0 - 0.5)
    out += 128.0 + rng.normal(0.0, 7.0, out.shape)
    return out


def _ready(folder, recipe, n, ext):
    """Paths of ``n`` images already generated in ``folder`` with the same recipe, else None."""
    manifest = os.path.join(folder, "recipe.json")
    paths = [os.path.join(folder, f"{i:06d}.{ext}") for i in range(n)]
    try:
        with open(manifest) as f:
            if json.load(f) != recipe:
                return None
    except (OSError, ValueError):
        return None
    return paths if all(os.path.isfile(p) for p in paths) else None


def _write_recipe(folder, recipe):
    with open(os.path.join(folder, "recipe.json"), "w") as f:
        json.dump(recipe, f)


def _write_jpeg(job):
    path, width, height, quality, seed, i = job
    rng = np.random.default_rng([seed, i])
    pixels = np.clip(_smooth_noise(rng, width, height), 0, 255).astype(np.uint8)
    tmp = f"{path}.{os.getpid()}.tmp"
    Image.fromarray(pixels).save(tmp, "JPEG", quality=quality)
    os.replace(tmp, path)  # an interrupted run never leaves a truncated image behind


def make_jpegs(n, width=500, height=375, quality=90, seed=0, folder=None, processes=None):
    """``n`` JPEGs of ``width`` x ``height`` (about 55 KB each at quality 90); returns their paths.

    Each image is smooth multi-scale noise plus fine grain, so its JPEG size is realistic. Image
    ``i`` depends only on ``seed`` and ``i``, so a smaller request reuses a larger set's files.
    ``processes`` generates in parallel (default: all cores).
    """
    folder = folder or os.path.join(OUT, f"jpeg_{width}x{height}_q{quality}_s{seed}_v2")
    recipe = {"kind": "jpeg", "w": width, "h": height, "q": quality, "seed": seed, "v": 2}
    paths = [os.path.join(folder, f"{i:06d}.jpg") for i in range(n)]
    try:
        with open(os.path.join(folder, "recipe.json")) as f:
            same = json.load(f) == recipe
    except (OSError, ValueError):
        same = False
    if not same:
        shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder, exist_ok=True)
    jobs = [
        (p, width, height, quality, seed, i) for i, p in enumerate(paths) if not os.path.isfile(p)
    ]
    if jobs:
        if len(jobs) > 50 and (processes or os.cpu_count() or 1) > 1:
            import multiprocessing

            # fork: works from any caller (no __main__ guard needed); the job uses numpy and
            # Pillow only, never torch threads.
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            with ctx.Pool(processes) as pool:
                pool.map(_write_jpeg, jobs, chunksize=16)
        else:
            for job in jobs:
                _write_jpeg(job)
    _write_recipe(folder, recipe)
    return paths


def make_pngs(n, size=64, seed=0, folder=None):
    """``n`` small RGB PNGs of ``size`` x ``size``, all different; returns their paths.

    Image ``i`` depends only on ``seed`` and ``i`` (so a larger request extends a smaller one).
    """
    folder = folder or os.path.join(OUT, f"png_{size}_s{seed}_v2")
    recipe = {"kind": "png", "size": size, "seed": seed, "v": 2}
    existing = _ready(folder, recipe, n, "png")
    if existing is not None:
        return existing
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"{i:06d}.png")
        if not os.path.isfile(path):
            rng = np.random.default_rng([seed, i])
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            tmp = f"{path}.{os.getpid()}.tmp"
            Image.fromarray(pixels).save(tmp, "PNG", compress_level=1)
            os.replace(tmp, path)
        paths.append(path)
    _write_recipe(folder, recipe)
    return paths


def two_class_images(n_per_class=40, size=128, seed=1, folder=None):
    """A small, not trivially separable 2-class image set: smooth noise with a weak colour cast.

    Class 1 has a slightly warmer tint than class 0, buried in per-image brightness and colour
    variation, so a linear model on CNN codes scores well above chance but below 100%.
    Returns ``(paths, labels)``.
    """
    folder = folder or os.path.join(OUT, f"twoclass_{n_per_class}_{size}_s{seed}")
    recipe = {"kind": "twoclass", "n": n_per_class, "size": size, "seed": seed, "v": 1}
    n = 2 * n_per_class
    labels = np.array([i % 2 for i in range(n)])
    existing = _ready(folder, recipe, n, "png")
    if existing is not None:
        return existing, labels
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        pixels = _smooth_noise(rng, size, size)
        pixels += rng.normal(0.0, 12.0, 3)  # per-image colour variation
        pixels += rng.normal(0.0, 10.0)  # per-image brightness
        pixels += (8.0 if labels[i] else -8.0) * np.array([1.0, 0.0, -1.0])
        path = os.path.join(folder, f"{i:06d}.png")
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, "PNG")
        paths.append(path)
    _write_recipe(folder, recipe)
    return paths, labels


def _machine_busy_seconds():
    """CPU seconds all processes on this machine have spent busy since boot (from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = sum(ticks[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds():
    import resource

    self_, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return self_.ru_utime + self_.ru_stime + kids.ru_utime + kids.ru_stime


class Meter:
    """Wall time of a block, its own CPU time, and the CPU time other processes used meanwhile.

    ``foreign_cores`` is the average number of cores busy with work that was not this process or
    its (reaped) children during the block: 0 on a quiet machine. Worker processes still alive at
    the end are not counted as ours, so use it with blocks that join their workers.
    """

    def __enter__(self):
        self.busy0, self.own0 = _machine_busy_seconds(), _own_cpu_seconds()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        own = _own_cpu_seconds() - self.own0
        busy = _machine_busy_seconds()
        # CPU time of this process and its reaped children: on a shared machine it grows far
        # less with other processes' load than wall time does (not for torch's spinning threads).
        self.cpu_seconds = own
        self.own_cores = own / self.seconds
        if busy is None or self.busy0 is None:
            self.foreign_cores = float("nan")
        else:
            self.foreign_cores = max(0.0, (busy - self.busy0) - own) / self.seconds
        return False


def wait_quiet(max_cores=0.1, window=2.0, timeout=600.0):
    """Wait until other processes keep fewer than ``max_cores`` cores busy over ``window`` seconds.

    On a small shared machine one foreign busy core slows a 2-thread torch run several times over
    (its threads wait for each other), so timed runs start only once the machine is quiet. Returns
    the last measured foreign load in cores (above ``max_cores`` when ``timeout`` ran out), or
    None where /proc/stat is unavailable.
    """
    deadline = time.monotonic() + timeout
    while True:
        busy0, own0 = _machine_busy_seconds(), _own_cpu_seconds()
        if busy0 is None:
            return None
        t0 = time.perf_counter()
        time.sleep(window)
        seconds = time.perf_counter() - t0
        load = max(0.0, (_machine_busy_seconds() - busy0) - (_own_cpu_seconds() - own0)) / seconds
        if load < max_cores or time.monotonic() >= deadline:
            return load


class Quiet:
    """Runs timed blocks only on a quiet machine, and repeats a block that was disturbed.

    ``run(fn, *args)`` waits for :func:`wait_quiet`, times ``fn`` with a :class:`Meter` and
    repeats it (up to ``retries`` more times) while other processes used more than
    ``max_foreign`` cores meanwhile. Returns ``(meter, result)`` of the last attempt; every
    discarded attempt is kept in ``discarded`` (label, seconds, foreign cores) for the report.
    ``max_foreign=None`` turns both the waiting and the repeating off.
    """

    def __init__(self, max_foreign=0.1, retries=5, quiet_timeout=600.0):
        self.max_foreign = max_foreign
        self.retries = retries
        self.quiet_timeout = quiet_timeout
        self.discarded = []

    def run(self, label, fn, *args, **kwargs):
        for attempt in range(self.retries + 1):
            if self.max_foreign is not None:
                wait_quiet(self.max_foreign, timeout=self.quiet_timeout)
            with Meter() as meter:
                result = fn(*args, **kwargs)
            disturbed = self.max_foreign is not None and meter.foreign_cores > self.max_foreign
            if not disturbed or attempt == self.retries:
                meter.attempts = attempt + 1
                meter.disturbed = disturbed
                return meter, result
            self.discarded.append(
                {"label": label, "seconds": meter.seconds, "foreign_cores": meter.foreign_cores}
            )
            print(
                f"  ({label}: {meter.seconds:.2f} s discarded, other processes used "
                f"{meter.foreign_cores:.2f} cores meanwhile; repeating)",
                flush=True,
            )


def add_quiet_args(parser):
    """The command-line options of :class:`Quiet` (shared by the timing scripts)."""
    parser.add_argument(
        "--max-foreign",
        type=float,
        default=0.1,
        help="repeat a timed run during which other processes used more cores than this "
        "(default 0.1); a negative value turns waiting and repeating off",
    )
    parser.add_argument(
        "--retries", type=int, default=5, help="repeats of a disturbed run (default 5)"
    )
    parser.add_argument(
        "--quiet-timeout",
        type=float,
        default=600.0,
        help="longest wait for a quiet machine before a run, in seconds (default 600)",
    )


def quiet_from_args(args):
    max_foreign = None if args.max_foreign < 0 else args.max_foreign
    return Quiet(max_foreign, args.retries, args.quiet_timeout)


def folder_bytes(paths):
    """Mean file size in KB."""
    return sum(os.path.getsize(p) for p in paths) / len(paths) / 1e3


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    keep = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni")
                    return [x for x in flags if x in keep]
    except OSError:
        pass
    return []


def ram_gb():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def machine():
    """A dict describing the machine and the versions that matter for the numbers."""
    import h5py
    import PIL
    import sklearn
    import torch
    import torchvision

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "ram_gb": ram_gb(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "pillow": PIL.__version__,
        "h5py": h5py.__version__,
        "torch_threads": torch.get_num_threads(),
        "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    }


def print_machine():
    info = machine()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    return info


def med(values):
    return statistics.median(values)


def fmt_runs(values, unit=""):
    return "[" + ", ".join(f"{v:.3g}{unit}" for v in values) + "]"


def run_python(code, *args, env=None):
    """Run ``code`` in a fresh interpreter (the venv's), return its last stdout line as JSON."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def save_json(name, data):
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name)
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=str)
    print(f"wrote {os.path.relpath(path, ROOT)}", flush=True)
    return path
