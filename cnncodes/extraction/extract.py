"""Batched extraction of CNN codes from image files, through the cache (no scikit-learn here).

:func:`extract_codes` hashes every file and asks a read-through
:class:`~cnncodes.readthrough.CodeCache` for their codes; the cache serves what it has and hands the
missing images to the network, which is all this module and :mod:`cnncodes.extraction` do
(neither knows about shards, indexes or compaction): decoded while the network runs (by worker
processes, or by a background thread where there are none), batched, under
``torch.inference_mode``, cut after the deepest requested layer, with BatchNorm folded into the
convolutions before it and channels_last memory. Codes go to the cache batch by batch; it commits
them every few hundred rows and whenever the run stops (an error, Ctrl-C), so nothing computed is
lost and an interrupted run resumes where it stopped. Speed measurements and the reasons for the
defaults: ``bench/RESULTS.md``.

With ``spec.preprocessing.impl == "torch"`` the images are decoded and preprocessed as tensors on
the extraction device instead (JPEG by torchvision: nvJPEG on a GPU, batched), in a background
thread of this process and, on a GPU, on a second CUDA stream; see :func:`preprocess_bytes`.

This module is the public face of extraction; the work is in
:mod:`cnncodes.extraction`: ``engines`` (where the network runs, chosen once by name: ``local``,
this process, or ``ray``), ``runtime`` (device, precision, exact fp32), ``decode`` (the Pillow
and torch decoders, reading threads), ``fold`` (BatchNorm folding), ``loop`` (the forward loop)
and ``ray_engine`` (``engine="ray"``: the same decoding and forward step on a Ray cluster, whose
actors commit codes to the cache themselves).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputTypeError, UsageError
from ..images.load import ImageLoadError
from ..images.views import check_view_reduce, expand_views, reduce_views
from ..networks.layers import layer_shapes, resolve_layers
from ..networks.models import resolve_spec
from ..networks.pooling import check_pooling, code_size
from ..networks.trust import UntrustedModelCodeError, refused_model_code
from ..params import ON_ERROR, PRECISIONS, check_choice, is_int
from ..spec import GPU_DECODER, CodeKey, WeightsError, file_sha256
from ..store.readthrough import CodeCache
from ..utils.memo import Memo
from .decode import preprocess, preprocess_bytes
from .engines import ExtractionJob, engine_for
from .loop import CPU_FORWARD_BATCH, code_outputs, pooling_key
from .runtime import _default_workers as default_workers
from .runtime import exact_fp32, resolve_device, resolve_precision

__all__ = [
    "CPU_FORWARD_BATCH",
    "PRECISIONS",
    "ExtractionResult",
    "SkippedImage",
    "code_config",
    "exact_fp32",
    "extract_codes",
    "extract_views",
    "preprocess",
    "preprocess_bytes",
    "resolve_device",
    "resolve_precision",
    "spec_from_config",
]


@dataclass(frozen=True)
class SkippedImage:
    """An input that produced no code: its position in the input, its path and why."""

    index: int
    path: str
    reason: str


@dataclass
class ExtractionResult:
    """What :func:`extract_codes` returns.

    Attributes
    ----------
    codes : dict of str to ndarray
        Per layer (per ``(layer, pooling)`` for a list of poolings), float32 codes of shape
        ``(len(kept), n_features)`` in input order.
    kept : ndarray of int
        Input positions that have a code (all of them unless images were skipped).
    skipped : list of SkippedImage
        The inputs left out with ``on_error="skip"``, with their reasons.
    computed : int
        Images (distinct contents) pushed through the network in this call.
    cached : int
        Images (distinct contents) whose codes all came from the cache.
    configs : dict of str to dict
        Per layer, the configuration that made the codes (as stored in the cache); of the
        first view, for :func:`extract_views`.
    views : tuple of str
        The views whose codes these are (:mod:`cnncodes.views`), and ``view_reduce`` how they
        were reduced: ``None`` for one view's codes, ``"mean"`` or ``"max"`` (2-D codes), or
        ``"stack"`` (codes of shape ``(len(kept), len(views), n_features)``).
    """

    codes: dict
    kept: np.ndarray
    skipped: list = field(default_factory=list)
    computed: int = 0
    cached: int = 0
    configs: dict = field(default_factory=dict)
    seconds: float = 0.0
    views: tuple = ("center",)
    view_reduce: str | None = None

    def concatenated(self):
        """All layers' codes side by side, in the order the layers were requested."""
        arrays = list(self.codes.values())
        if len(arrays) == 1:
            return arrays[0]
        return np.concatenate(arrays, axis=-1)


