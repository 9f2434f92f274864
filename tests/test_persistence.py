"""Tests for cnncodes.persistence: joblib and skops round trips, trusted types, checkpoints."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch
from cnncodes.demo_data import digits_net
from cnncodes.models import WeightsError, file_sha256
from cnncodes.persistence import (
    PROJECT_TYPES,
    ModelFileError,
    UntrustedModelCodeError,
    UntrustedTypesError,
    load,
    model_callables,
    save,
)
from PIL import Image
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import pipelines

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Shift(TransformerMixin, BaseEstimator):
    """A user-defined step that skops does not know."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return np.asarray(X) + 1.0


def _checkpoint(path, seed):
    torch.manual_seed(seed)
    torch.save(digits_net().state_dict(), path)
    return str(path)


@pytest.fixture
def fitted(tmp_path):
    """A fitted linear_svm pipeline on a tmp checkpoint, its images and its predictions."""
    rng = np.random.default_rng(0)
    paths, y = [], []
    for i in range(12):
        pixels = np.clip((170 if i % 2 else 60) + rng.integers(-50, 50, (28, 28, 3)), 0, 255)
        path = tmp_path / "img" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        paths.append(str(path))
        y.append(i % 2)
    ckpt = _checkpoint(tmp_path / "net.pth", seed=7)
    pipe, _ = pipelines.get("linear_svm").build(
        model="cnncodes.demo_data:digits_net",
        weights=ckpt,
        resize=32,
        crop=32,
        cache_dir=str(tmp_path / "cache"),
        num_workers=0,
    )
    pipe.set_params(power__alpha=0.5, clf__C=10.0).fit(paths, y)
    return pipe, paths, ckpt


@pytest.mark.parametrize("suffix", [".joblib", ".skops"])
def test_round_trip_predicts_identically(fitted, tmp_path, suffix):
    pipe, paths, _ = fitted
    path = tmp_path / f"model{suffix}"
    assert save(pipe, path) == str(path)
    assert os.listdir(tmp_path).count(f"model{suffix}") == 1
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    restored = load(path)
    np.testing.assert_array_equal(restored.predict(paths), pipe.predict(paths))
    np.testing.assert_array_equal(restored.decision_function(paths), pipe.decision_function(paths))
    assert restored.named_steps["cnncodes"].spec_ == pipe.named_steps["cnncodes"].spec_


@pytest.mark.parametrize("suffix", [".joblib", ".skops"])
def test_recipe_with_pca_whitening_and_l2_round_trips_with_the_default_trust(
    fitted, tmp_path, suffix
):
    _, paths, ckpt = fitted
    y = [i % 2 for i in range(len(paths))]
    pipe, _ = pipelines.get("linear_probe").build(
        model="cnncodes.demo_data:digits_net",
        weights=ckpt,
        resize=32,
        crop=32,
        cache_dir=str(tmp_path / "cache"),
        num_workers=0,
        l2=True,
        whiten=0.9,
    )
    pipe.fit(paths, y)
    assert pipe.named_steps["whiten"].n_components_ >= 1
    restored = load(save(pipe, tmp_path / f"model{suffix}"))  # no trusted= needed
    assert type(restored.named_steps["whiten"]).__name__ == "PCA"
    np.testing.assert_array_equal(restored.predict_proba(paths), pipe.predict_proba(paths))


