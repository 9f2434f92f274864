"""``cnncodes layers``: a model's graph nodes with output shapes and code sizes."""

from __future__ import annotations

from ..errors import UsageError
from ..params import POOLINGS
from ._core import (
    EXIT_OK,
    _add_model_arg_option,
    _add_output_options,
    _add_preprocessing_options,
    _add_weights_options,
    _fill,
    _Formatter,
    _Output,
    _short_weights,
    _spec_from_args,
    _table,
)

_LAYERS_EPILOG = """\
examples:
  cnncodes layers resnet50
  cnncodes layers mobilenet_v2 --weights none --resize 160 --crop 128
  cnncodes layers my_package.nets:small_cnn --json

Shapes are (channels, height, width) for the input size of the weights' preprocessing (change it
with --resize/--crop); code sizes are what each --pooling makes of the layer ('-': not possible).
"""


def add_layers_parser(subparsers):
    """``cnncodes layers MODEL``."""
    parser = subparsers.add_parser(
        "layers",
        help="list a model's layers with output shapes and code sizes",
        description=_fill(
            "List the graph nodes of MODEL that can be used as --layer, with their "
            "output shape and the code size under each pooling. The penultimate layer (the input of "
            "the last linear layer, the default --layer) is marked with '*'. No weights are loaded."
        ),
        epilog=_LAYERS_EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "model", metavar="MODEL", help="torchvision name, timm:NAME or package.module:callable"
    )
    group = parser.add_argument_group("model")
    _add_weights_options(group)
    _add_model_arg_option(group)
    _add_preprocessing_options(parser.add_argument_group("preprocessing"))
    _add_output_options(parser, quiet=False)
    parser.set_defaults(run=run_layers)


def run_layers(args):
    """Print the layer table of a model."""
    from ..networks.layers import TIMM_ALIASES, resolve_layers
    from ..networks.models import list_layers

    output = _Output(args)
    spec = _spec_from_args(args)
    infos = list_layers(spec)
    try:
        penultimate = resolve_layers(spec, ["penultimate"])[0]
    except UsageError:  # LayerError: a network without one
        penultimate = None
    aliases = {}
    if spec.model.startswith("timm:"):
        for alias in TIMM_ALIASES:
            try:
                aliases[alias] = resolve_layers(spec, [alias])[0]
            except UsageError:
                pass  # untraceable: the name is refused with the reason when asked for
    h, w = spec.preprocessing.input_size
    data = {
        "model": spec.model,
        "weights": spec.weights_id,
        "input_size": [3, h, w],
        "preprocessing": {
            **spec.preprocessing.to_dict(),
            "source": dict(spec.preprocessing.source),
        },
        "penultimate": penultimate,
        "aliases": aliases,
        "layers": [
            {"name": i.name, "shape": list(i.shape), "code_sizes": dict(i.code_sizes)}
            for i in infos
        ],
    }
    rows = [
        [
            ("* " if i.name == penultimate else "  ") + i.name,
            "x".join(map(str, i.shape)),
            *(i.code_sizes.get(p) for p in POOLINGS),
        ]
        for i in infos
    ]
    lines = [
        f"{spec.model} [{_short_weights(spec.weights_id)}], input 3x{h}x{w}: {len(infos)} layers",
        f"preprocessing: {spec.preprocessing.describe()}",
    ]
    lines += _table(["  layer", "shape", *POOLINGS], rows, right=POOLINGS)
    if penultimate is not None:
        lines.append(f"* penultimate = {penultimate} (the default --layer)")
    lines += [f"  {alias} = {node} (timm's {alias} output)" for alias, node in aliases.items()]
    output.result(data, lines)
    return EXIT_OK
