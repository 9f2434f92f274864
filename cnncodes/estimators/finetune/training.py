"""The training loop: skorch's NeuralNetClassifier, its callbacks, and the per-epoch state file."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import socket
import sys
import time

import numpy as np
import torch

from ...errors import UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: no lock there
    fcntl = None

try:
    import skorch  # noqa: F401
except ImportError:  # pragma: no cover - the test command installs the extra
    raise ImportError(
        "fine-tuning needs skorch, an optional dependency: pip install 'cnncodes[finetune]' "
        "(or pip install skorch)"
    ) from None
from skorch import NeuralNetClassifier
from skorch.callbacks import Callback, EarlyStopping, LRScheduler, ProgressBar
from skorch.dataset import ValidSplit
from skorch.helper import predefined_split
from skorch.history import History
from skorch.utils import to_tensor

from ...utils.files import atomic_path, display

STATE_FORMAT = "cnncodes-finetune-state/1"


class FineTuneError(UsageError):
    """Training cannot go on: a NaN loss, a state file of another run, too little data."""


class _Classifier(NeuralNetClassifier):
    """skorch's classifier, with autocast (bf16/fp16) and channels_last inputs where asked."""

    autocast_dtype = None
    channels_last = False

    def infer(self, x, **fit_params):
        x = to_tensor(x, device=self.device)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = self.autocast_dtype
        device_type = torch.device(self.device).type
        with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
            return self.module_(x, **fit_params)


class NaNGuard(Callback):
    """Stop at the first non-finite training loss, naming the epoch and the learning rate."""

    def on_batch_end(self, net, batch=None, training=None, **kwargs):
        loss = kwargs.get("loss")
        if training and loss is not None and not torch.isfinite(loss).all():
            epoch = len(net.history)
            lrs = sorted({group["lr"] for group in net.optimizer_.param_groups})
            raise FineTuneError(
                f"the training loss became {float(loss.detach())} in epoch {epoch} (learning rate "
                f"{', '.join(f'{lr:g}' for lr in lrs)}): lower lr (and trunk_lr), or check the "
                "images and labels"
            )


class LearningRates(Callback):
    """Record each epoch's learning rates: the head's (``lr``) and the pretrained layers'."""

    def on_epoch_begin(self, net, **kwargs):
        groups = net.optimizer_.param_groups
        net.history.record("lr", groups[-1]["lr"])
        net.history.record("trunk_lr", groups[0]["lr"])


class ResumableEarlyStopping(EarlyStopping):
    """skorch's EarlyStopping, which on a resumed run carries on counting from the history."""

    def on_train_begin(self, net, **kwargs):
        super().on_train_begin(net, **kwargs)
        for row in net.history:
            score = row.get(self.monitor)
            if score is None:
                continue
            if self._is_score_improved(score):
                self.dynamic_threshold_ = self._calc_new_threshold(score)
                self.misses_ = 0
                self.best_epoch_ = row["epoch"]
            else:
                self.misses_ += 1
        best = getattr(net, "resumed_best_", None)
        if best is not None:
            self.best_model_weights_ = best


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _stderr_print(*args, **kwargs):
    """skorch's epoch lines go to stderr (stdout may carry JSON); colours only on a terminal."""
    text = " ".join(map(str, args))
    if not sys.stderr.isatty():
        text = _ANSI.sub("", text)
    print(text, file=sys.stderr, flush=True, **kwargs)


def _write_error(path, exc):
    """The OSError a failed write of ``path`` is reported as: errno and message name the file.

    torch.save writes through its own C++ stream, which reports a full disk as a RuntimeError
    (``[enforce fail at inline_container.cc:...] unexpected pos ...``, or ``... file write
    failed``): such a failure is taken for a full disk (ENOSPC), its message kept in brackets.
    """
    if isinstance(exc, OSError):
        code, reason = exc.errno or errno.EIO, exc.strerror or str(exc)
    else:
        code, reason = errno.ENOSPC, os.strerror(errno.ENOSPC)
    if code == errno.ENOSPC:
        reason = f"{reason}: the disk is full"
    if not isinstance(exc, OSError):
        reason = f"{reason} (torch.save: {str(exc).strip()})"
    return OSError(code, f"{reason}; not written, the file keeps what it held before", path)


