"""Which of the four transfer-learning scenarios a dataset is in, and which recipe to run.

The scenarios (Stanford CS231n course notes, "Transfer Learning"):

1. small dataset, similar to the pretraining data: a linear classifier on top-layer codes;
2. large, similar: fine-tune the network (``cnncodes finetune``, the top blocks: the early
   layers' features already suit such data);
3. small, different: a linear classifier or SVM on codes from earlier layers;
4. large, different: fine-tune from the pretrained weights (``cnncodes finetune``, every layer).

For 2 and 4 the advice also names ``cnncodes compare``, which measures on a held-out split
what fine-tuning gains over the codes, and the best fixed-code baseline.

"Small" is judged from the images per class: large means a median of :data:`SMALL_PER_CLASS`
(1,000) or more images per class. "Similar" is measured, on a stratified subsample:
the cross-validated accuracy of a linear classifier on top-layer codes against the same on codes
of an earlier layer (when the top layer is no better, its ImageNet-specific features do not fit
the data), and, where the network still has its pretrained classifier, how confident that
classifier is on these images (the mean of its top softmax probability).
"""

from __future__ import annotations

import numbers
import shlex
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import UsageError
from ..extraction.extract import extract_codes
from ..networks.layers import resolve_layers
from ..networks.models import list_layers, resolve_spec
from ..params import SMALL_PER_CLASS
from .transferability import logme

__all__ = ["Advice", "advise", "block_outputs", "sweep_layers", "SMALL_PER_CLASS"]

#: What the fine-tuning command of scenarios 2 and 4 holds out and trains for: with 1,000 or
#: more images per class, a tenth is a test set of 100 or more per class.
FINETUNE_TEST_SIZE = 0.1
FINETUNE_EPOCHS = 10
_RECIPES = {1: "linear_probe", 2: None, 3: "layer_sweep_svm", 4: None}


@dataclass
class Advice:
    """A recommendation: the scenario, the recipe, the command, and the evidence behind them.

    ``command`` is what to run: ``cnncodes fit --pipeline <recipe>`` for scenarios 1 and 3,
    ``cnncodes finetune`` for 2 and 4 (``recipe`` None), which also get ``compare_command``
    (``cnncodes compare``: codes against fine-tuning on one split) and ``baseline_command``
    (the best fixed-code recipe).
    """

    scenario: int
    recipe: str | None
    command: str
    reasons: list = field(default_factory=list)
    compare_command: str = ""
    baseline_command: str = ""
    n_images: int = 0
    n_classes: int = 0
    min_per_class: int = 0
    median_per_class: float = 0.0
    small: bool = True
    similar: bool = True
    top_layer: str = ""
    early_layer: str = ""
    top_score: float | None = None
    early_score: float | None = None
    confidence: float | None = None
    layer_ranking: list = field(default_factory=list)
    best_layer: str = ""

    def to_dict(self):
        """JSON-ready form."""
        return asdict(self)


def block_outputs(infos, exclude=()):
    """The outputs of a network's blocks, early to top, from its :func:`~cnncodes.list_layers`.

    Blocks are the layers with a spatial (or token) output at the shallowest naming depth that
    has at least four of them (the stem and ``layer1``..``layer4`` in a ResNet,
    ``features.0``..``features.18`` in a MobileNetV2); where no depth has four, every such layer.
    Names in ``exclude`` are left out.

    Examples
    --------
    >>> from cnncodes import list_layers
    >>> block_outputs(list_layers("resnet18", "none"))[-3:]
    ['layer2', 'layer3', 'layer4']
    """
    spatial = [
        i.name for i in infos if len(i.shape) in (2, 3) and i.shape[1] > 1 and i.name not in exclude
    ]
    for depth in range(0, 4):
        blocks = [n for n in spatial if n.count(".") == depth]
        if len(blocks) >= 4:
            return blocks
    return spatial


def sweep_layers(model, **shape):
    """The layers the ``layer_sweep_svm`` recipe sweeps for ``model``, early to top: the recipe's
    own default for the architecture (:func:`pipelines.layer_sweep_svm.default_layers`), else,
    for a model it has none for, the network's last three blocks (:func:`block_outputs`).

    What ``cnncodes advise`` suggests and ``cnncodes compare`` sweeps. ``shape``: the settings
    that shape the network without its weights (``seed``, ``resize``, ``crop``, ...).

    Examples
    --------
    >>> sweep_layers("mobilenet_v2")
    ['features.4.conv.0', 'features.7.conv.0', 'features.14.conv.0', 'features.18']
    """
    from . import recipes

    try:
        return recipes.get("layer_sweep_svm").default_layers(model)
    except UsageError:  # a model the recipe has no layers for
        return block_outputs(list_layers(model, "none", **shape))[-3:]


