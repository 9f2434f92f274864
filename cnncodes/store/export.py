"""The codes file of ``cnncodes extract --out``: codes with their paths, labels and configuration.

Three containers hold the same information, chosen by the file's extension (:data:`FORMATS`).
An ``.h5``/``.hdf5`` or ``.npz`` file holds these members:

``codes``
    float32 ``(n, d)``: one row per image that has a code (layers concatenated in order).
``paths``
    each row's file name as bytes (``os.fsdecode`` gives a path that opens, also for names that
    are not UTF-8); ``display_paths`` the same as UTF-8 text, undecodable bytes shown as ``\\xNN``.
``labels``
    each row's label as text (only for labelled data).
``kept``
    int64: each row's position in the input (images that could not be read have no row).
``layers/<name>``
    each layer's codes, when there are several.
``config``
    JSON: the cnncodes version, the model spec, layers, pooling, the cache configurations,
    the data source and the images left out.

A ``.parquet`` file (needs pyarrow: ``pip install 'cnncodes[parquet]'``) is a table with one row
per image: ``path`` (the display path), ``label`` (only for labelled data), ``kept``,
``path_bytes`` (the file name's bytes) and the codes, by default as one fixed-size list column
``codes`` of float32 (``parquet_layout="list"``), or as one float32 column per feature named
``{layer}__{pooling}{i}`` like :meth:`CNNCodes.get_feature_names_out
<cnncodes.transformers.CNNCodes.get_feature_names_out>` (``"wide"``). The list column is the
default because CNN codes run to thousands of features: with 2,048 and 21,504 a wide file was
1.3x and 1.6x larger and 3-17x slower to read with pandas (bench/bench_parquet.py). The schema's
metadata holds ``cnncodes.config`` (the same JSON), ``cnncodes.layers`` (``[[layer, width],
...]``), ``cnncodes.layout`` and ``cnncodes.version``.

An ``.h5`` file reads with plain h5py (``f["codes"][:]``, ``f.attrs["config"]``), an ``.npz``
file with ``numpy.load``, a ``.parquet`` file with pandas (``np.stack(pd.read_parquet(path)
["codes"])``) or pyarrow; :func:`read_codes` reads them all. Files are written atomically.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass

import numpy as np

from .. import __version__
from ..errors import UsageError
from ..utils.files import atomic_path, display, file_format
from ..utils.jsonable import jsonable, skipped_json

__all__ = [
    "FORMATS",
    "PARQUET_LAYOUTS",
    "CodesFile",
    "check_format_available",
    "read_codes",
    "write_codes",
]

FORMATS = (".h5", ".hdf5", ".npz", ".parquet")
PARQUET_LAYOUTS = ("list", "wide")


def _format(path):
    return file_format(path, FORMATS, "codes file ")


def _parquet(path, what="codes file "):
    """pyarrow and pyarrow.parquet, or an ImportError naming ``path`` and the extra to install."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(
            f"{what}{os.fspath(path)!r}: a .parquet file needs pyarrow: "
            "pip install 'cnncodes[parquet]' (or pip install pyarrow), or use .h5 or .npz"
        ) from None
    return pa, pq


def check_format_available(path, what="codes file "):
    """Raise ImportError (naming ``what`` and ``path``, and the package to install) if the format
    of ``path`` needs a package that is missing; the command line checks this before any work."""
    if _format(path) == ".parquet":
        _parquet(path, what)


def _feature_names(widths, pooling):
    """The columns of a wide .parquet file, named as ``CNNCodes.get_feature_names_out`` names
    its outputs (``widths``: ``[[layer, width], ...]``)."""
    return [f"{layer}__{pooling}{i}" for layer, w in widths for i in range(w)]


def _parquet_table(pa, codes, widths, pooling, layout, columns, metadata):
    """The table of a .parquet codes file: ``columns`` (name -> array), then the codes."""
    fields = dict(columns)
    if layout == "list":
        d = codes.shape[1]
        fields["codes"] = pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)), d)
    else:
        names = _feature_names(widths, pooling)
        fields.update((name, codes[:, j]) for j, name in enumerate(names))
    table = pa.table(fields)
    return table.replace_schema_metadata({f"cnncodes.{k}": v for k, v in metadata.items()})


