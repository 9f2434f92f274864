"""scikit-learn estimators: :class:`CNNCodes` (image paths -> CNN codes) and :class:`SignedPower`.

This is the only module that imports ``sklearn.base``. The work lives in
:func:`cnncodes.extract.extract_codes`; :class:`CNNCodes` is a thin, picklable wrapper around it that
holds names and a resolved :class:`~cnncodes.models.ModelSpec`, never a network, a tensor or an
open file.
"""

from __future__ import annotations

import numbers
import os
import warnings

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin, clone
from sklearn.model_selection import ParameterGrid
from sklearn.utils import _safe_indexing
from sklearn.utils.validation import (
    FLOAT_DTYPES,
    _check_feature_names_in,
    check_is_fitted,
    validate_data,
)

from . import cache as _cache
from .architectures import model_identity
from .extract import ON_ERROR, PRECISIONS, extract_codes, resolve_device
from .layers import layer_shapes, resolve_layers
from .models import resolve_spec
from .pooling import check_pooling, code_size
from .preprocessing import _is_int
from .spec import file_stamp

__all__ = [
    "CNNCodes",
    "SignedPower",
    "SkippedImagesError",
    "SkippedImagesWarning",
    "filter_readable",
    "warm_cache",
]

_EXPECTED_X = (
    "a sequence of image file paths (str or os.PathLike), a 1-D array of str, or a one-column "
    "DataFrame of paths"
)


class SkippedImagesError(ValueError):
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


def _iter_once(X):
    """True for an iterator (a generator, ``map``, ...): reading it uses it up."""
    try:
        return iter(X) is X
    except TypeError:
        return False


def _as_path_list(X):
    """Validate ``X`` as image paths; return ``(paths, feature_names_or_None)``."""
    if isinstance(X, (str, bytes, os.PathLike)):
        raise TypeError(f"X={X!r} is a single path; CNNCodes expects {_EXPECTED_X}, e.g. [{X!r}]")
    names = None
    if hasattr(X, "columns") and hasattr(X, "iloc"):
        if X.ndim != 2 or X.shape[1] != 1:
            raise ValueError(
                f"X is a DataFrame with {X.shape[1]} columns {list(X.columns)!r}; CNNCodes "
                "expects one column of image paths (select it, e.g. X[['path']])"
            )
        column = X.columns[0]
        if isinstance(column, str):
            names = np.asarray([column], dtype=object)
        values = X.iloc[:, 0].tolist()
    elif hasattr(X, "dtype") and hasattr(X, "shape"):
        arr = np.asarray(X) if not hasattr(X, "tocsr") else None
        if arr is None or arr.dtype.kind not in "OU":
            kind = "a sparse matrix" if arr is None else f"an array of dtype {arr.dtype}"
            raise TypeError(
                f"CNNCodes expects {_EXPECTED_X}; got {kind} of shape {X.shape}. Numeric "
                "features (for example precomputed codes) go straight to the classifier, "
                "without the CNNCodes step"
            )
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise ValueError(
                f"X has shape {arr.shape}; CNNCodes expects one image path per row "
                "(a 1-D array, or a single column)"
            )
        values = arr.tolist()
    else:
        if _iter_once(X):
            raise TypeError(
                f"X is a {type(X).__name__}, which can be read only once; CNNCodes expects "
                f"{_EXPECTED_X} (e.g. list(X))"
            )
        try:
            values = list(X)
        except TypeError:
            raise TypeError(f"CNNCodes expects {_EXPECTED_X}; got {type(X).__name__}") from None
    if not values:
        raise ValueError("X is empty: CNNCodes needs at least one image path")
    paths = []
    for i, value in enumerate(values):
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            raise TypeError(
                f"X[{i}]={value!r} is a {type(value).__name__}; CNNCodes expects {_EXPECTED_X}"
            )
        paths.append(value)
    return paths, names


