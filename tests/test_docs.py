"""The README's examples, executed.

Every fenced ``python`` block runs, in order and in one namespace, in a fresh working folder.
Every line of a ``bash`` block that starts with ``cnncodes`` runs through ``cnncodes.cli.main``
in that folder (``make`` lines are the setup commands: CI runs ``make test`` itself), except
``cnncodes demo``: its run is the session's (``tests/conftest.py::demo_run``, the same call at
its full size), copied into the folder; the line must resolve to that run's settings. The
user's folders the examples name (``photos/``, ``new-photos/``) are generated there first.

Commands that use torchvision's ImageNet weights run with an empty ``$TORCH_HOME``, as on a
machine without internet: each must then stop with exit status 2 and the message that says which
file to supply and where; a later command that reads a model such a command would have saved
must stop with "model file not found". Every other command must succeed.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from cnncodes import cli, demo
from tests.conftest import one_torch_thread, write_images

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(language):
    """The README's fenced blocks of ``language``, in order."""
    text = README.read_text(encoding="utf-8")
    return [body for lang, body in _FENCE.findall(text) if lang == language]


def commands():
    """``cnncodes ...`` command lines of the bash blocks (continuations joined, comments cut)."""
    found = []
    for body in blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if not argv or argv[0] == "make":
                continue
            assert argv[0] == "cnncodes", f"README bash line is not a cnncodes command: {line}"
            found.append(argv[1:])
    return found


def test_readme_has_the_examples_this_test_runs():
    assert len(blocks("python")) >= 2
    names = {argv[0] for argv in commands()}
    assert {"demo", "layers", "extract", "advise", "fit", "predict", "cache"} <= names
    # The two commands of the README are what CI and the demo run.
    assert "make demo" in blocks("bash")[0] and "make test" in blocks("bash")[0]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci


def test_no_citation_of_documents_outside_the_repository():
    # A user has only the repository: a fact or a paper is cited, never a file they cannot open.
    outside = re.compile(r"(FIELD|RELIABILITY)\.md|shared/[d]ocs")
    root = README.parent
    files = [README, *root.glob("*.cfg"), *root.glob("*.toml")]
    for folder in ("cnncodes", "pipelines", "tests", "bench"):
        files += [p for p in (root / folder).rglob("*") if p.suffix in (".py", ".md", ".txt")]
    found = [
        f"{path.relative_to(root)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if outside.search(line)
    ]
    assert not found, found


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CNNCODES_CACHE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no weights: offline
    for seed, name in enumerate(("cats", "dogs")):  # seeds apart: no image in both classes
        write_images(tmp_path / "photos" / name, 4, seed=seed)
    write_images(tmp_path / "new-photos", 3, seed=7)
    return tmp_path


def test_python_examples_run(workdir, demo_run, capsys):
    # The digits the quick start writes are the demo's default dataset: found complete, kept.
    shutil.copytree(demo_run.out_dir / "data", workdir / "example-data")
    namespace = {"__name__": "__readme__"}
    with one_torch_thread():
        for body in blocks("python"):
            exec(compile(body, str(README), "exec"), namespace)  # noqa: S102 - our own README
    out = capsys.readouterr().out
    assert out.strip(), "the quick start prints its result"
    assert set(namespace["best"]) == {"clf__C", "cnncodes__layer"}
    assert namespace["result"].layers is not None
    # The cache example found and read shards (it would pass vacuously on an empty glob).
    assert namespace["codes"].dtype == "float32" and len(namespace["keys"]) > 0


def _demo_rows():
    """``{fit arguments: (row, recipe)}`` of the commands that reproduce the demo's table."""
    rows = {}
    for name, *_ in demo.FEATURE_SETS:
        for recipe in demo.RECIPES:
            argv = demo.fit_command(name, recipe)
            if argv is not None:
                rows[tuple(argv)] = (name, recipe)
    return rows


def _without_outputs(argv):
    """``argv`` less the options that only choose where results are saved."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--out", "--report"):
            skip = True
        else:
            kept.append(arg)
    return tuple(kept)


def _check_reproduces_the_demo(argv, out):
    """A README ``fit`` on the demo's data is one of the demo's rows and prints its accuracy."""
    rows = _demo_rows()
    key = _without_outputs(argv)
    assert key in rows, (
        f"cnncodes {shlex.join(argv)} runs on the demo's data but is none of its rows; "
        "use the demo's command (cnncodes.demo.fit_command, report.json 'commands')"
    )
    name, recipe = rows[key]
    report = json.loads(Path("demo-output/report.json").read_text())
    assert report["commands"][name][recipe] == shlex.join(["cnncodes", *key])
    printed = re.search(r"^test \(.*\): accuracy ([0-9.]+),", out, re.M)
    assert printed, out
    assert float(printed.group(1)) == round(report["accuracy"][name][recipe], 3), (name, recipe)


def test_command_line_examples_run(workdir, demo_run, capsys):
    # The README's `cnncodes demo` ran once for the session (conftest.demo_run, full size, in a
    # folder like this one): its output is copied here rather than computed a second time.
    shutil.copytree(demo_run.out_dir, workdir / "demo-output")
    shutil.copytree(demo_run.cache_dir, workdir / "cache")
    missing_models = set()  # files a command would have saved, had weights been available
    reproduced = 0
    for argv in commands():
        if argv[0] == "demo":
            # The session's run is this line's: the command line's defaults, which it used.
            args = cli.build_parser().parse_args(argv)
            assert (args.out_dir, args.shots, args.cache_dir) == ("demo-output", 5, "auto")
            assert not args.no_cache
            assert demo_run.report == json.loads(Path("demo-output/report.json").read_text())
            continue
        with one_torch_thread():
            code = cli.main(argv)
        captured = capsys.readouterr()
        line = "cnncodes " + shlex.join(argv)
        if code == 0:
            if argv[0] == "fit" and argv[1].startswith("demo-output/"):
                _check_reproduces_the_demo(argv, captured.out)
                reproduced += 1
            continue
        err = captured.err
        assert code == 2, f"{line}: exit {code}\n{err}"
        assert "Traceback" not in err
        if "hub/checkpoints" in err:  # ImageNet weights absent, as CI and any offline machine
            assert "--weights" in err, err  # ... and the message says how to supply them
            if "--out" in argv and argv[0] == "fit":
                missing_models.add(argv[argv.index("--out") + 1])
            continue
        model = argv[1] if argv[0] == "predict" else None
        assert model in missing_models and "model file not found" in err, f"{line}: {err}"
    # The README's fit commands on the demo's data print the demo's own numbers.
    assert reproduced >= 1


def test_readme_lists_what_the_recipes_run_by_default():
    from pipelines._defaults import defaults_markdown

    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- recipe-defaults -->\n(.*?)\n<!-- /recipe-defaults -->", text, re.S)
    assert found, "README: no <!-- recipe-defaults --> table"
    assert found.group(1) == defaults_markdown(), (
        "README's recipe table differs from the recipes: regenerate it with "
        "python -m pipelines._defaults"
    )