def code_config(spec, layer, pooling, precision, device_type="cpu"):
    """The cache configuration of one layer's codes: everything that changes the numbers.

    :meth:`CodeKey.config <cnncodes.spec.CodeKey.config>` of
    :meth:`CodeKey.for_device <cnncodes.spec.CodeKey.for_device>`; see there.
    """
    key = (spec, layer, pooling, precision, device_type)
    config = _CONFIGS.get(key)
    if config is None:  # memoised: a grid search asks again in every fit (dataclasses.asdict)
        config = _CONFIGS.put(key, CodeKey.for_device(*key).config())
    return copy.deepcopy(config)


_CONFIGS = Memo(256)


def spec_from_config(config, weights_path=None, seed=0, trust_model_code=False):
    """Rebuild the :class:`~cnncodes.models.ModelSpec` that made a cache configuration.

    The inverse of :func:`code_config`, used to recompute stored codes. A configuration made from
    a checkpoint file stores only the file's SHA-256, so the file must be supplied
    (``weights_path``: a path or a list of candidate paths; the one with the right hash is used).
    Torchvision weights are rebuilt by name, ``none:seed=N`` from its seed, and a user's callable
    with ``seed``.

    A configuration comes from a cache folder, which may come from elsewhere: like
    :func:`cnncodes.persistence.load`, a ``package.module:callable`` model it names is imported
    only if ``trust_model_code`` allows it (False: only
    :data:`~cnncodes.persistence.BUILTIN_MODEL_CALLABLES`; True: any; or a list of names).

    Raises
    ------
    cnncodes.persistence.UntrustedModelCodeError
        The configuration names a model callable that ``trust_model_code`` does not allow
        (nothing was imported).
    ValueError
        Saying why the exact configuration cannot be rebuilt (a :class:`WeightsError` for a
        missing or different checkpoint; a plain ``ValueError`` when the rebuilt configuration
        differs, e.g. after a change of the decode policy or the format version).

    Examples
    --------
    >>> from cnncodes.models import resolve_spec
    >>> spec = resolve_spec("resnet18", "none", seed=3, resize=40, crop=32)
    >>> spec_from_config(code_config(spec, "avgpool", "avg", "fp32")) == spec
    True
    """
    key = CodeKey.from_config(config)
    model, weights = key.spec.model, key.spec.weights_spec
    refused = refused_model_code([model], trust_model_code)
    if refused:
        raise UntrustedModelCodeError(
            "this cache configuration",
            refused,
            what="A cache folder",
            command="cnncodes cache verify",
            call=f"spec_from_config(config, trust_model_code={refused!r})",
        )
    overrides = key.spec.preprocessing.arguments()
    view = key.spec.preprocessing.view
    overrides["model_kwargs"] = dict(key.spec.model_kwargs) or None
    if weights.kind == "none":
        spec = resolve_spec(model, "none", seed=weights.seed, **overrides)
    elif weights.kind == "checkpoint":
        if weights_path is None:
            raise WeightsError(
                f"made from a checkpoint file with SHA-256 {weights.sha256}, whose path is not "
                "stored; pass the file (weights_path=..., --weights PATH)"
            )
        candidates = (
            [weights_path] if isinstance(weights_path, (str, os.PathLike)) else weights_path
        )
        found = [p for p in candidates if os.path.isfile(p) and file_sha256(p) == weights.sha256]
        if not found:
            raise WeightsError(
                f"made from a checkpoint file with SHA-256 {weights.sha256}; none of the given "
                f"weights files ({', '.join(map(os.fspath, candidates))}) has that hash"
            )
        spec = resolve_spec(model, found[0], seed=seed, **overrides)
    elif weights.kind == "callable":
        spec = resolve_spec(model, None, seed=seed, **overrides)
    else:
        spec = resolve_spec(model, weights.name, seed=seed, **overrides)
    if view != "center":  # not an argument of resolve_spec: chosen per extraction
        spec = spec.with_view(view)
    gpu = isinstance(key.decode, str) and key.decode.endswith(GPU_DECODER)
    device_type = "cuda" if gpu else "cpu"
    rebuilt = CodeKey.for_device(spec, key.layer, key.pooling, key.precision, device_type).config()
    if rebuilt != config:
        fields = sorted(k for k in set(rebuilt) | set(config) if rebuilt.get(k) != config.get(k))
        raise UsageError(
            f"the configuration cannot be rebuilt exactly: {', '.join(fields)} differ(s) "
            f"(stored {', '.join(f'{k}={config.get(k)!r}' for k in fields)}; "
            f"now {', '.join(f'{k}={rebuilt.get(k)!r}' for k in fields)})"
        )
    return spec


