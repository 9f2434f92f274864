"""Rank networks, layers and poolings for a labelled dataset before training anything.

:func:`rank` extracts each candidate's codes once (through the cache, like every other command)
and scores them with :func:`~cnncodes.workflows.transferability.logme`; where the network ends
in its source classifier (a final node with a vector output, the logits of a torchvision head),
that node is extracted in the same forward pass and its softmax scored with
:func:`~cnncodes.workflows.transferability.leep` and
:func:`~cnncodes.workflows.transferability.nce` (one value per network, the same on each of its
rows). Each row also carries the code width, the seconds per image its extraction took and the
estimated cost of extracting the whole dataset, so that a choice can weigh score against cost.

The scores compare candidates on the same images and labels only; LogME is the one that also
compares layers. :func:`write_rank_report` writes ``rank.json`` and a bar plot, ``rank.png``.
"""

from __future__ import annotations

import functools
import numbers
import os
import shutil
import time

import numpy as np

from ..errors import UsageError
from ..extraction.extract import extract_codes
from ..networks.layers import resolve_layers
from ..networks.models import list_layers, resolve_spec
from ..networks.pooling import check_pooling
from ..spec import PREPROCESSING_KEYS
from ..utils.files import TMP_PREFIX, display, temporary_path
from ..utils.jsonable import to_json_file
from .advise import block_outputs
from .report import _drawable, _drawing, _figure
from .transferability import leep, logme, nce, softmax

__all__ = ["CANDIDATE_KEYS", "COLUMNS", "RANK_FILES", "rank", "rank_to_dict", "write_rank_report"]

#: What a candidate (a dict) may hold; only ``model`` is required.
CANDIDATE_KEYS = (
    "model",
    "weights",
    "layers",
    "poolings",
    "seed",
    "model_kwargs",
    *PREPROCESSING_KEYS,
    "impl",
    "name",
)

#: The columns of :func:`rank`'s table, in order.
COLUMNS = (
    "rank",
    "candidate",
    "model",
    "weights",
    "layer",
    "pooling",
    "width",
    "logme",
    "leep",
    "nce",
    "seconds_per_image",
    "estimated_seconds",
    "n_images",
)

#: The files of a ``--report`` folder written by :func:`write_rank_report`.
RANK_FILES = ("rank.json", "rank.png")

#: Images extracted without the cache to time a candidate whose codes all came from the cache.
TIMING_IMAGES = 8


