"""Offline demo data: scikit-learn digits as PNG class folders and a small pretrained CNN."""

from __future__ import annotations

import io
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import UsageError
from ..utils.files import atomic_write_bytes

__all__ = [
    "IMAGE_SIZE",
    "MEAN",
    "PREPROCESSING",
    "SOURCE_CLASSES",
    "STD",
    "TARGET_CLASSES",
    "DigitsNet",
    "digits_net",
    "load_image_folder",
    "pretrain",
    "write_digits_dataset",
]

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
IMAGE_SIZE = 32
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

# Bump when the way images are rendered or split changes, so old datasets are rebuilt.
_FORMAT_VERSION = 1
_RESAMPLE = "bilinear"
_MARKER = "dataset.json"
_SPLITS = ("source", "target_train", "target_test")


def _render(image8: np.ndarray) -> Image.Image:
    """Turn one 8x8 sklearn digit (0..16, ink high) into a 32x32 RGB PIL image."""
    grey = np.rint(np.asarray(image8, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    img = Image.fromarray(grey, mode="L").resize(
        (IMAGE_SIZE, IMAGE_SIZE), resample=Image.Resampling.BILINEAR
    )
    return img.convert("RGB")


def _split_indices(
    target: np.ndarray, n_target_train_per_class: int, seed: int
) -> dict[str, dict[int, np.ndarray]]:
    """Assign sklearn sample indices to the three splits, per class, sorted."""
    rng = np.random.default_rng(seed)
    splits: dict[str, dict[int, np.ndarray]] = {name: {} for name in _SPLITS}
    for d in SOURCE_CLASSES:
        splits["source"][d] = np.flatnonzero(target == d)
    # Classes are visited in a fixed order so one generator gives a reproducible choice.
    for d in TARGET_CLASSES:
        idx = np.flatnonzero(target == d)
        if not 1 <= n_target_train_per_class < len(idx):
            raise UsageError(
                f"n_target_train_per_class must be in [1, {len(idx) - 1}] "
                f"(digit {d} has {len(idx)} images), got {n_target_train_per_class}"
            )
        chosen = np.sort(rng.choice(idx, size=n_target_train_per_class, replace=False))
        splits["target_train"][d] = chosen
        splits["target_test"][d] = np.setdiff1d(idx, chosen)
    return splits


def _count_pngs(folder: Path) -> dict[str, int]:
    """Count PNG files per class subfolder of ``folder``."""
    counts: dict[str, int] = {}
    if not folder.is_dir():
        return counts
    for sub in folder.iterdir():
        if sub.is_dir():
            counts[sub.name] = sum(1 for f in sub.iterdir() if f.suffix == ".png")
    return counts


def _result(root: Path, marker: dict, created: bool) -> dict:
    out = {name: str(root / name) for name in _SPLITS}
    out["root"] = str(root)
    out["counts"] = {name: sum(marker["per_class"][name].values()) for name in _SPLITS}
    out["per_class"] = {name: dict(marker["per_class"][name]) for name in _SPLITS}
    out["created"] = created
    return out


def write_digits_dataset(root, *, n_target_train_per_class: int = 5, seed: int = 0) -> dict:
    """Write scikit-learn's handwritten digits as 32x32 RGB PNG files in class folders.

    Layout: ``root/source/<d>/<index>.png`` for every image of digits 0-4,
    ``root/target_train/<d>/<index>.png`` for ``n_target_train_per_class`` seeded
    images of each digit 5-9 and ``root/target_test/<d>/<index>.png`` for the rest of
    5-9. ``<index>`` is the sample's index in ``sklearn.datasets.load_digits``,
    zero-padded to four digits. Each 8x8 image (0..16, ink high) is scaled to 0..255,
    resized to 32x32 with PIL bilinear interpolation and replicated to RGB.

    Parameters
    ----------
    root : str or os.PathLike
        Folder to write into; created if missing.
    n_target_train_per_class : int, default 5
        Labelled target images per digit 5-9.
    seed : int, default 0
        Seed for choosing the labelled target images.

    Returns
    -------
    dict
        ``source``, ``target_train``, ``target_test`` (folder paths as str), ``root``,
        ``counts`` (images per split), ``per_class`` (images per split and class, keyed
        by the class folder name) and ``created`` (False when an existing complete
        dataset was reused).

    Notes
    -----
    Idempotent: ``root/dataset.json`` is written last (atomically) and records the
    parameters and file counts. When it matches the request and the files on disk,
    nothing is rewritten, so file bytes and mtimes, and any content-hash cache keyed on
    them, stay unchanged. Otherwise the marker and the three split folders are removed
    and rebuilt. Concurrent calls on the same ``root`` are not supported.
    """
    root = Path(root)
    params = {
        "format_version": _FORMAT_VERSION,
        "image_size": IMAGE_SIZE,
        "resample": _RESAMPLE,
        "n_target_train_per_class": int(n_target_train_per_class),
        "seed": int(seed),
    }
    marker_path = root / _MARKER
    try:
        marker = json.loads(marker_path.read_text())
    except (OSError, ValueError):
        marker = None
    if (
        isinstance(marker, dict)
        and marker.get("params") == params
        and all(_count_pngs(root / name) == marker["per_class"].get(name) for name in _SPLITS)
    ):
        return _result(root, marker, created=False)

    from sklearn.datasets import load_digits

    digits = load_digits()
    splits = _split_indices(digits.target, n_target_train_per_class, seed)

    # The marker goes first so an interrupted rebuild can never look complete.
    marker_path.unlink(missing_ok=True)
    for name in _SPLITS:
        shutil.rmtree(root / name, ignore_errors=True)
    per_class: dict[str, dict[str, int]] = {}
    for name in _SPLITS:
        per_class[name] = {}
        for d, indices in splits[name].items():
            folder = root / name / str(d)
            folder.mkdir(parents=True, exist_ok=True)
            for i in indices:
                _render(digits.images[i]).save(folder / f"{int(i):04d}.png", format="PNG")
            per_class[name][str(d)] = len(indices)

    marker = {"params": params, "per_class": per_class}
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(marker_path, (json.dumps(marker, indent=2, sort_keys=True) + "\n").encode())
    return _result(root, marker, created=True)


class DigitsNet(nn.Module):
    """Small CNN for 32x32 RGB digits (about 24k parameters).

    Three conv-BN-ReLU-maxpool blocks (16, 32, 64 channels; 32 -> 16 -> 8 -> 4 pixels),
    global average pooling, ``torch.flatten`` and a linear classifier. Feature
    extraction node names (``torchvision.models.feature_extraction``) are
    ``features.0`` ... ``features.11``, ``avgpool``, ``flatten`` and ``fc``; e.g.
    ``features.7`` is the 32x8x8 output of the second block and ``flatten`` the
    64-dimensional top-layer code.

    Parameters
    ----------
    num_classes : int, default 5
        Output size of ``fc``.
    """

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits of shape ``(N, num_classes)`` for ``x`` of shape ``(N, 3, H, W)``."""
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def digits_net(num_classes: int = 5) -> DigitsNet:
    """Build an untrained :class:`DigitsNet`.

    The function carries the preprocessing the network expects as its ``preprocessing``
    attribute (:data:`PREPROCESSING`), so ``model="cnncodes.demo_data:digits_net"`` needs no
    resize, crop, mean or std arguments (see :func:`cnncodes.models.resolve_spec`).

    Parameters
    ----------
    num_classes : int, default 5
        Number of output classes.

    Returns
    -------
    DigitsNet
        A freshly initialised network (weights drawn from torch's global RNG).
    """
    return DigitsNet(num_classes)


#: How images reach :class:`DigitsNet`: what :func:`load_image_folder` does for pretraining.
PREPROCESSING = {"resize": IMAGE_SIZE, "crop": IMAGE_SIZE, "mean": MEAN, "std": STD}
digits_net.preprocessing = PREPROCESSING


def load_image_folder(folder) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Load a class-folder tree of images as normalised tensors.

    Parameters
    ----------
    folder : str or os.PathLike
        Folder with one subfolder per class. Class names are sorted (numerically when
        all are integers) and mapped to labels 0, 1, ...

    Returns
    -------
    images : torch.Tensor
        Float tensor ``(N, 3, IMAGE_SIZE, IMAGE_SIZE)``: RGB in [0, 1], normalised with
        ``MEAN`` and ``STD``; images of another size are resized bilinearly.
    labels : torch.Tensor
        Int64 tensor ``(N,)``.
    classes : list of str
        Class folder names in label order.
    """
    folder = Path(folder)
    names = [p.name for p in folder.iterdir() if p.is_dir()]
    key = (lambda s: int(s)) if all(n.isdigit() for n in names) else (lambda s: s)
    classes = sorted(names, key=key)
    if not classes:
        raise UsageError(f"no class folders under {folder}")
    arrays, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((folder / name).iterdir()):
            if not f.is_file() or f.name.startswith("."):
                continue
            with Image.open(f) as im:
                im = im.convert("RGB")
                if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                    im = im.resize((IMAGE_SIZE, IMAGE_SIZE), resample=Image.Resampling.BILINEAR)
                arrays.append(np.asarray(im, dtype=np.float32))
            labels.append(label)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    x = ((x - mean) / std).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64), classes


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(x), 256):
        pred = model(x[start : start + 256]).argmax(1)
        correct += int((pred == y[start : start + 256]).sum())
    return correct / max(len(x), 1)


def _split_source(x, y, seed):
    """A stratified, seeded 80/20 split: ``((x_train, y_train), (x_val, y_val))``."""
    from sklearn.model_selection import train_test_split

    idx_train, idx_val = train_test_split(
        np.arange(len(y)), test_size=0.2, stratify=y.numpy(), random_state=seed
    )
    idx_train = torch.from_numpy(np.sort(idx_train))
    idx_val = torch.from_numpy(np.sort(idx_val))
    return (x[idx_train], y[idx_train]), (x[idx_val], y[idx_val])


def _train(model, train, val, epochs, seed, batch_size, progress):
    """Adam with a one-cycle schedule, seeded shuffling; a line per epoch with ``progress``."""
    (x_train, y_train), (x_val, y_val) = train, val
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(x_train) // batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    # One-cycle gets high accuracy in few epochs without tuning a decay schedule.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=1e-2, total_steps=max(epochs * steps_per_epoch, 1)
    )
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(batch)
        if progress:
            print(
                f"pretrain epoch {epoch + 1}/{epochs}: loss {total / len(order):.4f} "
                f"val acc {_accuracy(model, x_val, y_val):.4f}",
                file=sys.stderr,
                flush=True,
            )