def _as_paths(images):
    if isinstance(images, (str, bytes, os.PathLike)):
        raise InputTypeError(
            f"images={images!r}: expected a sequence of image file paths, not a single path"
        )
    if isinstance(images, (list, tuple)) and all(type(p) is str for p in images):
        return list(images)  # the common case, checked in one pass (warm calls are ~1 ms)
    paths = []
    for i, p in enumerate(images):
        if not isinstance(p, (str, os.PathLike)):
            raise InputTypeError(
                f"images[{i}]={p!r}: expected an image file path (str or os.PathLike), "
                f"not {type(p).__name__}"
            )
        paths.append(os.fspath(p))
    return paths


def extract_codes(
    images,
    spec,
    layers,
    pooling="avg",
    *,
    cache_dir="auto",
    batch_size=32,
    num_workers=None,
    device="auto",
    precision="auto",
    on_error="raise",
    progress=None,
    commit_rows=512,
    commit_seconds=5.0,
    engine="local",
    ray_address=None,
    ray_actors=None,
):
    """CNN codes of image files, from the cache where possible, else from the network.

    Parameters
    ----------
    images : sequence of str or os.PathLike
        Image files. Rows of the result follow this order.
    spec : ModelSpec
        A resolved model (:func:`cnncodes.models.resolve_spec`).
    layers : str or list of str
        Graph-node names (or ``"penultimate"``); several come out of one forward pass.
    pooling : str or list of str
        ``avg``, ``max``, ``avgmax``, ``pyramid`` or ``flatten`` (see :mod:`cnncodes.pooling`).
        A list: every layer pooled each of these ways from the same forward pass, each
        (layer, pooling) cached under its own configuration; ``codes`` and ``configs`` of the
        result are then keyed by ``(layer, pooling)``. A dict of (resolved) layer name to list
        of poolings: each layer pooled its own ways, likewise from one pass.
    cache_dir : "auto", None or path
        Where codes are cached (see :func:`cnncodes.cache.resolve_cache_dir`); None: no cache.
    batch_size : int
        Images decoded together and pushed through the network together: in one forward pass on
        a GPU, in passes of at most :data:`CPU_FORWARD_BATCH` on the CPU (faster there). On the
        CPU the codes are bit-identical whatever the batch size (a lone image goes through as a
        pair, see bench/RESULTS.md); on a GPU, cuDNN may choose other algorithms for other batch
        sizes, so codes may differ by float rounding.
    num_workers : int, optional
        Decoding processes (0: decode in this process). Default: on the CPU, 0 on a machine with at
        most 4 cores (the network needs them all), else 4; on a GPU, every core but one, up to
        16. Not used when
        ``spec.preprocessing.impl == "torch"``: that decodes in a thread of this process.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    precision : str
        ``auto`` (fp32 on the CPU, bf16 on a GPU), ``fp32``, ``bf16`` or ``fp16`` (autocast).
    on_error : {"raise", "skip"}
        ``raise``: stop at the first bad image with an :class:`~cnncodes.images.ImageLoadError`
        naming it, after committing the codes already computed. ``skip``: leave it out and
        report it in :attr:`ExtractionResult.skipped`. Codes with a NaN or an infinity are never
        cached: ``raise`` raises a :class:`~cnncodes.errors.UsageError` naming the model, the
        weights, the layer and the first such image; ``skip`` skips those images with that
        reason, unless the network gives non-finite codes for a plain image of the mean colour
        too (NaN weights, say), which raises whatever ``on_error`` says.
    progress : bool, optional
        False: none. None (default) or True: a progress bar when stderr is a terminal, else (a
        log file) a line every 10 seconds and a final one; with None a run shorter than that
        stays silent (see :class:`cnncodes._progress.Progress`).
    commit_rows, commit_seconds :
        Commit new codes to the cache after this many images or seconds, whichever comes first.
    engine : {"local", "ray"}
        ``local``: this process (and its decoding workers). ``ray``: a Ray cluster (``pip install
        -e '.[ray]'``; see :mod:`cnncodes.extraction.ray_engine`): files hashed by Ray tasks
        (for large inputs), the images the cache lacks decoded by CPU tasks and pushed through
        the same network code by a pool of actors (one GPU each where the cluster has GPUs,
        ``device="auto"``), which commit their codes to ``cache_dir`` themselves; so it must be
        a folder every node can write (a shared filesystem). The codes are then served from the
        cache as with the local engine: the same codes, the same ``on_error`` handling. With
        ``cache_dir=None`` a temporary folder is used on a one-node cluster (a cluster of
        several nodes needs a shared one).
    ray_address : str, optional
        With ``engine="ray"``: the cluster to connect to (``"auto"`` or ``"HOST:PORT"``). None:
        the Ray session already running in this process, else a local Ray started for the call
        and shut down after.
    ray_actors : int, optional
        With ``engine="ray"``: actors running the network. None: one per GPU of the cluster (CPU
        tasks decode for them), or on a cluster without GPUs one per CPU (each decodes its own
        images).

    Returns
    -------
    ExtractionResult

    Examples
    --------
    >>> from cnncodes.models import resolve_spec
    >>> spec = resolve_spec("resnet18", "none")
    >>> result = extract_codes(["a.jpg", "b.png"], spec, "avgpool")  # doctest: +SKIP
    >>> result.codes["avgpool"].shape  # doctest: +SKIP
    (2, 512)
    """
    started = time.perf_counter()
    paths = _as_paths(images)
    pooling = _check_poolings(pooling)
    check_choice(on_error, "on_error", ON_ERROR)
    if not is_int(batch_size) or batch_size < 1:
        raise UsageError(f"batch_size={batch_size!r}: expected a positive int")
    if num_workers is not None and (not is_int(num_workers) or num_workers < 0):
        raise UsageError(f"num_workers={num_workers!r}: expected an int >= 0")
    engine = engine_for(engine, ray_address, ray_actors, precision=precision)
    with engine.connect(device, cache_dir) as (dev, cache_dir):
        job, cache = _plan(
            spec,
            layers,
            pooling,
            dev,
            precision,
            cache_dir,
            batch_size=int(batch_size),
            num_workers=default_workers(dev) if num_workers is None else int(num_workers),
            on_error=on_error,
            progress=progress,
            commit_rows=commit_rows,
            commit_seconds=commit_seconds,
        )
        result = _extract(paths, engine, job, cache)
        result.seconds = time.perf_counter() - started
    return result