def _early_layer(spec, top):
    """The block (:func:`block_outputs`) about two thirds of the way through the network."""
    infos = list_layers(spec)
    position = {info.name: i / max(1, len(infos) - 1) for i, info in enumerate(infos)}
    blocks = block_outputs(infos, exclude=(top,))
    if not blocks:
        return None
    return min(blocks, key=lambda n: abs(position[n] - 2 / 3))


def _finetune_freeze(scenario, model, preprocessing, seed):
    """``(freeze, why)`` of the fine-tuning command: the top blocks for similar data
    (scenario 2: the ``finetune_top`` recipe's first depth), every layer for different data."""
    if scenario == 4:
        return "none", (
            "the data differs from the pretraining data, so every layer trains (--freeze none), "
            "from the pretrained weights."
        )
    from . import recipes

    try:
        top = recipes.get("finetune_top")
    except ImportError as exc:  # fine-tuning needs skorch
        return "none", f"(install the finetune extra: {exc})."
    freeze = top.default_freezes(model, seed=seed, **preprocessing)[0]
    return freeze, (
        f"the data is like the pretraining data, so the early layers stay as they are and the "
        f"blocks after {freeze!r} train (--freeze none trains every layer)."
    )


def _subsample(labels, per_class, seed):
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    keep = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        keep.extend(rng.permutation(idx)[:per_class].tolist())
    return np.sort(np.array(keep, dtype=int))


def _cv_score(codes, labels, seed):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _, counts = np.unique(labels, return_counts=True)
    if len(counts) < 2 or counts.min() < 2:  # e.g. unreadable images left a class too small
        return None
    folds = int(min(5, counts.min()))
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(clf, codes, labels, cv=cv).mean())


def _head_layer(spec):
    """The model's final output node (its pretrained classifier), if it ends in a Linear layer."""
    infos = list_layers(spec)
    if infos and len(infos[-1].shape) == 1:
        return infos[-1].name
    return None


def advise(
    paths,
    labels,
    *,
    model="resnet50",
    weights=None,
    per_class=20,
    seed=0,
    random_state=0,
    preprocessing=None,
    data_label="DATA",
    **extract_kwargs,
):
    """Recommend a scenario and a recipe for a labelled image dataset.

    Parameters
    ----------
    paths, labels : sequences
        The images and their class labels.
    model, weights : str
        The pretrained network to judge similarity against (see :func:`cnncodes.resolve_spec`).
    per_class : int
        Images per class used for the similarity measurement (a stratified subsample; at least
        2, for cross-validation).
    seed : int
        Seed of the network's random initialisation (``weights="none"``).
    random_state : int
        Seed of the subsample and of the cross-validation folds of the measurement.
    preprocessing : dict, optional
        Overrides of the weights' preprocessing (``resize``, ``crop``, ``mean``, ``std``,
        ``interpolation``), as in :func:`cnncodes.resolve_spec`; repeated in the command.
    data_label : str
        How the data is named in the suggested command line.
    **extract_kwargs
        Passed to :func:`cnncodes.extract_codes` (cache_dir, batch_size, device, ...).

    Returns
    -------
    Advice

    Examples
    --------
    >>> advice = advise(paths, labels, model="mobilenet_v2", weights="mnv2.pth")  # doctest: +SKIP
    >>> advice.scenario, advice.recipe  # doctest: +SKIP
    (1, 'linear_probe')
    """
    labels, classes, counts = _check_input(paths, labels, per_class)
    preprocessing = {k: v for k, v in (preprocessing or {}).items() if v is not None}
    spec = resolve_spec(model, weights, seed=seed, **preprocessing)
    top = resolve_layers(spec, "penultimate")[0]
    early = _early_layer(spec, top)
    advice = Advice(
        scenario=0,
        recipe=None,
        command="",
        n_images=len(paths),
        n_classes=len(classes),
        min_per_class=int(counts.min()),
        median_per_class=float(np.median(counts)),
        top_layer=top,
        early_layer=early or "",
    )
    advice.small = advice.median_per_class < SMALL_PER_CLASS
    size_word = "small" if advice.small else "large"
    advice.reasons.append(
        f"{advice.n_images} images in {advice.n_classes} classes, median "
        f"{advice.median_per_class:g} per class (fewest {advice.min_per_class}): {size_word} "
        f"(large means a median of {SMALL_PER_CLASS} or more images per class)."
    )
    candidates = resolve_layers(spec, sweep_layers(model, seed=seed, **preprocessing))
    n_measured, n_out = _measure(
        advice, spec, paths, labels, per_class, random_state, extract_kwargs, candidates
    )
    _judge_similarity(advice, spec, n_measured, n_out)
    advice.scenario = {(True, True): 1, (False, True): 2, (True, False): 3, (False, False): 4}[
        (advice.small, advice.similar)
    ]
    advice.recipe = _RECIPES[advice.scenario]
    command = _Command(model, weights, preprocessing, data_label, seed)
    _suggest_commands(advice, command, seed)
    return advice