def save_atomically(obj, path):
    """``torch.save(obj)`` to ``path`` through :func:`~cnncodes.utils.files.atomic_path`: the
    file is replaced whole or not at all. A failed write (a full disk) raises an OSError naming
    ``path`` (errno ENOSPC for a full disk), the file left as it was."""
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    except RuntimeError as exc:  # torch's stream writer: a short write, i.e. a full disk
        if not re.search(r"inline_container|unexpected pos|file write failed|PytorchStreamWriter",
                         str(exc)):  # fmt: skip
            raise
        raise _write_error(path, exc) from exc


def _lock(path, lock_path):
    """The descriptor of ``lock_path``, locked; a FineTuneError naming the holder if it is held."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 500).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise FineTuneError(
                f"{display(path)}: another run is writing this fine-tuning state ({holder}); "
                "wait for it to end (or stop it), or give another state file"
            ) from None
        try:  # its holder may have removed it meanwhile: then lock the one under the name now
            if os.path.samestat(os.fstat(fd), os.stat(lock_path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def state_lock(path):
    """Hold ``<path>.lock`` for the block: one writer per state file (nothing if path is None).

    An exclusive ``flock`` on a file beside the state, which names its holder (process, host,
    start) for the refusal of a second run. The kernel releases it when the process ends, a
    kill included (or when the last child it forked does): a killed run never leaves it held.
    The file is removed at the end of the block.
    """
    if path is None or fcntl is None:
        yield
        return
    path = os.fspath(path)
    lock_path = path + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
    fd = _lock(path, lock_path)
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}, since {since}".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        os.close(fd)


def run_settings(params, arch, trunk_cached, paths, labels):
    """What a state file records of its run (JSON text), to name what differs on a resume."""
    settings = {**params, "architecture": arch, "trunk_cached": trunk_cached}
    digest = fingerprint([list(paths), labels])[:8]
    settings["images and labels"] = f"{len(paths)} images ({digest})"
    return json.dumps(settings, sort_keys=True, default=str)


def _differences(stored, current):
    """``"name: X in the state, Y now"`` for each setting that differs; "" if unknown."""
    if not isinstance(stored, str) or current is None:
        return ""  # a state file of an older version: it holds only the fingerprint
    try:
        before, now = json.loads(stored), json.loads(current)
    except ValueError:
        return ""
    names = sorted(set(before) | set(now))
    missing = "(none)"
    return "; ".join(
        f"{k}: {_shown(before.get(k, missing))} in the state, {_shown(now.get(k, missing))} now"
        for k in names
        if before.get(k, missing) != now.get(k, missing)
    )


def _shown(value):
    return value if isinstance(value, str) else repr(value)


def fingerprint(values):
    """A short digest of a run's configuration and data, stored in its state file."""
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class EpochState(Callback):
    """After every epoch, the whole training state in one file, written atomically.

    Module and optimizer state, the history, the random-number generator and the early-stopping
    best weights: a killed run loses at most the epoch it was in, and a resumed run continues
    the same one (same shuffles, same augmentations on the CPU).
    """

    def __init__(self, path, run_fingerprint, description, settings=None):
        self.path = path
        self.run_fingerprint = run_fingerprint
        self.description = description
        self.settings = settings  # run_settings(): what a refusal names when they differ

    def on_epoch_end(self, net, **kwargs):
        best = None
        for callback in net.callbacks_:
            if isinstance(callback[1], EarlyStopping):
                best = callback[1].best_model_weights_
        state = {
            "format": STATE_FORMAT,
            "fingerprint": self.run_fingerprint,
            "description": self.description,
            "settings": self.settings,
            "epochs": len(net.history),
            "module": net.module_.state_dict(),
            "optimizer": net.optimizer_.state_dict(),
            "history": json.dumps(net.history.to_list()),
            "rng": torch.get_rng_state(),
            "best": best,
        }
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        save_atomically(state, self.path)