def _check_poolings(pooling):
    """``pooling`` checked: a str as it is, or a list of distinct poolings (not empty)."""
    if isinstance(pooling, str):
        return check_pooling(pooling)
    if isinstance(pooling, dict) and pooling:  # per layer (resolved names): its poolings
        return {
            layer: _check_poolings([p] if isinstance(p, str) else p) for layer, p in pooling.items()
        }
    if not isinstance(pooling, (list, tuple)) or not pooling:
        raise UsageError(f"pooling={pooling!r}: expected a pooling name or a list of them")
    return list(dict.fromkeys(check_pooling(p) for p in pooling))


# Code widths by (spec, layers, pooling), per process: a grid search asks for the same codes
# once per fold and candidate (measured in bench/RESULTS.md).
_WIDTHS = Memo(256)


def _plan(spec, layers, pooling, dev, precision, cache_dir, **settings):
    """The :class:`~.engines.ExtractionJob` of a call (its layers, configurations and code
    widths; ``settings``: its other fields) and the cache it goes through."""
    precision = resolve_precision(precision, dev)
    # The network, its layers and code widths are those of every view: traced once, not per view.
    network = spec.with_view("center")
    layers = resolve_layers(network, layers)
    if isinstance(pooling, dict) and set(pooling) != set(layers):
        raise UsageError(f"pooling={pooling!r}: expected the poolings of layers {layers!r}")
    # One configuration per code the pass makes: per layer, or per (layer, pooling).
    outputs = code_outputs(layers, pooling)
    configs = {name: code_config(spec, layer, p, precision, dev.type) for name, layer, p in outputs}
    cache = CodeCache(cache_dir, configs)
    key = (network, tuple(layers), pooling_key(pooling))
    widths = _WIDTHS.get(key) or cache.widths()
    if widths is None:
        # Checks the pooling against each layer's shape before any image is read.
        shapes = layer_shapes(network, layers)
        widths = {name: code_size(shapes[layer], p) for name, layer, p in outputs}
    _WIDTHS.put(key, widths)
    job = ExtractionJob(spec, layers, pooling, dev, precision, configs, widths, **settings)
    return job, cache