def _check_input(paths, labels, per_class):
    """``(labels as an array, classes, images per class)``, refusing what cannot be measured."""
    if isinstance(per_class, bool) or not isinstance(per_class, numbers.Integral) or per_class < 2:
        raise UsageError(
            f"per_class={per_class!r}: expected an int >= 2 (images per class to cross-validate on)"
        )
    labels = np.asarray(labels)
    if len(paths) != len(labels):
        raise UsageError(f"{len(paths)} images but {len(labels)} labels")
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise UsageError("advise needs labelled images of at least two classes")
    return labels, classes, counts


def _measure(advice, spec, paths, labels, per_class, seed, extract_kwargs, candidates=()):
    """Codes of a stratified subsample, in one pass: the top and early layers' cross-validated
    scores, the LogME ranking of the top layer and ``candidates`` (:func:`_rank_layers`) and the
    pretrained classifier's confidence, into ``advice``. Returns ``(images measured, classes of
    the pretrained head or None)``."""
    top, early = advice.top_layer, advice.early_layer or None
    keep = _subsample(labels, per_class, seed)
    sub_paths = [paths[i] for i in keep]
    layers = [top] + ([early] if early else [])
    layers += [layer for layer in candidates if layer not in layers]
    head = _head_layer(spec)
    if head and head not in layers and spec.weights != "none":
        layers.append(head)
    result = extract_codes(sub_paths, spec, layers, "avg", on_error="skip", **extract_kwargs)
    if result.skipped:
        first = result.skipped[0]
        if len(result.kept) == 0:
            raise UsageError(
                f"none of the {len(sub_paths)} measured images could be read "
                f"(first: {first.path}: {first.reason})"
            )
        advice.reasons.append(
            f"{len(result.skipped)} of the {len(sub_paths)} measured images could not be read "
            f"and were left out (first: {first.path}: {first.reason})."
        )
    y = labels[keep][result.kept]
    advice.top_score = _cv_score(result.codes[top], y, seed)
    if early:
        advice.early_score = _cv_score(result.codes[early], y, seed)
    _rank_layers(advice, result.codes, [top, *[c for c in candidates if c != top]], y)
    if head not in result.codes:
        return len(y), None
    logits = result.codes[head].astype(np.float64)
    logits -= logits.max(1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(1, keepdims=True)
    advice.confidence = float(probs.max(1).mean())
    return len(y), result.codes[head].shape[1]


def _rank_layers(advice, codes, layers, y):
    """``advice.layer_ranking``: LogME (:func:`~cnncodes.workflows.transferability.logme`) of
    each layer's avg-pooled codes on the measured images, best first; ``advice.best_layer`` the
    first, the layer a linear probe is advised on (scenario 1) when it ranks above the top
    layer. An untrained network is ranked but never advised from."""
    if len(np.unique(y)) < 2:
        return
    scores = [(layer, float(logme(codes[layer], y))) for layer in layers]
    advice.layer_ranking = sorted(scores, key=lambda item: -item[1])
    advice.best_layer = advice.layer_ranking[0][0]
    listing = ", ".join(f"{layer} {score:.3f}" for layer, score in advice.layer_ranking)
    advice.reasons.append(f"LogME of each layer's codes on the measured images: {listing}.")


def _judge_similarity(advice, spec, n_measured, n_out):
    """``advice.similar`` from the measurements' votes, with the reasons."""
    top, early = advice.top_layer, advice.early_layer
    votes = []
    if advice.top_score is not None and advice.early_score is not None:
        margin = advice.top_score - advice.early_score
        votes.append(margin > -0.02)
        advice.reasons.append(
            f"Cross-validated accuracy on {n_measured} images: top layer {top!r} "
            f"{advice.top_score:.2f}, earlier layer {early!r} {advice.early_score:.2f} "
            f"({'top layer at least as good: similar' if votes[-1] else 'earlier layer better: different'})."
        )
    if advice.confidence is not None:
        # Confident pretrained predictions mean the images look like the pretraining classes.
        threshold = max(0.3, 5.0 / n_out)
        votes.append(advice.confidence >= threshold)
        advice.reasons.append(
            f"The pretrained classifier's mean top probability is {advice.confidence:.2f} over "
            f"{n_out} classes ({'confident: similar' if votes[-1] else 'unsure: different'})."
        )
    if spec.weights_spec.kind == "none":
        advice.reasons.append(
            "The network is untrained ('none' weights): similarity is not meaningful."
        )
        votes = [False]
    # A tie counts as different: the layer sweep of scenario 3 also tries the top layer.
    advice.similar = bool(votes) and sum(votes) * 2 > len(votes)
    if len(votes) == 2 and sum(votes) == 1:
        advice.reasons.append(
            "The two measurements disagree, so the data counts as different: the layer sweep "
            "below also tries the top layer, so it loses nothing if the data is similar after all."
        )
    if 0 < n_measured < 40:
        advice.reasons.append(
            f"Only {n_measured} images were measured: the similarity verdict is a rough guide."
        )


@dataclass
class _Command:
    """Writes the suggested command lines: the network's options, the data's name."""

    model: str
    weights: object
    preprocessing: dict
    data_label: str
    seed: int = 0

    def sweep(self):
        """``--layer`` options of the layers ``layer_sweep_svm`` sweeps (:func:`sweep_layers`)."""
        layers = sweep_layers(self.model, seed=self.seed, **self.preprocessing)
        return [option for layer in layers for option in ("--layer", layer)], layers

    def __call__(self, verb, *extra, pipeline=None):
        # Quoted for a POSIX shell: data folders and checkpoint paths may hold spaces.
        argv = ["cnncodes", verb, str(self.data_label)]
        argv += ["--pipeline", pipeline] if pipeline else []
        argv += ["--model", self.model]
        if self.weights:
            argv += ["--weights", str(self.weights)]
        for key, value in self.preprocessing.items():
            text = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
            argv += [f"--{key}", text]
        return shlex.join([*argv, *extra])


def _suggest_commands(advice, command, seed):
    """The command of the scenario's recipe; for fine-tuning scenarios, the finetune and
    compare commands and the best fixed-code baseline."""
    if advice.recipe == "layer_sweep_svm":
        options, layers = command.sweep()
        advice.command = command("fit", *options, pipeline=advice.recipe)
        advice.reasons.append(_sweep_note(layers))
        return
    if advice.recipe:
        layer = _probe_layer(advice, command)
        advice.command = command("fit", *layer, pipeline=advice.recipe)
        return
    baseline = "linear_probe" if advice.similar else "layer_sweep_svm"
    options = command.sweep()[0] if baseline == "layer_sweep_svm" else []
    advice.baseline_command = command("fit", *options, pipeline=baseline)
    freeze, note = _finetune_freeze(advice.scenario, command.model, command.preprocessing, seed)
    held_out = ["--test-size", str(FINETUNE_TEST_SIZE)]
    advice.command = command(
        "finetune", "--freeze", freeze, "--epochs", str(FINETUNE_EPOCHS), *held_out,
        "--out", "finetuned.skops", "--report", "finetune-report",
    )  # fmt: skip
    top_blocks = [] if freeze == "none" else ["--freeze", freeze]
    advice.compare_command = command(
        "compare", *held_out, *top_blocks, "--report", "compare-report"
    )
    advice.reasons.append(
        f"With {advice.median_per_class:g} images per class, fine-tuning should beat fixed "
        f"codes: {note} `cnncodes compare` measures what it gains on a held-out split (a "
        "linear probe, an SVM layer sweep, the top blocks and every layer fine-tuned); "
        f"`{advice.baseline_command}` is the best fixed-code baseline."
    )


def _probe_layer(advice, command):
    """``--layer`` options of the linear probe: the LogME ranking's best layer where it is not
    the top one (the recipe's default), for pretrained weights only; else none."""
    best = advice.best_layer
    if not best or best == advice.top_layer or command.weights in ("none",):
        return []
    advice.reasons.append(
        f"LogME ranks {best!r} above the top layer {advice.top_layer!r}: the linear probe is "
        "advised on it (`cnncodes rank` compares layers and networks the same way)."
    )
    return ["--layer", best]


def _sweep_note(layers):
    return (
        f"layer_sweep_svm sweeps {', '.join(layers)} (its layers for this network, early to "
        "top), each pooling and SVM, and keeps the best by cross-validation."
    )
