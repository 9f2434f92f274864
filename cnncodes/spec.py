"""The concepts as plain types: preprocessing and resolved models (torch-free).

What a model name, its weights and its preprocessing resolve to is described here by frozen
dataclasses that import neither torch nor scikit-learn, so that the cache, reports and the
command line can read, compare and print them cheaply. Resolving names to these types, and
building networks from them, is :mod:`cnncodes.models`' work.

Over 600 lines on purpose: :class:`Weights`, :class:`Preprocessing` and :class:`ModelSpec` are
pickled into saved pipelines under this module's name, and :class:`CodeKey` makes the cache keys
from them; they stay together here rather than move and leave pickles and keys depending on
aliases. (A file's stamp and memoised SHA-256 live in :mod:`cnncodes.utils.memo`.)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace

from .errors import UsageError
from .utils.memo import file_sha256, file_stamp

#: Version of the cache's layout and key scheme (:mod:`cnncodes.store.cache`), part of every key.
FORMAT_VERSION = 1

#: Version of the image decoding policy (:mod:`cnncodes.images.load`), part of every key: bump it
#: whenever a change there would change decoded pixels.
DECODE_POLICY: str = "pil-rgb-v1:alpha=white:16bit=scale:exif=1:frame=0"

#: The corners of :func:`check_view`'s ``"crop:CORNER"`` views (:mod:`cnncodes.images.views`).
CORNERS = ("tl", "tr", "bl", "br")


def config_key(config):
    """Stable key of a configuration dict: SHA-256 of its canonical JSON, 24 hex digits."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def check_view(view):
    """``view`` if it is a view string (see the module's docstring), else a ValueError."""
    if view in ("center", "flip"):
        return view
    if isinstance(view, str):
        kind, _, rest = view.partition(":")
        if kind == "crop" and rest.removesuffix("+flip") in CORNERS:
            return view
        seed, _, index = rest.partition(":")
        if kind == "rrc" and seed.isdigit() and index.isdigit() and str(int(index)) == index:
            if str(int(seed)) == seed:
                return view
    raise UsageError(
        f"view={view!r}: expected 'center', 'flip', 'crop:tl' (tl, tr, bl, br, optionally "
        "with '+flip') or 'rrc:SEED:I' (SEED, I ints >= 0)"
    )


__all__ = [
    "CORNERS",
    "DECODE_POLICY",
    "FORMAT_VERSION",
    "CodeKey",
    "check_view",
    "config_key",
    "GPU_DECODER",
    "INTERPOLATIONS",
    "MODEL_PARAMS",
    "ModelError",
    "ModelSpec",
    "PREPROCESSING_IMPLS",
    "PREPROCESSING_KEYS",
    "Preprocessing",
    "TIMM_PREFIX",
    "Weights",
    "WeightsError",
    "describe_preprocessing",
    "file_sha256",
    "check_model_kwargs",
    "file_stamp",
]

#: Keys of the ``preprocessing`` dict a user's callable may declare (see
#: :func:`cnncodes.models.resolve_spec`).
PREPROCESSING_KEYS = ("resize", "crop", "mean", "std", "interpolation")
#: The parameters that choose a network and its input, by the names of the estimators' attributes
#: and of :func:`cnncodes.models.resolve_spec`'s arguments: what resolves to a :class:`ModelSpec`.
MODEL_PARAMS = ("model", "weights", "seed", *PREPROCESSING_KEYS, "impl", "model_kwargs")
#: Resize interpolations, by their torchvision ``InterpolationMode`` values.
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
#: Implementations of :class:`Preprocessing` (``impl``), and the interpolations each supports.
PREPROCESSING_IMPLS = {"pil": INTERPOLATIONS, "torch": ("bilinear", "bicubic")}


class ModelError(UsageError):
    """An unknown model name, a callable that does not build an ``nn.Module``, or one whose
    declared ``preprocessing`` is invalid."""


class WeightsError(UsageError):
    """Weights that do not exist, do not fit the architecture, or changed on disk."""


