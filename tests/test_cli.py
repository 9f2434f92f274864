"""Tests for the command line (cnncodes.cli), run in-process through ``main([...])``.

One test runs the installed console script, to check that exit statuses reach the shell.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import cnncodes.extract
import h5py
import numpy as np
import pytest
import torch
from cnncodes.cache import list_configs
from cnncodes.datasets import load_dataset
from cnncodes.export import read_codes
from cnncodes.extract import code_config, extract_codes, spec_from_config
from cnncodes.models import WeightsError, resolve_spec
from cnncodes.persistence import UntrustedModelCodeError

from cnncodes import cli
from tests.tiny_nets import TinyCNN

# An untrained resnet18 on 32x32 crops: fast on a CPU. Decoding in-process keeps tests quick.
MODEL = ["--model", "resnet18", "--weights", "none", "--resize", "40", "--crop", "32"]
FAST = ["--num-workers", "0"]


@pytest.fixture
def data(tmp_path, make_images):
    """A class-folder dataset: 3 images of 'ants', 3 of 'bees'."""
    root = tmp_path / "data"
    make_images(3, folder=root / "ants", seed=1)
    make_images(3, folder=root / "bees", seed=2)
    return root


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def run(capsys, *argv):
    """``main(argv)`` -> (exit status, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def extract(capsys, data, cache, *extra):
    return run_json(capsys, "extract", data, *MODEL, *FAST, "--cache-dir", cache, *extra)


def assert_one_line_error(err, *fragments):
    """One error line, last on stderr (after any progress notes), without a traceback."""
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("cnncodes: error: ")]
    assert errors == lines[-1:], err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in errors[0]


# ----------------------------------------------------------------------------- help


def test_help_lists_commands_and_examples(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("extract", "layers", "cache"):
        assert command in out
    code, out, _ = run(capsys, "extract", "--help")
    assert code == 0
    assert "examples:" in out and "--cache-dir D | --no-cache" in out
    code, out, _ = run(capsys, "cache", "verify", "--help")
    assert code == 0 and "--data DATA" in out


def test_usage_errors_are_one_line_with_status_2(capsys):
    code, out, err = run(capsys)
    assert code == 2 and out == ""
    assert_one_line_error(err, "COMMAND")
    code, _, err = run(capsys, "extract")
    assert code == 2
    assert_one_line_error(err, "extract: the following arguments are required: DATA")
    code, _, err = run(capsys, "extract", "x", *MODEL, "--batch-size", "0")
    assert code == 2
    assert_one_line_error(err, "--batch-size: '0': expected a positive integer")


# ----------------------------------------------------------------------------- extract


def test_extract_json_then_everything_cached(capsys, data, cache):
    first = extract(capsys, data, cache)
    assert first["images"] == 6
    assert (first["computed"], first["cached"], first["skipped"]) == (6, 0, 0)
    assert first["skipped_files"] == []
    assert first["layers"] == ["flatten"]  # penultimate of resnet18: the input of fc
    assert first["features"] == 512
    assert first["classes"] == {"ants": 3, "bees": 3}
    assert first["cache_dir"] == str(cache)
    assert first["out"] is None
    assert first["weights"] == "none:seed=0" and first["precision"] == "fp32"

    second = extract(capsys, data, cache)
    assert (second["computed"], second["cached"]) == (0, second["images"])


def test_extract_human_output_and_quiet(capsys, data, cache):
    code, out, err = run(capsys, "extract", data, *MODEL, *FAST, "--cache-dir", cache)
    assert code == 0
    assert "6 images: 6 computed, 0 cached, 0 skipped" in out
    assert "6 images in" in err and "(2 classes)" in err
    code, out, err = run(capsys, "extract", data, *MODEL, *FAST, "--no-cache", "--quiet")
    assert code == 0 and out == "" and err == ""


def test_extract_out_h5_and_npz(capsys, data, cache, tmp_path):
    h5_path, npz_path = tmp_path / "codes.h5", tmp_path / "codes.npz"
    layers = ["--layer", "layer3", "--layer", "avgpool"]
    summary = extract(capsys, data, cache, *layers, "--out", h5_path)
    assert summary["out"] == str(h5_path)
    assert summary["features_per_layer"] == {"layer3": 256, "avgpool": 512}
    extract(capsys, data, cache, *layers, "--out", npz_path)
    expected_paths = load_dataset(data).paths

    with h5py.File(h5_path, "r") as f:
        codes = f["codes"][:]
        assert codes.shape == (6, 768) and codes.dtype == np.float32
        assert [os.fsdecode(p) for p in f["paths"][:]] == expected_paths
        assert list(f["display_paths"].asstr()[:]) == expected_paths
        assert list(f["labels"].asstr()[:]) == ["ants"] * 3 + ["bees"] * 3
        assert list(f["kept"][:]) == list(range(6))
        np.testing.assert_array_equal(f["layers/layer3"][:], codes[:, :256])
        np.testing.assert_array_equal(f["layers/avgpool"][:], codes[:, 256:])
        config = json.loads(f.attrs["config"])
    assert config["layers"] == ["layer3", "avgpool"]
    assert config["configs"]["avgpool"]["weights"] == "none:seed=0"

    npz = np.load(npz_path)  # no pickles needed
    np.testing.assert_array_equal(npz["codes"], codes)
    assert [os.fsdecode(p) for p in npz["paths"]] == expected_paths
    assert list(npz["display_paths"]) == expected_paths
    assert list(npz["labels"]) == ["ants"] * 3 + ["bees"] * 3
    np.testing.assert_array_equal(npz["layers/avgpool"], codes[:, 256:])
    assert json.loads(str(npz["config"]))["spec"]["model"] == "resnet18"

    # The same numbers as the library gives directly.
    spec = resolve_spec("resnet18", "none", resize=40, crop=32)
    direct = extract_codes(expected_paths, spec, "avgpool", cache_dir=None, num_workers=0)
    np.testing.assert_allclose(codes[:, 256:], direct.codes["avgpool"], rtol=1e-5, atol=1e-6)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]  # no temporary left behind