def rank(
    paths,
    labels,
    candidates,
    *,
    per_class=None,
    seed=0,
    timing_images=TIMING_IMAGES,
    **extract_kwargs,
):
    """Score candidate networks x layers x poolings on a labelled dataset, best LogME first.

    Parameters
    ----------
    paths, labels : sequences
        The images and their classes (at least two classes).
    candidates : list of str or dict
        Each a model name, or a dict with ``model`` and any of :data:`CANDIDATE_KEYS`:
        ``weights``, ``seed``, ``model_kwargs`` and the preprocessing (``resize``, ``crop``,
        ``mean``, ``std``, ``interpolation``, ``impl``) as in :func:`cnncodes.resolve_spec`;
        ``layers`` (default: the ``layer_sweep_svm`` recipe's sweep for a known family, else the
        network's last three block outputs and its penultimate layer); ``poolings`` (default
        ``["avg"]``); ``name`` (how the table names it; default the model and its weights).
    per_class : int, optional
        Score a stratified subsample of at most this many images per class (drawn with
        ``seed``); None: every image.
    seed : int
        Seed of the subsample, and of the random initialisation of ``weights="none"``
        candidates that give no ``seed`` of their own.
    timing_images : int
        Where the cache served the codes, this many images, then twice as many others, are
        extracted again without it to time the network (0: not timed, NaN).
    **extract_kwargs
        Passed to :func:`cnncodes.extract_codes` (``cache_dir``, ``batch_size``, ``device``,
        ``on_error``, ``progress``, ...).

    Returns
    -------
    pandas.DataFrame
        One row per candidate x layer x pooling, columns :data:`COLUMNS`, sorted by ``logme``
        (higher is better); ``leep`` and ``nce`` are NaN where the network has no source
        classifier. ``seconds_per_image`` is the extraction's wall time per image (decoding and
        the forward pass up to the deepest layer asked, for all of a candidate's layers at
        once): over the images the call computed, or, where the cache served them, the
        difference between two uncached calls on ``timing_images`` and twice as many other
        images. ``estimated_seconds`` is the fixed cost of a call (loading the network) plus
        the whole dataset's size times ``seconds_per_image``. ``attrs`` holds ``n_images``,
        ``n_scored``, ``n_classes``, ``per_class``, ``seconds`` (the whole ranking),
        ``extract_seconds`` and ``score_seconds``.

    Examples
    --------
    >>> table = rank(paths, labels, ["resnet18", {"model": "mobilenet_v2",
    ...     "weights": "mnv2.pth", "mean": 0.5, "std": 0.5}], per_class=30)  # doctest: +SKIP
    >>> table[["candidate", "layer", "logme", "width"]].head(3)  # doctest: +SKIP
    """
    import pandas as pd

    started = time.perf_counter()
    labels = np.asarray(labels)
    if len(paths) != len(labels):
        raise UsageError(f"{len(paths)} images but {len(labels)} labels")
    candidates = _candidates(candidates)
    keep = _subsample(labels, per_class, seed)
    classes = np.unique(labels)
    if len(classes) < 2:
        raise UsageError(
            f"rank needs labelled images of at least two classes, got {len(classes)}: "
            "a score of one class ranks nothing"
        )
    sub_paths = [paths[i] for i in keep]
    rows, timings = [], {"extract_seconds": 0.0, "score_seconds": 0.0}
    for candidate in candidates:
        rows += _score_candidate(
            candidate, sub_paths, labels[keep], len(paths), seed, timing_images, timings,
            extract_kwargs,
        )  # fmt: skip
    frame = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "rank"])
    frame = frame.sort_values("logme", ascending=False, kind="stable", na_position="last")
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    frame = frame.reset_index(drop=True)
    frame.attrs.update(
        n_images=len(paths),
        n_scored=len(keep),
        n_classes=len(classes),
        per_class=per_class,
        seconds=time.perf_counter() - started,
        **timings,
    )
    return frame


def _candidates(candidates):
    """Candidates as dicts with every key checked and labelled uniquely."""
    if isinstance(candidates, (str, dict)):
        candidates = [candidates]
    out = []
    for i, given in enumerate(candidates or ()):
        candidate = {"model": given} if isinstance(given, str) else dict(given)
        unknown = sorted(set(candidate) - set(CANDIDATE_KEYS))
        if unknown or not candidate.get("model"):
            raise UsageError(
                f"candidate {i + 1} ({given!r}): "
                + (f"unknown keys {unknown}; " if unknown else "no 'model'; ")
                + f"a candidate is a model name or a dict of {', '.join(CANDIDATE_KEYS)}"
            )
        for key in ("layers", "poolings"):
            if isinstance(candidate.get(key), str):
                candidate[key] = [candidate[key]]
        candidate["poolings"] = [check_pooling(p) for p in candidate.get("poolings") or ["avg"]]
        candidate.setdefault("name", _name(candidate))
        out.append(candidate)
    if not out:
        raise UsageError("rank needs at least one candidate network (a model name or a dict)")
    names = [c["name"] for c in out]
    for i, candidate in enumerate(out):
        if names.count(candidate["name"]) > 1:
            candidate["name"] = f"{candidate['name']} #{i + 1}"
    return out


def _name(candidate):
    """``model`` with its weights: a file's name, ``untrained`` for ``none``."""
    weights = candidate.get("weights")
    if weights is None:
        return str(candidate["model"])
    text = str(weights)
    shown = "untrained" if text == "none" else os.path.basename(text) or text
    return f"{candidate['model']} ({shown})"


