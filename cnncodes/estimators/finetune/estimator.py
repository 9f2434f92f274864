""":class:`FineTune`: fine-tune a pretrained network on image files, as a scikit-learn classifier.

Slightly over 600 lines: half of them are the class's parameter documentation (38 parameters);
the training plan, the probe and inference live in :mod:`.plan`, :mod:`.inference` and
:mod:`.training`.
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from ...errors import UsageError
from ...extraction.extract import SkippedImage, extract_codes
from ...extraction.runtime import (
    autocast_dtype,
    default_workers,
    resolve_device,
    resolve_precision,
)
from ...images.load import ImageLoadError
from ...networks.architectures import arch_id
from ...networks.layers import layer_shapes, resolve_layers
from ...networks.models import build_model, spec_of
from ...networks.pooling import code_size
from ...params import (
    AUGMENTS,
    CHANNELS_LAST,
    HEADS,
    INIT_HEADS,
    TRUNK_CACHE,
    Choice,
    Float,
    Int,
    as_path_list,
    check_params,
)
from ...spec import PREPROCESSING_KEYS, ModelError, WeightsError
from ..codes import SkippedImagesWarning, _describe_skipped
from ..search import screened, unreadable_files
from ..steps import NETWORK_STEP_CHECKS, RUNTIME_PARAMS, NetworkStep
from . import network, training
from .data import Activations, Images, readable
from .inference import cached_logits, predict_logits, rebuild_module, trained_part
from .plan import MAX_CACHED_TRUNK_BYTES, init_head_from_probe, trunk_plan

__all__ = ["MAX_CACHED_TRUNK_BYTES", "TRUNK_CACHE", "FineTune"]


#: ``valid_size``'s default: the validation split the data allow.
AUTO = "auto"


def _arrays(state_dict):
    return {k: v.detach().cpu().numpy().copy() for k, v in state_dict.items()}


class _ValidSize(Float):
    """Rule: ``"auto"`` or a fraction in [0, 1)."""

    def __init__(self):
        super().__init__(minimum=0, below=1, allow_none=True)

    def __call__(self, value, name):
        if not (isinstance(value, str) and value == AUTO):
            super().__call__(value, name)


def _grid_values(param_grid, name, default):
    grids = [param_grid] if isinstance(param_grid, dict) else list(param_grid or [{}])
    values = [v for g in grids for v in g.get(name, ())]
    return values or [default]


class FineTune(NetworkStep, ClassifierMixin, BaseEstimator):
    """Fine-tune a pretrained network on image files: freeze its first layers, replace its head.

    ``X`` is a sequence of image paths (as for :class:`~cnncodes.transformers.CNNCodes`); ``y``
    the labels. The network is cut after ``layer`` (its codes, pooled with ``pooling``, go into
    a new ``head``), frozen up to ``freeze``, and trained with skorch (AdamW, cosine learning-rate
    decay, a lower learning rate for the pretrained layers than for the head).

    Parameters
    ----------
    model, weights, seed, resize, crop, mean, std, interpolation, model_kwargs :
        The pretrained network, its builder's arguments and its preprocessing, as for
        :class:`~cnncodes.transformers.CNNCodes`.
    freeze : str, default="all"
        A graph-node name (as ``cnncodes layers`` prints them): it and everything before it stay
        as pretrained; ``"all"``: only the new head trains ("drop the final layers and add your
        own"); ``"none"``: the whole network trains from the pretrained start. Frozen layers stay
        in eval mode (BatchNorm running statistics untouched).
    layer : str, default="penultimate"
        Where the network is cut: the head receives this node's output (``"penultimate"``: the
        input of the last ``nn.Linear``, i.e. the network's own classifier is replaced).
    pooling : {"avg", "max", "avgmax", "pyramid", "flatten"}, default="avg"
        How ``layer``'s maps become the head's input vector.
    head : {"linear", "mlp"}, default="linear"
        A linear classifier, or one hidden ReLU layer of ``hidden_units``; ``dropout`` before the
        output layer.
    hidden_units : int, default=256
    dropout : float, default=0.0
    init_head : {"random", "probe"}, default="random"
        ``"probe"`` (LP-FT, Kumar et al. 2022): the linear head starts as a logistic regression
        fitted on the codes of the training images (read from the code cache), so fine-tuning
        starts from a good classifier instead of a random one.
    train_bn : bool, default=False
        Whether the BatchNorm layers that train update their running statistics from the
        training batches. By default they keep the pretrained statistics (eval mode; their scale
        and shift still train): on small datasets and small batches, batch statistics are noisy,
        and a checkpoint whose BatchNorm was folded into the convolutions (statistics 0 and 1)
        breaks down under them.
    lr : float, default=1e-3
        Learning rate of the head (AdamW).
    trunk_lr : float, optional
        Learning rate of the trainable pretrained layers; default ``lr / 10``.
    weight_decay : float, default=1e-4
    epochs : int, default=10
        Passes over the training images (0: only build the network and its head).
    batch_size : int, default=32
    augment : {"crop-flip", "crop", "flip", "none"}, default="crop-flip"
        Train-time augmentation: random resized crops and/or horizontal flips.
    valid_size : "auto" or float, default="auto"
        Fraction held out (stratified) to report validation loss and accuracy each epoch; 0: none.
        ``"auto"``: 0.1 where that keeps an image of each class on both sides, else just enough
        for one image per class (many classes of a few images each), else (a class of a single
        image) none, which a warning says. A fraction given is held out or refused.
    early_stopping : int, optional
        Stop after this many epochs without a better validation loss, and keep the best epoch's
        weights (needs ``valid_size > 0``).
    trunk_cache : {"auto", True, False}, default="auto"
        Read the frozen part's activations from the code cache (computed once, unpooled) and run
        only the trainable part each epoch. Possible when ``freeze`` is not ``"none"``,
        ``augment="none"``, and the graph can be cut at ``freeze``; ``"auto"`` uses it then, True
        requires it.
    cache_dir : "auto", None or path, default="auto"
        The code cache (for ``trunk_cache`` and ``init_head="probe"``).
    device : str, default="auto"
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        ``"auto"``: fp32 on the CPU, bf16 autocast on a GPU.
    channels_last : bool or "auto", default="auto"
        Feed convolutions NHWC tensors; ``"auto"``: on a GPU.
    num_workers : int, optional
        Image-decoding processes (as for extraction).
    on_error : {"raise", "skip"}, default="raise"
        An unreadable training image stops ``fit`` naming it, before training starts; ``"skip"``
        drops it together with its label (a :class:`~cnncodes.transformers.SkippedImagesWarning`
        names each).
    checkpoint : path, optional
        A file where the whole training state is written (atomically) after every epoch.
    resume : bool, default=False
        Continue the run whose state ``checkpoint`` holds (refused if it belongs to another
        configuration or data); a killed run loses at most the epoch it was in.
    progress : bool, default=False
        skorch's epoch table on stderr, a line per epoch (train loss, validation loss and
        accuracy, seconds); a bar of batches too when stderr is a terminal. This is what skorch
        calls ``verbose=1``: FineTune has no ``verbose``, ``progress`` being the one switch of
        every cnncodes estimator (the codes' extraction bar follows it too). Off by default, as
        scikit-learn estimators are silent: ``cross_val_score`` and grid searches fit many
        times; ``cnncodes finetune`` turns it on (``--quiet`` off). ``history_`` holds the table
        either way.
    engine : {"local", "ray"}, default="local"
        Where the codes that ``fit`` reads from the cache (``init_head="probe"``, the frozen
        trunk's activations, which prediction reads too) are computed when the cache lacks
        them: in this process, or on a Ray cluster, whose actors use this estimator's ``device``
        and ``precision`` so that the codes land under the cache key ``fit`` reads (see
        :func:`~cnncodes.extract.extract_codes`). Training itself runs in this process.
    ray_address : str, default=None
        With ``engine="ray"``: ``"auto"`` or ``"HOST:PORT"``; None: the Ray session of this
        process, else a local Ray started for each extraction.

    Attributes
    ----------
    classes_ : ndarray
    spec_ : ModelSpec
    layer_ : str
        The resolved layer name.
    history_ : list of dict
        One row per epoch: ``epoch``, ``train_loss``, ``valid_loss``, ``valid_acc``, ``dur``
        (seconds), ``lr``.
    trunk_cached_ : bool
        Whether the frozen part's activations came from the code cache. Then ``predict``,
        ``predict_proba`` and ``score`` read them from the cache too (computing and caching those
        of new images) and run only the part that trained; with ``cache_dir=None``, or where the
        pretrained checkpoint is gone, the whole fine-tuned network runs (same predictions).
    state_dict_ : dict of str to ndarray
        The fine-tuned network's weights, under the architecture's own parameter names.
    head_state_ : dict of str to ndarray
    valid_size_ : float
        The fraction held out for validation (``valid_size``, resolved where ``"auto"``).
    fit_seconds_ : float

    Examples
    --------
    >>> ft = FineTune("mobilenet_v2", weights="mobilenet_v2.pth", freeze="features.13",
    ...               epochs=8, lr=1e-3)  # doctest: +SKIP
    >>> ft.fit(train_paths, train_labels).score(test_paths, test_labels)  # doctest: +SKIP
    >>> ft.save_checkpoint("finetuned.pth")  # doctest: +SKIP
    >>> CNNCodes("mobilenet_v2", weights="finetuned.pth")  # codes of the fine-tuned net  # doctest: +SKIP
    """

    #: A fitted FineTune holds its fine-tuned weights; it never reads its starting checkpoint.
    holds_weights = True

    def __init__(
        self,
        model="resnet50",
        weights=None,
        freeze="all",
        layer="penultimate",
        pooling="avg",
        head="linear",
        hidden_units=256,
        dropout=0.0,
        init_head="random",
        train_bn=False,
        lr=1e-3,
        trunk_lr=None,
        weight_decay=1e-4,
        epochs=10,
        batch_size=32,
        augment="crop-flip",
        valid_size="auto",
        early_stopping=None,
        seed=0,
        resize=None,
        crop=None,
        mean=None,
        std=None,
        interpolation=None,
        trunk_cache="auto",
        cache_dir="auto",
        device="auto",
        precision="auto",
        channels_last="auto",
        num_workers=None,
        on_error="raise",
        checkpoint=None,
        resume=False,
        progress=False,
        model_kwargs=None,
        engine="local",
        ray_address=None,
    ):
        self.model = model
        self.weights = weights
        self.freeze = freeze
        self.layer = layer
        self.pooling = pooling
        self.head = head
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.init_head = init_head
        self.train_bn = train_bn
        self.lr = lr
        self.trunk_lr = trunk_lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.augment = augment
        self.valid_size = valid_size
        self.early_stopping = early_stopping
        self.seed = seed
        self.resize = resize
        self.crop = crop
        self.mean = mean
        self.std = std
        self.interpolation = interpolation
        self.trunk_cache = trunk_cache
        self.cache_dir = cache_dir
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self.num_workers = num_workers
        self.on_error = on_error
        self.checkpoint = checkpoint
        self.resume = resume
        self.progress = progress
        self.model_kwargs = model_kwargs
        self.engine = engine
        self.ray_address = ray_address

    def __setstate__(self, state):
        # Models saved before ``model_kwargs`` existed called the builder without arguments;
        # those saved before ``engine``, extracted their codes in their own process.
        state.setdefault("model_kwargs", None)
        state.setdefault("engine", "local")
        state.setdefault("ray_address", None)
        if "state_dict_" in state:  # pickled before the weights of a head-only fit were lazy
            state["_state_dict"] = state.pop("state_dict_")
        super().__setstate__(state)

    # -- parameters ----------------------------------------------------------------------------

    #: Every parameter's rule (:func:`cnncodes.params.check_params`), checked in this order.
    _parameter_checks = {
        "pooling": NETWORK_STEP_CHECKS["pooling"],
        "head": Choice(*HEADS),
        "init_head": Choice(*INIT_HEADS),
        "augment": Choice(*AUGMENTS),
        "trunk_cache": Choice(*TRUNK_CACHE),
        "on_error": NETWORK_STEP_CHECKS["on_error"],
        "channels_last": Choice(*CHANNELS_LAST),
        "train_bn": Choice(True, False),
        "precision": NETWORK_STEP_CHECKS["precision"],
        "lr": Float(above=0),
        "trunk_lr": Float(minimum=0, allow_none=True),
        "weight_decay": Float(minimum=0),
        "dropout": Float(minimum=0, below=1),
        "valid_size": _ValidSize(),
        "epochs": Int(0),
        "batch_size": Int(1),
        "hidden_units": Int(1),
        "early_stopping": Int(1, allow_none=True),
        **NETWORK_STEP_CHECKS,
    }

    def _check_params(self):
        check_params(self, self._parameter_checks)
        if self.early_stopping and not self.valid_size:
            raise UsageError(
                f"early_stopping={self.early_stopping!r} needs a validation split: set "
                "valid_size (e.g. 0.1)"
            )
        if self.init_head == "probe" and self.head != "linear":
            raise UsageError(
                f"init_head='probe' starts a linear head from a logistic regression; head="
                f"{self.head!r} has a hidden layer. Use head='linear' or init_head='random'"
            )
        if self.resume and self.checkpoint is None:
            raise UsageError("resume=True needs checkpoint=<state file> to resume from")
        if self.checkpoint is not None and not isinstance(self.checkpoint, (str, os.PathLike)):
            raise UsageError(f"checkpoint={self.checkpoint!r}: expected a file path or None")
        if not isinstance(self.layer, str):
            raise UsageError(f"layer={self.layer!r}: expected one layer name (a str)")

    def _resolve(self):
        # Training decodes with Pillow; cached trunk codes must come from the same pixels.
        spec = spec_of(self, impl="pil")
        layer = resolve_layers(spec, [self.layer])[0]
        return spec, layer

    def _runtime(self):
        device = resolve_device(self.device)
        precision = resolve_precision(self.precision, device)
        channels_last = (
            device.type == "cuda" if self.channels_last == "auto" else self.channels_last
        )
        workers = default_workers(device) if self.num_workers is None else int(self.num_workers)
        return device, precision, autocast_dtype(precision), bool(channels_last), workers

    # -- fitting -------------------------------------------------------------------------------

    def _skip_unreadable(self, paths, labels):
        kept, skipped = readable(paths)
        if not skipped:
            return paths, labels
        if self.on_error == "raise":
            raise skipped[0][2]
        self._warn_skipped([SkippedImage(i, p, e.reason) for i, p, e in skipped], len(paths))
        return [paths[i] for i in kept], labels[kept]

    def _warn_skipped(self, skipped, n_paths):
        warnings.warn(
            f"{len(skipped)} of {n_paths} training images could not be read "
            f"(on_error='skip'); left out with their labels:\n{_describe_skipped(skipped)}",
            SkippedImagesWarning,
            stacklevel=5,
        )

    def warm_codes(self, paths):
        """Extract into the code cache the codes of ``layer`` (with ``pooling``) that ``fit``
        reads for ``init_head="probe"`` and for a head trained on a frozen network; returns the
        :class:`~cnncodes.extract.ExtractionResult`. A grid search calls it once before its
        folds, as :func:`cnncodes.warm_cache` does for code pipelines."""
        self._check_params()
        spec, layer = self._resolve()
        device, precision, _, _, workers = self._runtime()
        return self._extract_layer(
            list(paths), spec, layer, self.pooling, device, precision, workers
        )

    def _codes(self, paths, spec, layer, pooling, device, precision, workers):
        return self._extract_layer(paths, spec, layer, pooling, device, precision, workers).codes[
            layer
        ]

    def _extract_layer(
        self, paths, spec, layer, pooling, device, precision, workers, on_error="raise"
    ):
        return extract_codes(
            paths,
            spec,
            [layer],
            pooling,
            cache_dir=self.cache_dir,
            batch_size=self.batch_size,
            num_workers=workers,
            device=device,
            precision=precision,
            on_error=on_error,
            progress=self.progress,
            engine=self.engine,
            ray_address=self.ray_address,
        )

    # -- the network-step contract -------------------------------------------------------------

    def network_spec(self):
        """The pretrained network's :class:`~cnncodes.ModelSpec` that ``fit`` resolves; every
        parameter is checked, no image is read and no weights are loaded."""
        self._check_params()
        return self._resolve()[0]

    def extract(self, paths, on_error="raise"):
        """The codes of the pretrained network's ``layer_`` (pooled with ``pooling``) that a fit
        reads for ``init_head="probe"`` and a head on a frozen network, through the cache
        (``on_error``: as for :func:`~cnncodes.extract.extract_codes`)."""
        check_is_fitted(self, "head_state_")
        device, precision, _, _, workers = self._runtime()
        return self._extract_layer(
            list(paths), self.spec_, self.layer_, self.pooling, device, precision, workers,
            on_error=on_error,
        )  # fmt: skip

    def verify_weights(self):
        """Nothing to check: the fitted FineTune holds its weights (it never reads the
        checkpoint it started from)."""
        check_is_fitted(self, "head_state_")

    def verify(self):
        """Check that the model's name still builds the architecture it was trained on."""
        self.verify_weights()
        fitted = self.spec_
        now = arch_id(fitted.model, fitted.weights_spec.name, fitted.model_kwargs)
        if now != fitted.arch_id:
            raise ModelError(
                f"{fitted.model} no longer builds the architecture this fine-tuned model was "
                f"trained on (fingerprint {fitted.arch_id} at fit time, {now} now; its modules "
                "or its forward() code changed); fine-tune again"
            )

    def warm(self, paths, param_grid=None):
        """Decode every image once (an unreadable one raises, or with ``on_error="skip"`` is
        reported in ``skipped``); where a candidate of ``param_grid`` trains only the head on
        the frozen network (``freeze="all"``, no augmentation) or starts it from a probe
        (LP-FT), extract the head layer's codes of the readable images once, so that every fold
        and candidate reads them from the cache."""
        summary = {"runs": 0, "configurations": 0, "computed": 0, "cached": 0, "skipped": []}
        kept, skipped = readable(paths)
        if skipped and self.on_error == "raise":
            raise skipped[0][2]
        summary["skipped"] = [SkippedImage(i, p, e.reason) for i, p, e in skipped]
        kept = [paths[i] for i in kept]
        frozen = "all" in _grid_values(param_grid, "freeze", self.freeze)
        head_only = frozen and self.augment == "none"
        probe = "probe" in _grid_values(param_grid, "init_head", self.init_head)
        if kept and (head_only or probe):
            result = type(self)(**self.get_params()).warm_codes(kept)
            summary.update(runs=1, configurations=1, computed=result.computed, cached=result.cached)
        return summary

    def screen(self, X, y=None):
        """``(X_kept, y_kept, skipped)``: the images that decode (a FineTune reads the files
        itself, so decoding is the whole screening)."""
        return screened(X, y, unreadable_files)

    def describe(self):
        """``extractor``, ``preprocessing_source`` and ``layers`` (``[layer_]``) of the run's
        configuration (see :func:`~cnncodes.estimators.steps.describe_network`)."""
        check_is_fitted(self, "spec_")
        return {
            "extractor": self.spec_.to_dict(),
            "preprocessing_source": dict(self.spec_.preprocessing.source),
            "layers": [self.layer_],
        }

    def _description(self, spec, n_images):
        return f"{spec.model} ({spec.weights_id}), freeze={self.freeze!r}, {n_images} images"

    def fit(self, X, y):
        """Fine-tune on the images ``X`` with labels ``y``.

        Returns
        -------
        self : FineTune
        """
        with training.state_lock(self.checkpoint):  # one run at a time writes a state file
            return self._fit(X, y)

    def _head_only_plan(self, spec, layer, n_images):
        """The trunk plan of a head trained on the cached codes of ``layer`` (``freeze="all"``,
        no augmentation), decided without building the network; None otherwise."""
        if self.freeze != network.FREEZE_ALL:
            return None
        tail, _ = trunk_plan(
            None, spec, layer, network.FREEZE_ALL, n_images, pooling=self.pooling,
            augment=self.augment, trunk_cache=self.trunk_cache,
        )  # fmt: skip
        return tail

    def _cached_codes(self, paths, labels, spec, layer, device, precision, workers):
        """``(paths, labels, codes)`` of a head-only fit: the codes of ``layer`` from the cache
        (computed for the images it lacks). Only those are decoded: a cached image was readable
        when its codes were computed, so the decode screen is the extraction's own; unreadable
        images raise or are left out with their labels as :meth:`_skip_unreadable` does."""
        result = self._extract_layer(
            paths, spec, layer, self.pooling, device, precision, workers, on_error="skip"
        )
        codes = result.codes[layer]
        if not result.skipped:
            return paths, labels, codes
        if self.on_error == "raise":
            first = result.skipped[0]
            raise ImageLoadError(first.path, first.reason)
        self._warn_skipped(result.skipped, len(paths))
        return [paths[i] for i in result.kept], labels[result.kept], codes

    def _fit(self, X, y):
        started = time.perf_counter()
        self._check_params()
        paths, _ = as_path_list(X, who="FineTune")
        classes, encoded = training.encode_labels(paths, y)
        spec, layer = self._resolve()
        device, precision, dtype, channels_last, workers = self._runtime()
        codes = (device, precision, workers)
        head_only = self._head_only_plan(spec, layer, len(paths))
        if head_only is not None:
            paths, encoded, acts = self._cached_codes(paths, encoded, spec, layer, *codes)
        else:
            paths, encoded = self._skip_unreadable(paths, encoded)
        if len(np.unique(encoded)) < len(classes):
            raise UsageError("after leaving out unreadable images, a class has no image left")
        self.valid_size_ = self._valid_size(encoded)
        train, valid = training.stratified_split(encoded, self.valid_size_, self.seed)
        # A head on cached codes: the network is neither built nor loaded.
        net = None if head_only is not None else build_model(spec)
        freeze = self.freeze if net is None else network.check_freeze(self.freeze, net, spec.model)
        n_inputs = code_size(layer_shapes(spec, [layer])[layer], self.pooling)
        # A head alone trains on one thread on the CPU (see training.torch_threads).
        threads = 1 if net is None and device.type == "cpu" else None
        with training.fixed_seed(self.seed):
            head = network.make_head(
                self.head, n_inputs, len(classes), self.hidden_units, self.dropout
            )
            module, tail, node = self._network(net, spec, layer, freeze, head, len(paths))
            if self.init_head == "probe":
                if head_only is not None:
                    probe_codes = acts[train]
                else:
                    probe_paths = [paths[i] for i in train]
                    probe_codes = self._codes(probe_paths, spec, layer, self.pooling, *codes)
                init_head_from_probe(head, probe_codes, encoded[train])
            if head_only is not None:
                dataset = Activations(acts, encoded)
                trained = module
            elif tail is not None:
                pooling = (
                    self.pooling if node == layer and freeze == network.FREEZE_ALL else "flatten"
                )
                acts = self._codes(paths, spec, node, pooling, *codes)
                if pooling == "flatten":
                    acts = acts.reshape(len(paths), *layer_shapes(spec, [node])[node])
                dataset = Activations(acts, encoded)
                trained = network.FineTuneNet(tail, head, self.pooling, (), self.train_bn)
            else:
                dataset = Images(paths, encoded, spec.preprocessing, self.augment)
                trained = module
            train_set = torch.utils.data.Subset(dataset, train)
            valid_set = None
            if len(valid):
                valid_set = torch.utils.data.Subset(dataset.with_augment("none"), valid)
            with training.torch_threads(threads):
                self.history_ = self._train(
                    trained, train_set, encoded[train], valid_set, len(classes), spec, paths,
                    device, dtype, channels_last, workers,
                )  # fmt: skip
        module.cpu().eval()
        self.spec_ = spec
        self.layer_ = layer
        self.classes_ = classes
        self.n_features_in_ = 1
        self.trunk_cached_ = tail is not None
        # A head-only fit leaves the network as pretrained: its weights are read from the
        # pretrained checkpoint when first asked for (prediction without the cache, a saved
        # checkpoint, pickling), not on every fit of a cross-validation.
        self._state_dict = None if net is None else _arrays(net.state_dict())
        self.head_state_ = _arrays(head.state_dict())
        self.n_train_ = int(len(train))
        self.fit_seconds_ = time.perf_counter() - started
        self._module = None if net is None else module
        self._trained = None  # the part after the cached trunk, built when predicting
        return self

    def _network(self, net, spec, layer, freeze, head, n_images):
        """``(module, tail, node)``: the whole fine-tuned network over ``net`` and ``head`` (the
        head alone where ``net`` is None), the trainable part after the cached frozen one and
        the node whose cached activations feed it (:func:`~.plan.trunk_plan`)."""
        if net is None:
            tail = torch.nn.Identity()
            return network.FineTuneNet(tail, head, self.pooling, (), self.train_bn), tail, layer
        trunk, frozen = network.build_trunk(net, layer, freeze)
        for p in net.parameters():
            p.requires_grad_(True)
        module = network.FineTuneNet(trunk, head, self.pooling, frozen, self.train_bn)
        tail, node = trunk_plan(
            net, spec, layer, freeze, n_images, pooling=self.pooling, augment=self.augment,
            trunk_cache=self.trunk_cache,
        )  # fmt: skip
        return module, tail, node

    def _valid_size(self, labels):
        """The fraction held out for validation: ``valid_size``, or with ``"auto"`` what the
        data allow (:func:`~.training.auto_valid_size`), a warning saying when that is none."""
        if self.valid_size != AUTO:
            return self.valid_size
        size, note = training.auto_valid_size(labels)
        if note is not None:
            if self.early_stopping:
                raise UsageError(
                    f"early_stopping={self.early_stopping!r} needs a validation split, which "
                    f"these images do not allow: {note}"
                )
            warnings.warn(note, UserWarning, stacklevel=4)
        return size

    @property
    def state_dict_(self):
        """The fine-tuned network's weights (arrays by the architecture's parameter names)."""
        state = self.__dict__.get("_state_dict")
        if state is None:
            if "spec_" not in self.__dict__:
                raise AttributeError("state_dict_: this FineTune is not fitted")
            # A head-only fit: the network is the pretrained one, loaded now.
            state = self._state_dict = _arrays(build_model(self.spec_).state_dict())
        return state

    @state_dict_.setter
    def state_dict_(self, value):
        self._state_dict = value

    def _run_fingerprint(self, spec, paths, labels, trunk_cached):
        """What a state file must match to be resumed: settings, network, images and labels."""
        # Where things run, not what is computed (and absent from state files written before).
        # batch_size changes the training: it stays in.
        ignored = ("checkpoint", "resume", *(p for p in RUNTIME_PARAMS if p != "batch_size"))
        params = {k: v for k, v in self.get_params().items() if k not in ignored}
        params["weights"] = spec.weights_id
        values = [params, spec.arch_id, trunk_cached, list(paths), np.asarray(labels).tolist()]
        return training.fingerprint(values), training.run_settings(*values)

    def _train(self, module, train_set, y_train, valid_set, n_classes, spec, paths, *runtime):
        state = None
        if self.checkpoint is not None:
            description = self._description(spec, len(paths))
            cached = not isinstance(module.trunk, (network._Out, network._Hooked))
            fp, settings = self._run_fingerprint(spec, paths, y_train, cached)
            state = training.EpochState(os.fspath(self.checkpoint), fp, description, settings)
        return training.train(
            module, train_set, y_train, valid_set, n_classes, self, state, *runtime
        )

    # -- prediction ----------------------------------------------------------------------------

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_module", None)
        state.pop("_trained", None)
        if "spec_" in state:  # a fitted FineTune holds its weights, a head-only one's too
            state["_state_dict"] = self.state_dict_
        return state

    def _fitted_module(self):
        if getattr(self, "_module", None) is None:
            self._module = rebuild_module(
                self.spec_, self.state_dict_, self.layer_, self.head, self.head_state_,
                len(self.classes_), self.pooling, hidden_units=self.hidden_units,
                dropout=self.dropout,
            )  # fmt: skip
        return self._module

    def _trained_part(self):
        if getattr(self, "_trained", None) is None:
            # A head alone needs none of the network's weights (nor their loading).
            held = None if self.freeze == network.FREEZE_ALL else self.state_dict_
            self._trained = trained_part(
                self.spec_, held, self.layer_, self.freeze, self.head,
                self.head_state_, len(self.classes_), self.pooling,
                hidden_units=self.hidden_units, dropout=self.dropout,
            )  # fmt: skip
        return self._trained

    def _cached_logits(self, paths, device, precision, dtype, channels_last, workers):
        """The logits from the frozen part's codes that ``fit`` read (under the same cache key:
        ``layer_``'s pooled codes for ``freeze="all"``, else the ``freeze`` node's flattened
        activations), computed and cached for images the cache lacks, through the trained part."""
        if self.freeze == network.FREEZE_ALL:
            node, pooling = self.layer_, self.pooling
        else:
            node, pooling = self.freeze, "flatten"
        acts = self._codes(paths, self.spec_, node, pooling, device, precision, workers)
        if pooling == "flatten":
            acts = acts.reshape(len(paths), *layer_shapes(self.spec_, [node])[node])
        head_only = self.freeze == network.FREEZE_ALL and device.type == "cpu"
        with training.torch_threads(1 if head_only else None):  # as the head trained
            return cached_logits(
                self._trained_part(), acts, batch_size=self.batch_size, device=device,
                dtype=dtype, nhwc=channels_last,
            )  # fmt: skip

    def _logits(self, X):
        check_is_fitted(self, "head_state_")
        paths, _ = as_path_list(X, who="FineTune")
        device, precision, dtype, channels_last, workers = self._runtime()
        # Where fit read the frozen part's output from the code cache, so does prediction: the
        # frozen layers are the pretrained ones, so their cached codes are this network's too.
        if getattr(self, "trunk_cached_", False) and self.cache_dir not in (None, False):
            try:
                return self._cached_logits(paths, device, precision, dtype, channels_last, workers)
            except WeightsError:
                pass  # the pretrained checkpoint is gone or changed: use the weights held here
        return predict_logits(
            self._fitted_module(), paths, self.spec_.preprocessing, batch_size=self.batch_size,
            workers=workers, device=device, dtype=dtype, nhwc=channels_last,
        )  # fmt: skip

    def predict_proba(self, X):
        """Class probabilities of the images ``X``, columns in the order of ``classes_``."""
        check_is_fitted(self, "head_state_")
        return torch.softmax(self._logits(X), 1).numpy()

    def predict(self, X):
        """The most probable class of each image in ``X``."""
        check_is_fitted(self, "head_state_")
        return self.classes_[self._logits(X).argmax(1).numpy()]

    def save_checkpoint(self, path):
        """Write the fine-tuned network as a checkpoint of its architecture.

        The file holds the whole architecture's ``state_dict`` (layers after ``layer`` as they were
        pretrained), the preprocessing, and the new head under ``"finetune"``; it loads with
        ``weights_only=True``, and its SHA-256 becomes its identity in the code cache::

            CNNCodes(model, weights=path)   # codes of the fine-tuned network
        """
        check_is_fitted(self, "head_state_")
        pre = self.spec_.preprocessing.to_dict()
        entry = {
            "state_dict": {k: torch.as_tensor(v) for k, v in self.state_dict_.items()},
            "preprocessing": {k: pre[k] for k in PREPROCESSING_KEYS},
            "finetune": {
                "model": self.spec_.model,
                "layer": self.layer_,
                "pooling": self.pooling,
                "classes": [str(c) for c in self.classes_],
                "head": {k: torch.as_tensor(v) for k, v in self.head_state_.items()},
            },
        }
        path = os.fspath(path)
        training.save_atomically(entry, path)  # a full disk: an OSError naming path
        return path

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.one_d_array = True
        tags.input_tags.string = True
        tags.requires_fit = True
        tags.non_deterministic = False
        return tags