def test_extract_out_stores_the_real_bytes_of_non_utf8_names(capsys, data, cache, tmp_path):
    # File and class-folder names that are not UTF-8 (Latin-1 "e acute"): os.fsdecode makes
    # them str with surrogate escapes, which UTF-8 text cannot hold.
    ants = data / "ants"
    first = sorted(ants.iterdir())[0]
    cafe = Path(os.fsdecode(os.fsencode(ants) + b"/caf\xe9.png"))
    first.rename(cafe)
    (data / "bees").rename(Path(os.fsdecode(os.fsencode(data) + b"/b\xe9es")))
    expected = load_dataset(data).paths
    assert str(cafe) in expected
    for name in ("codes.h5", "codes.npz"):
        extract(capsys, data, cache, "--out", tmp_path / name)
    with h5py.File(tmp_path / "codes.h5", "r") as f:
        h5_paths = [os.fsdecode(p) for p in f["paths"][:]]
        h5_display = list(f["display_paths"].asstr()[:])
        h5_labels = list(f["labels"].asstr()[:])
    npz = np.load(tmp_path / "codes.npz")
    npz_paths = [os.fsdecode(p) for p in npz["paths"]]
    for paths in (h5_paths, npz_paths):
        assert paths == expected and all(os.path.isfile(p) for p in paths)
    for display in (h5_display, list(npz["display_paths"])):
        assert display[expected.index(str(cafe))].endswith("/ants/caf\\xe9.png")
        assert display[0].encode("utf-8") and len(display) == 6
    assert sorted(set(h5_labels)) == ["ants", "b\\xe9es"] == sorted(set(npz["labels"]))


def test_extract_out_is_checked_before_any_work(capsys, data, cache, tmp_path):
    code, _, err = run(capsys, "extract", data, *MODEL, "--cache-dir", cache, "--out", "c.csv")
    assert code == 2
    assert_one_line_error(err, "--out 'c.csv': unknown extension '.csv'")
    code, _, err = run(
        capsys, "extract", data, *MODEL, "--cache-dir", cache, "--out", tmp_path / "no" / "c.h5"
    )
    assert code == 2
    assert_one_line_error(err, "does not exist")
    assert not cache.exists()


def test_extract_out_parquet_holds_what_npz_holds(capsys, data, cache, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    layers = ["--layer", "layer3", "--layer", "avgpool"]
    files = {name: tmp_path / name for name in ("codes.npz", "codes.parquet", "wide.parquet")}
    extract(capsys, data, cache, *layers, "--out", files["codes.npz"])
    summary = extract(capsys, data, cache, *layers, "--out", files["codes.parquet"])
    assert summary["out"] == str(files["codes.parquet"]) and summary["computed"] == 0
    code, out, err = run(
        capsys, "extract", data, *MODEL, *FAST, "--cache-dir", cache, *layers,
        "--out", files["wide.parquet"], "--parquet-layout", "wide",
    )  # fmt: skip
    assert code == 0, err
    assert f"wrote {files['wide.parquet']} (codes as one column per feature)" in out
    assert pq.read_schema(files["codes.parquet"]).names[-1] == "codes"
    columns = pq.read_schema(files["wide.parquet"]).names
    assert len(columns) == 4 + 768 and columns[4:6] == ["layer3__avg0", "layer3__avg1"]
    npz, parquet, wide = (read_codes(p) for p in files.values())
    for saved in (parquet, wide):
        np.testing.assert_array_equal(saved.codes.view(np.uint32), npz.codes.view(np.uint32))
        assert saved.paths == npz.paths == load_dataset(data).paths
        assert saved.labels == npz.labels and saved.config == npz.config
        np.testing.assert_array_equal(saved.layers["avgpool"], npz.layers["avgpool"])

    code, _, err = run(
        capsys, "extract", data, *MODEL, "--cache-dir", cache, "--out", tmp_path / "c.h5",
        "--parquet-layout", "wide",
    )  # fmt: skip
    assert code == 2
    assert_one_line_error(err, "--parquet-layout 'wide' applies only to an --out FILE.parquet")


def test_extract_out_parquet_without_pyarrow_fails_before_any_work(
    capsys, data, cache, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    for where in (data, tmp_path / "no-such-data"):  # the data is not even looked at
        code, out, err = run(
            capsys, "extract", where, *MODEL, "--cache-dir", cache, "--out", tmp_path / "c.parquet"
        )
        assert code == 2 and out == ""
        assert_one_line_error(err, "--out '", "c.parquet", "pip install 'cnncodes[parquet]'")
    assert not cache.exists() and not list(tmp_path.glob("*.parquet"))


def test_extract_skip_reports_corrupt_file(capsys, data, cache, tmp_path):
    bad = data / "bees" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out_path = tmp_path / "codes.h5"
    summary = extract(capsys, data, cache, "--on-error", "skip", "--out", out_path)
    assert summary["images"] == 7
    assert summary["skipped"] == 1
    [skipped] = summary["skipped_files"]
    assert skipped["path"] == str(bad) and skipped["reason"]
    assert summary["computed"] == 6
    with h5py.File(out_path, "r") as f:
        assert f["codes"].shape == (6, 512)
        assert str(bad) not in list(f["paths"].asstr()[:])
        assert list(f["kept"][:]) == [0, 1, 2, 4, 5, 6]  # broken.png sorts first in 'bees'

    code, _, err = run(capsys, "extract", data, *MODEL, *FAST, "--cache-dir", cache)
    assert code == 2
    assert_one_line_error(err, "broken.png", "--on-error skip")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--model", "resnet1", "--weights", "none"], "model='resnet1' is not a torchvision"),
        ([*MODEL, "--layer", "layr3"], "layer='layr3' is not a node of resnet18. Closest: layer3"),
        (["--model", "resnet18", "--weights", "/no/such.pth"], "weights file not found"),
        (["--model", "resnet18", "--weights", "IMAGENET9K"], "weights='IMAGENET9K' is not one of"),
        ([*MODEL, "--device", "tpu"], "device='tpu'"),
    ],
)
def test_bad_model_inputs_exit_2_with_one_line(capsys, data, cache, args, fragment):
    code, out, err = run(capsys, "extract", data, *args, "--cache-dir", cache)
    assert code == 2 and out == ""
    assert_one_line_error(err, fragment)


