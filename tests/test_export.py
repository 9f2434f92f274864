"""Tests for cnncodes.export: the codes file of ``cnncodes extract --out``, written and read back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from cnncodes.datasets import load_dataset
from cnncodes.export import FORMATS, read_codes, write_codes
from cnncodes.extract import extract_codes


@pytest.fixture
def extracted(tmp_path, make_images, cnn_spec):
    """Codes of two layers for a labelled folder holding a file name that is not UTF-8."""
    root = tmp_path / "data"
    make_images(2, folder=root / "ants", seed=1)
    make_images(2, folder=root / "bees", seed=2)
    cafe = Path(os.fsdecode(os.fsencode(root / "ants") + b"/caf\xe9.png"))
    (root / "ants" / "img001.png").rename(cafe)
    (root / "bees" / "img000.jpg").write_bytes(b"not an image")
    dataset = load_dataset(root)
    result = extract_codes(
        dataset.paths, cnn_spec, ["conv1", "conv2"], "avg", cache_dir=None, num_workers=0,
        on_error="skip",
    )  # fmt: skip
    return dataset, result, cnn_spec, cafe


@pytest.mark.parametrize("ext", FORMATS)
def test_codes_round_trip_with_real_paths(tmp_path, extracted, ext):
    dataset, result, spec, cafe = extracted
    path = tmp_path / f"codes{ext}"
    assert write_codes(path, result, dataset, spec, "avg") == os.fspath(path)
    saved = read_codes(path)
    kept = list(result.kept)
    assert len(kept) == 3 and len(result.skipped) == 1  # the broken file has no row
    np.testing.assert_array_equal(saved.codes, result.concatenated())
    assert saved.codes.dtype == np.float32
    assert saved.paths == [dataset.paths[i] for i in kept]
    assert str(cafe) in saved.paths and os.path.isfile(saved.paths[saved.paths.index(str(cafe))])
    assert "caf\\xe9.png" in " ".join(saved.display_paths)
    assert saved.labels == [dataset.labels[i] for i in kept]
    np.testing.assert_array_equal(saved.kept, kept)
    assert list(saved.layers) == ["conv1", "conv2"]
    np.testing.assert_array_equal(saved.layers["conv2"], result.codes["conv2"])
    assert saved.config["pooling"] == "avg" and saved.config["layers"] == ["conv1", "conv2"]
    assert saved.config["spec"] == json.loads(json.dumps(spec.to_dict()))
    assert [s["path"] for s in saved.config["skipped"]] == [s.path for s in result.skipped]
    assert sorted(os.listdir(tmp_path)) == [f"codes{ext}", "data"]  # no temporary file left


def test_bad_extension_and_foreign_hdf5_are_refused(tmp_path, extracted):
    dataset, result, spec, _ = extracted
    with pytest.raises(ValueError, match=r"codes file '.*codes\.csv': unknown extension '\.csv'"):
        write_codes(tmp_path / "codes.csv", result, dataset, spec, "avg")
    # A file from elsewhere that points h5py at another file of this machine is not followed.
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["codes"] = np.zeros((1, 2), np.float32)
    linked = tmp_path / "linked.h5"
    write_codes(linked, result, dataset, spec, "avg")
    with h5py.File(linked, "a") as f:
        del f["codes"]
        f["codes"] = h5py.ExternalLink(str(other), "codes")
    with pytest.raises(ValueError, match=r"'codes' is a ExternalLink, not a plain member"):
        read_codes(linked)
    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    with pytest.raises(ValueError, match=r"empty\.h5': missing 'config'; not written by cnncodes"):
        read_codes(tmp_path / "empty.h5")
