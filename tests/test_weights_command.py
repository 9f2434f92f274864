"""``cnncodes weights set-preprocessing`` and the warning of a checkpoint normalised with the
ImageNet default (issue 22 item 6)."""

from __future__ import annotations

import os
import re
import warnings

import pytest
import torch

from cnncodes.cli import main
from cnncodes.networks.checkpoints import set_checkpoint_preprocessing
from cnncodes.networks.models import resolve_spec
from cnncodes.networks.preprocessing import PreprocessingWarning
from cnncodes.spec import WeightsError, file_sha256

TINY = "tests.tiny_nets:tiny_cnn"


def _plain(path, extra=None):
    from tests.tiny_nets import TinyCNN

    torch.manual_seed(5)
    state = TinyCNN().state_dict()
    torch.save(state if extra is None else {"state_dict": state, **extra}, path)
    return str(path)


def _resolve(path, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = resolve_spec(TINY, path, **kwargs)
    return spec, [w for w in caught if issubclass(w.category, PreprocessingWarning)]


def test_the_command_writes_preprocessing_that_resolves_as_the_checkpoints(tmp_path, capsys):
    src = _plain(tmp_path / "in.pth", {"epoch": 3})
    out = tmp_path / "out.pth"
    argv = ["weights", "set-preprocessing", src, str(out), "--mean", "0.5", "--std", "0.5"]
    assert main([*argv, "--resize", "40", "--crop", "32", "--interpolation", "bicubic"]) == 0
    printed = capsys.readouterr().out
    assert file_sha256(str(out)) in printed and "cache" in printed
    spec, caught = _resolve(str(out))
    pre = spec.preprocessing
    assert pre.mean == pre.std == (0.5, 0.5, 0.5)
    assert (pre.resize, pre.crop, pre.interpolation) == ((40,), (32, 32), "bicubic")
    assert set(dict(pre.source).values()) == {"checkpoint"}
    assert not caught  # the file now carries its own: nothing to warn about
    saved = torch.load(out, weights_only=True)
    assert saved["epoch"] == 3  # other keys kept
    assert saved["preprocessing"] == {
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "resize": [40],
        "crop": [32, 32],
        "interpolation": "bicubic",
    }
    before = torch.load(src, weights_only=True)["state_dict"]
    assert saved["state_dict"].keys() == before.keys()
    assert all(torch.equal(saved["state_dict"][k], before[k]) for k in before)


def test_set_preprocessing_replaces_only_what_is_given_and_in_place(tmp_path):
    path = _plain(tmp_path / "w.pth", {"preprocessing": {"resize": 40, "crop": 32, "mean": 0.1}})
    before = file_sha256(path)
    digest = set_checkpoint_preprocessing(path, path, mean=0.5, std=0.5, in_place=True)
    assert digest == file_sha256(path) != before
    pre = resolve_spec(TINY, path).preprocessing
    assert (pre.resize, pre.crop, pre.mean) == ((40,), (32, 32), (0.5, 0.5, 0.5))
    assert [f for f in os.listdir(tmp_path)] == ["w.pth"]  # no temporary left behind


def test_refusals(tmp_path, capsys):
    src = _plain(tmp_path / "in.pth")
    cmd = ["weights", "set-preprocessing"]
    assert (
        main([*cmd, str(tmp_path / "missing.pth"), str(tmp_path / "o.pth"), "--mean", "0.5"]) == 2
    )
    assert "not found" in capsys.readouterr().err
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    assert main([*cmd, str(junk), str(tmp_path / "o.pth"), "--mean", "0.5"]) == 2
    assert "cannot be read as a checkpoint" in capsys.readouterr().err
    assert main([*cmd, src, src, "--mean", "0.5"]) == 2
    assert "--in-place" in capsys.readouterr().err
    assert main([*cmd, src, str(tmp_path / "o.pth")]) == 2  # nothing to set
    assert "give at least one" in capsys.readouterr().err
    assert main([*cmd, src, str(tmp_path / "o.pth"), "--std", "0"]) == 2
    assert "std" in capsys.readouterr().err
    assert not (tmp_path / "o.pth").exists()
    with pytest.raises(WeightsError, match="in-place"):
        set_checkpoint_preprocessing(src, src, mean=0.5)


def test_a_checkpoint_without_preprocessing_warns_naming_the_values_and_the_fix(tmp_path):
    path = _plain(tmp_path / "plain.pth")
    _, caught = _resolve(path)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "plain.pth carries no preprocessing of its own" in message
    assert "mean=(0.485, 0.456, 0.406)" in message and "std=(0.229, 0.224, 0.225)" in message
    assert "resize=256" in message and "crop=224" in message
    assert "cnncodes weights set-preprocessing" in message and "--mean" in message
    # Given explicitly, nothing is left to the default: no warning.
    assert not _resolve(path, mean=0.5, std=0.5, resize=40, crop=32)[1]
    # The normalisation given: the default input size is a choice too, not warned about.
    assert not _resolve(path, mean=0.5, std=0.5)[1]
    # Only the input size given: the normalisation left to the default is named.
    (message,) = [str(w.message) for w in _resolve(path, resize=40, crop=32)[1]]
    assert "mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)." in message
    assert "resize=" not in message
    assert not _resolve("none")[1]  # not a checkpoint


def test_the_command_line_shows_the_warning_once(tmp_path, capsys):
    path = _plain(tmp_path / "plain.pth")
    assert main(["layers", TINY, "--weights", path, "--json"]) == 0
    err = capsys.readouterr().err
    assert len(re.findall(r"cnncodes: warning: .*plain\.pth carries no preprocessing", err)) == 1
