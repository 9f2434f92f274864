"""The report folder of an experiment: metrics, every candidate, plots and the configuration.

:func:`write_report` writes, for an :class:`~cnncodes.experiment.ExperimentResult`:

================================  ===========================================================
``metrics.json``                  cross-validated score of the best candidate, best parameters,
                                  held-out accuracy, balanced accuracy, per-class precision and
                                  recall, confusion matrix; the images left out
``cv_results.csv``                scikit-learn's ``cv_results_``, one row per candidate
``confusion_matrix.png``          on the test images (or the cross-validated predictions)
``layer_sweep.png``               best cross-validated score per layer (layer sweeps only)
``layer_sweep.csv``               the same numbers (layer sweeps only)
``config.json``                   recipe, overrides, grid, folds, split, data fingerprints,
                                  the extractor (model, weights SHA-256, preprocessing),
                                  library versions, the command line
================================  ===========================================================

and :func:`write_comparison`, for a :class:`~cnncodes.compare.Comparison` (``cnncodes
compare``), ``compare.json`` (every row) and ``compare.png`` (held-out accuracy per approach,
with its training time). :func:`write_finetune_report` writes the report of a fine-tuning run
(``cnncodes finetune``): ``metrics.json`` (test metrics, the per-epoch history, timing),
``config.json``, ``confusion_matrix.png`` (with test images) and ``training_curves.png``
(:func:`plot_training_curves`).

Plots are drawn with matplotlib's object API (no pyplot state, no display needed).

A report is written as a whole: its files go into a temporary folder beside ``folder``, which then
takes the folder's place (:func:`_whole_folder`), so that a kill or a full disk leaves either the
earlier report, every file of it, or the new one, never ``metrics.json`` without ``config.json``.
A failed write names the file (:func:`~cnncodes.utils.diskspace.naming_write_failures`). An
existing folder is replaced only when it holds nothing but a report's files
(:func:`check_report_folder`, which the command line runs before the work).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import warnings

import numpy as np

from ..errors import UsageError
from ..utils.diskspace import naming_write_failures
from ..utils.files import (
    TMP_PREFIX,
    atomic_path,
    display,
    fsync_path,
    remove_stale_temporaries,
    temporary_path,
)
from ..utils.jsonable import jsonable, skipped_json, to_json_file

__all__ = [
    "REPORT_FILES",
    "check_report_folder",
    "write_report",
    "write_comparison",
    "plot_comparison",
    "plot_confusion_matrix",
    "plot_layer_sweep",
    "plot_training_curves",
    "write_finetune_report",
]

# Fonts with CJK or (monochrome) emoji glyphs, tried after matplotlib's DejaVu Sans where
# installed. Colour emoji fonts are bitmaps that Agg cannot draw, so they are not listed.
_FALLBACK_FONTS = (
    "Noto Sans CJK JP",
    "Noto Sans CJK SC",
    "Noto Sans CJK TC",
    "Noto Sans CJK KR",
    "Source Han Sans",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Droid Sans Fallback",
    "Microsoft YaHei",
    "Hiragino Sans",
    "PingFang SC",
    "Noto Emoji",
    "Segoe UI Emoji",
    "Symbola",
)


@functools.lru_cache(maxsize=1)
def _fonts():
    """``(families, covered code points)``: DejaVu Sans and the installed fallback fonts."""
    from matplotlib import font_manager, ft2font

    installed = {font.name: font.fname for font in font_manager.fontManager.ttflist}
    families = ["DejaVu Sans", *(name for name in _FALLBACK_FONTS if name in installed)]
    covered = set()
    for name in families:
        try:
            covered.update(ft2font.FT2Font(installed[name]).get_charmap())
        except (KeyError, OSError, RuntimeError):  # an unreadable font covers nothing
            continue
    return families, frozenset(covered)


def _drawable(label):
    """``label`` with each character no available font has written as ``U+XXXX``.

    Class names come from folder names in any script; without a font for a character,
    matplotlib draws a placeholder box and warns once per glyph. The code point keeps the label
    identifiable (``猫`` is ``U+732B``) and the plot free of warnings.
    """
    covered = _fonts()[1]
    text = str(label)
    return "".join(
        c if ord(c) in covered or not c.isprintable() or c == " " else f"U+{ord(c):04X}"
        for c in text
    )


@contextlib.contextmanager
def _drawing():
    """Fonts with the fallbacks, and no glyph warnings, while a figure is built and saved."""
    import matplotlib

    with matplotlib.rc_context({"font.family": _fonts()[0]}), warnings.catch_warnings():
        # Labels went through _drawable; a glyph still missing is a cosmetic box, not news.
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
        yield


def _figure(width, height):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_confusion_matrix(matrix, labels, path, title="Confusion matrix"):
    """Save a confusion matrix (rows: true class, columns: predicted) as an image at ``path``."""
    with _drawing():
        _plot_confusion_matrix(np.asarray(matrix), [_drawable(x) for x in labels], path, title)


def _plot_confusion_matrix(matrix, labels, path, title):
    n = len(labels)
    size = min(12.0, 2.5 + 0.45 * n)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="images")
    ax.set_xticks(range(n), labels, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        high = matrix.max() if matrix.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if high and matrix[i, j] > high / 2 else "black",
                )
    with atomic_path(path, suffix=os.path.splitext(path)[1]) as tmp:
        fig.savefig(tmp, dpi=110)


def plot_layer_sweep(table, path, scoring="accuracy"):
    """Save the best cross-validated score of every layer (with its std) as an image."""
    with _drawing():
        _plot_layer_sweep(table, path, scoring)


def _plot_layer_sweep(table, path, scoring):
    fig = _figure(max(5.0, 1.0 + 0.9 * len(table)), 3.6)
    ax = fig.add_subplot()
    x = np.arange(len(table))
    ax.errorbar(x, table["mean_test_score"], yerr=table["std_test_score"], marker="o", capsize=3)
    best = np.flatnonzero(table["best"].to_numpy())
    if best.size:
        ax.plot(x[best], table["mean_test_score"].to_numpy()[best], "r*", ms=14, label="best")
        ax.legend(loc="lower right")
    ax.set_xticks(x, [_drawable(layer) for layer in table["layer"]], rotation=30, ha="right")
    ax.set_xlabel("layer (early to top)")
    ax.set_ylabel(f"cross-validated {scoring}")
    ax.set_title("Best score of each layer")
    ax.grid(alpha=0.3)
    with atomic_path(path, suffix=os.path.splitext(path)[1]) as tmp:
        fig.savefig(tmp, dpi=110)


def _duration(seconds):
    """``0.4 s``, ``12 s``, ``3.2 min``, ``1.5 h``: a bar's time label (``failed``: None)."""
    if seconds is None:
        return "failed"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 600:
        return f"{seconds:.0f} s"
    if seconds < 36_000:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def plot_comparison(rows, path, title="Transfer approaches on one split"):
    """Save the held-out accuracy of each approach as bars, each labelled with its training time.

    ``rows`` are :attr:`cnncodes.compare.Comparison.rows` (``approach``, ``accuracy``,
    ``seconds``, optionally ``description``).
    """
    with _drawing():
        _plot_comparison(rows, path, title)


