"""Shared fixtures: tiny generated images, small untrained models, the real assets, call counters."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# The project's real weights and datasets live beside the repository, never inside it.
ASSETS = ROOT.parent / "shared" / "assets"

# User architectures are given as "tests.module:callable", also when pytest is run as a script.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

requires_assets = pytest.mark.skipif(
    not ASSETS.is_dir(), reason=f"real weights and datasets not found at {ASSETS}"
)


def write_images(folder, n, sizes=((48, 40), (40, 56), (64, 64)), seed=0, prefix="img"):
    """Write ``n`` small random images (JPEG and PNG in turn) into ``folder``; return their paths.

    ``sizes`` are ``(width, height)`` pairs used in turn. Smooth gradients plus noise, so that
    JPEG keeps the content distinct and resizing has something to average.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        y, x = np.mgrid[0:h, 0:w]
        base = rng.uniform(0, 255, 3)[None, None, :]
        slope = rng.uniform(-4, 4, (2, 3))
        img = base + x[..., None] * slope[0] + y[..., None] * slope[1]
        img = img + rng.normal(0, 25, (h, w, 3))
        img = np.clip(img, 0, 255).astype(np.uint8)
        ext = "jpg" if i % 2 == 0 else "png"
        path = folder / f"{prefix}{i:03d}.{ext}"
        Image.fromarray(img).save(path, **({"quality": 95} if ext == "jpg" else {}))
        paths.append(str(path))
    return paths


@pytest.fixture
def make_images(tmp_path):
    """Factory ``make_images(n, sizes=..., seed=0, folder=None)`` writing images under tmp_path."""

    def make(n, sizes=((48, 40), (40, 56), (64, 64)), seed=0, folder=None, prefix="img"):
        return write_images(folder or tmp_path / "images", n, sizes, seed, prefix)

    return make


def write_classes(folder, per_class=8, seed=0, classes=("bright", "dark")):
    """Class folders of small PNGs whose classes differ in brightness; returns (paths, labels)."""
    rng = np.random.default_rng(seed)
    paths, labels = [], []
    for c, name in enumerate(classes):
        level = 200 - 150 * c / max(1, len(classes) - 1)
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(level + rng.integers(-40, 40, (26, 26, 3)), 0, 255).astype(np.uint8)
            path = os.path.join(folder, name, f"{i:02d}.png")
            Image.fromarray(pixels).save(path)
            paths.append(path)
            labels.append(name)
    return paths, labels


@pytest.fixture
def data(tmp_path):
    """(paths, labels) of two classes of 8 images in tmp_path/photos (modules whose ``data``
    is something else define their own)."""
    return write_classes(str(tmp_path / "photos"))


@pytest.fixture
def photos(tmp_path):
    """tmp_path holding photos/ (two classes of 8 images) and test/ (3 of each, other pixels)."""
    write_classes(str(tmp_path / "photos"), per_class=8)
    write_classes(str(tmp_path / "test"), per_class=3, seed=1)
    return tmp_path


def write_bright_dark(folder, n, seed=0, size=(24, 28)):
    """``n`` distinct small PNGs in one folder; odd ones bright, even ones dark (two learnable
    classes, in the order of the ``labels`` fixture)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        base = 170 if i % 2 else 40
        pixels = np.clip(base + rng.integers(-40, 40, (*size, 3)), 0, 255).astype(np.uint8)
        path = os.path.join(folder, f"img{i:03d}.png")
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def images(tmp_path):
    """12 images of :func:`write_bright_dark` in tmp_path/img."""
    return write_bright_dark(tmp_path / "img", 12)


@pytest.fixture
def labels():
    """The classes of the ``images`` fixture: 0 dark, 1 bright."""
    return np.array([i % 2 for i in range(12)])


@pytest.fixture
def with_bad(tmp_path, images):
    """(paths, labels, bad path): the ``images`` with a file that is not an image at index 5."""
    bad = tmp_path / "img" / "broken.png"
    bad.write_bytes(Image.new("RGB", (8, 8)).tobytes()[:40])
    paths = images[:5] + [str(bad)] + images[5:]
    y = np.array([i % 2 for i in range(13)])
    return paths, y, str(bad)


# Run in a child process before the code of a fine-tuning: once the second epoch's state is
# written it says so and sleeps, so that the test can kill or interrupt it at a known point.
_PAUSE_AFTER_TWO_EPOCHS = """
import sys, time
sys.path.insert(0, {root!r})
from cnncodes.finetune import training
original = training.EpochState.on_epoch_end
def on_epoch_end(self, net, **kwargs):
    original(self, net, **kwargs)
    if len(net.history) == 2:
        print("state written", flush=True)
        time.sleep(60)