def read_state(path, run_fingerprint, description, settings=None):
    """The state a killed run left at ``path``, checked to belong to this run; None if absent.

    One of another run is refused naming the settings that differ (``settings``, as
    :func:`run_settings` gives them); a state file of an older version, which lacks them, with
    both runs' descriptions.
    """
    if not os.path.exists(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file: never guess
        raise FineTuneError(
            f"{path}: cannot be read as a fine-tuning state file ({exc}); remove it to start afresh"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise FineTuneError(f"{path}: not a cnncodes fine-tuning state file; remove it or rename")
    differences = _differences(state.get("settings"), settings)
    if state["fingerprint"] != run_fingerprint and differences:
        raise FineTuneError(
            f"{path}: holds the state of another run ({differences}); resume with the same "
            "model, data and settings, or remove it to start afresh"
        )
    if state["fingerprint"] != run_fingerprint:
        raise FineTuneError(
            f"{path}: holds the state of another run ({state.get('description')}), not of this "
            f"one ({description}); resume with the same model, data and settings, or remove it "
            "to start afresh"
        )
    return state


def restore(net, state):
    """Put a resumed run's state into an initialised skorch net."""
    net.module_.load_state_dict(state["module"])
    net.optimizer_.load_state_dict(state["optimizer"])
    net.history = History(json.loads(state["history"]))
    net.resumed_best_ = state.get("best")
    torch.set_rng_state(state["rng"])


#: The fraction ``valid_size="auto"`` holds out where the data allow it.
AUTO_VALID_SIZE = 0.1


def auto_valid_size(labels):
    """``(valid_size, note)``: what ``valid_size="auto"`` holds out of images with ``labels``.

    :data:`AUTO_VALID_SIZE` where a stratified split of it keeps an image of each class on each
    side; else just enough for one image per class (as many classes as validation images);
    else, where a class has a single image or the classes outnumber half the images, none.
    ``note``: one line saying why there is no validation split (None when there is one).
    """
    labels = np.asarray(labels)
    n = len(labels)
    classes, counts = np.unique(labels, return_counts=True)
    k = len(classes)
    if n == 0 or not _split_possible(n, counts, AUTO_VALID_SIZE):
        size = k / n if n else 0.0
        if n and math.ceil(size * n) > k:  # float rounding: never a validation image too many
            size = math.nextafter(size, 0.0)
        if not n or not _split_possible(n, counts, size):
            smallest = int(counts.min()) if n else 0
            return 0.0, (
                f"valid_size='auto': no validation split ({n} images of {k} classes, the "
                f"smallest with {smallest}: holding out one image per class would leave a class "
                "without a training image); training runs without validation loss and accuracy"
            )
        return size, None
    return AUTO_VALID_SIZE, None


def _split_possible(n, counts, valid_size):
    n_valid = math.ceil(valid_size * n)
    k = len(counts)
    return counts.min() >= 2 and n_valid >= k and n - n_valid >= k


def stratified_split(labels, valid_size, seed):
    """``(train_indices, valid_indices)``: skorch's stratified ValidSplit, with clear errors."""
    labels = np.asarray(labels)
    n = len(labels)
    if not valid_size:
        return np.arange(n), np.arange(0)
    classes, counts = np.unique(labels, return_counts=True)
    n_valid = math.ceil(valid_size * n)
    needed = math.ceil(len(classes) / valid_size)
    if counts.min() < 2 or n_valid < len(classes) or n - n_valid < len(classes):
        raise FineTuneError(
            f"valid_size={valid_size!r} holds out {n_valid} of {n} images for validation, but a "
            f"stratified split needs at least one image of each of the {len(classes)} classes "
            f"on each side (the smallest class has {counts.min()}): give at least {needed} "
            f"images with 2 or more per class, a larger valid_size, or valid_size=0 (no "
            "validation, no early stopping)"
        )
    dataset = torch.utils.data.TensorDataset(torch.arange(n))
    train, valid = ValidSplit(valid_size, stratified=True, random_state=seed)(dataset, labels)
    return np.asarray(train.indices), np.asarray(valid.indices)


def _accuracy(net, X, y):
    """``valid_acc``: the fraction of validation images predicted right, from skorch's cached
    predictions; scikit-learn's ``accuracy_score`` without its input checks (which cost 20 ms an
    epoch on a loaded machine, as much as the epoch of a head on cached codes)."""
    return float(np.mean(net.predict(X) == np.asarray(y)))


def make_classifier(
    module,
    *,
    n_classes,
    lr,
    trunk_lr,
    weight_decay,
    epochs,
    batch_size,
    valid,
    early_stopping,
    num_workers,
    device,
    autocast_dtype,
    channels_last,
    progress,
    state,
):
    """The skorch classifier over ``module``: AdamW with a lower learning rate for the trunk,
    cosine annealing over ``epochs``, early stopping on the validation loss when asked."""
    callbacks = [
        ("nan_guard", NaNGuard()),
        (
            "lr_scheduler",
            LRScheduler(
                policy=torch.optim.lr_scheduler.CosineAnnealingLR,
                T_max=max(epochs, 1),
                event_name=None,
            ),
        ),
        ("learning_rates", LearningRates()),
    ]
    if early_stopping:
        callbacks.append(
            (
                "early_stopping",
                ResumableEarlyStopping(
                    monitor="valid_loss",
                    patience=early_stopping,
                    load_best=True,
                    sink=_stderr_print,
                ),
            )
        )
    if progress and sys.stderr.isatty():
        callbacks.append(("progress_bar", ProgressBar()))
    if state is not None:
        callbacks.append(("epoch_state", state))
    net = _Classifier(
        module,
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.AdamW,
        lr=lr,
        optimizer__weight_decay=weight_decay,
        optimizer__param_groups=[("trunk.*", {"lr": trunk_lr})],
        max_epochs=epochs,
        batch_size=batch_size,
        train_split=None if valid is None else predefined_split(valid),
        iterator_train__shuffle=True,
        iterator_train__num_workers=num_workers,
        iterator_valid__num_workers=num_workers,
        classes=list(range(n_classes)),
        callbacks=callbacks,
        device=str(device),
        verbose=1 if progress else 0,
        callbacks__valid_acc__scoring=_accuracy,
        **(
            {"callbacks__print_log__sink": _stderr_print}
            if progress
            else {"callbacks__print_log": None}
        ),
    )
    net.autocast_dtype = autocast_dtype
    net.channels_last = channels_last
    return net


@contextlib.contextmanager
def torch_threads(n):
    """Run the block with ``n`` torch intra-op threads (None: as set); restored after.

    A head on cached codes multiplies matrices of a few thousand values: the OpenMP threads of
    a second core cost more in synchronisation than they compute, most of all on a loaded
    machine (bench/RESULTS.md section 13)."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def fixed_seed(seed):
    """Seed torch's generator for the block; the caller's random state is restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def encode_labels(paths, y):
    """``(classes, encoded labels)`` of one label per image, two classes or more."""
    if y is None:
        raise UsageError("FineTune.fit needs labels y, one per image")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(paths):
        raise UsageError(
            f"y has shape {y.shape}; FineTune needs one label per image ({len(paths)} images)"
        )
    classes, encoded = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise UsageError(
            f"y holds a single class {str(classes[0])!r}; fine-tuning needs two or more"
        )
    return classes, encoded


def train(module, train_set, y_train, valid_set, n_classes, ft, state, *runtime):
    """Train ``module`` with the FineTune ``ft``'s settings (resuming from ``state`` with
    ``ft.resume``); returns the history, one dict per epoch."""
    device, dtype, channels_last, workers = runtime
    net = make_classifier(
        module,
        n_classes=n_classes,
        lr=float(ft.lr),
        trunk_lr=float(ft.lr) / 10 if ft.trunk_lr is None else float(ft.trunk_lr),
        weight_decay=float(ft.weight_decay),
        epochs=int(ft.epochs),
        batch_size=int(ft.batch_size),
        valid=valid_set,
        early_stopping=ft.early_stopping,
        num_workers=workers,
        device=device,
        autocast_dtype=dtype,
        channels_last=channels_last,
        progress=bool(ft.progress),
        state=state,
    )
    net.initialize()
    done = 0
    if ft.resume:
        found = read_state(state.path, state.run_fingerprint, state.description, state.settings)
        if found is not None:
            restore(net, found)
            done = found["epochs"]
    if ft.epochs > done:
        net.partial_fit(train_set, y_train, epochs=int(ft.epochs) - done)
    keys = ("epoch", "train_loss", "valid_loss", "valid_acc", "dur", "lr", "trunk_lr")
    return [
        {k: (int if k == "epoch" else float)(row[k]) for k in keys if k in row}
        for row in net.history
    ]