def check_model_kwargs(model_kwargs, model=None):
    """``model_kwargs`` (a dict of the builder's keyword arguments, or None) as the sorted
    ``((key, value), ...)`` that :attr:`ModelSpec.model_kwargs` holds.

    Values must be JSON scalars (int, float, str, bool, None): they go into cache keys and
    saved models as JSON.

    Examples
    --------
    >>> check_model_kwargs({"num_classes": 5, "dropout": 0.5})
    (('dropout', 0.5), ('num_classes', 5))
    >>> check_model_kwargs(None)
    ()
    """
    if model_kwargs is None:
        return ()
    if isinstance(model_kwargs, tuple) and all(
        isinstance(p, tuple) and len(p) == 2 for p in model_kwargs
    ):
        model_kwargs = dict(model_kwargs)  # the form ModelSpec holds
    if not isinstance(model_kwargs, dict):
        raise ModelError(
            f"model_kwargs={model_kwargs!r}: expected a dict of the model builder's keyword "
            "arguments, e.g. {'num_classes': 5}, or None"
        )
    who = f" of model={model!r}" if model is not None else ""
    for key, value in model_kwargs.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ModelError(
                f"model_kwargs{who}: key {key!r} is not a keyword argument name (a Python "
                "identifier string such as 'num_classes')"
            )
        scalar = value is None or isinstance(value, (bool, int, str))
        scalar = scalar or (isinstance(value, float) and math.isfinite(value))
        if not scalar:
            raise ModelError(
                f"model_kwargs{who}: {key}={value!r} is a {type(value).__name__}; values must "
                "be JSON scalars (int, finite float, str, bool or None)"
            )
    return tuple(sorted(model_kwargs.items()))


#: The reserved prefix of timm model names (``"timm:resnet50"``); ``timm`` is never read as the
#: module of a ``package.module:callable``.
TIMM_PREFIX = "timm:"


def is_timm_name(name):
    """Whether ``name`` is meant as a timm model, ``"timm:NAME"`` (well formed or not)."""
    return isinstance(name, str) and name.startswith(TIMM_PREFIX)


def is_callable_form(name):
    """Whether ``name`` is meant as ``package.module:callable``, well formed or not: it has a
    colon and is not a timm name. The one place that tells the two colon forms apart."""
    return isinstance(name, str) and ":" in name and not is_timm_name(name)


def is_model_callable(name):
    """Whether ``name`` has the ``package.module:callable`` form of a user's own architecture."""
    module, _, attr = name.partition(":")
    return bool(module) and bool(attr) and not is_timm_name(name)


#: Appended to the decode policy for ``impl="torch"`` on a GPU: nvJPEG decodes slightly
#: differently from libjpeg-turbo, so those codes are cached apart from CPU-decoded ones.
GPU_DECODER = "+nvjpeg"

#: What :attr:`Weights.kind` can be.
WEIGHTS_KINDS = ("torchvision", "checkpoint", "none", "callable", "timm")


