"""scikit-learn estimators: :class:`CNNCodes` (image paths -> CNN codes) and :class:`SignedPower`.

This is the only module that imports ``sklearn.base``. The work lives in
:func:`cnncodes.extract.extract_codes`; :class:`CNNCodes` is a thin, picklable wrapper around it that
holds names and a resolved :class:`~cnncodes.models.ModelSpec`, never a network, a tensor or an
open file. Its inputs are checked by :mod:`cnncodes._inputs`; the helpers of grid searches over
it, :func:`~cnncodes.search.warm_cache` and :func:`~cnncodes.search.filter_readable`, are
:mod:`cnncodes.search`'s (importable from here too).
"""

from __future__ import annotations

import numbers
import os
import warnings

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import (
    FLOAT_DTYPES,
    _check_feature_names_in,
    check_is_fitted,
    validate_data,
)

from ..errors import UsageError
from ..extraction.extract import ON_ERROR, PRECISIONS, extract_codes, extract_views, resolve_device
from ..images.views import check_view_reduce, expand_views
from ..networks.architectures import model_identity
from ..networks.layers import layer_shapes, resolve_layers
from ..networks.models import spec_of
from ..networks.pooling import check_pooling, code_size
from ..params import as_path_list, check_engine, check_int
from ..spec import MODEL_PARAMS, file_stamp
from ..store import cache as _cache

