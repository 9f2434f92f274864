""":class:`CNNCodes`, the scikit-learn transformer of image paths into CNN codes.

The work lives in :func:`cnncodes.extract.extract_codes`; :class:`CNNCodes` is a thin, picklable
wrapper around it that holds names and a resolved :class:`~cnncodes.models.ModelSpec`, never a
network, a tensor or an open file. It implements the network-step contract
(:class:`~cnncodes.estimators.steps.NetworkStep`). :class:`SignedPower` (:mod:`.signedpower`) and
the helpers of grid searches over it, :func:`~cnncodes.search.warm_cache` and
:func:`~cnncodes.search.filter_readable` (:mod:`.search`), are importable from here too.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.utils.validation import _check_feature_names_in, check_is_fitted

from ..errors import UsageError
from ..extraction.extract import extract_codes, extract_views, resolve_device
from ..images.views import check_view_reduce, expand_views
from ..networks.models import spec_of
from ..params import as_path_list, check_params
from ..spec import ModelError
from ..store import cache as _cache
from .resolution import resolve_configuration
from .search import filter_readable, screened, warm_cache
from .signedpower import SignedPower
from .steps import NETWORK_STEP_CHECKS, NetworkStep
from .warming import warm_plan

__all__ = [
    "CNNCodes",
    "SignedPower",
    "SkippedImagesError",
    "SkippedImagesWarning",
    "filter_readable",  # cnncodes.search's, importable from here as before
    "warm_cache",
]


class SkippedImagesError(UsageError):
    """Images could not be read while labels were given, so their rows cannot simply be dropped.

    Attributes
    ----------
    skipped : list of cnncodes.SkippedImage
        ``(index, path, reason)`` of every image that produced no code.
    """

    def __init__(self, skipped, message):
        super().__init__(message)
        self.skipped = list(skipped)

    def __reduce__(self):
        return type(self), (self.skipped, self.args[0])


class SkippedImagesWarning(UserWarning):
    """``on_error="skip"`` left images out; their rows are NaN. The message names every file."""


def _describe_skipped(skipped, limit=10):
    lines = [f"  [{s.index}] {s.path}: {s.reason}" for s in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more")
    return "\n".join(lines)


class CNNCodes(NetworkStep, TransformerMixin, BaseEstimator):
    """Image file paths -> CNN codes: pooled activations of a frozen network's layer(s).

    ``X`` is a sequence of image paths (str or os.PathLike), a 1-D array of str, or a one-column
    DataFrame of paths. ``transform`` returns a float32 array of shape ``(n_images,
    n_features_out_)``, one row per input, in input order.

    Codes go through the content-addressed cache (``cache_dir``): an image is pushed through
    the network once per configuration (model, weights, layer, pooling, preprocessing,
    precision); every later request is a cache hit, whatever the file is called. This is what
    makes a grid search over classifiers, layers and poolings cheap: each fold and candidate
    reads codes from disk instead of running the network. With ``cache_dir=None`` nothing is
    kept, and a grid search recomputes the codes for every fold and candidate.

    Parameters
    ----------
    model : str, default="resnet50"
        A torchvision classification model name or ``"package.module:callable"``.
    weights : str or path-like, default=None
        Torchvision weights name (``"DEFAULT"``, ``"IMAGENET1K_V1"``), ``"none"`` (random
        initialisation from ``seed``) or a checkpoint file. None: ``"DEFAULT"`` for torchvision
        models. A checkpoint is identified by its SHA-256, re-checked whenever codes are made.
    layer : str or list of str, default="penultimate"
        Graph-node name(s), e.g. ``"layer3"``; ``"penultimate"`` is the input of the last
        ``nn.Linear`` (the classic CNN codes). Several layers: their codes side by side, in order.
    pooling : {"avg", "max", "avgmax", "pyramid", "flatten"}, default="avg"
        How spatial maps become vectors (see :mod:`cnncodes.pooling`).
    seed : int, default=0
        Seed of the random initialisation (``weights="none"``).
    resize, crop, mean, std, interpolation : optional
        Overrides of the weights' own preprocessing (see
        :func:`cnncodes.models.resolve_preprocessing`).
    impl : {"pil", "torch"}, default="pil"
        Which code preprocesses the images: ``"pil"`` (Pillow on the CPU) or ``"torch"`` (JPEG
        files decoded by torchvision on the extraction device, nvJPEG on a GPU; resizing and
        cropping as tensor operations; bilinear or bicubic only; other files fall back to
        Pillow). Part of the cache key: the two give slightly different codes.
    model_kwargs : dict, default=None
        Keyword arguments of the model's builder, e.g. ``{"num_classes": 5}`` for a checkpoint
        fine-tuned on 5 classes (JSON scalars: int, float, str, bool, None). Part of the cache
        key when given.
    views : {"center", "flip", "five_crop", "ten_crop"}, int or list of str, default="center"
        Which views of each image are coded (see :mod:`cnncodes.views`): the centre crop,
        ``"flip"`` (centre and its mirror), torchvision's five or ten crops, an int N: N
        random resized crops (seeded by ``view_seed`` and each image's content, so the same
        whatever the batch or order), or a list of view strings (``["center", "crop:tl"]``).
        Each view's codes are cached apart, so a grid search over ``views`` computes each
        view once.
    view_reduce : {"mean", "max", "stack"}, default="mean"
        How an image's views become its codes: their mean or maximum, ``(n_images,
        n_features_out_)``; or ``"stack"``, ``(n_images, n_views, n_features_out_)``, for a
        :class:`~cnncodes.ViewStack` classifier (each view a training row; their mean at
        prediction).
    view_seed : int, default=0
        Seed of the random resized crops (``views`` an int).
    cache_dir : "auto", None or path, default="auto"
        The code cache: ``"auto"`` is ``$CNNCODES_CACHE`` or ``./cache``; None disables it.
    batch_size : int, default=32
        Images per forward pass. On the CPU the codes are bit-identical whatever its value; on a
        GPU they may differ by float rounding (see :func:`~cnncodes.extract.extract_codes`).
    num_workers : int, default=None
        Image-decoding processes; None: on a GPU every core but one (up to 16), on the CPU 0
        with at most 4 cores (the network needs them), else 4.
    device : str, default="auto"
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    precision : {"auto", "fp32", "bf16", "fp16"}, default="auto"
        ``"auto"`` is fp32 on the CPU, bf16 on a GPU. Part of the cache key.
    on_error : {"raise", "skip"}, default="raise"
        What an unreadable image does; see *Unreadable images* below.
    progress : bool or None, default=False
        Report the images going through the network: a bar on a terminal, else a line every 10
        seconds (None: only for runs that long; see :func:`~cnncodes.extract.extract_codes`).
    engine : {"local", "ray"}, default="local"
        Where codes the cache lacks are computed: in this process, or on a Ray cluster (the
        same codes; ``cache_dir`` must then be a folder every node sees; see
        :func:`~cnncodes.extract.extract_codes`). For a grid search on the cluster, call
        :func:`~cnncodes.search.warm_cache` first, then fit inside
        ``joblib.parallel_backend("ray")`` (after ``ray.util.joblib.register_ray()``).
    ray_address : str, default=None
        With ``engine="ray"``: ``"auto"`` or ``"HOST:PORT"`` of the cluster; None: the Ray
        session of this process, else a local Ray started for each extraction.

    Attributes
    ----------
    spec_ : ModelSpec
        The resolved model (names, weights identity, preprocessing); no tensors.
    layers_ : list of str
        The resolved layer names (``"penultimate"`` expanded).
    layer_sizes_ : dict of str to int
        Code length of each layer under ``pooling``.
    n_features_out_ : int
        Total code length (the number of output columns).
    views_ : list of str
        The views coded (:func:`cnncodes.views.expand_views` of ``views``).
    n_features_in_ : int
        Always 1: one path per sample.
    feature_names_in_ : ndarray of str
        The column name, when fitted on a DataFrame whose column name is a str.

    Notes
    -----
    **Fitting is cheap.** ``fit`` resolves names, checks every parameter and computes the code
    length without reading any image or loading any weights, so it fails early on a bad
    configuration. Codes are made by ``transform`` (and ``fit_transform``).

    **Unreadable images** (missing, truncated, not an image). With ``on_error="raise"``, the
    first one stops ``transform`` with an :class:`~cnncodes.images.ImageLoadError` naming it
    (codes computed so far are kept in the cache). With ``on_error="skip"``, every readable
    image is extracted, and rows never shift against the input:

    - ``transform(X)`` returns one row per input; the row of an unreadable image is all NaN,
      and a :class:`SkippedImagesWarning` names each such file and its reason.
    - ``fit_transform(X, y)`` with labels (this is what a ``Pipeline`` or ``GridSearchCV`` fit
      calls) raises :class:`SkippedImagesError` listing the files: a NaN row paired with a
      label would train the classifier on an image that does not exist.

    To train or predict on the readable images only, drop the others *together with their
    labels* first, with :func:`~cnncodes.search.filter_readable` (its extraction fills the cache, so the
    following fit reads every code from it).

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> codes = CNNCodes("resnet18", weights="none", layer="layer4", resize=64, crop=56)
    >>> codes.fit(["ant.jpg", "bee.jpg"]).n_features_out_  # no image is read by fit
    512
    >>> pipe = make_pipeline(codes, LogisticRegression())
    >>> pipe.fit(paths, labels).predict(new_paths)  # doctest: +SKIP
    """

    def __init__(
        self,
        model="resnet50",
        weights=None,
        layer="penultimate",
        pooling="avg",
        seed=0,
        resize=None,
        crop=None,
        mean=None,
        std=None,
        interpolation=None,
        impl="pil",
        cache_dir="auto",
        batch_size=32,
        num_workers=None,
        device="auto",
        precision="auto",
        on_error="raise",
        progress=False,
        model_kwargs=None,
        views="center",
        view_reduce="mean",
        view_seed=0,
        engine="local",
        ray_address=None,
    ):
        self.model = model
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.seed = seed
        self.resize = resize
        self.crop = crop
        self.mean = mean
        self.std = std
        self.interpolation = interpolation
        self.impl = impl
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = device
        self.precision = precision
        self.on_error = on_error
        self.progress = progress
        self.model_kwargs = model_kwargs
        self.views = views
        self.view_reduce = view_reduce
        self.view_seed = view_seed
        self.engine = engine
        self.ray_address = ray_address

    def __setstate__(self, state):
        # Estimators saved before ``impl`` existed preprocessed with Pillow; those saved before
        # ``model_kwargs`` called the builder without arguments; before views, they coded the
        # centre crop alone; before ``engine``, they extracted in their own process.
        state.setdefault("impl", "pil")
        state.setdefault("model_kwargs", None)
        state.setdefault("views", "center")
        state.setdefault("view_reduce", "mean")
        state.setdefault("view_seed", 0)
        state.setdefault("engine", "local")
        state.setdefault("ray_address", None)
        if "spec_" in state:
            state.setdefault("views_", ["center"])
        super().__setstate__(state)

    # -- fitting -------------------------------------------------------------------------------

    #: Every parameter's rule (:func:`cnncodes.params.check_params`), checked in this order.
    _parameter_checks = {
        **NETWORK_STEP_CHECKS,
        "view_reduce": lambda value, name: check_view_reduce(value),
    }

    def _check_params(self):
        """``(layer names, views)`` once every parameter is checked."""
        check_params(self, self._parameter_checks)
        if self.engine == "local":
            resolve_device(self.device)  # on Ray, the workers' devices count
        views = expand_views(self.views, self.view_seed)
        layer = self.layer
        if isinstance(layer, str):
            layer = [layer]
        elif isinstance(layer, (list, tuple)) and layer:
            layer = list(layer)
        else:
            raise UsageError(
                f"layer={self.layer!r}: expected a layer name such as 'layer4' or "
                "'penultimate', or a non-empty list of names"
            )
        return layer, views

    def _configure(self):
        """``(views, spec, layers, code sizes)`` of the parameters; no image is read."""
        layers, views = self._check_params()
        spec, resolved, sizes = resolve_configuration(self, layers)
        for view in views:
            try:
                spec.with_view(view)
            except ValueError as exc:
                raise UsageError(f"views={self.views!r}: {exc}") from None
        return views, spec, resolved, sizes

    def fit(self, X, y=None):
        """Resolve the model and layers and check every parameter; no image is read.

        Parameters
        ----------
        X : sequence of str or os.PathLike, 1-D array of str, or one-column DataFrame
            Image paths (only their form is checked here).
        y : ignored

        Returns
        -------
        self : CNNCodes
        """
        views, spec, resolved, sizes = self._configure()
        _, names = as_path_list(X)
        self.views_ = views
        self.spec_ = spec
        self.layers_ = resolved
        self.layer_sizes_ = sizes
        self.n_features_out_ = int(sum(sizes.values()))
        self.n_features_in_ = 1
        if names is not None:
            self.feature_names_in_ = names
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        return self

    # -- the network-step contract -------------------------------------------------------------

    def network_spec(self):
        """The :class:`~cnncodes.ModelSpec` that ``fit`` resolves; no image is read."""
        return self._configure()[1]

    def verify_weights(self):
        """Refuse a checkpoint file that changed since fit, even when every code is cached."""
        check_is_fitted(self)
        self.spec_.weights_spec.verify()

    def verify(self):
        """Check that the fitted network is rebuilt today exactly as it was fitted.

        The checkpoint file must have the SHA-256 it had at fit time, and the architecture and
        preprocessing its names resolve to today must equal the fitted ones.
        """
        self.verify_weights()
        fitted = self.spec_
        weights = fitted.weights if fitted.weights_spec.kind != "callable" else None
        now = spec_of(self, model=fitted.model, weights=weights, seed=fitted.seed)
        legacy = "+" not in fitted.arch_id and now.arch_id.partition("+")[0] == fitted.arch_id
        if legacy and now.arch_id != fitted.arch_id:
            # Saved before forward() was part of the fingerprint: its modules still match.
            warnings.warn(
                f"this model was saved by an older cnncodes, whose fingerprint of {fitted.model} "
                "did not cover its forward() code: an edit of forward() since the fit cannot be "
                "detected (its codes are read from the cache as they were); refit to be sure",
                stacklevel=3,
            )
        elif now.arch_id != fitted.arch_id:
            raise ModelError(
                f"{fitted.model} no longer builds the architecture this model was fitted with "
                f"(fingerprint {fitted.arch_id} at fit time, {now.arch_id} now; its modules or "
                "its forward() code changed); refit"
            )
        if now.weights_id != fitted.weights_id:
            raise ModelError(
                f"{fitted.model} weights are now {now.weights_id}, but the model was fitted with "
                f"{fitted.weights_id}; refit, or restore the original weights"
            )
        if now.preprocessing != fitted.preprocessing:
            raise ModelError(
                f"{fitted.model} preprocessing is now {now.preprocessing.to_dict()}, but the "
                f"model was fitted with {fitted.preprocessing.to_dict()}; refit"
            )

    def relocate_weights(self, path):
        """Point the fitted step at its checkpoint file in a new place (same SHA-256)."""
        check_is_fitted(self)
        spec = self.spec_
        if spec.weights_spec.kind != "checkpoint":
            raise UsageError(
                f"weights={os.fspath(path)!r}: this model was fitted with {spec.weights_id}, not "
                "a checkpoint file, so there is no file to relocate"
            )
        path = spec.weights_spec.verify(path)
        self.weights = path
        self.spec_ = dataclasses.replace(spec, weights=path)
        return self

    def extract(self, paths, poolings=None):
        """Codes of ``paths`` under the fitted configuration: an ExtractionResult (its codes
        reduced over the views as ``view_reduce`` says). ``poolings``: the poolings to make from
        the same pass instead of ``pooling``, as :func:`extract_codes` takes them (a list, or
        per layer its own), codes then keyed by ``(layer, pooling)``."""
        self.verify_weights()
        views = getattr(self, "views_", ["center"])
        if views == ["center"]:
            extract, by_view = extract_codes, {}
        else:
            extract = extract_views
            by_view = dict(views=views, view_reduce=self.view_reduce)
        return extract(
            paths,
            self.spec_,
            self.layers_,
            self.pooling if poolings is None else poolings,
            **by_view,
            cache_dir=self.cache_dir,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            device=self.device,
            precision=self.precision,
            on_error=self.on_error,
            progress=self.progress,
            engine=self.engine,
            ray_address=self.ray_address,
        )

    def screen(self, X, y=None):
        """``(X_kept, y_kept, skipped)``: each image is screened by extracting its codes with
        this configuration and ``on_error="skip"`` (the codes land in the cache)."""
        return screened(X, y, self._unreadable)

    def _unreadable(self, paths):
        screen = clone(self).set_params(on_error="skip")
        if hasattr(self, "spec_"):
            # Fitted: keep exactly its resolved configuration.
            for attr in ("spec_", "layers_", "layer_sizes_", "n_features_out_", "n_features_in_"):
                setattr(screen, attr, getattr(self, attr))
            screen.views_ = getattr(self, "views_", ["center"])
        else:
            screen.fit(paths)
        return screen.extract(paths).skipped

    def warm(self, paths, param_grid=None):
        """Extract, once, every code a grid search over this step's ``param_grid`` reads.

        Candidates that differ only in ``layer`` and ``pooling`` share one forward pass. See
        :func:`~cnncodes.search.warm_cache`.
        """
        if _cache.resolve_cache_dir(self.cache_dir) is None:
            raise UsageError(
                "warm_cache needs a cache, but cache_dir=None keeps nothing; set cache_dir "
                "('auto' or a folder)"
            )
        grids = [param_grid] if isinstance(param_grid, dict) else list(param_grid or [{}])
        summary = {"runs": 0, "configurations": 0, "computed": 0, "cached": 0, "skipped": None}
        for others, layers, pooling, poolings in warm_plan(self, paths, grids):
            candidate = type(self)(layer=layers, pooling=pooling, **others).fit(paths)
            result = candidate.extract(paths, poolings)
            summary["runs"] += 1
            summary["configurations"] += len(result.codes) * len(candidate.views_)
            summary["computed"] += result.computed
            summary["cached"] += result.cached
            if summary["skipped"] is None:
                summary["skipped"] = result.skipped
        summary["skipped"] = summary["skipped"] or []
        return summary

    def describe(self):
        """``extractor``, ``preprocessing_source``, ``layers`` and, for several views,
        ``views`` (see :func:`~cnncodes.estimators.steps.describe_network`)."""
        check_is_fitted(self)
        out = {
            "extractor": self.spec_.to_dict(),
            "preprocessing_source": dict(self.spec_.preprocessing.source),
            "layers": list(self.layers_),
        }
        views = getattr(self, "views_", ["center"])
        if views != ["center"]:  # configurations of the centre crop alone read as before
            out["views"] = {"views": list(views), "reduce": self.view_reduce}
        return out

    # -- codes ---------------------------------------------------------------------------------

    def _check_columns(self, X):
        """A DataFrame at transform time must use the column name seen in fit (as sklearn does)."""
        fitted = getattr(self, "feature_names_in_", None)
        if fitted is None or not (hasattr(X, "columns") and hasattr(X, "iloc")):
            return
        if list(X.columns) != list(fitted):
            raise UsageError(
                f"X has column {list(X.columns)!r}, but CNNCodes was fitted with column "
                f"{list(fitted)!r}: the feature names should match those passed during fit"
            )

    def _assemble(self, paths, result, labelled):
        """One float32 row per input; NaN rows for skipped images (or an error with labels)."""
        codes = np.asarray(result.concatenated(), dtype=np.float32)
        if codes.shape[-1] != self.n_features_out_:  # a safeguard: fit and extraction disagree
            raise RuntimeError(
                f"extraction returned {codes.shape[-1]} features, expected {self.n_features_out_}"
            )
        if not result.skipped:
            return codes
        listing = _describe_skipped(result.skipped)
        if labelled:
            raise SkippedImagesError(
                result.skipped,
                f"{len(result.skipped)} of {len(paths)} training images could not be read "
                f"(on_error='skip'):\n{listing}\nTheir rows cannot be dropped here without "
                "misaligning the labels. Drop them together with their labels first: "
                "X, y, skipped = cnncodes.search.filter_readable(X, y, extractor=...), "
                "or fix the files.",
            )
        warnings.warn(
            f"{len(result.skipped)} of {len(paths)} images could not be read "
            f"(on_error='skip'); their rows are NaN:\n{listing}",
            SkippedImagesWarning,
            stacklevel=4,  # _assemble, transform, sklearn's set_output wrapper, caller
        )
        full = np.full((len(paths), *codes.shape[1:]), np.nan, dtype=np.float32)
        full[result.kept] = codes
        return full

    def transform(self, X):
        """CNN codes of the images in ``X``, from the cache where possible.

        Parameters
        ----------
        X : sequence of str or os.PathLike, 1-D array of str, or one-column DataFrame
            Image paths.

        Returns
        -------
        codes : ndarray of shape (n_images, n_features_out_), dtype float32
            One row per input, in input order (NaN rows for images skipped with
            ``on_error="skip"``); ``(n_images, n_views, n_features_out_)`` with
            ``view_reduce="stack"`` and several views.
        """
        check_is_fitted(self)
        paths, _ = as_path_list(X)
        self._check_columns(X)
        return self._assemble(paths, self.extract(paths), labelled=False)

    def fit_transform(self, X, y=None, **fit_params):
        """Fit, then return the codes of ``X``.

        With ``on_error="skip"`` and labels ``y``, unreadable images raise
        :class:`SkippedImagesError` instead of becoming NaN rows paired with labels.
        """
        self.fit(X, y, **fit_params)
        paths, _ = as_path_list(X)
        return self._assemble(paths, self.extract(paths), labelled=y is not None)

    def get_feature_names_out(self, input_features=None):
        """Output names ``"{layer}__{pooling}{i}"``, layer by layer in order.

        Parameters
        ----------
        input_features : array-like of str, optional
            Checked like any scikit-learn transformer's (it must be the input column name
            seen in fit, if any); the output names do not depend on it.

        Returns
        -------
        ndarray of str objects, shape (n_features_out_,)
        """
        check_is_fitted(self)
        _check_feature_names_in(self, input_features)
        names = [
            f"{layer}__{self.pooling}{i}"
            for layer, size in self.layer_sizes_.items()
            for i in range(size)
        ]
        return np.asarray(names, dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.one_d_array = True
        tags.input_tags.string = True
        tags.requires_fit = True
        tags.non_deterministic = False
        tags.transformer_tags.preserves_dtype = []
        return tags
