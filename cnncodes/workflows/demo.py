"""The offline demo: does pre-training help when only a few labelled images exist?

Self-contained and offline. It writes scikit-learn's bundled handwritten digits as PNG files,
pretrains a small CNN on a *source* task (digits 0-4, about 900 images), then on a *target* task
(digits 5-9, only a few labelled images per class) compares linear classifiers trained on

- codes from the pretrained network's top layer, ``flatten`` (scenario 1),
- codes from an earlier layer of the same network, ``features.7`` with pyramid pooling
  (scenario 3),
- codes from the same architecture untrained (random weights),
- raw pixels,

and reports test accuracy on the remaining target images. Every row names its layer and pooling,
and :func:`fit_command` gives the ``cnncodes fit`` line that reproduces it. A second run reuses
the checkpoint and the cached codes: nothing goes through the network again.
"""

from __future__ import annotations

import json
import numbers
import os
import shlex
import time
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..extraction.extract import extract_codes
from ..images.datasets import load_dataset
from ..images.load import load_image
from ..networks.models import resolve_spec
from ..utils.files import atomic_path, atomic_write_bytes
from . import demo_data, recipes

__all__ = [
    "run_demo",
    "FEATURE_SETS",
    "fit_command",
    "local_imagenet_weights",
    "raw_pixels",
    "summary_lines",
]

# The network declares its own preprocessing (32x32, mean and std 0.5): demo_data.PREPROCESSING.
MODEL = "cnncodes.demo_data:digits_net"
CHECKPOINT = "digits_net_source.pth"
#: (name, description, weights ("pretrained" | "none" | None for pixels), layer, pooling).
#: The description names the layer and the pooling: the table, the plot and the report show it.
#: ``flatten`` is already a 64-d vector, which every pooling passes through unchanged ("avg" is
#: only the default that keys its cache entry).
FEATURE_SETS = (
    (
        "pretrained-top",
        "pretrained CNN: flatten (top layer, 64-d, no pooling)",
        "pretrained",
        "flatten",
        "avg",
    ),
    (
        "pretrained-early",
        "pretrained CNN: features.7 (32x8x8), pyramid pooling",
        "pretrained",
        "features.7",
        "pyramid",
    ),
    (
        "untrained-top",
        "untrained CNN: flatten (top layer, 64-d, no pooling)",
        "none",
        "flatten",
        "avg",
    ),
    ("raw-pixels", "raw pixels (32x32 grey, 1024-d)", None, None, None),
)
RECIPES = ("linear_probe", "linear_svm")


def fit_command(name, recipe, out_dir="demo-output", seed=0, cache_dir="auto"):
    """The ``cnncodes fit`` arguments that reproduce one row of the demo's table.

    Same data, network, layer, pooling, recipe, grid and folds as :func:`run_demo` with its
    default ``Cs`` and ``test_per_class``: the held-out accuracy it prints is the demo's number
    for that row and recipe. ``None`` for raw pixels (no network). ``cache_dir`` is the demo's:
    a folder adds ``--cache-dir``, None ``--no-cache``, so that the command reads the codes the
    demo cached rather than computing them into the default cache.

    Examples
    --------
    >>> " ".join(fit_command("pretrained-early", "linear_svm"))  # doctest: +NORMALIZE_WHITESPACE
    'fit demo-output/data/target_train --pipeline linear_svm --model
    cnncodes.demo_data:digits_net --weights demo-output/digits_net_source.pth --layer features.7
    --pooling pyramid --test demo-output/data/target_test'
    """
    rows = {row[0]: row for row in FEATURE_SETS}
    if name not in rows:
        raise UsageError(f"name={name!r}: choose one of {', '.join(rows)}")
    if recipe not in RECIPES:
        raise UsageError(f"recipe={recipe!r}: choose one of {', '.join(RECIPES)}")
    _, _, weights, layer, pooling = rows[name]
    if weights is None:
        return None
    data = f"{out_dir}/data"
    argv = ["fit", f"{data}/target_train", "--pipeline", recipe, "--model", MODEL, "--weights"]
    argv.append(f"{out_dir}/{CHECKPOINT}" if weights == "pretrained" else "none")
    argv += ["--layer", layer]
    if pooling != "avg":  # "avg" is the default; on flatten it changes nothing anyway
        argv += ["--pooling", pooling]
    argv += ["--test", f"{data}/target_test"]
    if seed != 0:
        argv += ["--random-state", str(seed)]
    if cache_dir is None:
        argv.append("--no-cache")
    elif cache_dir != "auto":
        argv += ["--cache-dir", os.fspath(cache_dir)]
    return argv


