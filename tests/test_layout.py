"""The package's layout: no import circle (imports inside functions included), no import of
another package's private name, and imports that flow down the layers only."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "cnncodes"

#: Each top-level part of the package and its layer: a module imports only from its own part
#: and from parts of lower layers.
LAYERS = {
    "errors": 0,
    "utils": 1,
    "params": 2,
    "spec": 2,
    "networks": 3,
    "images": 3,
    "store": 3,
    "extraction": 4,
    "estimators": 5,
    "workflows": 6,
    "cli": 7,
    "__main__": 8,
    "": 8,  # cnncodes/__init__.py: the lazy public face, over every layer
}


def _module_name(path):
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _modules():
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        name, is_package = _module_name(path)
        found[name] = (path, is_package)
    return found


MODULES = _modules()


def _face_exports(package):
    """A lazy face's ``_EXPORTS`` dict (name -> submodule), read from its source."""
    path, _ = MODULES[package]
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_EXPORTS":
            return ast.literal_eval(node.value)
    return {}


def _targets(module, is_package, node):
    """``(target module, imported name or None)`` pairs of one import statement."""
    if isinstance(node, ast.Import):
        return [(alias.name, None) for alias in node.names if alias.name.startswith("cnncodes")]
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        base = base[: len(base) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
        if not source.startswith("cnncodes"):
            return []
    out = []
    for alias in node.names:
        candidate = f"{source}.{alias.name}"
        if candidate in MODULES:
            out.append((candidate, None))
            continue
        exports = _face_exports(source) if source in MODULES and MODULES[source][1] else {}
        if alias.name in exports:
            out.append((f"{source}.{exports[alias.name]}", alias.name))
        else:
            out.append((source, alias.name))
    return out


def _imports():
    """Every import between the package's modules, at any depth: ``(importer, target, name)``."""
    edges = []
    for module, (path, is_package) in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target, name in _targets(module, is_package, node):
                    edges.append((module, target, name))
    return edges


EDGES = _imports()


def _package(module):
    return module if MODULES.get(module, (None, False))[1] else module.rpartition(".")[0]


def _part(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_circle():
    graph = {m: set() for m in MODULES}
    for importer, target, _ in EDGES:
        if target in graph and target != importer and not MODULES[target][1]:
            graph[importer].add(target)
        elif target in graph and MODULES[target][1] and target != importer:
            if not importer.startswith(target + ".") and target != "cnncodes":
                graph[importer].add(target)
    # Tarjan's strongly connected components
    index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert circles == []


def _private(target, name):
    """The first private part of ``target.name`` below its package, or None."""
    parts = target.split(".") + ([name] if name else [])
    for i, part in enumerate(parts[1:], 1):
        if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):
            return ".".join(parts[: i + 1])
    return None


def test_no_private_name_of_another_package():
    found = []
    for importer, target, name in EDGES:
        private = _private(target, name)
        if private is None:
            continue
        owner = private.rpartition(".")[0]
        if not (_package(importer) + ".").startswith(_package(owner) + "."):
            found.append(f"{importer} imports {private}")
        elif _package(owner) == "cnncodes" and _package(importer) != "cnncodes":
            found.append(f"{importer} imports {private}")
    assert sorted(set(found)) == []


def test_imports_flow_down_the_layers():
    found = []
    for importer, target, _ in EDGES:
        a, b = _part(importer), _part(target)
        if a == b or b not in LAYERS or target == "cnncodes":
            continue
        if LAYERS[b] >= LAYERS[a] and a != "":
            found.append(f"{importer} ({a}) imports {target} ({b})")
    assert sorted(set(found)) == []


@pytest.mark.parametrize(
    "old, new",
    [
        ("cnncodes.cache", "cnncodes.store.cache"),
        ("cnncodes.transformers", "cnncodes.estimators.codes"),
        ("cnncodes.finetune.estimator", "cnncodes.estimators.finetune.estimator"),
        ("cnncodes.experiment", "cnncodes.workflows.experiment"),
        ("cnncodes.models", "cnncodes.networks.models"),
    ],
)
def test_old_module_names_are_the_new_modules(old, new):
    import importlib

    assert importlib.import_module(old) is importlib.import_module(new)


def _code_lines(node):
    """Lines of a function without its docstring."""
    lines = node.end_lineno - node.lineno + 1
    body = node.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(getattr(body[0], "value", None), ast.Constant)
    ):
        if isinstance(body[0].value.value, str):
            lines -= body[0].end_lineno - body[0].lineno + 1
    return lines


def test_functions_and_modules_stay_small():
    """No function over ~80 lines of code (docstrings aside) and no module over ~600 lines, but
    where the module's docstring gives the reason (a line saying why it is longer)."""
    long_functions, long_modules = [], []
    for module, (path, _) in MODULES.items():
        text = path.read_text()
        tree = ast.parse(text)
        doc = ast.get_docstring(tree) or ""
        if len(text.splitlines()) > 600 and "lines" not in doc:
            long_modules.append(module)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node) > 80:
                long_functions.append(f"{module}.{node.name}: {_code_lines(node)}")
    assert long_functions == []
    assert long_modules == []