def _plot_comparison(rows, path, title):
    fig = _figure(max(5.5, 1.0 + 1.6 * len(rows)), 3.8)
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    accuracy = np.array([np.nan if r["accuracy"] is None else r["accuracy"] for r in rows])
    bars = ax.bar(x, np.nan_to_num(accuracy), color="tab:blue", alpha=0.85)
    for bar, row, value in zip(bars, rows, accuracy):
        text = f"{_fmt_accuracy(value)}\n{_duration(row['seconds'])}"
        ax.annotate(
            text,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    labels = [_drawable(r.get("description") or r["approach"]) for r in rows]
    ax.set_xticks(x, labels, rotation=15, ha="right")
    ax.set_ylim(0, 1.18)  # room above a bar at 1.0 for its labels
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"{title} (labels: accuracy, training time)")
    ax.grid(axis="y", alpha=0.3)
    with atomic_path(path, suffix=os.path.splitext(path)[1]) as tmp:
        fig.savefig(tmp, dpi=110)


def _fmt_accuracy(value):
    return "-" if value != value else f"{value:.3f}"


def plot_training_curves(history, path):
    """Save the loss per epoch (training, and validation where there is one) and the validation
    accuracy as an image; ``history`` is :attr:`cnncodes.FineTune.history_` (rows with ``epoch``,
    ``train_loss`` and optionally ``valid_loss``, ``valid_acc``)."""
    with _drawing():
        _plot_training_curves(list(history), path)