def test_bad_data_exits_2(capsys, tmp_path, cache):
    code, _, err = run(capsys, "extract", tmp_path / "missing", *MODEL, "--cache-dir", cache)
    assert code == 2
    assert_one_line_error(err, "missing: no such folder or file")
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "extract", tmp_path / "empty", *MODEL, "--cache-dir", cache)
    assert code == 2
    assert_one_line_error(err, "no images found in")


def test_unexpected_errors_exit_1_and_interrupts_130(capsys, data, cache, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cnncodes.extract, "extract_codes", boom)  # imported on use
    code, _, err = run(capsys, "extract", data, *MODEL, "--cache-dir", cache)
    assert code == 1
    assert_one_line_error(err, "RuntimeError: disk on fire", "CNNCODES_DEBUG=1")

    monkeypatch.setenv("CNNCODES_DEBUG", "1")
    code, _, err = run(capsys, "extract", data, *MODEL, "--cache-dir", cache)
    assert code == 1 and "Traceback" in err

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cnncodes.extract, "extract_codes", interrupt)
    code, _, err = run(capsys, "extract", data, *MODEL, "--cache-dir", cache)
    assert code == 130 and "interrupted" in err


def test_a_bug_in_a_recipe_exits_1_naming_it_and_debug_shows_the_traceback(
    capsys, data, cache, tmp_path
):
    # A recipe that raises something other than cnncodes' own errors has a bug: not exit 2
    # (the user's command line was fine), one line naming the exception, no traceback.
    recipe = tmp_path / "buggy_recipe.py"
    recipe.write_text("def build(**overrides):\n    return None + 1\n")
    argv = ["fit", data, *MODEL, "--cache-dir", cache, "--pipeline", recipe]
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    assert_one_line_error(err, "a bug", "TypeError: unsupported operand", "--debug")
    code, _, err = run(capsys, "--debug", *argv)
    assert code == 1
    assert "Traceback" in err and "None + 1" in err
    assert err.strip().splitlines()[-1].startswith("cnncodes: error: ")


def test_an_option_the_recipe_does_not_take_exits_2(capsys, data, cache, tmp_path):
    recipe = tmp_path / "narrow_recipe.py"
    recipe.write_text("def build(model='resnet18'):\n    raise AssertionError('not called')\n")
    code, _, err = run(capsys, "fit", data, *MODEL, "--cache-dir", cache, "--pipeline", recipe)
    assert code == 2
    assert_one_line_error(err, ".build() got unknown option(s)", "'batch_size'", "takes model")


def test_an_unwritable_file_exits_1_with_one_line(capsys, monkeypatch, data, cache):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cnncodes.extract, "extract_codes", full)
    code, _, err = run(capsys, "extract", data, *MODEL, "--cache-dir", cache)
    assert code == 1
    assert_one_line_error(err, "No space left on device")
    assert "bug" not in err


# ----------------------------------------------------------------------------- layers


def test_layers_table_and_json(capsys):
    code, out, _ = run(capsys, "layers", "resnet18", "--weights", "none", "--crop", "32")
    assert code == 0
    assert "input 3x32x32" in out
    [avgpool] = [line for line in out.splitlines() if line.split()[:1] == ["avgpool"]]
    assert avgpool.split()[1:4] == ["512x1x1", "512", "512"]
    assert "* flatten" in out and "penultimate = flatten" in out

    data = run_json(capsys, "layers", "resnet18", "--weights", "none", "--crop", "32")
    layers = {layer["name"]: layer for layer in data["layers"]}
    assert data["penultimate"] == "flatten"
    assert layers["layer4"]["shape"] == [512, 1, 1]
    assert layers["layer3"]["code_sizes"]["avgmax"] == 512
    assert layers["layer3"]["code_sizes"]["pyramid"] == 5 * 256

    code, _, err = run(capsys, "layers", "resnet18x")
    assert code == 2
    assert_one_line_error(err, "model='resnet18x'")