def test_fresh_process_predicts_identically(fitted, tmp_path):
    pipe, paths, _ = fitted
    save(pipe, tmp_path / "model.joblib")
    save(pipe, tmp_path / "model.skops")
    expected = pipe.decision_function(paths)
    script = textwrap.dedent(
        """
        import json, sys
        from cnncodes.persistence import load
        paths = json.loads(sys.argv[2])
        out = {}
        for name in ("model.joblib", "model.skops"):
            pipe = load(sys.argv[1] + "/" + name)
            out[name] = pipe.decision_function(paths).tolist()
            # Without the cache: the codes are recomputed in this process.
            pipe.set_params(cnncodes__cache_dir=None)
            out[name + " uncached"] = pipe.decision_function(paths).tolist()
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "CNNCODES_CACHE": str(tmp_path / "unused")}
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), json.dumps(paths)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(results) == 4
    for name, scores in results.items():
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6, err_msg=name)
    assert not os.path.exists(tmp_path / "unused")


def test_skops_refuses_untrusted_types_unless_named(fitted, tmp_path):
    pipe, paths, _ = fitted
    risky = Pipeline([("shift", Shift()), ("clf", LogisticRegression())])
    risky.fit(np.arange(8.0).reshape(4, 2), [0, 1, 0, 1])
    save(risky, tmp_path / "risky.skops")
    with pytest.raises(
        UntrustedTypesError,
        match=r"risky\.skops holds types that are not "
        r"trusted: .*Shift\. Loading them could run",
    ) as e:
        load(tmp_path / "risky.skops")
    assert len(e.value.types) == 1 and e.value.types[0].endswith("Shift")
    restored = load(tmp_path / "risky.skops", trusted=[Shift])
    assert isinstance(restored.named_steps["shift"], Shift)
    assert load(tmp_path / "risky.skops", trusted=e.value.types).predict([[0.0, 1.0]]).shape == (1,)


def test_project_types_need_no_trust_and_plain_sklearn_loads(fitted, tmp_path):
    import skops.io

    pipe, _, _ = fitted
    save(pipe, tmp_path / "m.skops")
    untrusted = set(skops.io.get_untrusted_types(file=tmp_path / "m.skops"))
    assert untrusted and untrusted <= set(PROJECT_TYPES)
    plain = Pipeline([("s", StandardScaler()), ("clf", LogisticRegression())])
    plain.fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
    save(plain, tmp_path / "plain.skops")
    assert skops.io.get_untrusted_types(file=tmp_path / "plain.skops") == []
    assert load(tmp_path / "plain.skops").predict([[3.0]]).tolist() == [1]


@pytest.mark.parametrize("suffix", [".joblib", ".skops"])
def test_changed_checkpoint_is_refused_after_reload(fitted, tmp_path, suffix):
    pipe, paths, ckpt = fitted
    save(pipe, tmp_path / f"model{suffix}")
    old = file_sha256(ckpt)
    _checkpoint(ckpt, seed=8)
    new = file_sha256(ckpt)
    restored = load(tmp_path / f"model{suffix}")
    with pytest.raises(WeightsError, match=rf"{ckpt}.*changed.*now {new}.*made with {old}"):
        restored.predict(paths)


def test_bad_paths_and_options(fitted, tmp_path):
    pipe, _, _ = fitted
    with pytest.raises(
        ValueError,
        match=r"'model\.pkl': unknown extension '\.pkl'; use a name "
        r"ending in \.joblib or \.skops",
    ):
        save(pipe, "model.pkl")
    with pytest.raises(ValueError, match=r"folder .*nowhere does not exist"):
        save(pipe, tmp_path / "nowhere" / "m.joblib")
    with pytest.raises(ValueError, match=r"model file not found: .*absent\.skops"):
        load(tmp_path / "absent.skops")
    save(pipe, tmp_path / "m.joblib")
    with pytest.raises(ValueError, match="trusted= applies to .skops files only"):
        load(tmp_path / "m.joblib", trusted=["x.Y"])
    with pytest.raises(ValueError, match="unknown extension"):
        load(tmp_path / "m")


# ----------------------------------------------------------------------------- damaged files

DAMAGED = r"{}: not a readable cnncodes model file \(corrupt or truncated: {}\)$"


def _damaged(path):
    return DAMAGED.format(re.escape(str(path)), "{}")


def test_truncated_or_junk_skops_is_a_clear_error(fitted, tmp_path):
    pipe, _, _ = fitted
    data = (tmp_path / save(pipe, tmp_path / "m.skops")).read_bytes()
    bad = tmp_path / "bad.skops"
    not_zip = _damaged(bad).format("BadZipFile: File is not a zip file")
    bad.write_bytes(data[:5000])
    with pytest.raises(ModelFileError, match=not_zip) as e:
        load(bad)
    assert isinstance(e.value, ValueError)
    bad.write_bytes(b"hello world junk")
    with pytest.raises(ModelFileError, match=not_zip):
        load(bad)
    with zipfile.ZipFile(bad, "w") as z:  # a zip, but not one skops wrote
        z.writestr("x.txt", "hi")
    with pytest.raises(ModelFileError, match=_damaged(bad).format("KeyError: .*schema\\.json.*")):
        load(bad)


def test_truncated_or_junk_joblib_is_a_clear_error(fitted, tmp_path):
    pipe, _, _ = fitted
    data = (tmp_path / save(pipe, tmp_path / "m.joblib")).read_bytes()
    bad = tmp_path / "bad.joblib"
    assert len(data) > 1000
    for cut in (15, len(data) // 3, len(data) // 2, len(data) - 1):
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match=_damaged(bad).format(".+")):
            load(bad)
    bad.write_bytes(b"hello world junk")
    with pytest.raises(ModelFileError, match=_damaged(bad).format("UnpicklingError: Memo value.*")):
        load(bad)
    bad.write_bytes(b"")
    with pytest.raises(ModelFileError, match=_damaged(bad).format("the file is empty")):
        load(bad)


def test_clear_errors_are_not_wrapped(tmp_path):
    with pytest.raises(ValueError, match=r"model file not found") as e:
        load(tmp_path / "absent.joblib")
    assert not isinstance(e.value, ModelFileError)
    needs_code = tmp_path / "code.joblib"  # a pickle of a class whose module is not installed
    needs_code.write_bytes(b"cno_such_module_for_cnncodes_tests\nThing\n.")
    with pytest.raises(ModuleNotFoundError, match="no_such_module_for_cnncodes_tests"):
        load(needs_code)
    risky = Pipeline([("shift", Shift()), ("clf", LogisticRegression())])
    risky.fit(np.arange(8.0).reshape(4, 2), [0, 1, 0, 1])
    save(risky, tmp_path / "risky.skops")
    with pytest.raises(UntrustedTypesError):
        load(tmp_path / "risky.skops")


@pytest.mark.parametrize("suffix", [".joblib", ".skops"])
def test_cli_predict_with_a_damaged_model_exits_2(fitted, tmp_path, capsys, suffix):
    from cnncodes import cli

    pipe, paths, _ = fitted
    data = (tmp_path / save(pipe, tmp_path / f"m{suffix}")).read_bytes()
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(data[: len(data) // 2])
    code = cli.main(["predict", str(bad), paths[0]])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1
    assert lines[0].startswith(
        f"cnncodes: error: {bad}: not a readable cnncodes model file (corrupt or truncated: "
    )


# ----------------------------------------------------------------------------- model code

EVIL_MODULE = """
import pathlib

from cnncodes.demo_data import digits_net

HERE = pathlib.Path(__file__).parent
(HERE / "IMPORTED").write_text("imported")


def fn():
    (HERE / "CALLED").write_text("called")
    return digits_net()


fn.preprocessing = digits_net.preprocessing
"""


def _naming(pipe, model):
    """A copy of the fitted pipeline whose file names ``model``, as an attacker would edit it."""
    import copy
    import dataclasses

    edited = copy.deepcopy(pipe)
    step = edited.named_steps["cnncodes"]
    step.model = model
    step.spec_ = dataclasses.replace(step.spec_, model=model)
    return edited


@pytest.fixture
def evil(tmp_path, monkeypatch):
    """``qa_evilmod_<n>:fn`` in tmp_path, importable; it leaves IMPORTED and CALLED files."""
    name = f"qa_evilmod_{os.getpid()}_{len(sys.modules)}"
    (tmp_path / f"{name}.py").write_text(EVIL_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield f"{name}:fn"
    sys.modules.pop(name, None)


@pytest.mark.parametrize("suffix", [".joblib", ".skops"])
def test_a_model_file_cannot_choose_code_to_run(fitted, tmp_path, evil, suffix):
    pipe, paths, _ = fitted
    path = save(_naming(pipe, evil), tmp_path / f"model{suffix}")
    with pytest.raises(UntrustedModelCodeError) as e:
        load(path)
    message = str(e.value)
    assert e.value.callables == [evil]
    assert f"--trust-model-code {evil}" in message and f"trust_model_code=['{evil}']" in message
    assert isinstance(e.value, ValueError)  # the command line's usage errors (exit 2)
    with pytest.raises(UntrustedModelCodeError, match=evil):
        load(path, trust_model_code=["other.module:net"])
    assert not (tmp_path / "IMPORTED").exists() and not (tmp_path / "CALLED").exists()
    assert evil.partition(":")[0] not in sys.modules

    for allowed in ([evil], evil, True):
        restored = load(path, trust_model_code=allowed)
    assert not (tmp_path / "IMPORTED").exists()  # allowed, but only imported when used
    np.testing.assert_array_equal(restored.predict(paths), pipe.predict(paths))
    assert (tmp_path / "CALLED").exists()


def test_torchvision_and_builtin_models_need_no_trust(fitted, tmp_path):
    from cnncodes.transformers import CNNCodes

    pipe, paths, _ = fitted  # cnncodes.demo_data:digits_net: shipped with cnncodes
    assert load(save(pipe, tmp_path / "builtin.skops")).predict(paths).tolist() == (
        pipe.predict(paths).tolist()
    )
    codes = CNNCodes("resnet18", weights="none", resize=40, crop=32, cache_dir=None)
    codes.fit(paths[:1])
    assert load(save(codes, tmp_path / "tv.skops")).spec_ == codes.spec_


def test_model_callables_looks_everywhere():
    from cnncodes.models import resolve_spec
    from cnncodes.transformers import CNNCodes
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import FeatureUnion

    inner = Pipeline([("u", FeatureUnion([("c", CNNCodes(model="a.b:net"))])), ("clf", Shift())])
    search = GridSearchCV(inner, {"u__c__model": ["resnet18", "c.d:other"]})
    search.best_estimator_ = Pipeline([("cnncodes", CNNCodes("resnet18"))])
    search.best_estimator_[0].spec_ = resolve_spec("tests.tiny_nets:tiny_cnn", "none")
    hidden = np.empty(1, dtype=object)
    hidden[0] = resolve_spec("cnncodes.demo_data:digits_net", "none")
    assert model_callables({"search": search, "more": [hidden]}) == [
        "a.b:net",
        "cnncodes.demo_data:digits_net",
        "tests.tiny_nets:tiny_cnn",
    ]
    assert model_callables(Pipeline([("clf", LogisticRegression())])) == []


@pytest.mark.parametrize("value", ["nocolon", ["a:b", 3], 3, [":fn"]])
def test_trust_model_code_values_are_checked(fitted, tmp_path, value):
    pipe, _, _ = fitted
    path = save(pipe, tmp_path / "m.skops")
    with pytest.raises(ValueError, match=r"trust_model_code=.*'package\.module:callable'"):
        load(path, trust_model_code=value)
    assert load(path, trust_model_code=[]) is not None


def test_cli_predict_runs_a_files_callable_only_when_trusted(fitted, tmp_path, evil, capsys):
    """Run as a user would, from the folder that holds the module (on sys.path as cwd)."""
    pipe, paths, _ = fitted
    sys.modules.pop(evil.partition(":")[0], None)
    save(_naming(pipe, evil), tmp_path / "model.skops")
    argv = ["-m", "cnncodes", "predict", "model.skops", "img", "--cache-dir", "cache"]
    env = {**os.environ, "PYTHONPATH": REPO, "CNNCODES_DEBUG": "0"}

    def predict(*extra):
        return subprocess.run(
            [sys.executable, *argv, "--num-workers", "0", *extra],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=300,
        )

    refused = predict()
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnncodes: error: model.skops names model code")
    assert f"--trust-model-code {evil}" in lines[0]
    assert not (tmp_path / "IMPORTED").exists() and not (tmp_path / "CALLED").exists()

    allowed = predict("--trust-model-code", evil)
    assert allowed.returncode == 0, allowed.stderr
    assert (tmp_path / "CALLED").exists()


def test_cli_trust_model_code_alone_trusts_every_callable(fitted, tmp_path, evil, capsys):
    from cnncodes import cli

    pipe, paths, _ = fitted
    model = save(_naming(pipe, evil), tmp_path / "model.skops")
    common = [model, paths[0], "--cache-dir", str(tmp_path / "cache"), "--num-workers", "0"]
    assert cli.main(["predict", *common, "--trust-model-code", "x.y:z"]) == 2
    assert f"--trust-model-code {evil}" in capsys.readouterr().err
    assert cli.main(["predict", *common, "--trust-model-code", "img/"]) == 2
    assert "--trust-model-code 'img/': expected package.module:callable" in (
        capsys.readouterr().err
    )
    assert cli.main(["predict", *common, "--trust-model-code"]) == 0
    assert (tmp_path / "CALLED").exists()
    # One name per flag: the flag may stand before the model and the data.
    capsys.readouterr()
    assert cli.main(["predict", "--trust-model-code", evil, *common]) == 0, capsys.readouterr().err


def test_save_reaches_the_disk_before_it_replaces_the_file(fitted, tmp_path, monkeypatch):
    """An interrupted or crashed save never leaves a truncated model under its name."""
    import stat

    pipe, _, _ = fitted
    synced, real = [], os.fsync

    def fsync(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "models"
    out.mkdir()
    for suffix in (".joblib", ".skops"):
        synced.clear()
        save(pipe, out / f"m{suffix}")
        assert synced == ["file", "dir"], suffix
    assert sorted(os.listdir(out)) == ["m.joblib", "m.skops"]
