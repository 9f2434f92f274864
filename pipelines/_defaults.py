"""The recipes' defaults as Markdown tables: what each recipe runs when given no option.

The README's table (between ``<!-- recipe-defaults -->`` and ``<!-- /recipe-defaults -->``) is
this module's output, checked by ``tests/test_docs.py``; regenerate it with
``python -m pipelines._defaults``. The tables are built from the recipes themselves
(``build(model=..., weights="none")`` and ``layer_sweep_svm.default_layers``), so they cannot
drift from what the recipes run.
"""

from __future__ import annotations

from cnncodes.workflows.recipes import available, get

__all__ = ["defaults_markdown"]

#: The model the first table is built for (the commands' default --model).
MODEL = "resnet50"

#: One model per family ``layer_sweep_svm`` has default layers for, and the names it covers.
SWEEP_FAMILIES = (
    ("resnet50", "resnet*, resnext*, wide_resnet*"),
    ("mobilenet_v2", "mobilenet_v2"),
    ("mobilenet_v3_large", "mobilenet_v3_large"),
    ("mobilenet_v3_small", "mobilenet_v3_small"),
    ("efficientnet_b0", "efficientnet_b0 ... b7"),
    ("convnext_tiny", "convnext_*"),
    ("densenet121", "densenet*"),
)

_SHOWN_APART = {
    "cnncodes__layer",
    "cnncodes__pooling",
    "layer",
    "pooling",
}


def _value(value):
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    if hasattr(value, "get_params"):  # an estimator as a grid value (a step switched on)
        return type(value).__name__
    return repr(value)


def _values(values):
    """``a, b, c``; a long numeric sweep as ``first ... last (N values)``."""
    values = list(values)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric and len(values) > 4:
        return f"{_value(values[0])} ... {_value(values[-1])} ({len(values)} values)"
    return ", ".join(_value(v) for v in values)


def _code(text):
    return f"`{text}`"


def _row(name):
    """``| recipe | layers | poolings | grid |`` of one recipe, built for :data:`MODEL`."""
    estimator, grid = get(name).build(model=MODEL, weights="none")
    params = estimator.get_params(deep=True)
    prefix = "cnncodes__" if "cnncodes__layer" in params else ""
    parts = grid if isinstance(grid, list) else [grid]
    cells = []
    for key in ("layer", "pooling"):
        # Swept by the grid (in its order, each once), else the estimator's own value.
        values = [v for part in parts for v in part.get(prefix + key, [])]
        values = list(dict.fromkeys(values)) or [params[prefix + key]]
        cells.append(", ".join(_code(v) for v in values))
    grid_cells = [
        "; ".join(f"{_code(k)}: {_values(v)}" for k, v in part.items() if k not in _SHOWN_APART)
        for part in parts
    ]
    return f"| `{name}` | {cells[0]} | {cells[1]} | {' **or** '.join(grid_cells)} |"


def defaults_markdown():
    """The README's tables of the recipes' defaults (Markdown, no trailing newline)."""
    from pipelines.layer_sweep_svm import default_layers

    lines = [
        f"| recipe (for `--model {MODEL}`) | layers | poolings | grid |",
        "|---|---|---|---|",
        *(_row(name) for name in available()),
        "",
        "| `layer_sweep_svm`'s layers for | layers, early to top |",
        "|---|---|",
        *(
            f"| {family} | {', '.join(_code(v) for v in default_layers(model))} |"
            for model, family in SWEEP_FAMILIES
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(defaults_markdown())