def write_codes(path, result, dataset, spec, pooling, parquet_layout=None):
    """Write the codes of ``result`` for ``dataset`` to ``path`` (.h5, .hdf5, .npz or .parquet),
    atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The file; its extension chooses the container.
    result : cnncodes.extract.ExtractionResult
        What :func:`~cnncodes.extract.extract_codes` returned for ``dataset.paths``.
    dataset : cnncodes.datasets.ImageDataset
        The images (paths, labels, kind and root) the codes were computed for.
    spec : cnncodes.models.ModelSpec
        The network that made them.
    pooling : str
        Their pooling.
    parquet_layout : {"list", "wide"}, optional
        For a .parquet file: the codes as one fixed-size list column ``codes`` (default) or as
        one column per feature (see the module's docstring).

    Returns
    -------
    str
        ``path``.

    Examples
    --------
    >>> result = extract_codes(data.paths, spec, "avgpool", "avg")  # doctest: +SKIP
    >>> write_codes("codes.h5", result, data, spec, "avg")  # doctest: +SKIP
    'codes.h5'
    """
    path = os.fspath(path)
    ext = _format(path)
    if parquet_layout is not None and ext != ".parquet":
        raise UsageError(
            f"parquet_layout={parquet_layout!r} applies only to .parquet files, not {path!r}"
        )
    if ext == ".parquet":
        parquet_layout = "list" if parquet_layout is None else parquet_layout
        if parquet_layout not in PARQUET_LAYOUTS:
            raise UsageError(f"parquet_layout={parquet_layout!r}: use 'list' or 'wide'")
        modules = _parquet(path)
    rows = _Rows.of(result, dataset, spec, pooling)
    with atomic_path(path) as tmp:
        if ext == ".parquet":
            _write_parquet(tmp, rows, *modules, parquet_layout)
        elif ext == ".npz":
            _write_npz(tmp, rows)
        else:
            _write_h5(tmp, rows)
    return path


@dataclass(frozen=True)
class _Rows:
    """What a codes file holds, whatever its container."""

    codes: np.ndarray  # every layer's, side by side
    per_layer: dict
    kept: np.ndarray
    paths: list  # bytes
    shown: list  # displayable str
    labels: list | None
    configs: dict
    pooling: str
    config_json: str

    @classmethod
    def of(cls, result, dataset, spec, pooling):
        kept = np.asarray(result.kept, dtype=np.int64)
        labels = dataset.labels
        config = {
            "cnncodes_version": __version__,
            "spec": spec.to_dict(),
            "layers": list(result.codes),
            "pooling": pooling,
            "configs": result.configs,
            **(
                {"views": list(result.views), "view_reduce": result.view_reduce}
                if result.view_reduce is not None
                else {}
            ),
            "source": {"kind": dataset.kind, "root": display(dataset.root)},
            "skipped": skipped_json(result.skipped),
        }
        return cls(
            codes=np.ascontiguousarray(result.concatenated(), dtype=np.float32),
            per_layer=dict(result.codes),
            kept=kept,
            paths=[os.fsencode(dataset.paths[i]) for i in kept],
            shown=[display(dataset.paths[i]) for i in kept],
            labels=[display(labels[i]) for i in kept] if labels is not None else None,
            configs=result.configs,
            pooling=pooling,
            config_json=json.dumps(jsonable(config), sort_keys=True),
        )


def _write_parquet(tmp, rows, pa, pq, layout):
    columns = {"path": pa.array(rows.shown, pa.string())}
    if rows.labels is not None:
        columns["label"] = pa.array(rows.labels, pa.string())
    columns["kept"] = rows.kept
    columns["path_bytes"] = pa.array(rows.paths, pa.binary())
    widths = [[layer, int(arr.shape[1])] for layer, arr in rows.per_layer.items()]
    metadata = {
        "config": rows.config_json,
        "layers": json.dumps(widths),
        "layout": layout,
        "version": __version__,
    }
    table = _parquet_table(pa, rows.codes, widths, rows.pooling, layout, columns, metadata)
    # A file object, so that pyarrow never takes the temporary name for a URI.
    with open(tmp, "wb") as f:
        pq.write_table(table, f)