training.EpochState.on_epoch_end = on_epoch_end
"""


@contextlib.contextmanager
def paused_after_two_epochs(code, stderr=None):
    """A child process running the Python ``code`` of a fine-tuning, yielded once its second
    epoch's state is written (it then sleeps); killed at the end of the block."""
    script = _PAUSE_AFTER_TWO_EPOCHS.format(root=str(ROOT)) + code
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=stderr, text=True
    )
    try:
        assert child.stdout.readline().strip() == "state written"
        yield child
    finally:
        child.kill()
        child.wait()


@pytest.fixture
def assets():
    """The folder of real weights and datasets; skips the test where it is absent."""
    if not ASSETS.is_dir():
        pytest.skip(f"real weights and datasets not found at {ASSETS}")
    return ASSETS


@pytest.fixture(scope="session")
def tiny_spec():
    """An untrained resnet18 (seed 0) on 32x32 crops of images resized to 40: fast on a CPU."""
    from cnncodes.models import resolve_spec

    return resolve_spec("resnet18", "none", seed=0, resize=40, crop=32)


@pytest.fixture(scope="session")
def cnn_spec():
    """The tiny two-convolution user network of tests/tiny_nets.py on 32x32 crops: near-instant."""
    from cnncodes.models import resolve_spec

    return resolve_spec("tests.tiny_nets:tiny_cnn", resize=40, crop=32)


@dataclass(frozen=True)
class DemoRun:
    """One run of the offline demo: its folders, its report and the lines it logged."""

    out_dir: Path  # data/, the pretrained checkpoint, report.json, comparison.png
    cache_dir: Path
    report: dict
    log: tuple


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The README's ``cnncodes demo``, run once per session at its full size; read-only.

    The same call as the command line's, with its defaults (every target image, 8 pretraining
    epochs, each recipe's full ``C`` sweep, ``demo-output/`` and ``./cache`` in the working
    folder), so that its report holds the README's numbers and ``fit`` commands. Tests that
    need other settings run their own, smaller demo; tests that write copy the folders first.
    """
    from cnncodes.cache import DEFAULT_CACHE_DIR
    from cnncodes.demo import run_demo

    root = tmp_path_factory.mktemp("demo")
    lines = []
    with pytest.MonkeyPatch.context() as patch, one_torch_thread():
        patch.chdir(root)
        patch.delenv("CNNCODES_CACHE", raising=False)
        report = run_demo(progress=False, log=lines.append)
    return DemoRun(root / "demo-output", root / DEFAULT_CACHE_DIR, report, tuple(lines))


@contextlib.contextmanager
def one_torch_thread():
    """Run torch on one thread inside the block (the demo's network is too small to share)."""
    import torch

    # A second OpenMP thread gains the digits network nothing, while two threads on a busy
    # 2-core machine spin against other processes (pretraining took 25 s instead of 1.3 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class ForwardCounter:
    """Counts what goes through the networks that :func:`cnncodes.extract.extract_codes` builds.

    ``runs`` holds one ``[layers, images]`` pair per network built: the layers that came out of
    one forward pass, and the images pushed through it.
    """

    def __init__(self):
        self.builds = 0
        self.batches = 0
        self.images = 0
        self.runs = []


@pytest.fixture
def forward_counter(monkeypatch):
    """Wrap the extractor that extraction builds so every forward pass (and image) is counted."""
    import torch

    from cnncodes import extract, layers  # noqa: F401 - extraction loaded, so it can be wrapped

    counter = ForwardCounter()
    real_build = layers.build_extractor

    class Counting(torch.nn.Module):
        def __init__(self, inner, run):
            super().__init__()
            self.inner = inner
            self.run = run

        def forward(self, x):
            counter.batches += 1
            # A lone image goes through as a pair of itself (extraction/loop.py): one image.
            lone = x.shape[0] == 2 and torch.equal(x[0], x[1])
            n = 1 if lone else x.shape[0]
            counter.images += n
            self.run[1] += n
            return self.inner(x)

    def build(net, layers):
        counter.builds += 1
        counter.runs.append([tuple(layers), 0])
        return Counting(real_build(net, layers), counter.runs[-1])

    # Wherever extraction imported it from (not cnncodes.layers itself: its shape probes are not
    # forward passes over images), so the count does not depend on which module runs the loop.
    for name, module in list(sys.modules.items()):
        if name.startswith("cnncodes.") and module is not layers:
            if getattr(module, "build_extractor", None) is real_build:
                monkeypatch.setattr(module, "build_extractor", build)
    return counter