@dataclass(frozen=True)
class Weights:
    """Which weights a network has: what :attr:`ModelSpec.weights_id` says, as a type.

    ``kind`` is one of

    - ``"torchvision"``: named torchvision weights; ``name`` is ``"ResNet50_Weights.IMAGENET1K_V1"``;
    - ``"checkpoint"``: a checkpoint file; ``sha256`` of its bytes, ``file`` its path when known
      (a cache configuration does not store it);
    - ``"none"``: random initialisation from ``seed``;
    - ``"callable"``: as the user's ``package.module:callable`` builds them; ``sha256`` of the
      state it built;
    - ``"timm"``: timm's pretrained weights; ``name`` is the pretrained tag, e.g.
      ``"resnet10t.c3_in1k"`` (identity ``"timm:resnet10t.c3_in1k"``).

    :attr:`identity` is the string that cache keys and saved models hold, and :meth:`parse` reads
    it back. Building such weights is :func:`cnncodes.models.resolve_spec`'s work.

    Examples
    --------
    >>> Weights("none", seed=3).identity
    'none:seed=3'
    >>> Weights("checkpoint", file="net.pth", sha256="0123456789abcdef" * 4).short_identity
    'sha256:0123456789ab...'
    >>> Weights.parse("sha256:" + "0" * 64, file="net.pth").kind
    'checkpoint'
    >>> Weights.parse("ResNet18_Weights.IMAGENET1K_V1").name
    'ResNet18_Weights.IMAGENET1K_V1'
    >>> Weights.parse("timm:resnet10t.c3_in1k").argument
    'resnet10t.c3_in1k'
    """

    kind: str
    name: str | None = None
    file: str | None = None
    sha256: str | None = None
    seed: int | None = None

    def __post_init__(self):
        if self.kind not in WEIGHTS_KINDS:
            raise UsageError(f"kind={self.kind!r}: choose one of {', '.join(WEIGHTS_KINDS)}")

    @property
    def identity(self):
        """``name``, ``"sha256:<hex>"``, ``"none:seed=<n>"``, ``"state-sha256:<hex>"`` or
        ``"timm:<name>"``."""
        if self.kind == "torchvision":
            return self.name
        if self.kind == "timm":
            return TIMM_PREFIX + self.name
        if self.kind == "checkpoint":
            return f"sha256:{self.sha256}"
        if self.kind == "none":
            return f"none:seed={self.seed}"
        return f"state-sha256:{self.sha256}"

    @property
    def argument(self):
        """The ``weights`` argument that resolves to these weights again (:attr:`ModelSpec.weights`):
        the torchvision or timm name, the checkpoint's file, ``"none"`` or ``"callable"``."""
        named = {"torchvision": self.name, "timm": self.name, "checkpoint": self.file}
        return named.get(self.kind, self.kind)

    @property
    def short_identity(self):
        """:attr:`identity` with a hash cut to 12 digits, for tables."""
        if self.kind in ("checkpoint", "callable"):
            return self.identity.partition(":")[0] + f":{self.sha256[:12]}..."
        return self.identity

    @classmethod
    def parse(cls, identity, file=None):
        """The :class:`Weights` whose :attr:`identity` is ``identity``; ``file``: the checkpoint's
        path, if known (it is not part of the identity).

        Raises
        ------
        WeightsError
            ``identity`` is not a non-empty string, or its seed is not an integer.
        """
        if not isinstance(identity, str) or not identity:
            raise WeightsError(
                f"weights identity {identity!r}: expected a torchvision weights name, "
                "'timm:<name>', 'sha256:<hex>', 'state-sha256:<hex>' or 'none:seed=<n>'"
            )
        kind, sep, rest = identity.partition(":")
        if sep and kind == "sha256":
            return cls("checkpoint", file=None if file is None else os.fspath(file), sha256=rest)
        if sep and kind == "state-sha256":
            return cls("callable", sha256=rest)
        if sep and kind + ":" == TIMM_PREFIX and rest:
            return cls("timm", name=rest)
        if sep and kind == "none" and rest.startswith("seed="):
            try:
                return cls("none", seed=int(rest[len("seed=") :]))
            except ValueError:
                raise WeightsError(
                    f"weights identity {identity!r}: the seed must be an integer"
                ) from None
        return cls("torchvision", name=identity)

    def verify(self, path=None):
        """Check that checkpoint ``path`` (default :attr:`file`) holds exactly these weights.

        The one check of a checkpoint file against the SHA-256 that codes and models were made
        with; other kinds have no file and pass. Returns the path checked, made absolute.

        Raises
        ------
        WeightsError
            The file is missing, or its SHA-256 differs (both are named).
        """
        if self.kind != "checkpoint":
            return None
        if path is None and self.file is None:
            raise WeightsError(
                f"weights {self.identity}: the checkpoint file's path is not known; give the "
                "file (weights_path=..., --weights PATH)"
            )
        path = os.fspath(self.file if path is None else path)
        if not os.path.isfile(path):
            raise WeightsError(
                f"weights file not found: {path} (the codes were made with a file of SHA-256 "
                f"{self.sha256}); if it moved, give its new path: `cnncodes predict --weights "
                "PATH`, or cnncodes.fitted.relocate_weights(model, PATH)"
            )
        actual = file_sha256(path)
        if actual != self.sha256:
            own = self.file is not None and os.path.abspath(path) == os.path.abspath(self.file)
            if own:
                what, fix = "changed", "; restore the original file, or refit"
            else:
                what = "is not the checkpoint this model was fitted with"
                fix = f" ({self.file}); give that file" if self.file else "; give that file"
            raise WeightsError(
                f"weights file {path} {what}: its SHA-256 is {'now ' if own else ''}{actual}, "
                f"but the codes (and any model trained on them) were made with {self.sha256}{fix}"
            )
        return os.path.abspath(path)


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the network's input tensor.

    Resize the shorter side to ``resize`` (or to exactly ``(height, width)`` when two values are
    given), centre-crop ``crop`` (``(height, width)``), scale to [0, 1], normalise with ``mean`` and
    ``std``.

    ``impl`` says which code does it, and is part of the cache key because the two change the
    codes slightly:

    - ``"pil"`` (default): Pillow decodes, resizes and crops, on the CPU.
    - ``"torch"``: JPEG files are decoded by ``torchvision.io.decode_jpeg`` on the extraction
      device (nvJPEG on a GPU, libjpeg-turbo on the CPU), other files by Pillow; EXIF orientation,
      resizing (``interpolation`` must be ``"bilinear"`` or ``"bicubic"``, antialiased) and
      cropping are tensor operations on the device. The decode policy
      (:data:`cnncodes.images.DECODE_POLICY`) is the same.

    ``view`` says which part of the resized image is taken (:mod:`cnncodes.views`):
    ``"center"`` (the centre crop, the default), ``"flip"`` (mirrored), a corner crop
    ``"crop:tl"`` ... or a random resized crop ``"rrc:SEED:I"``. It is part of the cache key
    only when it is not ``"center"``, so keys made before views existed are unchanged.

    ``source`` says where each value came from, as ``(key, origin)`` pairs; origins are
    ``"explicit"``, ``"checkpoint"``, ``"model"`` (the user's callable declared it, or a timm
    model's pretrained config when other weights are used), ``"weights"`` (torchvision weights'
    ``transforms()``, timm's pretrained config) and ``"ImageNet default"``. It is
    for display only: not compared, not in :meth:`to_dict`, not in the cache key.

    Examples
    --------
    >>> pre = Preprocessing((256,), (224, 224), (0.5,) * 3, (0.5,) * 3)
    >>> pre.input_size, pre.to_dict()["crop"]
    ((224, 224), [224, 224])
    """

    resize: tuple
    crop: tuple | None
    mean: tuple
    std: tuple
    interpolation: str = "bilinear"
    impl: str = "pil"
    view: str = "center"
    source: tuple = field(default=(), compare=False, repr=False)

    def __post_init__(self):
        if self.view != "center":
            check_view(self.view)
            if self.crop is None and self.view != "flip":
                raise UsageError(
                    f"view={self.view!r} cuts crops of the crop size, but this preprocessing "
                    "has no crop (crop=0): give a crop size (crop=..., --crop), or use the "
                    "views 'center' or 'flip'"
                )

    @property
    def input_size(self):
        """``(height, width)`` of the tensor the network receives."""
        if self.crop is not None:
            return tuple(self.crop)
        return tuple(self.resize)

    def to_dict(self):
        """A JSON-ready description, used in cache keys and reports (without ``source``; with
        ``view`` only when it is not ``"center"``)."""
        return {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in asdict(self).items()
            if k != "source" and (k != "view" or v != "center")
        }

    @classmethod
    def from_dict(cls, values):
        """The inverse of :meth:`to_dict` (lists become tuples; ``impl`` defaults to ``"pil"``,
        ``view`` to ``"center"``)."""
        crop = values["crop"]
        return cls(
            resize=tuple(values["resize"]),
            crop=None if crop is None else tuple(crop),
            mean=tuple(values["mean"]),
            std=tuple(values["std"]),
            interpolation=values["interpolation"],
            impl=values.get("impl", "pil"),
            view=values.get("view", "center"),
        )

    def arguments(self):
        """The explicit arguments of :func:`cnncodes.models.resolve_spec` (``resize``, ``crop``,
        ``mean``, ``std``, ``interpolation``, ``impl``) that resolve to exactly this preprocessing
        (no crop is ``crop=0``), apart from :attr:`view`, which is not an argument there: a view
        is chosen per extraction (``dataclasses.replace(preprocessing, view=...)``)."""
        values = {k: v for k, v in asdict(self).items() if k not in ("source", "view")}
        values["crop"] = 0 if self.crop is None else self.crop
        return values

    def describe(self):
        """One line for people: see :func:`describe_preprocessing`."""
        return describe_preprocessing(self.to_dict(), dict(self.source))


def describe_preprocessing(values, source=None):
    """One line saying how images are preprocessed, and where each value came from.

    Parameters
    ----------
    values : dict
        :meth:`Preprocessing.to_dict` (also what a cache configuration stores).
    source : dict, optional
        ``{key: origin}`` (:attr:`Preprocessing.source`); adds ``(from: ...)``.

    Examples
    --------
    >>> from cnncodes.preprocessing import resolve_preprocessing
    >>> describe_preprocessing(resolve_preprocessing(mean=0.5).to_dict())
    'mean=(0.5, 0.5, 0.5) std=(0.229, 0.224, 0.225) resize=256 crop=224x224 interpolation=bilinear'
    >>> resolve_preprocessing(mean=0.5, std=0.5).describe()
    'mean=(0.5, 0.5, 0.5) std=(0.5, 0.5, 0.5) resize=256 crop=224x224 interpolation=bilinear \
(from: explicit: mean, std; ImageNet default: resize, crop, interpolation)'
    """

    def size(value):
        return "none" if value is None else "x".join(str(v) for v in value)

    def floats(value):
        return "(" + ", ".join(f"{float(v):g}" for v in value) + ")"

    text = (
        f"mean={floats(values['mean'])} std={floats(values['std'])} "
        f"resize={size(values['resize'])} crop={size(values['crop'])} "
        f"interpolation={values.get('interpolation')}"
    )
    if values.get("impl", "pil") != "pil":
        text += f" impl={values['impl']}"
    if values.get("view", "center") != "center":
        text += f" view={values['view']}"
    if source:
        groups = {}
        for key in ("mean", "std", "resize", "crop", "interpolation"):
            if key in source:
                groups.setdefault(source[key], []).append(key)
        if len(groups) == 1:
            text += f" (from: {next(iter(groups))})"
        else:
            text += " (from: " + "; ".join(f"{o}: {', '.join(k)}" for o, k in groups.items()) + ")"
    return text


@dataclass(frozen=True)
class ModelSpec:
    """A fully resolved model: everything that changes the network's numbers, and nothing else.

    Cheap to build, hash and pickle (no tensors). ``weights_id`` is the identity of the weights:
    the torchvision enum name, ``"sha256:<hex>"`` of a checkpoint file, ``"none:seed=<n>"``, or the
    SHA-256 of the state the user's callable built. ``arch_id`` fingerprints the architecture itself:
    its modules, parameter names and shapes, and for the user's own architecture also the code its
    ``forward()`` runs (``"<modules>+<code>"``, see :func:`cnncodes.architectures._arch_id`).
    ``model_kwargs`` are the keyword arguments the builder is called with, as sorted
    ``(key, value)`` pairs (:func:`check_model_kwargs`); empty for most models, and then absent
    from :meth:`to_dict` and the cache key, which stay as they were before it existed.
    Made by :func:`cnncodes.models.resolve_spec`.
    """

    model: str
    weights: str
    weights_id: str
    arch_id: str
    seed: int
    preprocessing: Preprocessing
    # A class default too: a ModelSpec pickled before this field existed reads back as ().
    model_kwargs: tuple = ()

    def with_view(self, view):
        """This spec with its preprocessing taking ``view`` (:mod:`cnncodes.views`): the spec of
        that view's codes, cached under their own configuration."""
        if view == self.preprocessing.view:
            return self
        return replace(self, preprocessing=replace(self.preprocessing, view=view))

    @property
    def weights_spec(self):
        """:attr:`weights_id` as :class:`Weights` (with the checkpoint's path as ``file``)."""
        return Weights.parse(self.weights_id, file=self.weights)

    def to_dict(self):
        """A JSON-ready description (cache keys, reports, ``--out`` files)."""
        out = asdict(self)
        out["preprocessing"] = self.preprocessing.to_dict()
        del out["model_kwargs"]
        if self.model_kwargs:
            out["model_kwargs"] = dict(self.model_kwargs)
        return out


@dataclass(frozen=True)
class CodeKey:
    """What one layer's cached codes are keyed on: everything that changes the numbers.

    The model (:class:`ModelSpec`: architecture, weights identity, preprocessing), the layer, the
    pooling, the precision (already resolved for the device) and the image decode policy
    (:data:`cnncodes.images.DECODE_POLICY`, plus :data:`GPU_DECODER` where nvJPEG decodes).
    Batch size, worker count and device count are deliberately absent: they do not change codes.
    ``format`` is the cache format version the key was made for; ``None`` means the current one
    (:data:`cnncodes.cache.FORMAT_VERSION`).

    :meth:`config` is the JSON-ready dict a cache stores beside its codes, :attr:`digest` the
    name it is stored under, and :meth:`from_config` reads a stored dict back (the checkpoint
    path is not in it: a :class:`ModelSpec` read back from a checkpoint's key has
    ``weights=None``, and ``seed`` 0 unless the weights are ``"none:seed=<n>"``).

    Examples
    --------
    >>> pre = Preprocessing((40,), (32, 32), (0.5,) * 3, (0.5,) * 3)
    >>> spec = ModelSpec("resnet18", "none", "none:seed=3", "06a1c57ba771afeb", 3, pre)
    >>> key = CodeKey.for_device(spec, "avgpool", "avg", "fp32", "cpu")
    >>> key.config()["weights"], len(key.digest)
    ('none:seed=3', 24)
    >>> CodeKey.from_json(key.to_json()) == key
    True
    """

    spec: ModelSpec
    layer: str
    pooling: str
    precision: str
    decode: str
    format: int | None = None

    @classmethod
    def for_device(cls, spec, layer, pooling, precision, device_type="cpu"):
        """The key of codes made on a ``device_type`` device: the device matters only where it
        changes the numbers, through its precision (``precision`` is already resolved) and, with
        ``impl="torch"``, the JPEG decoder (nvJPEG on a GPU)."""
        decode = DECODE_POLICY
        if spec.preprocessing.impl == "torch" and device_type == "cuda":
            decode += GPU_DECODER
        return cls(spec, layer, pooling, precision, decode)

    def __post_init__(self):
        if self.format is None:
            object.__setattr__(self, "format", FORMAT_VERSION)

    def config(self):
        """The cache configuration: a JSON-ready dict (``model_kwargs`` only where given, so
        the keys of codes made without them are unchanged)."""
        config = {
            "format": self.format,
            "model": self.spec.model,
            "arch": self.spec.arch_id,
            "weights": self.spec.weights_id,
            "layer": self.layer,
            "pooling": self.pooling,
            "preprocessing": self.spec.preprocessing.to_dict(),
            "precision": self.precision,
            "decode": self.decode,
        }
        if self.spec.model_kwargs:
            config["model_kwargs"] = dict(self.spec.model_kwargs)
        return config

    @property
    def digest(self):
        """The name the cache stores these codes under (:func:`cnncodes.cache.config_key`)."""
        return config_key(self.config())

    def to_json(self):
        """:meth:`config` as JSON text."""
        return json.dumps(self.config(), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        """The inverse of :meth:`to_json`."""
        return cls.from_config(json.loads(text))

    @classmethod
    def from_config(cls, config):
        """The key a cache configuration (:meth:`config`) describes.

        Raises
        ------
        ValueError
            ``config`` is not a code configuration (the message names the missing key).
        """
        try:
            weights = Weights.parse(config["weights"])
            spec = ModelSpec(
                model=config["model"],
                weights=weights.argument,
                weights_id=weights.identity,
                arch_id=config["arch"],
                seed=weights.seed if weights.kind == "none" else 0,
                preprocessing=Preprocessing.from_dict(config["preprocessing"]),
                model_kwargs=check_model_kwargs(config.get("model_kwargs")),
            )
            return cls(
                spec,
                config["layer"],
                config["pooling"],
                config["precision"],
                config.get("decode"),
                config.get("format"),
            )
        except (KeyError, TypeError) as exc:
            raise UsageError(f"not a cnncodes code configuration (missing {exc})") from None