def raw_pixels(paths):
    """Grey pixel values in [0, 1] of each image, flattened: the no-network baseline."""
    rows = [np.asarray(load_image(p).convert("L"), dtype=np.float32).ravel() / 255 for p in paths]
    return np.stack(rows)


def _pretrain(workdir, data, seed, epochs, log):
    checkpoint = os.path.join(workdir, CHECKPOINT)
    marker = os.path.join(workdir, "pretrain.json")
    if os.path.isfile(checkpoint) and os.path.isfile(marker):
        try:
            with open(marker, encoding="utf-8") as f:
                info = json.load(f)
        except (OSError, ValueError):  # unreadable marker: pretrain again rather than trust it
            info = {}
        if isinstance(info, dict) and info.get("seed") == seed and info.get("epochs") == epochs:
            log(
                f"source network: reusing {checkpoint} "
                f"(validation accuracy {info['val_accuracy']:.3f})"
            )
            return checkpoint, info
    log("source network: pretraining on digits 0-4 ...")
    info = demo_data.pretrain(data["source"], checkpoint, seed=seed, epochs=epochs)
    info["seed"] = seed
    _write_json(marker, info)
    log(
        f"source network: {info['n_images']} images, validation accuracy "
        f"{info['val_accuracy']:.3f}, {info['seconds']:.1f} s"
    )
    return checkpoint, info


def _write_json(path, obj):
    """Write ``obj`` as JSON atomically, so an interrupted run never leaves half a file."""
    data = (json.dumps(obj, indent=1) + "\n").encode("utf-8")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def _subsample(dataset, per_class, seed):
    """``(paths, labels)`` with at most ``per_class`` images of each class (seeded, sorted)."""
    if per_class is None:
        return list(dataset.paths), list(dataset.labels)
    rng = np.random.default_rng(seed)
    labels = np.array(dataset.labels)
    keep = []
    for label in sorted(set(dataset.labels)):
        idx = np.flatnonzero(labels == label)
        keep.extend(np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False)))
    return [dataset.paths[i] for i in keep], [dataset.labels[i] for i in keep]


def _check_options(shots, test_per_class, epochs, Cs):
    def positive_int(value):
        return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1

    if not positive_int(shots) or shots < 2:
        raise UsageError(
            f"shots={shots!r}: expected an int >= 2 (cross-validation needs two labelled images "
            "per class)"
        )
    if test_per_class is not None and not positive_int(test_per_class):
        raise UsageError(f"test_per_class={test_per_class!r}: expected None or an int >= 1")
    if not positive_int(epochs):
        raise UsageError(f"epochs={epochs!r}: expected an int >= 1")
    if Cs is not None:
        try:
            values = [float(c) for c in Cs]
        except (TypeError, ValueError):
            values = []
        if not values or not all(np.isfinite(c) and c > 0 for c in values):
            raise UsageError(f"Cs={Cs!r}: expected None or a non-empty list of positive numbers")
        return values
    return None


def _feature_step(name, weights, layer, pooling, checkpoint, cache_dir, progress):
    from sklearn.preprocessing import FunctionTransformer

    from ..estimators.codes import CNNCodes

    if weights is None:
        return FunctionTransformer(raw_pixels)
    return CNNCodes(
        model=MODEL,
        weights=checkpoint if weights == "pretrained" else "none",
        layer=layer,
        pooling=pooling,
        cache_dir=cache_dir,
        num_workers=0,
        progress=progress,
    )


