"""Tests for cnncodes.persistence: joblib and skops round trips, trusted types, checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import pipelines
from cnncodes.demo_data import digits_net
from cnncodes.models import WeightsError, file_sha256
from cnncodes.persistence import PROJECT_TYPES, UntrustedTypesError, load, save

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
        match=r"'model\.pkl': unknown file type '\.pkl'; use a name "
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
    with pytest.raises(ValueError, match="unknown file type"):
        load(tmp_path / "m")