def _write_npz(tmp, rows):
    arrays = {
        "codes": rows.codes,
        "paths": np.array(rows.paths, dtype=bytes),
        "display_paths": np.array(rows.shown, dtype=str),
        "kept": rows.kept,
        "config": np.array(rows.config_json),
    }
    if rows.labels is not None:
        arrays["labels"] = np.array(rows.labels, dtype=str)
    if len(rows.per_layer) > 1:
        for layer, arr in rows.per_layer.items():
            arrays[f"layers/{layer}"] = arr
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)


def _write_h5(tmp, rows):
    import h5py

    text = h5py.string_dtype("utf-8")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("codes", data=rows.codes)
        # h5py's type for bytes objects (declared ASCII; HDF5 keeps the bytes as given).
        raw = h5py.string_dtype("ascii")
        f.create_dataset("paths", data=np.array(rows.paths, dtype=object), dtype=raw)
        f.create_dataset("display_paths", data=np.array(rows.shown, dtype=object), dtype=text)
        if rows.labels is not None:
            f.create_dataset("labels", data=np.array(rows.labels, dtype=object), dtype=text)
        f.create_dataset("kept", data=rows.kept)
        if len(rows.per_layer) > 1:
            group = f.create_group("layers")
            for layer, arr in rows.per_layer.items():
                group.create_dataset(layer, data=arr)
        f.attrs["config"] = rows.config_json
        f.attrs["configs"] = json.dumps(rows.configs, sort_keys=True)
        f.attrs["layers"] = json.dumps(list(rows.per_layer))
        f.attrs["cnncodes_version"] = __version__


@dataclass(frozen=True)
class CodesFile:
    """What :func:`read_codes` returns: the arrays of a codes file, paths as real paths.

    Attributes
    ----------
    codes : ndarray of float32, shape (n, d)
    paths : list of str
        File names that open (``os.fsdecode`` of the stored bytes).
    display_paths : list of str
        The same, printable.
    labels : list of str or None
    kept : ndarray of int64
        Each row's position in the input the file was written for.
    layers : dict
        ``{layer: codes}`` when the file holds several layers, else ``{}``.
    config : dict
        The configuration (see the module's docstring).
    """

    codes: np.ndarray
    paths: list
    display_paths: list
    labels: list | None
    kept: np.ndarray
    layers: dict
    config: dict


def _plain_datasets(group, path, prefix=""):
    """``{name: dataset}`` of an HDF5 group, refusing links and external or virtual storage
    (a file from elsewhere could otherwise make h5py read other files of this machine)."""
    import h5py

    found = {}
    for name in group:
        full = f"{prefix}{name}"
        link = group.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise UsageError(f"{path}: {full!r} is a {type(link).__name__}, not a plain member")
        obj = group[name]
        if isinstance(obj, h5py.Group):
            found.update(_plain_datasets(obj, path, f"{full}/"))
        elif obj.external or obj.is_virtual:
            raise UsageError(f"{path}: {full!r} uses external or virtual storage")
        else:
            found[full] = obj
    return found