def _check_int(value, name, minimum, allow_none=False):
    if value is None and allow_none:
        return
    if not _is_int(value) or value < minimum:
        accepted = f"an int >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"{name}={value!r}: expected {accepted}")


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
    params = (
        est.model, est.seed, est.resize, est.crop, est.mean, est.std, est.interpolation, est.impl
    )  # fmt: skip
    identity = model_identity(est.model) if isinstance(est.model, str) else None
    key = (repr(params), identity, _weights_key(est.weights), repr(layers), est.pooling)
    found = _RESOLVED.get(key)
    if found is not None:
        return found[0], list(found[1]), dict(found[2])
    spec = resolve_spec(
        est.model,
        est.weights,
        seed=est.seed,
        resize=est.resize,
        crop=est.crop,
        mean=est.mean,
        std=est.std,
        interpolation=est.interpolation,
        impl=est.impl,
    )
    resolved = resolve_layers(spec, layers)
    shapes = layer_shapes(spec, resolved)
    sizes = {}
    for name in resolved:
        try:
            sizes[name] = code_size(shapes[name], est.pooling)
        except ValueError as exc:
            raise ValueError(f"layer={name!r}: {exc}") from None
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
    labels* first, with :func:`filter_readable` (its extraction fills the cache, so the
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

    def __setstate__(self, state):
        # Estimators saved before ``impl`` existed preprocessed with Pillow.
        state.setdefault("impl", "pil")
        super().__setstate__(state)

    # -- fitting -------------------------------------------------------------------------------

    def _check_params(self):
        check_pooling(self.pooling)
        if self.on_error not in ON_ERROR:
            raise ValueError(
                f"on_error={self.on_error!r}: choose one of {', '.join(map(repr, ON_ERROR))}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision={self.precision!r}: choose one of {', '.join(map(repr, PRECISIONS))}"
            )
        _check_int(self.batch_size, "batch_size", 1)
        _check_int(self.num_workers, "num_workers", 0, allow_none=True)
        if self.progress is not None and not isinstance(self.progress, (bool, np.bool_)):
            raise ValueError(f"progress={self.progress!r}: expected True, False or None")
        resolve_device(self.device)
        _cache.resolve_cache_dir(self.cache_dir)
        layer = self.layer
        if isinstance(layer, str):
            layer = [layer]
        elif isinstance(layer, (list, tuple)) and layer:
            layer = list(layer)
        else:
            raise ValueError(
                f"layer={self.layer!r}: expected a layer name such as 'layer4' or "
                "'penultimate', or a non-empty list of names"
            )
        return layer

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
        layers = self._check_params()
        _, names = _as_path_list(X)
        spec, resolved, sizes = _resolve(self, layers)
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
            raise ValueError(
                f"X has column {list(X.columns)!r}, but CNNCodes was fitted with column "
                f"{list(fitted)!r}: the feature names should match those passed during fit"
            )

    def _verify_weights(self):
        """Refuse a checkpoint file that changed since fit, even when every code is cached."""
        self.spec_.weights_spec.verify()

    def _extract(self, paths):
        """Codes of ``paths`` under the fitted configuration: an ExtractionResult."""
        self._verify_weights()
        result = extract_codes(
            paths,
            self.spec_,
            self.layers_,
            self.pooling,
            cache_dir=self.cache_dir,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            device=self.device,
            precision=self.precision,
            on_error=self.on_error,
            progress=self.progress,
        )
        return result

    def _assemble(self, paths, result, labelled):
        """One float32 row per input; NaN rows for skipped images (or an error with labels)."""
        codes = np.asarray(result.concatenated(), dtype=np.float32)
        if codes.shape[1] != self.n_features_out_:  # a safeguard: fit and extraction disagree
            raise RuntimeError(
                f"extraction returned {codes.shape[1]} features, expected {self.n_features_out_}"
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
                "X, y, skipped = cnncodes.transformers.filter_readable(X, y, extractor=...), "
                "or fix the files.",
            )
        warnings.warn(
            f"{len(result.skipped)} of {len(paths)} images could not be read "
            f"(on_error='skip'); their rows are NaN:\n{listing}",
            SkippedImagesWarning,
            stacklevel=4,  # _assemble, transform, sklearn's set_output wrapper, caller
        )
        full = np.full((len(paths), codes.shape[1]), np.nan, dtype=np.float32)
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
            ``on_error="skip"``).
        """
        check_is_fitted(self)
        paths, _ = _as_path_list(X)
        self._check_columns(X)
        return self._assemble(paths, self._extract(paths), labelled=False)

    def fit_transform(self, X, y=None, **fit_params):
        """Fit, then return the codes of ``X``.

        With ``on_error="skip"`` and labels ``y``, unreadable images raise
        :class:`SkippedImagesError` instead of becoming NaN rows paired with labels.
        """
        self.fit(X, y, **fit_params)
        paths, _ = _as_path_list(X)
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
            raise ValueError(f"alpha={self.alpha!r}: expected a float > 0 (1.0 is the identity)")

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


# -------------------------------------------------------------------------------- helpers


def _find_codes_step(estimator):
    """``(CNNCodes, parameter prefix)`` of ``estimator`` or of a step of a (nested) Pipeline."""
    if isinstance(estimator, CNNCodes):
        return estimator, ""
    steps = getattr(estimator, "steps", None)
    if steps is not None:
        for name, step in steps:
            try:
                found, prefix = _find_codes_step(step)
            except ValueError:
                continue
            return found, f"{name}__{prefix}"
    raise ValueError(
        f"{type(estimator).__name__} has no CNNCodes step: pass a CNNCodes, or a Pipeline "
        "containing one"
    )


def filter_readable(X, y=None, *, extractor=None):
    """Drop unreadable images together with their labels, so rows cannot misalign.

    Each image is screened by extracting its codes with ``extractor``'s configuration and
    ``on_error="skip"``: the codes land in the cache, so fitting or predicting afterwards reads
    them back instead of recomputing (with ``cache_dir=None`` they are computed again). Without
    an extractor, each image is only decoded (:func:`cnncodes.images.load_image`), which catches
    the same file errors but not preprocessing failures.

    Parameters
    ----------
    X : sequence of paths, 1-D array of str, or one-column DataFrame
    y : array-like of shape (n_images,), optional
        Labels, filtered with the same mask.
    extractor : CNNCodes or Pipeline, optional
        The estimator (fitted or not) whose codes will be used; a Pipeline's CNNCodes step is used.

    Returns
    -------
    X_kept : same kind as ``X``
        The readable images, in input order.
    y_kept : same kind as ``y``, or None
    skipped : list of SkippedImage
        ``(index, path, reason)`` of each image left out (``index`` refers to the input ``X``).

    Examples
    --------
    >>> X_ok, y_ok, skipped = filter_readable(paths, labels, extractor=pipe)  # doctest: +SKIP
    >>> pipe.fit(X_ok, y_ok)  # doctest: +SKIP
    """
    from .extract import SkippedImage
    from .images import ImageLoadError, load_image

    paths, _ = _as_path_list(X)
    if y is not None and len(y) != len(paths):
        raise ValueError(f"X has {len(paths)} images but y has {len(y)} labels")
    if extractor is not None:
        step, _ = _find_codes_step(extractor)
        screen = clone(step).set_params(on_error="skip")
        if hasattr(step, "spec_"):
            # Fitted: keep exactly its resolved configuration.
            for attr in ("spec_", "layers_", "layer_sizes_", "n_features_out_", "n_features_in_"):
                setattr(screen, attr, getattr(step, attr))
        else:
            screen.fit(paths)
        skipped = screen._extract(paths).skipped
    else:
        skipped = []
        for i, path in enumerate(paths):
            try:
                load_image(path)
            except ImageLoadError as exc:
                skipped.append(SkippedImage(i, path, exc.reason))
    if not skipped:
        return X, y, []
    bad = {s.index for s in skipped}
    kept = np.array([i for i in range(len(paths)) if i not in bad], dtype=np.int64)
    if isinstance(X, (list, tuple)):
        X_kept = type(X)(X[i] for i in kept)
    else:
        X_kept = _safe_indexing(X, kept)
    y_kept = None if y is None else _safe_indexing(y, kept)
    return X_kept, y_kept, skipped


def _codes_grid(param_grid, prefix):
    """The CNNCodes part of a parameter grid (dict or list of dicts) as a list of dicts."""
    grids = [param_grid] if isinstance(param_grid, dict) else list(param_grid)
    out = []
    for grid in grids:
        sub = {k[len(prefix) :]: v for k, v in grid.items() if k.startswith(prefix)}
        if prefix and prefix[:-2] in grid:
            raise ValueError(
                f"param_grid replaces the step {prefix[:-2]!r} itself; warm_cache only handles "
                f"grids over its parameters ({prefix}layer, {prefix}pooling, ...)"
            )
        out.append(sub)
    return out


def _search_grid(search, estimator):
    """The grid a search carries: ``param_grid``, or distributions that are all lists."""
    if search is not None and hasattr(search, "param_grid"):
        return search.param_grid
    distributions = getattr(search, "param_distributions", None)
    if distributions is not None:
        grids = [distributions] if isinstance(distributions, dict) else list(distributions)
        if all(isinstance(v, (list, tuple, np.ndarray)) for g in grids for v in g.values()):
            return distributions  # every value it can draw, as a grid
        raise ValueError(
            f"{type(search).__name__} draws from distributions that are not lists of values; "
            "pass param_grid= with the CNNCodes settings it may try (layer, pooling, ...)"
        )
    raise ValueError(
        f"param_grid is required for a {type(estimator).__name__} (only a search carries its "
        "own grid)"
    )


def warm_cache(estimator, X, param_grid=None):
    """Extract, once, every code that a grid search over ``estimator`` will ask for.

    A grid search with a warm cache never runs the network. Sequential searches warm the cache
    themselves (the first fold of each configuration computes, the rest read), but parallel
    workers (``n_jobs > 1``) starting on a cold cache can compute the same codes side by side;
    calling this first makes every worker read from the cache. Candidates that differ only
    in ``layer`` share one forward pass.

    Parameters
    ----------
    estimator : search, Pipeline or CNNCodes
        A search (GridSearchCV, HalvingGridSearchCV, RandomizedSearchCV over lists: its
        ``estimator`` and grid are used) or the estimator to search over.
    X : image paths
        All the images the search will see.
    param_grid : dict or list of dict, optional
        Required unless ``estimator`` is a search that carries its own; given with a search, it
        replaces the search's grid.

    Returns
    -------
    dict
        ``runs`` (extraction runs: settings that differ in more than the layer),
        ``configurations`` (cached code sets: runs x their layers), ``computed`` and ``cached``
        (images, summed over runs) and ``skipped`` (SkippedImage list of the first run).

    Examples
    --------
    >>> search = GridSearchCV(pipe, grid, n_jobs=4)  # doctest: +SKIP
    >>> warm_cache(search, paths)["computed"]  # doctest: +SKIP
    412
    """
    # A search over the estimator (GridSearchCV, HalvingGridSearchCV, RandomizedSearchCV, ...).
    search = estimator if hasattr(estimator, "estimator") and hasattr(estimator, "cv") else None
    if param_grid is None:
        param_grid = _search_grid(search, estimator)
    if search is not None:
        estimator = search.estimator
    step, prefix = _find_codes_step(estimator)
    paths, _ = _as_path_list(X)
    if _cache.resolve_cache_dir(step.cache_dir) is None:
        raise ValueError(
            "warm_cache needs a cache, but cache_dir=None keeps nothing; set cache_dir "
            "('auto' or a folder)"
        )
    # Group candidate settings by everything except the layer: one forward pass each.
    groups = {}
    for grid in _codes_grid(param_grid, prefix):
        for params in ParameterGrid(grid):
            # Fitting resolves the layer names (aliases such as "penultimate"), reading no image.
            candidate = clone(step).set_params(**params).fit(paths)
            others = candidate.get_params()
            others.pop("layer")
            key = repr(sorted(others.items()))
            entry = groups.setdefault(key, (others, []))
            for name in candidate.layers_:
                if name not in entry[1]:
                    entry[1].append(name)
    summary = {"runs": 0, "configurations": 0, "computed": 0, "cached": 0, "skipped": None}
    for others, layers in groups.values():
        candidate = CNNCodes(layer=layers, **others).fit(paths)
        result = candidate._extract(paths)
        summary["runs"] += 1
        summary["configurations"] += len(candidate.layers_)
        summary["computed"] += result.computed
        summary["cached"] += result.cached
        if summary["skipped"] is None:
            summary["skipped"] = result.skipped
    summary["skipped"] = summary["skipped"] or []
    return summary