def _subsample(labels, per_class, seed):
    """Positions of at most ``per_class`` images per class (all with None), in input order."""
    if per_class is None:
        return np.arange(len(labels))
    if isinstance(per_class, bool) or not isinstance(per_class, numbers.Integral) or per_class < 2:
        raise UsageError(f"per_class={per_class!r}: expected None or an int >= 2")
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        keep.extend(rng.permutation(idx)[:per_class].tolist())
    return np.sort(np.array(keep, dtype=int))


def _spec(candidate, seed):
    kwargs = {
        k: candidate[k] for k in (*PREPROCESSING_KEYS, "impl") if candidate.get(k) is not None
    }
    return resolve_spec(
        candidate["model"],
        candidate.get("weights"),
        seed=candidate.get("seed", seed),
        model_kwargs=candidate.get("model_kwargs"),
        **kwargs,
    )


def _default_layers(model, spec, infos):
    """The layer_sweep_svm recipe's sweep for ``model``, else the last three block outputs
    (:func:`~cnncodes.workflows.advise.block_outputs`) and the penultimate layer."""
    from . import recipes

    try:
        return recipes.get("layer_sweep_svm").default_layers(model)
    except UsageError:
        pass
    top = resolve_layers(spec, "penultimate")
    return [n for n in block_outputs(infos, exclude=top)[-3:]] + top


def _score_candidate(candidate, paths, y, n_total, seed, timing_images, timings, kwargs):
    """The rows of one candidate: one extraction per pooling, every layer scored."""
    spec = _spec(candidate, seed)
    infos = {info.name: info for info in list_layers(spec)}
    layers = candidate.get("layers") or _default_layers(
        candidate["model"], spec, list(infos.values())
    )
    layers = resolve_layers(spec, layers)
    last = list(infos.values())[-1]
    head = last.name if len(last.shape) == 1 and last.shape[0] >= 2 else None
    source = {"leep": float("nan"), "nce": float("nan")}
    rows = []
    for j, pooling in enumerate(candidate["poolings"]):
        # A vector (flatten, the logits) is the same under every pooling: scored once.
        todo = [n for n in layers if j == 0 or len(infos[n].shape) > 1]
        wanted = todo + ([head] if head and j == 0 and head not in todo else [])
        if not todo:
            continue
        t0 = time.perf_counter()
        result = extract_codes(paths, spec, wanted, pooling, **kwargs)
        per_image, per_call = _timing(result, paths, spec, wanted, pooling, timing_images, kwargs)
        t1 = time.perf_counter()
        y_kept = y[result.kept]
        if j == 0 and head:
            probs = softmax(result.codes[head])
            source = {"leep": leep(probs, y_kept), "nce": nce(probs, y_kept)}
        for layer in todo:
            codes = result.codes[layer]
            rows.append(
                {
                    "candidate": candidate["name"],
                    "model": str(candidate["model"]),
                    "weights": spec.weights,
                    "layer": layer,
                    "pooling": pooling,
                    "width": int(codes.shape[1]),
                    "logme": logme(codes, y_kept),
                    **source,
                    "seconds_per_image": per_image,
                    "estimated_seconds": per_call + per_image * n_total,
                    "n_images": len(y_kept),
                }
            )
        timings["extract_seconds"] += t1 - t0
        timings["score_seconds"] += time.perf_counter() - t1
    return rows


def _timing(result, paths, spec, layers, pooling, timing_images, kwargs):
    """``(seconds per image, seconds per call)`` of extracting ``layers``.

    Where the call computed at least ``timing_images`` images, its wall time over them (the
    call's fixed cost, building the network, spread over them). Else (codes from the cache)
    two calls without the cache, on ``timing_images`` images and on as many others twice over:
    the difference is the cost per image, the rest the fixed cost per call.
    """
    if result.computed > 0 and result.computed >= min(timing_images, len(paths)):
        return result.seconds / result.computed, 0.0
    if timing_images < 1:
        return float("nan"), float("nan")
    probe = {**kwargs, "cache_dir": None, "progress": False, "on_error": "skip"}
    k = timing_images
    small = extract_codes(paths[:k], spec, layers, pooling, **probe)
    large = extract_codes(paths[k : 3 * k], spec, layers, pooling, **probe)
    n_small, n_large = len(small.kept), len(large.kept)
    if n_large <= n_small or large.seconds <= small.seconds:  # too few images, or noise
        return max(small.seconds, large.seconds) / max(1, n_small, n_large), 0.0
    per_image = (large.seconds - small.seconds) / (n_large - n_small)
    return per_image, max(0.0, small.seconds - per_image * n_small)