def _plot_training_curves(history, path):
    fig = _figure(8.0, 3.6)
    loss, accuracy = fig.subplots(1, 2)
    epochs = [row["epoch"] for row in history]

    def column(key):
        # None where an epoch has no such value (no validation split): a gap, not a zero.
        return np.array([row.get(key, np.nan) for row in history], dtype=float)

    loss.plot(epochs, column("train_loss"), marker="o", label="training")
    if history and any("valid_loss" in row for row in history):
        loss.plot(epochs, column("valid_loss"), marker="o", label="validation")
    loss.set_xlabel("epoch")
    loss.set_ylabel("cross-entropy loss")
    loss.set_title("Loss per epoch")
    loss.legend(loc="upper right")
    loss.grid(alpha=0.3)
    if history and any("valid_acc" in row for row in history):
        accuracy.plot(epochs, column("valid_acc"), marker="o", color="C1")
        accuracy.set_ylim(-0.02, 1.02)
    else:
        accuracy.text(0.5, 0.5, "no validation split", ha="center", va="center")
    accuracy.set_xlabel("epoch")
    accuracy.set_ylabel("validation accuracy")
    accuracy.set_title("Validation accuracy per epoch")
    accuracy.grid(alpha=0.3)
    for ax in (loss, accuracy):
        ax.xaxis.get_major_locator().set_params(integer=True)
    with atomic_path(path, suffix=os.path.splitext(path)[1]) as tmp:
        fig.savefig(tmp, dpi=110)


# ----------------------------------------------------------------------------- whole folders

#: The names a report folder holds (fit, finetune and compare reports), and the fine-tuning
#: run's per-epoch state, which ``cnncodes finetune --report DIR`` keeps in DIR while it trains.
REPORT_FILES = frozenset(
    {
        "metrics.json",
        "cv_results.csv",
        "confusion_matrix.png",
        "layer_sweep.png",
        "layer_sweep.csv",
        "config.json",
        "training_curves.png",
        "compare.json",
        "compare.png",
        "finetune.state",
    }
)


def _foreign(folder):
    """The entries of ``folder`` that are neither a report's files nor their temporaries."""
    return sorted(
        name
        for name in os.listdir(folder)
        if not (name in REPORT_FILES and os.path.isfile(os.path.join(folder, name)))
        and not (name.startswith(".") and TMP_PREFIX in name)
    )


def check_report_folder(folder, what="report folder"):
    """Raise :class:`~cnncodes.errors.UsageError` unless a report can be written as ``folder``:
    a path that does not exist yet, or a folder holding only a report's files (an earlier
    report, replaced as a whole). ``what`` names it in the message (``"--report"``)."""
    if folder is None or not os.path.exists(folder):
        return
    if not os.path.isdir(folder):
        raise UsageError(f"{what} {os.fspath(folder)!r} exists and is not a folder")
    others = _foreign(folder)
    if others:
        shown = ", ".join(display(n) for n in others[:5]) + (", ..." if len(others) > 5 else "")
        raise UsageError(
            f"{what} {display(folder)} holds files that are not a report's ({shown}); a report "
            "replaces its folder as a whole: give a new folder, or an earlier report's"
        )


def _exchange(a, b):
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the OS
    or its file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), b)


