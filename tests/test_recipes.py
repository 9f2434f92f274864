"""Tests for cnncodes.recipes: the registry the bundled recipes of pipelines/ register with."""

from __future__ import annotations

import ast
import importlib
import types
from pathlib import Path

import pytest

import cnncodes
from cnncodes import recipes

ROOT = Path(__file__).resolve().parents[1]


def _imports(path):
    """``(module, names)`` of every import statement in a file (names empty for ``import m``)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module, tuple(alias.name for alias in node.names)


def test_the_core_never_imports_pipelines():
    # One direction: pipelines/ builds on cnncodes, cnncodes reaches pipelines only through
    # the registry's one edge, recipes._load_bundled (an import_module of BUNDLED_PACKAGE).
    offenders = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in sorted((ROOT / "cnncodes").rglob("*.py"))
        for module, _ in _imports(path)
        if module == "pipelines" or module.startswith("pipelines.")
    ]
    assert offenders == []
    assert recipes.BUNDLED_PACKAGE == "pipelines"


def test_pipelines_use_only_the_public_api_of_cnncodes():
    public = {
        "cnncodes": set(cnncodes.__all__),
        "cnncodes.errors": set(importlib.import_module("cnncodes.errors").__all__),
        "cnncodes.workflows.recipes": set(recipes.__all__),
        "cnncodes.workflows.evaluation": set(
            importlib.import_module("cnncodes.workflows.evaluation").__all__
        ),
        "cnncodes.workflows.experiment": set(
            importlib.import_module("cnncodes.workflows.experiment").__all__
        ),
        "cnncodes.workflows.advise": set(
            importlib.import_module("cnncodes.workflows.advise").__all__
        ),
    }
    used = [
        (path.name, module, names)
        for path in sorted((ROOT / "pipelines").glob("*.py"))
        for module, names in _imports(path)
        if module == "cnncodes" or module.startswith("cnncodes.")
    ]
    assert used  # the recipes are built from cnncodes
    for filename, module, names in used:
        assert module in public, f"{filename} imports {module}, not a public module"
        assert set(names) <= public[module], f"{filename}: {names} not all in {module}.__all__"


def test_bundled_recipes_are_found_without_importing_pipelines_first():
    # A fresh interpreter: cnncodes.recipes alone lists and loads the bundled recipes, and
    # pipelines' functions are the registry's.
    import subprocess
    import sys

    code = (
        "from cnncodes import recipes\n"
        "print(recipes.available(), recipes.get('linear_svm').__name__)\n"
        "import pipelines\n"
        "assert pipelines.get is recipes.get and pipelines.make_cv is recipes.make_cv\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        "['finetune_head',",
        "'finetune_top',",
        "'layer_sweep_svm',",
        "'linear_probe',",
        "'linear_svm',",
        "'sgd']",
        "pipelines.linear_svm",
    ]


@pytest.fixture
def registry(monkeypatch):
    """The registry as it is, restored after the test."""
    recipes.available()
    monkeypatch.setattr(recipes, "_REGISTRY", dict(recipes._REGISTRY))
    return recipes


def _recipe(name="mine", **attrs):
    module = types.ModuleType(name)
    module.build = lambda **overrides: (None, {})
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


def test_register_a_recipe_by_module_or_dotted_name(registry):
    mine = _recipe(LAYER="sweep")
    registry.register("mine", mine, layer="sweep")
    registry.register("mine", mine, layer="sweep")  # the same again: no change
    assert registry.get("mine") is mine and "mine" in registry.available()
    assert registry.layer_mode("mine") == "sweep"
    # Without layer=, a module's own declaration (or its `layers` option) decides.
    registry.register("sweeper", _recipe("sweeper", OPTIONS=("layers",)))
    assert registry.layer_mode("sweeper") == "sweep"
    registry.register("probe_again", "pipelines.linear_probe")
    assert registry.get("probe_again").__name__ == "pipelines.linear_probe"


def test_bad_registrations_are_refused(registry):
    with pytest.raises(ValueError, match=r"recipe 'linear_probe' is already registered"):
        registry.register("linear_probe", _recipe())
    with pytest.raises(ValueError, match=r"layer='stack': expected one of 'sweep', 'concat'"):
        registry.register("mine", _recipe(), layer="stack")
    with pytest.raises(ValueError, match=r"name='my recipe': a recipe name is a Python identifier"):
        registry.register("my recipe", _recipe())
    with pytest.raises(ValueError, match=r"recipe=42: expected a module defining build"):
        registry.register("mine", 42)
    # The module's own declaration must agree with its registration.
    registry.register("wrong", _recipe("wrong", LAYER="concat"), layer="sweep")
    with pytest.raises(ValueError, match=r"registered with layer='sweep' but .* LAYER = 'concat'"):
        registry.get("wrong")


def test_layer_mode_of_bundled_recipes_modules_and_files(tmp_path):
    assert {name: recipes.layer_mode(name) for name in recipes.available()} == {
        "finetune_head": "concat",
        "finetune_top": "concat",
        "layer_sweep_svm": "sweep",
        "linear_probe": "concat",
        "linear_svm": "concat",
        "sgd": "concat",
    }
    for name in recipes.available():  # the registration and the module say the same
        assert recipes.get(name).LAYER == recipes.layer_mode(name)
    # Undeclared: a recipe taking a `layers` option sweeps them, else concatenates.
    assert recipes.layer_mode(_recipe(OPTIONS=("layers", "Cs"))) == "sweep"
    assert recipes.layer_mode(_recipe(OPTIONS=("Cs",))) == "concat"
    with pytest.raises(ValueError, match=r"odd\.LAYER='both': expected one of"):
        recipes.layer_mode(_recipe("odd", LAYER="both"))
    recipe = tmp_path / "mine.py"
    recipe.write_text('LAYER = "sweep"\ndef build(**overrides):\n    return None, {}\n')
    assert recipes.layer_mode(str(recipe)) == "sweep"
    with pytest.raises(ValueError, match=r"unknown recipe 'linear_prob'\. Did you mean"):
        recipes.layer_mode("linear_prob")


def test_a_missing_or_broken_bundled_package(registry, monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_bundled_loaded", False)
    monkeypatch.setattr(registry, "BUNDLED_PACKAGE", "no_such_recipes_package")
    assert registry.available() == []  # installed without pipelines: no bundled recipes
    (tmp_path / "broken_recipes_package").mkdir()
    (tmp_path / "broken_recipes_package" / "__init__.py").write_text("import no_such_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_bundled_loaded", False)
    monkeypatch.setattr(registry, "BUNDLED_PACKAGE", "broken_recipes_package")
    for _ in range(2):  # every look-up says why, not only the first
        with pytest.raises(ModuleNotFoundError, match="no_such_module"):
            registry.get("linear_probe")