def _read_parquet(path):
    """``(arrays, config, raw paths, display paths, labels)`` of a .parquet codes file, its
    codes split back into layers as the other formats store them."""
    pa, pq = _parquet(path)
    try:
        with open(path, "rb") as f:
            table = pq.read_table(f)
    except pa.ArrowException as exc:
        raise UsageError(f"codes file {path!r}: not a Parquet file ({exc})") from None
    meta = {k.decode("utf-8", "replace"): v for k, v in (table.schema.metadata or {}).items()}
    for key in ("cnncodes.config", "cnncodes.layers", "cnncodes.layout"):
        if key not in meta:
            raise KeyError(key)
    widths = json.loads(meta["cnncodes.layers"])
    config = json.loads(meta["cnncodes.config"])
    layout = meta["cnncodes.layout"].decode("utf-8", "replace")
    if layout not in PARQUET_LAYOUTS:
        raise UsageError(f"codes file {path!r}: unknown layout {layout!r}")

    present = set(table.column_names)  # once: a wide file has a column per feature

    def column(name):
        if name not in present:
            raise KeyError(name)
        return table.column(name).combine_chunks()

    def float32(values, name):
        if values.null_count or values.type != pa.float32():
            raise UsageError(f"codes file {path!r}: {name!r} is not float32 without nulls")
        return values.to_numpy(zero_copy_only=False, writable=True)

    n, d = table.num_rows, sum(w for _, w in widths)
    if layout == "list":
        codes = column("codes")
        fixed = pa.types.is_fixed_size_list(codes.type)
        if codes.null_count or not fixed or codes.type.list_size != d:
            raise UsageError(f"codes file {path!r}: 'codes' is not {d} float32 per row")
        codes = float32(codes.flatten(), "codes").reshape(n, d)
    else:
        codes = np.empty((n, d), np.float32)
        for j, name in enumerate(_feature_names(widths, config["pooling"])):
            codes[:, j] = float32(column(name), name)
    arrays = {"codes": codes, "kept": column("kept").to_numpy().astype(np.int64)}
    if len(widths) > 1:
        start = 0
        for layer, w in widths:
            arrays[f"layers/{layer}"] = codes[:, start : start + w].copy()
            start += w
    labels = column("label").to_pylist() if "label" in present else None
    raw = column("path_bytes").to_pylist()
    return arrays, config, raw, column("path").to_pylist(), labels


def read_codes(path):
    """Read a file written by :func:`write_codes` (or ``cnncodes extract --out``).

    Raises
    ------
    ValueError
        ``path`` has an unknown extension, is not a regular file, lacks a member, or is an HDF5
        file with links or external storage (never followed).
    ImportError
        ``path`` is a .parquet file and pyarrow is not installed.

    Examples
    --------
    >>> saved = read_codes("codes.h5")  # doctest: +SKIP
    >>> saved.codes.shape, saved.paths[0], saved.config["pooling"]  # doctest: +SKIP
    ((6, 512), 'photos/ants/a.jpg', 'avg')
    """
    path = os.fspath(path)
    ext = _format(path)
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise UsageError(f"codes file {path!r} is not a regular file")
    try:
        if ext == ".parquet":
            arrays, config, raw, shown, labels = _read_parquet(path)
        elif ext == ".npz":
            with np.load(path, allow_pickle=False) as f:
                arrays = {name: f[name] for name in f.files}
            config = json.loads(str(arrays.pop("config")))
            raw = [bytes(p) for p in arrays.pop("paths")]
            shown = [str(p) for p in arrays.pop("display_paths")]
            labels = arrays.pop("labels", None)
        else:
            import h5py

            with h5py.File(path, "r", locking=False) as f:
                members = _plain_datasets(f, path)
                arrays = {name: members[name][()] for name in members}
                if "config" not in f.attrs:
                    raise KeyError("config")
                config = json.loads(f.attrs["config"])
            raw = [bytes(p) for p in arrays.pop("paths")]
            shown = [p.decode("utf-8") for p in arrays.pop("display_paths")]
            labels = arrays.pop("labels", None)
            if labels is not None:
                labels = [lab.decode("utf-8") for lab in labels]
        codes, kept = arrays.pop("codes"), arrays.pop("kept")
    except KeyError as exc:
        raise UsageError(f"codes file {path!r}: missing {exc}; not written by cnncodes") from None
    layers = {k.removeprefix("layers/"): v for k, v in arrays.items() if k.startswith("layers/")}
    return CodesFile(
        codes=codes,
        paths=[os.fsdecode(p) for p in raw],
        display_paths=shown,
        labels=None if labels is None else [str(lab) for lab in labels],
        kept=kept,
        layers=layers,
        config=config,
    )