def run_demo(
    out_dir="demo-output",
    *,
    cache_dir="auto",
    shots=5,
    seed=0,
    test_per_class=None,
    epochs=8,
    Cs=None,
    progress=None,
    log=print,
    log_table=True,
):
    """Run the demo; returns the report (also written to ``out_dir/report.json``).

    Parameters
    ----------
    out_dir : str
        Where the data, the checkpoint and the report go.
    cache_dir : "auto", None or str
        The code cache (see :func:`cnncodes.cache.resolve_cache_dir`).
    shots : int, default 5
        Labelled target images per class (at least 2, for cross-validation).
    seed : int, default 0
        Seed of the labelled images' choice, the pretraining and the cross-validation.
    test_per_class : int, optional
        Test on at most this many target images per class (a seeded choice); by default on
        every target image that is not labelled (about 170 per class).
    epochs : int, default 8
        Pretraining epochs of the source network.
    Cs : list of float, optional
        The regularisation values both recipes search (``clf__C``); by default each recipe's own
        sweep. Fewer values make a quicker, coarser demo.
    progress : bool, optional
        Progress bars while codes are computed (``None``: on a terminal).
    log : callable
        Receives progress lines (``print`` by default).
    log_table : bool, default True
        Also send the results table and the verdict to ``log`` (the command line prints them
        as its result instead: :func:`summary_lines`).

    Returns
    -------
    dict
        ``accuracy`` (per feature set and recipe), ``extraction`` (images ``computed`` by a
        network and ``cached``), ``pretraining``, ``best_params``, ``verdict``, the settings,
        ``feature_sets`` (descriptions), ``layers`` (each feature set's layer and pooling),
        ``commands`` (per feature set and recipe, the ``cnncodes fit`` line that reproduces it:
        :func:`fit_command`, with this ``cache_dir``; empty when ``Cs`` or ``test_per_class`` is
        given, which the command line cannot express) and ``seconds``.

    Examples
    --------
    >>> report = run_demo("demo-output", log=lambda line: None)  # doctest: +SKIP
    >>> sorted(report["accuracy"])  # doctest: +SKIP
    ['pretrained-early', 'pretrained-top', 'raw-pixels', 'untrained-top']
    """
    Cs = _check_options(shots, test_per_class, epochs, Cs)
    started = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    data = demo_data.write_digits_dataset(
        os.path.join(out_dir, "data"), n_target_train_per_class=shots, seed=seed
    )
    train = load_dataset(data["target_train"])
    test_paths, test_labels = _subsample(load_dataset(data["target_test"]), test_per_class, seed)
    counts = data["counts"]
    log(
        f"data: {counts['source']} source images (digits 0-4); target digits 5-9: "
        f"{counts['target_train']} labelled ({shots} per class), {len(test_paths)} to test"
    )
    checkpoint, pre_info = _pretrain(out_dir, data, seed, epochs, log)
    paths = train.paths + test_paths
    extraction = _extract_once(paths, checkpoint, cache_dir, progress, log)
    accuracy, best_params = _fit_feature_sets(
        (train.paths, train.labels), (test_paths, test_labels), checkpoint, cache_dir, Cs,
        seed, progress,
    )  # fmt: skip
    verdict = _verdict(accuracy)
    if log_table:
        for line in [*_table(accuracy), verdict]:
            log(line)
    commands = {}
    if Cs is None and test_per_class is None:  # the command line has no knob for either
        commands = _fit_commands(out_dir, seed, cache_dir)
    report = {
        "shots_per_class": shots,
        "seed": seed,
        "test_per_class": test_per_class,
        "epochs": epochs,
        "Cs": Cs,
        "n_target_train": len(train.paths),
        "n_target_test": len(test_paths),
        "pretraining": pre_info,
        "extraction": extraction,
        "accuracy": accuracy,
        "best_params": best_params,
        "feature_sets": {n: d for n, d, *_ in FEATURE_SETS},
        "layers": {n: {"layer": layer, "pooling": pool} for n, _, _, layer, pool in FEATURE_SETS},
        "commands": commands,
        "verdict": verdict,
        "seconds": time.perf_counter() - started,
    }
    _write_outputs(report, out_dir, log)
    return report


def _extract_once(paths, checkpoint, cache_dir, progress, log):
    """Extract every feature set's codes up front, so that the grid searches only ever hit the
    cache; returns ``{"computed", "cached"}``."""
    extraction = {"computed": 0, "cached": 0}
    for _name, _desc, weights, layer, pooling in FEATURE_SETS:
        if weights is None:
            continue
        spec = resolve_spec(MODEL, checkpoint if weights == "pretrained" else "none")
        result = extract_codes(
            paths, spec, layer, pooling, cache_dir=cache_dir, num_workers=0, progress=progress
        )
        extraction["computed"] += result.computed
        extraction["cached"] += result.cached
    log(
        f"codes: {extraction['computed']} images through a network, "
        f"{extraction['cached']} served from the cache"
    )
    return extraction


def _fit_feature_sets(train, test, checkpoint, cache_dir, Cs, seed, progress):
    """Every recipe's grid search on every feature set: ``(test accuracy, best parameters)``,
    each by feature set and recipe."""
    from sklearn.model_selection import GridSearchCV

    (train_paths, y_train), (test_paths, y_test) = train, test
    y_train, y_test = np.array(y_train), np.array(y_test)
    accuracy, best_params = {}, {}
    for name, _desc, weights, layer, pooling in FEATURE_SETS:
        step = _feature_step(name, weights, layer, pooling, checkpoint, cache_dir, progress)
        for recipe in RECIPES:
            pipe, grid = recipes.get(recipe).build()
            pipe.set_params(cnncodes=step)
            if "random_state" in pipe.named_steps["clf"].get_params():
                # Seeded, so that a recipe whose solver shuffles gives the same table every run.
                pipe.set_params(clf__random_state=seed)
            grid = {k: v for k, v in grid.items() if not k.startswith("cnncodes__")}
            if Cs is not None:
                grid["clf__C"] = Cs
            search = GridSearchCV(pipe, grid, cv=recipes.make_cv(y_train, seed=seed))
            search.fit(train_paths, y_train)
            acc = float(np.mean(search.predict(test_paths) == y_test))
            accuracy.setdefault(name, {})[recipe] = acc
            best_params.setdefault(name, {})[recipe] = {
                k: (v if isinstance(v, (int, float, str)) else repr(v))
                for k, v in search.best_params_.items()
            }
    return accuracy, best_params