def _put_in_place(new, folder):
    """Make the folder ``new`` be ``folder``, replacing the earlier one, in one rename where
    the OS allows (else two: the earlier folder aside, the new one in)."""
    check_report_folder(folder)  # files put there during the run are never deleted
    if not os.path.exists(folder):
        os.rename(new, folder)
        return
    if _exchange(new, folder):
        shutil.rmtree(new, ignore_errors=True)  # now the earlier report
        return
    parent, name = os.path.split(folder)
    aside = temporary_path(parent, prefix=f".{name}.old{TMP_PREFIX}")
    os.rename(folder, aside)
    try:
        os.rename(new, folder)
    except BaseException:
        os.rename(aside, folder)
        raise
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def _whole_folder(folder):
    """Yield a new temporary folder beside ``folder``; on success it becomes ``folder``."""
    folder = os.path.realpath(folder)  # a link to a folder: the folder is replaced
    parent, name = os.path.split(folder)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(parent, prefix=None)  # what killed writers left, folders included
    tmp = temporary_path(parent, prefix=f".{name}{TMP_PREFIX}")
    os.mkdir(tmp)
    try:
        yield tmp
        with naming_write_failures(folder, "the report folder"):
            fsync_path(tmp)
            _put_in_place(tmp, folder)
            fsync_path(parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_folder(folder, steps):
    """Write a report as a whole: ``steps`` maps each file's name to ``write(path)``.

    Returns ``{name: path}`` of the files written, under ``folder``.
    """
    final = os.path.realpath(folder)
    with _whole_folder(folder) as tmp:
        for name, write in steps.items():
            with naming_write_failures(os.path.join(final, name), "the report file"):
                write(os.path.join(tmp, name))
    return {name: os.path.join(folder, name) for name in steps}


def write_finetune_report(folder, metrics, config):
    """Write the report of a fine-tuning run as ``folder`` (replacing an earlier report there).

    Parameters
    ----------
    metrics : dict
        Written as ``metrics.json``; its ``history`` (one row per epoch) is drawn as
        ``training_curves.png``, its ``test`` (see
        :func:`~cnncodes.experiment.classification_metrics`), when not None, as
        ``confusion_matrix.png``.
    config : dict
        Written as ``config.json``: what it takes to rerun.

    Returns
    -------
    dict
        ``{name: path}`` of the files written.
    """
    steps = {
        "metrics.json": functools.partial(to_json_file, metrics),
        "training_curves.png": functools.partial(plot_training_curves, metrics["history"]),
    }
    test = metrics.get("test")
    if test is not None:
        steps["confusion_matrix.png"] = functools.partial(
            plot_confusion_matrix,
            test["confusion_matrix"],
            test["labels"],
            title="Confusion matrix, test images",
        )
    steps["config.json"] = functools.partial(to_json_file, config)
    return _write_folder(folder, steps)


def _report_metrics(result):
    """``metrics.json`` of an experiment: its metrics, recipe, extraction, skipped images,
    layers (sweeps) and seconds."""
    metrics = dict(result.metrics)
    metrics["recipe"] = result.recipe
    metrics["extraction"] = result.extraction
    metrics["skipped"] = {part: skipped_json(items) for part, items in result.skipped.items()}
    if result.layers is not None:
        metrics["layers"] = [
            {
                "layer": row.layer,
                "mean_test_score": row.mean_test_score,
                "std_test_score": row.std_test_score,
                "best": bool(row.best),
            }
            for row in result.layers.itertuples()
        ]
    metrics["seconds"] = round(result.seconds, 3)
    return metrics


def _csv(frame, path):
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)


def _report_steps(result):
    """``{name: write(path)}`` of an experiment's report files, in the order written."""
    import pandas as pd

    results = pd.DataFrame(
        {
            k: (jsonable(list(v)) if k.startswith("param") else v)
            for k, v in result.search.cv_results_.items()
        }
    )
    steps = {
        "metrics.json": functools.partial(to_json_file, _report_metrics(result)),
        "cv_results.csv": functools.partial(_csv, results),
    }
    test = result.metrics.get("test")
    where = test if test is not None else result.metrics["cv"].get("predictions")
    if where is not None:
        title = (
            "Confusion matrix, test images"
            if test is not None
            else "Confusion matrix, cross-validated predictions"
        )
        steps["confusion_matrix.png"] = functools.partial(
            plot_confusion_matrix, where["confusion_matrix"], where["labels"], title=title
        )
    if result.layers is not None:
        steps["layer_sweep.png"] = functools.partial(
            plot_layer_sweep, result.layers, scoring=result.metrics["scoring"]
        )
        sweep = result.layers.assign(
            params=result.layers["params"].map(lambda p: repr(jsonable(p)))
        )
        steps["layer_sweep.csv"] = functools.partial(_csv, sweep)
    steps["config.json"] = functools.partial(to_json_file, result.config)
    return steps


def write_report(result, folder):
    """Write the report files of ``result`` as ``folder`` (replacing an earlier report there).

    Returns
    -------
    dict
        ``{name: path}`` of the files written.
    """
    return _write_folder(folder, _report_steps(result))


def write_comparison(comparison, folder):
    """Write ``compare.json`` and ``compare.png`` of a :class:`~cnncodes.compare.Comparison` as
    ``folder`` (replacing an earlier report there).

    Returns
    -------
    dict
        ``{name: path}`` of the files written.
    """
    steps = {
        "compare.json": functools.partial(to_json_file, comparison.to_dict()),
        "compare.png": functools.partial(plot_comparison, comparison.rows),
    }
    return _write_folder(folder, steps)