def rank_to_dict(frame):
    """The JSON-ready form of :func:`rank`'s table: its ``attrs`` and ``rows`` (records).

    Examples
    --------
    >>> import pandas as pd
    >>> frame = pd.DataFrame({"rank": [1], "logme": [0.5]})
    >>> frame.attrs["n_images"] = 10
    >>> rank_to_dict(frame)
    {'n_images': 10, 'rows': [{'rank': 1, 'logme': 0.5}]}
    """
    rows = [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
        for row in frame.to_dict(orient="records")
    ]
    return {**frame.attrs, "rows": rows}


def check_rank_folder(folder, what="--report"):
    """Refuse a ``folder`` that exists and holds anything but an earlier ranking's files."""
    if folder is None or not os.path.exists(folder):
        return
    if not os.path.isdir(folder):
        raise UsageError(f"{what} {display(folder)} exists and is not a folder")
    others = sorted(n for n in os.listdir(folder) if n not in RANK_FILES)
    if others:
        raise UsageError(
            f"{what} {display(folder)} holds files that are not a ranking's ({', '.join(others[:5])}"
            f"{', ...' if len(others) > 5 else ''}); it is replaced as a whole: give a new folder"
        )


def write_rank_report(frame, folder):
    """Write ``rank.json`` (:func:`rank_to_dict`) and ``rank.png`` (LogME per row, as bars) as
    ``folder``, as a whole: into a temporary folder beside it, then put in its place.

    Returns
    -------
    dict
        ``{name: path}`` of the files written.
    """
    check_rank_folder(folder)
    final = os.path.realpath(folder)
    parent, name = os.path.split(final)
    os.makedirs(parent, exist_ok=True)
    tmp = temporary_path(parent, prefix=f".{name}{TMP_PREFIX}")
    os.mkdir(tmp)
    steps = {
        "rank.json": functools.partial(to_json_file, rank_to_dict(frame)),
        "rank.png": functools.partial(plot_rank, frame),
    }
    try:
        for file, write in steps.items():
            write(os.path.join(tmp, file))
        if os.path.exists(final):
            aside = temporary_path(parent, prefix=f".{name}.old{TMP_PREFIX}")
            os.rename(final, aside)
            os.rename(tmp, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {file: os.path.join(folder, file) for file in steps}


def plot_rank(frame, path):
    """Save LogME of each row of :func:`rank`'s table as horizontal bars, one colour per
    candidate, each labelled with its code width and seconds per image."""
    with _drawing():
        fig = _figure(8.0, 1.2 + 0.32 * len(frame))
        ax = fig.add_subplot()
        names = list(dict.fromkeys(frame["candidate"]))
        colours = [f"C{names.index(c) % 10}" for c in frame["candidate"]]
        y = np.arange(len(frame))[::-1]
        ax.barh(y, frame["logme"].to_numpy(dtype=float), color=colours, alpha=0.85)
        labels = [_drawable(f"{r.candidate}  {r.layer} ({r.pooling})") for r in frame.itertuples()]
        ax.set_yticks(y, labels, fontsize=7)
        for yy, r in zip(y, frame.itertuples()):
            ax.annotate(
                f" {r.width}-d, {r.seconds_per_image * 1000:.0f} ms/img",
                (0, yy), va="center", fontsize=6, xycoords=("axes fraction", "data"),
            )  # fmt: skip
        ax.set_xlabel("LogME (higher transfers better)")
        ax.set_title(f"Candidates ranked on {frame.attrs.get('n_scored', '?')} images")
        ax.grid(axis="x", alpha=0.3)
        fig.savefig(path, dpi=110)