def _fit_commands(out_dir, seed, cache_dir):
    """Per feature set and recipe, the ``cnncodes fit`` line that reproduces it."""
    commands = {}
    for name, *_ in FEATURE_SETS:
        for recipe in RECIPES:
            argv = fit_command(name, recipe, out_dir, seed, cache_dir)
            if argv is not None:
                commands.setdefault(name, {})[recipe] = shlex.join(["cnncodes", *argv])
    return commands


def _write_outputs(report, out_dir, log):
    """``report.json`` and ``comparison.png``; logs where they are and the best row's command."""
    accuracy, commands = report["accuracy"], report["commands"]
    _write_json(os.path.join(out_dir, "report.json"), report)
    _plot(accuracy, os.path.join(out_dir, "comparison.png"))
    log(
        f"report: {os.path.join(out_dir, 'report.json')}, {os.path.join(out_dir, 'comparison.png')}"
    )
    best = max(
        ((name, recipe) for name, row in commands.items() for recipe in row),
        key=lambda key: accuracy[key[0]][key[1]],
        default=None,
    )
    if best is not None:
        log(f"the best row again, from the command line: {commands[best[0]][best[1]]}")


def summary_lines(report):
    """The results table of a demo report and its verdict, as lines of text."""
    return [*_table(report["accuracy"]), report["verdict"]]


def local_imagenet_weights(limit=3):
    """``[(model name, weights name)]`` of torchvision weights already in ``$TORCH_HOME``.

    Only file names are compared (nothing is read or fetched); at most ``limit`` entries.
    """
    import torch
    import torchvision

    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    if not os.path.isdir(folder):
        return []
    present = set(os.listdir(folder))
    found = []
    for name in torchvision.models.list_models(module=torchvision.models):
        for member in torchvision.models.get_model_weights(name):
            if os.path.basename(member.url) in present:
                found.append((name, member.name))
                if len(found) >= limit:
                    return found
    return found


def _table(accuracy):
    names = {n: d for n, d, *_ in FEATURE_SETS}
    width = max(len(d) for d in names.values())
    head = f"{'test accuracy on digits 5-9':<{width}}  " + "  ".join(f"{r:>12}" for r in RECIPES)
    lines = [head, "-" * len(head)]
    for name, row in accuracy.items():
        lines.append(f"{names[name]:<{width}}  " + "  ".join(f"{row[r]:>12.3f}" for r in RECIPES))
    return lines


def _verdict(accuracy):
    best = {name: max(row.values()) for name, row in accuracy.items()}
    pre = max(best["pretrained-top"], best["pretrained-early"])
    base = max(best["untrained-top"], best["raw-pixels"])
    if pre > base:
        return (
            f"Pre-training helps: best pretrained codes {pre:.3f} vs best baseline {base:.3f} "
            f"(+{pre - base:.3f}) with only a few labelled images per class."
        )
    return (
        f"Pre-training did not help here: best pretrained codes {pre:.3f} vs best baseline "
        f"{base:.3f}."
    )


def _plot(accuracy, path):
    import textwrap

    from .report import _figure

    names = {n: d for n, d, *_ in FEATURE_SETS}
    fig = _figure(9, 4.2)
    ax = fig.add_subplot()
    x = np.arange(len(accuracy))
    width = 0.8 / len(RECIPES)
    for i, recipe in enumerate(RECIPES):
        bars = ax.bar(
            x + i * width, [row[recipe] for row in accuracy.values()], width, label=recipe
        )
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    # Wrapped labels (layer and pooling on their own lines) stay apart at any row count.
    ax.set_xticks(
        x + width * (len(RECIPES) - 1) / 2,
        [textwrap.fill(names[n], 22) for n in accuracy],
        fontsize=8,
    )
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    # Outside the axes, the legend never hides a bar.
    ax.legend(title="recipe", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set_title("Target task (digits 5-9) with a few labelled images per class")
    with atomic_path(path, suffix=os.path.splitext(path)[1]) as tmp:
        fig.savefig(tmp, dpi=120)
    return fig
