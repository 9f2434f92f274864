"""Tests for cnncodes.export: the codes file of ``cnncodes extract --out``, written and read back."""

from __future__ import annotations

import json
import os
import sys
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


# ----------------------------------------------------------------------------- parquet


def _same_bits(a, b):
    """Bit-identical float32 arrays (NaN payloads and signed zeros included)."""
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("layout", [None, "list", "wide"])
def test_parquet_reads_back_what_npz_and_h5_hold(tmp_path, extracted, layout):
    pq = pytest.importorskip("pyarrow.parquet")
    dataset, result, spec, cafe = extracted
    files = {ext: tmp_path / f"codes{ext}" for ext in (".npz", ".h5", ".parquet")}
    for ext, path in files.items():
        options = {"parquet_layout": layout} if ext == ".parquet" else {}
        write_codes(path, result, dataset, spec, "avg", **options)
    npz, h5, parquet = (read_codes(p) for p in files.values())
    for other in (npz, h5):
        _same_bits(parquet.codes, other.codes)
        assert parquet.paths == other.paths and parquet.display_paths == other.display_paths
        assert parquet.labels == other.labels and parquet.config == other.config
        np.testing.assert_array_equal(parquet.kept, other.kept)
        assert parquet.kept.dtype == np.int64
        assert list(parquet.layers) == list(other.layers) == ["conv1", "conv2"]
        for layer, codes in other.layers.items():
            _same_bits(parquet.layers[layer], codes)
    assert os.path.isfile(parquet.paths[parquet.paths.index(str(cafe))])

    # What a reader without cnncodes sees: the display path, the label, the codes, the
    # configuration in the schema's metadata (the same JSON as the .h5 file's attribute).
    table = pq.read_table(files[".parquet"])
    with h5py.File(files[".h5"], "r") as f:
        assert table.schema.metadata[b"cnncodes.config"].decode() == f.attrs["config"]
    assert table.column("path").to_pylist() == h5.display_paths
    assert table.column("label").to_pylist() == h5.labels
    assert [os.fsdecode(p) for p in table.column("path_bytes").to_pylist()] == h5.paths
    if layout == "wide":
        from cnncodes import CNNCodes

        extractor = CNNCodes(model=spec.model, layer=["conv1", "conv2"], pooling="avg",
                             resize=40, crop=32).fit(dataset.paths)  # fmt: skip
        features = list(extractor.get_feature_names_out())
        assert table.column_names == ["path", "label", "kept", "path_bytes", *features]
        assert table.schema.field(features[0]).type == "float"
    else:
        assert table.column_names == ["path", "label", "kept", "path_bytes", "codes"]
        _same_bits(np.stack(table.column("codes").to_numpy(zero_copy_only=False)), h5.codes)


def test_parquet_of_one_layer_without_labels_reads_in_pandas(tmp_path, make_images, cnn_spec):
    pytest.importorskip("pyarrow")
    import pandas as pd

    paths = make_images(3)
    manifest = tmp_path / "list.csv"
    manifest.write_text("path\n" + "".join(f"{p}\n" for p in paths))
    dataset = load_dataset(manifest)
    result = extract_codes(dataset.paths, cnn_spec, "conv2", "max", cache_dir=None, num_workers=0)
    out = write_codes(tmp_path / "codes.parquet", result, dataset, cnn_spec, "max")
    saved = read_codes(out)
    _same_bits(saved.codes, result.codes["conv2"])
    assert saved.labels is None and saved.layers == {} and saved.paths == paths

    df = pd.read_parquet(out)
    assert list(df.columns) == ["path", "kept", "path_bytes", "codes"]
    assert list(df["path"]) == paths and list(df["kept"]) == [0, 1, 2]
    _same_bits(np.stack(df["codes"]), result.codes["conv2"])


def test_parquet_writer_killed_midway_leaves_the_old_file(tmp_path, extracted, monkeypatch):
    pq = pytest.importorskip("pyarrow.parquet")
    dataset, result, spec, _ = extracted
    out = tmp_path / "codes.parquet"
    write_codes(out, result, dataset, spec, "avg")
    before = out.read_bytes()
    real_write = pq.write_table

    def dies_midway(table, where, **kwargs):
        real_write(table.slice(0, 1), where, **kwargs)  # some bytes reach the file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", dies_midway)
    with pytest.raises(OSError, match="No space left"):
        write_codes(out, result, dataset, spec, "avg", parquet_layout="wide")
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["codes.parquet", "data"]


def test_parquet_layout_and_foreign_files_are_refused(tmp_path, extracted):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    dataset, result, spec, _ = extracted
    with pytest.raises(ValueError, match=r"parquet_layout='tall': use 'list' or 'wide'"):
        write_codes(tmp_path / "c.parquet", result, dataset, spec, "avg", parquet_layout="tall")
    with pytest.raises(ValueError, match=r"parquet_layout='wide' applies only to \.parquet"):
        write_codes(tmp_path / "c.h5", result, dataset, spec, "avg", parquet_layout="wide")
    assert sorted(os.listdir(tmp_path)) == ["data"]

    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"codes file '.*junk\.parquet': not a Parquet file"):
        read_codes(tmp_path / "junk.parquet")
    pq.write_table(pa.table({"path": ["a.png"]}), tmp_path / "other.parquet")
    with pytest.raises(
        ValueError, match=r"other\.parquet': missing 'cnncodes.config'; not written by cnncodes"
    ):
        read_codes(tmp_path / "other.parquet")


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path, extracted, monkeypatch):
    dataset, result, spec, _ = extracted
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    install = r"needs pyarrow: pip install 'cnncodes\[parquet\]'"
    with pytest.raises(ImportError, match=r"codes file '.*c\.parquet': .*" + install):
        write_codes(tmp_path / "c.parquet", result, dataset, spec, "avg")
    assert sorted(os.listdir(tmp_path)) == ["data"]
    (tmp_path / "c.parquet").write_bytes(b"PAR1")
    with pytest.raises(ImportError, match=install):
        read_codes(tmp_path / "c.parquet")
    write_codes(tmp_path / "c.npz", result, dataset, spec, "avg")  # the others need nothing