def test_layers_shows_the_preprocessing_and_where_it_came_from(capsys, tmp_path):
    torch.manual_seed(0)
    plain = tmp_path / "plain.pth"
    torch.save(TinyCNN().state_dict(), plain)
    own = tmp_path / "own.pth"
    entry = {"resize": 40, "crop": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    torch.save({"state_dict": TinyCNN().state_dict(), "preprocessing": entry}, own)
    model = "tests.tiny_nets:tiny_cnn"

    code, out, err = run(capsys, "layers", model, "--weights", own)
    assert code == 0, err
    assert "input 3x32x32" in out
    assert (
        "preprocessing: mean=(0.5, 0.5, 0.5) std=(0.5, 0.5, 0.5) resize=40 crop=32x32 "
        "interpolation=bilinear (from: checkpoint: mean, std, resize, crop; ImageNet default: "
        "interpolation)"
    ) in out
    assert "note:" not in err
    data = run_json(capsys, "layers", model, "--weights", own, "--std", "0.25")
    assert data["preprocessing"]["std"] == [0.25] * 3
    assert data["preprocessing"]["source"]["std"] == "explicit"
    assert data["preprocessing"]["source"]["mean"] == "checkpoint"

    # A checkpoint without its own: the ImageNet default, said in one warning line (issue 22).
    code, out, err = run(capsys, "layers", model, "--weights", plain)
    assert code == 0, err
    assert "mean=(0.485, 0.456, 0.406) std=(0.229, 0.224, 0.225) resize=256 crop=224x224" in out
    assert "(from: ImageNet default)" in out
    [note] = [line for line in err.splitlines() if line.startswith("cnncodes: warning:")]
    assert "plain.pth carries no preprocessing of its own" in note and "--mean" in note
    assert "cnncodes weights set-preprocessing" in note and "note:" not in err


# ----------------------------------------------------------------------------- cache


def test_cache_info_lists_configurations(capsys, data, cache):
    # A folder named on purpose that is not there: a typo, not an empty cache.
    for command in ("info", "verify"):
        code, out, err = run(capsys, "cache", command, "--cache-dir", cache)
        assert code == 2
        assert_one_line_error(err, f"--cache-dir '{cache}': no such folder")
    os.makedirs(cache)
    info = run_json(capsys, "cache", "info", "--cache-dir", cache)
    assert info["configs"] == []
    extract(capsys, data, cache, "--layer", "avgpool", "--layer", "layer3")

    info = run_json(capsys, "cache", "info", "--cache-dir", cache)
    by_layer = {c["layer"]: c for c in info["configs"]}
    assert set(by_layer) == {"avgpool", "layer3"}
    avgpool = by_layer["avgpool"]
    assert avgpool["model"] == "resnet18" and avgpool["weights"] == "none:seed=0"
    assert (avgpool["rows"], avgpool["unique"], avgpool["features"]) == (6, 6, 512)
    assert avgpool["shards"] == 1 and avgpool["size_mb"] > 0

    code, out, _ = run(capsys, "cache", "info", "--cache-dir", cache)
    assert code == 0
    assert avgpool["key"][:12] in out and "2 configuration(s)" in out


def test_cache_info_tells_configurations_apart_by_preprocessing(capsys, data, cache):
    extract(capsys, data, cache, "--layer", "avgpool")
    extract(capsys, data, cache, "--layer", "avgpool", "--mean", "0.5")
    info = run_json(capsys, "cache", "info", "--cache-dir", cache)
    means = sorted(c["preprocessing"]["mean"] for c in info["configs"])
    assert means == [[0.485, 0.456, 0.406], [0.5, 0.5, 0.5]]
    code, out, _ = run(capsys, "cache", "info", "--cache-dir", cache)
    assert code == 0
    # Two lines that differ only in the mean, each under its configuration's key.
    for c in info["configs"]:
        mean = ", ".join(f"{v:g}" for v in c["preprocessing"]["mean"])
        line = [x for x in out.splitlines() if x.strip().startswith(c["key"][:12] + " ")]
        assert len(line) == 2, out  # its table row and its preprocessing line
        assert f"mean=({mean}) std=(0.229, 0.224, 0.225) resize=40 crop=32x32" in line[1]


def test_a_run_that_fails_before_committing_leaves_no_configuration(
    capsys, data, cache, tmp_path, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no weights file there
    monkeypatch.setenv("CNNCODES_DOWNLOAD", "")
    argv = ["extract", data, "--model", "resnet18", "--weights", "IMAGENET1K_V1", *MODEL[4:]]
    code, _, err = run(capsys, *argv, *FAST, "--cache-dir", cache)
    assert code == 2 and "are not on this machine" in err
    assert run_json(capsys, "cache", "info", "--cache-dir", cache)["configs"] == []


def _left_by_a_killed_run(folder, prefix, pid, age=3600):
    from cnncodes.utils.files import _host

    path = Path(folder) / f"{prefix}{pid}@{_host()}-abcd.part"
    path.write_bytes(b"partial")
    os.utime(path, (path.stat().st_mtime - age,) * 2)
    return path


def test_cache_verify_and_the_next_out_file_remove_what_killed_runs_left(
    capsys, data, cache, tmp_path
):
    out = tmp_path / "codes.h5"
    extract(capsys, data, cache, "--out", out)
    [(store, _)] = list_configs(cache)
    dead, alive = 999_999_999, os.getpid()
    left = [_left_by_a_killed_run(folder, ".tmp-", dead) for folder in (cache, store.path)]
    # An --out file written into the cache folder by a killed run: swept too.
    left.append(_left_by_a_killed_run(cache, ".codes.h5.tmp-", dead))
    kept = [_left_by_a_killed_run(folder, ".tmp-", alive) for folder in (cache, store.path)]
    report = run_json(capsys, "cache", "verify", "--cache-dir", cache)
    assert sorted(report["removed_temporaries"]) == sorted(map(str, left))
    assert not any(p.exists() for p in left) and all(p.exists() for p in kept)
    code, out_text, _ = run(capsys, "cache", "verify", "--cache-dir", cache)
    assert code == 0 and "removed" not in out_text

    left = _left_by_a_killed_run(tmp_path, ".codes.h5.tmp-", dead)
    kept = _left_by_a_killed_run(tmp_path, ".codes.h5.tmp-", alive)
    other = _left_by_a_killed_run(tmp_path, ".other.h5.tmp-", dead)  # another output's
    extract(capsys, data, cache, "--out", out)
    assert not left.exists() and kept.exists() and not other.exists()


def test_cache_verify_sample_0_says_once_that_codes_are_not_rechecked(capsys, data, cache):
    extract(capsys, data, cache)
    code, out, err = run(capsys, "cache", "verify", "--cache-dir", cache, "--sample", "0")
    assert code == 0 and err == ""
    notes = [line for line in out.splitlines() if "re-check" in line or "--data" in line]
    assert notes == ["codes not re-checked (integrity only, as --sample 0 asks)"]
    code, _, err = run(
        capsys, "cache", "verify", "--cache-dir", cache, "--data", data, "--sample", "0"
    )
    assert code == 2
    assert_one_line_error(err, "--sample 0 recomputes nothing")


def test_cache_verify_confirms_then_detects_tampering(capsys, data, cache):
    extract(capsys, data, cache, "--layer", "avgpool")

    report = run_json(capsys, "cache", "verify", "--cache-dir", cache, "--num-workers", "0")
    assert report["ok"] and report["rechecked"] is False
    code, out, _ = run(capsys, "cache", "verify", "--cache-dir", cache)
    assert code == 0 and "codes not re-checked (integrity only)" in out

    argv = [
        "cache",
        "verify",
        "--cache-dir",
        cache,
        "--data",
        data,
        "--sample",
        "4",
        "--num-workers",
        "0",
    ]
    report = run_json(capsys, *argv, "--seed", "1")
    [config] = report["configs"]
    assert config["problems"] == []
    assert config["recheck"]["status"] == "ok" and config["recheck"]["checked"] == 4
    assert config["recheck"]["max_abs_diff"] <= 1e-4

    [(store, _)] = list_configs(cache)
    [shard] = store.shard_paths()
    with h5py.File(shard, "r+") as f:
        f["codes"][0, 0] += 1.0
    code, out, _ = run(capsys, *argv, "--sample", "6")
    assert code == 1
    assert "checksum mismatch" in out and "1 BAD shard(s)" in out
    # The altered shard serves nothing: its rows are not read (computed again on use).
    assert "none of the DATA images is stored here" in out


def test_cache_verify_recomputes_wrong_codes(capsys, data, cache):
    """Codes stored under a configuration that did not make them fail the re-check."""
    extract(capsys, data, cache, "--layer", "avgpool")
    [(store, _)] = list_configs(cache)
    keys = list(store.index())
    store.write(keys, np.full((len(keys), 512), 7.0, np.float32))  # a well-formed shard of lies
    code, out, _ = run(
        capsys,
        "cache",
        "verify",
        "--cache-dir",
        cache,
        "--data",
        data,
        "--num-workers",
        "0",
        "--json",
    )
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    [config] = report["configs"]
    assert config["problems"] == []  # each shard is intact: only recomputing finds it
    assert config["recheck"]["status"] == "mismatch" and config["recheck"]["mismatched"] == 6


def test_cache_verify_with_a_checkpoint_needs_the_file(capsys, data, cache, tmp_path):
    ckpt = tmp_path / "tiny.pth"
    torch.manual_seed(5)
    torch.save(TinyCNN().state_dict(), ckpt)
    model = ["--model", "tests.tiny_nets:tiny_cnn", "--weights", ckpt, "--crop", "32"]
    run_json(capsys, "extract", data, *model, *FAST, "--cache-dir", cache, "--layer", "conv2")
    base = ["cache", "verify", "--cache-dir", cache, "--data", data, "--num-workers", "0"]
    base += ["--trust-model-code", "tests.tiny_nets:tiny_cnn"]

    [config] = run_json(capsys, *base)["configs"]
    assert config["recheck"]["status"] == "not re-checked"
    assert "pass the file" in config["recheck"]["reason"]

    other = tmp_path / "other.pth"
    torch.save(TinyCNN().state_dict(), other)
    [config] = run_json(capsys, *base, "--weights", other)["configs"]
    assert "none of the given weights files" in config["recheck"]["reason"]

    report = run_json(capsys, *base, "--weights", other, "--weights", ckpt)
    assert report["ok"] and report["configs"][0]["recheck"]["status"] == "ok"


MARKED_NET = """
import pathlib

pathlib.Path(__file__).with_name("IMPORTED").write_text("imported")


def net():
    from tests.tiny_nets import TinyCNN

    return TinyCNN()
"""


def test_cache_verify_rebuilds_a_configurations_own_code_only_when_trusted(
    capsys, data, tmp_path, monkeypatch
):
    """A cache folder from elsewhere must not choose code to run: config.json names a callable."""
    module = "cnncodes_verify_marker"
    (tmp_path / f"{module}.py").write_text(MARKED_NET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["--model", f"{module}:net", "--weights", "none", "--crop", "32", "--layer", "conv2"]
    run_json(capsys, "extract", data, *argv, *FAST, "--cache-dir", "cache")
    (tmp_path / "IMPORTED").unlink()
    monkeypatch.delitem(sys.modules, module)
    base = ["cache", "verify", "--cache-dir", "cache", "--data", data, "--num-workers", "0"]

    report = run_json(capsys, *base)
    assert not (tmp_path / "IMPORTED").exists()
    [config] = report["configs"]
    assert report["ok"] and config["problems"] == []  # the integrity checks still ran
    assert config["recheck"]["status"] == "not re-checked"
    assert f"{module}:net" in config["recheck"]["reason"]
    assert f"--trust-model-code {module}:net" in config["recheck"]["reason"]
    code, out, _ = run(capsys, *base)
    assert code == 0 and "  not re-checked (" in out and f"--trust-model-code {module}:net" in out
    assert not (tmp_path / "IMPORTED").exists()

    for trust in (["--trust-model-code", f"{module}:net"], ["--trust-model-code"]):
        monkeypatch.delitem(sys.modules, module, raising=False)
        [config] = run_json(capsys, *base, *trust)["configs"]
        assert config["recheck"]["status"] == "ok", config["recheck"]
        assert (tmp_path / "IMPORTED").exists()
        (tmp_path / "IMPORTED").unlink()
    code, _, err = run(capsys, *base, "--trust-model-code", "nocolon")
    assert code == 2
    assert_one_line_error(err, "--trust-model-code 'nocolon': expected package.module:callable")


def test_crop_0_is_reported_as_no_crop(capsys, make_images):
    folder = os.path.dirname(make_images(2)[0])
    argv = ["extract", folder, "--model", "resnet18", "--weights", "none", "--no-cache"]
    code, _, err = run(capsys, *argv, "--resize", "40", "--crop", "0", "--out", "codes.h5")
    assert code == 2
    assert_one_line_error(err, "crop=0 (no centre crop) needs resize=(height, width)")
    assert "None" not in err


def test_spec_from_config_round_trip_and_refusals(tmp_path):
    spec = resolve_spec("resnet18", "none", seed=4, resize=(40, 48), crop=0)
    config = code_config(spec, "layer2", "max", "fp32")
    assert spec_from_config(json.loads(json.dumps(config))) == spec
    with pytest.raises(ValueError, match=r"decode differ"):
        spec_from_config({**config, "decode": "some-older-policy"})
    with pytest.raises(WeightsError, match=r"SHA-256 ab12, whose path is not stored"):
        spec_from_config({**config, "weights": "sha256:ab12"})
    with pytest.raises(ValueError, match="missing 'pooling'"):
        spec_from_config({k: v for k, v in config.items() if k != "pooling"})
    # Refused before the (missing) module is imported; the callable and the flag are named.
    own = {**config, "model": "no_such_module_for_cnncodes:net"}
    with pytest.raises(
        UntrustedModelCodeError, match=r"trust-model-code no_such_module_for_cnncodes:net"
    ):
        spec_from_config(own)
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_for_cnncodes'"):
        spec_from_config(own, trust_model_code=True)


# ----------------------------------------------------------------------------- advise

# The demo's small CNN, untrained: it declares its own 32x32 preprocessing, so advise (which has
# no preprocessing options) runs it on tiny inputs.
ADVISE_MODEL = ["--model", "cnncodes.demo_data:digits_net", "--weights", "none"]


def test_advise_names_scenario_recipe_and_command(capsys, data, cache):
    code, out, err = run(capsys, "advise", data, *ADVISE_MODEL, "--cache-dir", cache)
    assert code == 0, err
    lines = out.splitlines()
    # Few images per class, and an untrained network is never "similar": scenario 3.
    assert lines[0] == "scenario 3: recipe layer_sweep_svm"
    assert lines[-1].startswith("run: cnncodes fit ")
    reasons = lines[1:-1]
    assert reasons and all(line.startswith("  - ") for line in reasons)
    assert "6 images in 2 classes" in reasons[0] and "small" in reasons[0]
    assert any("untrained ('none' weights)" in line for line in reasons)
    rough = "Only 6 images were measured: the similarity verdict is a rough guide"
    assert any(rough in line for line in reasons)
    assert "6 images in" in err and "(2 classes)" in err


def test_advise_json_command_runs_as_written(capsys, tmp_path, make_images, cache):
    data = tmp_path / "my photos"  # a space, so the suggested command must quote it
    make_images(3, folder=data / "ants", seed=1)
    make_images(3, folder=data / "bees", seed=2)
    code, out, err = run(capsys, "advise", data, *ADVISE_MODEL, "--cache-dir", cache, "--json")
    assert code == 0, err
    advice = json.loads(out)
    assert {"scenario", "recipe", "command", "reasons"} <= set(advice)
    assert (advice["scenario"], advice["recipe"]) == (3, "layer_sweep_svm")
    assert (advice["n_images"], advice["n_classes"], advice["small"]) == (6, 2, True)
    assert advice["top_layer"] == "flatten" and advice["early_layer"].startswith("features.")
    assert all(isinstance(r, str) and r for r in advice["reasons"])
    argv = shlex.split(advice["command"])
    assert argv[:3] == ["cnncodes", "fit", str(data)]
    for option, value in [
        ("--pipeline", "layer_sweep_svm"),
        ("--model", "cnncodes.demo_data:digits_net"),
        ("--weights", "none"),
    ]:
        assert argv[argv.index(option) + 1] == value
    # A model layer_sweep_svm has no layers for: the network's last three blocks, as compare's.
    from cnncodes.advise import sweep_layers

    layers = sweep_layers("cnncodes.demo_data:digits_net")
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--layer"] == layers
    assert len(layers) == 3


def test_advise_scenario_3_command_sweeps_the_recipes_own_layers(capsys, data, cache):
    from pipelines.layer_sweep_svm import default_layers

    # MobileNetV2: the layers of the recipe's own default sweep, not advise's measured pair.
    small = ["--resize", "40", "--crop", "32"]
    argv = [*small, "--cache-dir", cache, "--json"]
    code, out, err = run(
        capsys, "advise", data, "--model", "mobilenet_v2", "--weights", "none", *argv
    )
    assert code == 0, err
    advice = json.loads(out)
    assert advice["scenario"] == 3
    command = shlex.split(advice["command"])
    layers = [command[i + 1] for i, a in enumerate(command) if a == "--layer"]
    assert layers == default_layers("mobilenet_v2")
    assert layers[2] == "features.14.conv.0" and advice["early_layer"] not in layers
    assert any("features.14.conv.0" in r and "layer_sweep_svm" in r for r in advice["reasons"])


def test_advise_passes_preprocessing_on_to_its_command(capsys, data, cache):
    code, out, err = run(
        capsys, "advise", data, *ADVISE_MODEL, "--resize", "36", "--crop", "32,32",
        "--mean", "0.4", "--cache-dir", cache, "--json",
    )  # fmt: skip
    assert code == 0, err
    argv = shlex.split(json.loads(out)["command"])
    options = {a: argv[i + 1] for i, a in enumerate(argv) if a in ("--resize", "--crop", "--mean")}
    assert options == {"--resize": "36", "--crop": "32,32", "--mean": "0.4"}
    args = cli.build_parser().parse_args(argv[1:])  # the command parses as written
    assert (args.resize, args.crop, args.mean) == (36, (32, 32), 0.4)


def test_advise_unlabelled_data_exits_2(capsys, tmp_path, make_images, cache):
    make_images(4, folder=tmp_path / "flat")
    code, out, err = run(capsys, "advise", tmp_path / "flat", *ADVISE_MODEL, "--cache-dir", cache)
    assert code == 2 and out == ""
    assert_one_line_error(err, "advise needs labelled images")
    assert not cache.exists()  # refused before any network ran


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--model", "resnet5O"], "model='resnet5O' is not a torchvision classification model"),
        (["--model", "no_such_pkg.nets:net"], "cannot import module 'no_such_pkg.nets'"),
        (
            [*ADVISE_MODEL, "--per-class", "1"],
            "argument --per-class: '1': expected an integer >= 2",
        ),
    ],
)
def test_advise_bad_inputs_exit_2(capsys, data, cache, args, fragment):
    code, out, err = run(capsys, "advise", data, *args, "--cache-dir", cache)
    assert code == 2 and out == ""
    assert_one_line_error(err, fragment)


def test_advise_needs_two_classes(capsys, tmp_path, make_images, cache):
    make_images(4, folder=tmp_path / "one" / "ants")
    code, _, err = run(capsys, "advise", tmp_path / "one", *ADVISE_MODEL, "--cache-dir", cache)
    assert code == 2
    assert_one_line_error(err, "at least two classes")


def test_advise_reports_unreadable_images(capsys, tmp_path, make_images, cache):
    data = tmp_path / "data"
    make_images(3, folder=data / "ants")
    for i in range(3):  # no readable 'bees': the similarity cannot be cross-validated
        (data / "bees").mkdir(exist_ok=True)
        (data / "bees" / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, out, err = run(capsys, "advise", data, *ADVISE_MODEL, "--cache-dir", cache, "--json")
    assert code == 0, err
    advice = json.loads(out)
    assert (advice["scenario"], advice["top_score"], advice["early_score"]) == (3, None, None)
    assert any(
        r.startswith("3 of the 6 measured images could not be read") and "broken" in r
        for r in advice["reasons"]
    )

    for path in (data / "ants").iterdir():
        path.write_bytes(b"not an image")
    code, _, err = run(capsys, "advise", data, *ADVISE_MODEL, "--cache-dir", cache)
    assert code == 2
    assert_one_line_error(err, "none of the 6 measured images could be read")


# ----------------------------------------------------------------------------- labelled commands


@pytest.mark.parametrize("command", ["fit", "finetune", "compare"])
@pytest.mark.parametrize(
    "case, fragments",
    [
        ("unlabelled DATA", ["needs labelled images", "a manifest with a 'label' column"]),
        ("unlabelled --test", ["--test", "the test images need labels"]),
        ("--report is a file", ["--report", "exists and is not a folder"]),
    ],
)
def test_commands_that_train_refuse_the_same_inputs_alike(
    capsys, tmp_path, make_images, data, cache, command, case, fragments
):
    # fit, finetune and compare share their data, --test and --report checks (cli/_core.py).
    flat = tmp_path / "flat"
    make_images(4, folder=flat)
    report = tmp_path / "report.txt"
    report.write_text("not a folder")
    argv = {
        "unlabelled DATA": [flat, "--test-size", "0.5"],
        "unlabelled --test": [data, "--test", flat],
        "--report is a file": [data, "--test-size", "0.5", "--report", report],
    }[case]
    code, out, err = run(capsys, command, *argv, *MODEL, *FAST, "--cache-dir", cache)
    assert code == 2 and out == ""
    assert_one_line_error(err, *fragments)
    if case == "unlabelled DATA":
        assert f"{command} needs labelled images" in err
    assert not cache.exists()  # refused before any network ran


@pytest.mark.parametrize("command", ["finetune", "compare"])
@pytest.mark.parametrize("lr", ["0", "-1e-3", "nan", "inf", "fast"])
def test_fine_tuning_commands_take_the_same_learning_rates(capsys, data, command, lr):
    code, _, err = run(capsys, command, data, *MODEL, "--test-size", "0.5", f"--lr={lr}")
    assert code == 2
    assert_one_line_error(err, "--lr", f"{lr!r}: expected a positive number such as 1e-3")


# ----------------------------------------------------------------------------- demo


@pytest.fixture
def small_demo(monkeypatch):
    """The demo with its size knobs turned down (the CLI passes out-dir, cache, shots, output).

    A shorter pretraining, 10 test images per class and two values of C instead of every
    target image and each recipe's full sweep: the same steps in seconds rather than a minute.
    """
    from cnncodes import demo

    small = functools.partial(demo.run_demo, test_per_class=10, epochs=3, Cs=[0.01, 0.1])
    monkeypatch.setattr(demo, "run_demo", small)
    # A network this small gains nothing from a second thread, while two OpenMP threads on a
    # busy 2-core machine spin against other processes (pretraining took 25 s instead of 1.3 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_demo_writes_its_report_then_reuses_the_cache(capsys, tmp_path, small_demo):
    out_dir, cache = tmp_path / "demo", tmp_path / "cache"
    argv = ["demo", "--shots", "2", "--out-dir", out_dir, "--cache-dir", cache]
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert json.loads((out_dir / "report.json").read_text()) == report
    with open(out_dir / "comparison.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert (report["shots_per_class"], report["n_target_train"], report["n_target_test"]) == (
        2,
        10,
        50,
    )
    # Three network feature sets (pretrained top and early, untrained top) of 60 images each.
    assert report["extraction"] == {"computed": 180, "cached": 0}
    names = ["pretrained-top", "pretrained-early", "untrained-top", "raw-pixels"]
    assert list(report["accuracy"]) == names
    for row in report["accuracy"].values():
        assert set(row) == {"linear_probe", "linear_svm"}
        assert all(0.0 <= acc <= 1.0 for acc in row.values())
    assert report["verdict"].startswith("Pre-training")
    assert report["pretraining"]["epochs"] == 3

    # Second run, human output: the checkpoint and every code come back from disk.
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert "source network: reusing" in err
    assert "codes: 0 images through a network, 180 served from the cache" in err
    # The table and the verdict are the result (stdout); progress and hints go to stderr.
    assert "test accuracy on digits 5-9" in out and report["verdict"] in out
    assert "test accuracy" not in err and "$TORCH_HOME/hub/checkpoints" in err
    assert "Traceback" not in err
    again = json.loads((out_dir / "report.json").read_text())
    assert again["extraction"] == {"computed": 0, "cached": 180}
    assert again["accuracy"] == report["accuracy"]  # same codes, seeded classifiers


def test_demo_bad_shots_exit_2_before_any_work(capsys, tmp_path):
    out_dir = tmp_path / "demo"
    code, out, err = run(capsys, "demo", "--shots", "1", "--out-dir", out_dir)
    assert code == 2 and out == ""
    assert_one_line_error(err, "shots=1: expected an int >= 2")
    assert not out_dir.exists()


# ----------------------------------------------------------------------------- console script


def test_installed_console_script_propagates_exit_status(tmp_path):
    script = Path(sys.executable).with_name("cnncodes")
    if not script.exists():
        pytest.skip(f"console script not installed at {script} (run `make setup`)")
    bad = subprocess.run(
        [script, "extract", tmp_path / "missing", "--model", "resnet18", "--weights", "none"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert_one_line_error(bad.stderr, "missing: no such folder or file")


def test_console_script_finds_the_users_model_module_in_the_working_folder(tmp_path):
    script = Path(sys.executable).with_name("cnncodes")
    if not script.exists():
        pytest.skip(f"console script not installed at {script} (run `make setup`)")
    (tmp_path / "my_nets.py").write_text(
        "from tests.tiny_nets import TinyCNN\n\ndef small():\n    return TinyCNN(3)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [script, "layers", "my_nets:small", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["penultimate"] == "flatten"


# ----------------------------------------------------------------------------- start-up

_STARTUP_PROBE = """
import sys
import cnncodes.cache
import cnncodes
cnncodes.__version__, cnncodes.resolve_cache_dir, cnncodes.CodeStore
from cnncodes.cli import main
for argv in (["--version"], ["--help"], ["cache", "info", "--cache-dir", sys.argv[1]],
             ["cache", "info", "--cache-dir", sys.argv[1], "--json"],
             ["cache", "verify", "--cache-dir", sys.argv[1]]):
    code = main(argv)
    assert code == 0, (argv, code)
print("HEAVY", sorted(m for m in ("torch", "torchvision", "sklearn") if m in sys.modules))
"""


def test_light_commands_start_without_torch_or_sklearn(tmp_path):
    # Importing torch, torchvision and scikit-learn takes seconds (bench/RESULTS.md, section 6).
    from cnncodes.cache import CodeStore

    CodeStore(tmp_path / "cache", {"model": "m"}).write(["ab" * 32], np.ones((1, 2), np.float32))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", _STARTUP_PROBE, str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "HEAVY []"
    # The names are still there, imported on first use.
    import cnncodes

    assert cnncodes.CNNCodes.__name__ == "CNNCodes" and "extract_codes" in dir(cnncodes)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cnncodes.nope  # noqa: B018


def test_extract_says_which_preprocessing_it_uses(capsys, data, cache, tmp_path):
    import torch
    from torchvision.models import resnet18

    torch.manual_seed(0)
    checkpoint = tmp_path / "plain.pth"
    torch.save(resnet18().state_dict(), checkpoint)
    argv = ["extract", data, "--model", "resnet18", "--weights", checkpoint, "--crop", "32"]
    code, out, err = run(capsys, *argv, "--resize", "40", *FAST, "--cache-dir", cache, "--json")
    assert code == 0, err
    assert "preprocessing: mean=(0.485, 0.456, 0.406) std=(0.229, 0.224, 0.225) resize=40" in err
    assert "plain.pth carries no preprocessing of its own" in err  # normalisation is not silent
    described = json.loads(out)["preprocessing"]
    assert described["source"] == {
        "resize": "explicit", "crop": "explicit", "mean": "ImageNet default",
        "std": "ImageNet default", "interpolation": "ImageNet default",
    }  # fmt: skip


def test_a_repeated_pooling_is_refused_not_silently_dropped(capsys, data, cache):
    code, _, err = run(
        capsys,
        "extract",
        data,
        *MODEL,
        *FAST,
        "--cache-dir",
        cache,
        "--pooling",
        "avg",
        "-p",
        "max",
    )
    assert code == 2
    assert_one_line_error(err, "--pooling given twice ('avg', then 'max')")


def test_engine_ray_without_ray_says_how_to_install_it(capsys, data, cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    code, _, err = run(capsys, "extract", data, *MODEL, "--cache-dir", cache, "--engine", "ray")
    assert code == 2
    assert_one_line_error(err, "--engine ray: engine='ray' needs Ray", "pip install -e '.[ray]'")


def test_extract_views_stores_their_mean_and_refuses_a_stack(capsys, data, cache, tmp_path):
    plain = tmp_path / "plain.npz"
    extract(capsys, data, cache, "--out", plain)
    out = tmp_path / "views.npz"
    summary = extract(capsys, data, cache, "--views", "flip", "--out", out)
    assert summary["views"] == ["center", "flip"] and summary["view_reduce"] == "mean"
    assert (summary["computed"], summary["cached"]) == (6, 6)  # the centre came from the cache
    assert summary["features"] == 512
    codes = read_codes(out)
    assert codes.codes.shape == (6, 512) and codes.config["views"] == ["center", "flip"]
    assert not np.array_equal(codes.codes, read_codes(plain).codes)
    assert "views" not in read_codes(plain).config and extract(capsys, data, cache)["views"] == [
        "center"
    ]
    code, _, err = run(
        capsys, "extract", data, *MODEL, "--cache-dir", cache, "--views", "flip",
        "--view-reduce", "stack",
    )  # fmt: skip
    assert code == 2
    assert_one_line_error(err, "--view-reduce stack gives several rows per image")
    code, _, err = run(
        capsys, "extract", data, "--model", "resnet18", "--weights", "none", "--resize", "40,40",
        "--crop", "none", "--views", "ten_crop",
    )  # fmt: skip
    assert code == 2
    assert_one_line_error(err, "view='crop:tl' cuts crops of the crop size")


def test_advise_ranks_the_top_and_swept_layers_by_logme(capsys, data, cache):
    # One pass measures the top layer and every layer the recipe would sweep; LogME ranks them,
    # best first, in the JSON and in a reason line.
    from cnncodes.workflows.advise import sweep_layers

    code, out, err = run(capsys, "advise", data, *ADVISE_MODEL, "--cache-dir", cache, "--json")
    assert code == 0, err
    advice = json.loads(out)
    ranked = [layer for layer, _ in advice["layer_ranking"]]
    assert set(ranked) == {advice["top_layer"], *sweep_layers("cnncodes.demo_data:digits_net")}
    scores = [score for _, score in advice["layer_ranking"]]
    assert scores == sorted(scores, reverse=True) and all(np.isfinite(scores))
    assert advice["best_layer"] == ranked[0]
    assert any(line.startswith("LogME of each layer") for line in advice["reasons"])


def test_the_linear_probe_is_advised_on_the_best_ranked_layer():
    from cnncodes.workflows.advise import Advice, _Command, _suggest_commands

    command = _Command("resnet18", "IMAGENET1K_V1", {}, "DATA")
    advice = Advice(scenario=1, recipe="linear_probe", command="", top_layer="avgpool")
    advice.best_layer = "layer3"
    _suggest_commands(advice, command, 0)
    assert shlex.split(advice.command)[-2:] == ["--layer", "layer3"]
    advice = Advice(scenario=1, recipe="linear_probe", command="", top_layer="avgpool")
    advice.best_layer = "avgpool"  # the top layer ranks first: the recipe's own default
    _suggest_commands(advice, command, 0)
    assert "--layer" not in shlex.split(advice.command)
    untrained = _Command("resnet18", "none", {}, "DATA")  # an untrained network: never advised from
    advice.best_layer = "layer3"
    _suggest_commands(advice, untrained, 0)
    assert "--layer" not in shlex.split(advice.command)