def _extract(paths, engine, job, cache):
    """:func:`extract_codes` once its arguments are checked and its engine connected."""
    # 1. Identify every input by content.
    skipped = {}
    digests = engine.file_digests(paths)
    for i, digest in enumerate(digests):
        if isinstance(digest, ImageLoadError):
            if job.on_error == "raise":
                raise digest
            skipped[i] = digest.reason
            digests[i] = None
    valid = [i for i in range(len(paths)) if i not in skipped] if skipped else range(len(paths))
    for i in valid:
        job.first.setdefault(digests[i], paths[i])

    # 2. Serve what the cache has; the engine computes the rest, which the cache keeps.
    served = engine.serve(job, cache, [digests[i] for i in valid])
    codes = served.codes
    if job.failed:  # unreadable when decoded, after hashing
        for i in valid:
            if digests[i] in job.failed:
                skipped[i] = job.failed[digests[i]]
        rows = [r for r, i in enumerate(valid) if i not in skipped]
        codes = {layer: arr[rows] for layer, arr in codes.items()}

    if skipped:
        kept = np.array([i for i in range(len(paths)) if i not in skipped], dtype=np.int64)
    else:
        kept = np.arange(len(paths), dtype=np.int64)
    return ExtractionResult(
        codes=codes,
        kept=kept,
        skipped=[SkippedImage(i, paths[i], skipped[i]) for i in sorted(skipped)],
        computed=served.computed,
        cached=served.hits,
        configs=job.configs,
    )


def extract_views(
    images,
    spec,
    layers,
    pooling="avg",
    *,
    views="center",
    view_seed=0,
    view_reduce="mean",
    **options,
):
    """CNN codes of several views of every image (:mod:`cnncodes.views`), from the cache.

    One :func:`extract_codes` per view (each view is a preprocessing of its own, cached under
    its own configuration, so a later request for any subset of these views computes nothing);
    file hashes are memoised, so files are hashed once.

    Parameters
    ----------
    images, spec, layers, pooling, **options :
        As :func:`extract_codes` (``spec``'s own view is replaced by each view's).
    views : {"center", "flip", "five_crop", "ten_crop"}, int or list of str
        A set of views, see :func:`cnncodes.views.expand_views`.
    view_seed : int
        The seed of random resized crops (``views`` an int).
    view_reduce : {"mean", "max", "stack"}
        ``"mean"`` or ``"max"`` over the views: codes of shape ``(len(kept), n_features)``;
        ``"stack"``: ``(len(kept), n_views, n_features)``.

    Returns
    -------
    ExtractionResult
        With ``on_error="skip"``, an image skipped in any view is skipped in all, so that rows
        stay one per kept image. ``computed`` and ``cached`` are summed over views (an image
        computed for two views counts twice).

    Examples
    --------
    >>> result = extract_views(paths, spec, "avgpool", views="flip")  # doctest: +SKIP
    >>> result.codes["avgpool"].shape, result.views  # doctest: +SKIP
    ((2, 512), ('center', 'flip'))
    """
    started = time.perf_counter()
    names = expand_views(views, view_seed)
    check_view_reduce(view_reduce)
    # One engine session for all the views (each extract_codes would otherwise start its own).
    engine = engine_for(
        options.get("engine", "local"),
        options.get("ray_address"),
        options.get("ray_actors"),
        precision=options.get("precision", "auto"),
    )
    with engine.session():
        results = [
            extract_codes(images, spec.with_view(v), layers, pooling, **options) for v in names
        ]
    skipped = {}
    for result in results:
        for s in result.skipped:
            skipped.setdefault(s.index, s)
    n = len(_as_paths(images))
    kept = np.array([i for i in range(n) if i not in skipped], dtype=np.int64)
    codes = {}
    for layer in results[0].codes:
        per_view = []
        for result in results:
            rows = np.searchsorted(result.kept, kept)  # kept is a sorted subset of result.kept
            per_view.append(result.codes[layer][rows])
        codes[layer] = reduce_views(np.stack(per_view, axis=1), view_reduce)
    return ExtractionResult(
        codes=codes,
        kept=kept,
        skipped=[skipped[i] for i in sorted(skipped)],
        computed=sum(r.computed for r in results),
        cached=sum(r.cached for r in results),
        configs=results[0].configs,
        seconds=time.perf_counter() - started,
        views=tuple(names),
        view_reduce=view_reduce,
    )