def _save_state(model, checkpoint_path):
    """The model's ``state_dict``, written atomically; the same weights give the same bytes."""
    # torch.save names the zip's top folder after the file it writes to (a random temporary
    # name here), so identical weights got a new SHA-256, hence a new cache key, on every call.
    # A buffer gets torch's fixed name for file objects: same weights, same bytes.
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(checkpoint_path, buffer.getvalue())


def pretrain(
    source_dir,
    checkpoint_path,
    *,
    epochs: int = 8,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> dict:
    """Pretrain :func:`digits_net` on the class folders under ``source_dir``.

    The images are read from their PNG files exactly as feature extraction later sees
    them (RGB in [0, 1], normalised with ``MEAN``/``STD``, no augmentation). A
    stratified, seeded 20% is held out for validation. Training uses Adam with a
    one-cycle learning-rate schedule on CPU and is deterministic for a given seed in
    a given environment (seeded initialisation and shuffling, deterministic
    algorithms; the global RNG and determinism setting are restored afterwards).

    Parameters
    ----------
    source_dir : str or os.PathLike
        Folder with class subfolders ``"0"`` ... ``"4"`` (labels 0 ... 4).
    checkpoint_path : str or os.PathLike
        Where to save the plain ``state_dict`` (``torch.save``), written atomically. The same
        weights always give the same bytes, hence the same SHA-256 and cache key: pretraining
        twice with the same arguments reuses every cached code.
    epochs : int, default 8
        Passes over the training part.
    seed : int, default 0
        Seed for the split, initialisation and shuffling.
    batch_size : int, default 64
        Mini-batch size.
    progress : bool, default False
        Print one line per epoch to stderr.

    Returns
    -------
    dict
        ``train_accuracy``, ``val_accuracy``, ``epochs``, ``seconds``, ``n_images``,
        ``checkpoint`` (str) and ``classes`` (class folder names in label order).
    """
    t0 = time.perf_counter()
    x, y, classes = load_image_folder(source_dir)
    (x_train, y_train), (x_val, y_val) = _split_source(x, y, seed)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    # fork_rng keeps the caller's global RNG stream untouched by our seeding.
    with torch.random.fork_rng(devices=[]):
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            torch.manual_seed(seed)
            model = digits_net(len(classes))
            _train(model, (x_train, y_train), (x_val, y_val), epochs, seed, batch_size, progress)
        finally:
            torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)

    train_acc = _accuracy(model, x_train, y_train)
    val_acc = _accuracy(model, x_val, y_val)
    checkpoint_path = Path(checkpoint_path)
    _save_state(model, checkpoint_path)
    return {
        "train_accuracy": train_acc,
        "val_accuracy": val_acc,
        "epochs": epochs,
        "seconds": time.perf_counter() - t0,
        "n_images": len(y),
        "checkpoint": str(checkpoint_path),
        "classes": classes,
    }
