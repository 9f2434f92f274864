"""Names the API accepts and their display, importable without torch (--help and `cache info` use them)."""

#: How spatial maps become vectors (:mod:`cnncodes.pooling`).
POOLINGS = ("avg", "max", "avgmax", "pyramid", "flatten")
#: Extraction precisions (:func:`cnncodes.extract.resolve_precision`).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


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
    >>> from cnncodes.models import resolve_preprocessing
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
