"""The data side of a run, shared by :func:`~cnncodes.experiment.run_experiment` (``cnncodes fit``)
and :func:`~cnncodes.workflows.finetuning.run_finetune` (``cnncodes finetune``): the checked
training and test images (split off by ``test_size``, or given), the images whose content
repeats, and the entries of the run's configuration that say which data and versions it saw.

Both runs go through the same functions here, so they split, check and report alike.
"""

from __future__ import annotations

import hashlib
import os
import platform
import warnings
from dataclasses import dataclass

import numpy as np

from .. import __version__
from ..errors import UsageError
from ..images.datasets import DatasetWarning
from .evaluation import check_labelled, stratified_split

__all__ = [
    "RunData",
    "check_on_error",
    "data_config",
    "find_duplicates",
    "library_versions",
    "prepare_data",
    "report_duplicates",
]


@dataclass
class RunData:
    """The images of a run, checked: training paths and labels (str), the test images (None
    without any), and ``split`` (``{"test_size", "seed"}`` when the test images were split off
    the training data, else None)."""

    paths: list
    labels: list
    test_paths: list | None = None
    test_labels: list | None = None
    split: dict | None = None

    def drop_train(self, indices):
        """Leave out the training images at ``indices`` (unreadable ones), with their labels."""
        bad = set(indices)
        self.paths = [p for i, p in enumerate(self.paths) if i not in bad]
        self.labels = [label for i, label in enumerate(self.labels) if i not in bad]


def check_on_error(on_error):
    """Refuse an ``on_error`` other than ``"raise"`` and ``"skip"``."""
    if on_error not in ("raise", "skip"):
        raise UsageError(f"on_error={on_error!r}: choose 'raise' or 'skip'")


def renamed_seed(seed, random_state, where):
    """``random_state``, or ``seed`` given under its old name (a FutureWarning): the workflows'
    split-and-folds seed is ``random_state``, as in scikit-learn; ``seed`` is the network's."""
    if seed is None:
        return random_state
    warnings.warn(
        f"{where}(seed=...) is now {where}(random_state=...): the seed of the test split and "
        "the folds (seed= still works, for now)",
        FutureWarning,
        stacklevel=3,
    )
    return seed


def prepare_data(paths, labels, *, test=None, test_size=None, seed=0):
    """Check the labelled images and split off the test images: a :class:`RunData`.

    Parameters
    ----------
    paths, labels : sequences
        The training images (all of them, when ``test_size`` splits off the test images).
    test : (paths, labels), optional
        Held-out images.
    test_size : float, optional
        Instead of ``test``: hold out this stratified fraction of ``paths`` (seeded by ``seed``;
        see :func:`~cnncodes.evaluation.stratified_split`).

    Raises
    ------
    UsageError
        Both ``test`` and ``test_size``; unlabelled images; fewer than two classes; a split that
        cannot be made.
    """
    if test is not None and test_size is not None:
        raise UsageError("give either test (held-out images) or test_size (a fraction), not both")
    paths = [os.fspath(p) for p in paths]
    check_labelled(paths, labels, "training data")
    labels = [str(label) for label in labels]
    if len(set(labels)) < 2:
        found = f"only the class {labels[0]!r}" if labels else "no images"
        raise UsageError(
            f"training data: {found}; a classifier needs at least two classes (two class "
            "sub-folders, or two labels in the manifest)"
        )
    if test_size is not None:
        split = stratified_split(paths, labels, test_size, seed)
        return RunData(*split, split={"test_size": test_size, "seed": seed})
    if test is not None:
        test_paths, test_labels = [os.fspath(p) for p in test[0]], test[1]
        check_labelled(test_paths, test_labels, "test data")
        return RunData(paths, labels, test_paths, [str(label) for label in test_labels])
    return RunData(paths, labels)


def find_duplicates(train, test):
    """Images whose content (SHA-256) repeats: ``test_in_train``, test images that are also
    training images (a leak into the test score; None without a test set), and
    ``within_train``, training images repeating an earlier one (they can land in a training
    and a validation fold at once)."""
    from ..images.load import file_digests

    listed = [d for d in file_digests(train) if isinstance(d, str)]
    seen = set(listed)
    shared = None
    if test is not None:
        shared = sum(1 for d in file_digests(test) if isinstance(d, str) and d in seen)
    return {"test_in_train": shared, "within_train": len(listed) - len(seen)}


def report_duplicates(data, log, *, stacklevel=3):
    """:func:`find_duplicates` of the run's images; warns (:class:`DatasetWarning`) when test
    images are training images and notes repeated training images in ``log``."""
    duplicates = find_duplicates(data.paths, data.test_paths)
    overlap = duplicates["test_in_train"] or 0
    if overlap:
        warnings.warn(
            f"{overlap} test image(s) are also training images (same file content): "
            "the test score overstates accuracy on new images",
            DatasetWarning,
            stacklevel=stacklevel,
        )
    if duplicates["within_train"]:
        log(
            f"note: {duplicates['within_train']} training image(s) repeat another's content: "
            "cross-validated scores may overstate accuracy on new images"
        )
    return duplicates


def _data_fingerprint(paths, labels):
    """SHA-256 of the (path, label) list: tells whether a rerun saw the same images."""
    h = hashlib.sha256()
    for i, path in enumerate(paths):
        label = "" if labels is None else str(labels[i])
        h.update(os.fsencode(path) + b"\0" + label.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def data_config(paths, labels, test_paths=None, test_labels=None):
    """The ``train`` and ``test`` entries of a run's configuration: how many images, of which
    classes, and fingerprints that tell whether a rerun saw the same ones."""
    return {
        "train": {
            "n_images": len(paths),
            "classes": {c: labels.count(c) for c in sorted(set(labels))},
            "sha256": _data_fingerprint(paths, labels),
        },
        "test": None
        if test_paths is None
        else {
            "n_images": len(test_paths),
            "sha256": _data_fingerprint(test_paths, test_labels),
        },
    }


def library_versions():
    """The versions of cnncodes, Python and the libraries that decide a run's numbers."""
    import h5py
    import sklearn
    import torch
    import torchvision

    return {
        "cnncodes": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "h5py": h5py.__version__,
    }