__all__ = [
    "CNNCodes",
    "SignedPower",
    "SkippedImagesError",
    "SkippedImagesWarning",
    "filter_readable",  # noqa: F822 - cnncodes.search's, see __getattr__ at the end
    "warm_cache",  # noqa: F822
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


_RESOLVED = {}


def _weights_key(weights):
    """Identity of ``weights`` for the resolution memo: a file by its change stamp."""
    if weights is None or not isinstance(weights, (str, os.PathLike)):
        return repr(weights)
    path = os.fspath(weights)
    try:
        return (os.path.abspath(path), *file_stamp(path)[1:])
    except OSError:
        return path


def _resolve(est, layers):
    """``(spec, layers, code sizes)`` of an estimator's settings, memoised in this process.

    A grid search fits a fresh clone for every candidate and fold; resolving again each time
    (fingerprinting the architecture, tracing its graph) would cost more than reading the codes.
    A checkpoint file is keyed by its change stamp (:func:`cnncodes.spec.file_stamp`: size,
    mtime, ctime, inode), so a changed file is resolved anew, even one rewritten in place.
    """
    # The weights go into the key by their file's change stamp, not by their name.
    params = tuple(getattr(est, name) for name in MODEL_PARAMS if name != "weights")
    identity = model_identity(est.model) if isinstance(est.model, str) else None
    key = (repr(params), identity, _weights_key(est.weights), repr(layers), est.pooling)
    found = _RESOLVED.get(key)
    if found is not None:
        return found[0], list(found[1]), dict(found[2])
    spec = spec_of(est)
    resolved = resolve_layers(spec, layers)
    shapes = layer_shapes(spec, resolved)
    sizes = {}
    for name in resolved:
        try:
            sizes[name] = code_size(shapes[name], est.pooling)
        except ValueError as exc:
            raise UsageError(f"layer={name!r}: {exc}") from None
    if len(_RESOLVED) >= 256:
        _RESOLVED.clear()
    _RESOLVED[key] = (spec, tuple(resolved), dict(sizes))
    return spec, resolved, sizes


class CNNCodes(TransformerMixin, BaseEstimator):
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

    def _check_params(self):
        check_pooling(self.pooling)
        if self.on_error not in ON_ERROR:
            raise UsageError(
                f"on_error={self.on_error!r}: choose one of {', '.join(map(repr, ON_ERROR))}"
            )
        if self.precision not in PRECISIONS:
            raise UsageError(
                f"precision={self.precision!r}: choose one of {', '.join(map(repr, PRECISIONS))}"
            )
        check_int(self.batch_size, "batch_size", 1)
        check_int(self.num_workers, "num_workers", 0, allow_none=True)
        if self.progress is not None and not isinstance(self.progress, (bool, np.bool_)):
            raise UsageError(f"progress={self.progress!r}: expected True, False or None")
        check_engine(self.engine, self.ray_address)
        if self.engine == "local":
            resolve_device(self.device)  # on Ray, the workers' devices count
        _cache.resolve_cache_dir(self.cache_dir)
        check_view_reduce(self.view_reduce)
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
        layers, views = self._check_params()
        _, names = as_path_list(X)
        spec, resolved, sizes = _resolve(self, layers)
        for view in views:
            try:
                spec.with_view(view)
            except ValueError as exc:
                raise UsageError(f"views={self.views!r}: {exc}") from None
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

    def _verify_weights(self):
        """Refuse a checkpoint file that changed since fit, even when every code is cached."""
        self.spec_.weights_spec.verify()

    def _extract(self, paths):
        """Codes of ``paths`` under the fitted configuration: an ExtractionResult (its codes
        reduced over the views as ``view_reduce`` says)."""
        self._verify_weights()
        views = getattr(self, "views_", ["center"])
        if views == ["center"]:
            extract, by_view = extract_codes, {}
        else:
            extract = extract_views
            by_view = dict(views=views, view_reduce=self.view_reduce)
        result = extract(
            paths,
            self.spec_,
            self.layers_,
            self.pooling,
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
        return result

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
        return self._assemble(paths, self._extract(paths), labelled=False)

    def fit_transform(self, X, y=None, **fit_params):
        """Fit, then return the codes of ``X``.

        With ``on_error="skip"`` and labels ``y``, unreadable images raise
        :class:`SkippedImagesError` instead of becoming NaN rows paired with labels.
        """
        self.fit(X, y, **fit_params)
        paths, _ = as_path_list(X)
        return self._assemble(paths, self._extract(paths), labelled=y is not None)

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


class SignedPower(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Signed power normalisation, element-wise: ``sign(x) * |x| ** alpha``.

    Razavian et al. (2014) improved linear SVMs on CNN codes with it (``alpha=0.5``, followed by
    L2 normalisation). ``alpha=1`` is the identity. Stateless; sparse input keeps its zeros.

    Parameters
    ----------
    alpha : float, default=0.5
        The exponent, > 0.

    Attributes
    ----------
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        When fitted on a DataFrame with string column names.

    Examples
    --------
    >>> SignedPower(alpha=0.5).fit_transform([[4.0, -9.0], [0.0, 1.0]])
    array([[ 2., -3.],
           [ 0.,  1.]])
    """

    def __init__(self, alpha=0.5):
        self.alpha = alpha

    def _check_alpha(self):
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, numbers.Real)
            or not np.isfinite(self.alpha)
            or self.alpha <= 0
        ):
            raise UsageError(f"alpha={self.alpha!r}: expected a float > 0 (1.0 is the identity)")

    def fit(self, X, y=None):
        """Check ``alpha`` and record the number of features.

        Returns
        -------
        self : SignedPower
        """
        self._check_alpha()
        validate_data(self, X, accept_sparse=("csr", "csc"), dtype=FLOAT_DTYPES)
        return self

    def transform(self, X):
        """Apply ``sign(x) * |x| ** alpha`` to every value.

        Returns
        -------
        ndarray or sparse matrix of the same shape, floating point
        """
        check_is_fitted(self)
        X = validate_data(
            self, X, accept_sparse=("csr", "csc"), dtype=FLOAT_DTYPES, copy=True, reset=False
        )
        values = X.data if hasattr(X, "tocsr") else X
        np.multiply(np.sign(values), np.abs(values) ** self.alpha, out=values)
        return X

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.requires_fit = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def __getattr__(name):
    # filter_readable and warm_cache live in cnncodes.search, which imports this module: they are
    # importable from here as before, looked up on first use so that neither import waits for the
    # other to finish.
    if name in ("filter_readable", "warm_cache"):
        from . import search

        return getattr(search, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
