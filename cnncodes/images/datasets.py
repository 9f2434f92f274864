"""Image datasets from a class-folder tree, a CSV manifest, or a list of files (no torch here).

Three sources, one result (:class:`ImageDataset`: absolute paths, optional labels):

- a **folder**, read recursively: files whose names end in an image extension
  (:data:`IMAGE_EXTENSIONS`, case-insensitive) are the images, and the names of the folder's
  first-level sub-folders are their class labels (``root/<label>/.../<image>``). A folder holding
  only images, with no class sub-folders, gives an unlabelled dataset. Hidden files and folders
  (names starting with ``.``) are skipped; the order is sorted and deterministic. A class folder
  holding no images is left out with a :class:`DatasetWarning`.
- a **CSV manifest** (``*.csv``) with a ``path`` column and optionally a ``label`` column; relative
  paths are resolved against the manifest's folder. Every row has one value per header column
  (quote values that contain commas), and every listed file must exist: a manifest's mistakes are
  reported with its line number when it is read, not when the images are decoded.
- an explicit list of image files (:func:`load_files`).

Paths found in a folder, and relative paths in a manifest, must resolve (symbolic links followed)
to a location inside the folder, resp. the manifest's folder: ``../`` components and symbolic
links that lead elsewhere are refused unless ``allow_outside_root=True``, so that a relative entry
cannot climb out of its folder unnoticed. Absolute paths in a manifest are taken as written (the
usual manifest lists them): they name their file outright.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections import Counter
from dataclasses import dataclass

from ..errors import InputTypeError, UsageError
from ..utils.files import display

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "DatasetWarning",
    "ImageDataset",
    "load_dataset",
    "load_files",
]

IMAGE_EXTENSIONS = (
    ".bmp",
    ".gif",
    ".jpeg",
    ".jpg",
    ".pbm",
    ".pgm",
    ".png",
    ".ppm",
    ".tif",
    ".tiff",
    ".webp",
)
_KINDS = ("folder", "manifest", "files")


class DatasetError(UsageError):
    """A dataset source that cannot be read: missing, empty, malformed, or escaping its root."""


class DatasetWarning(UserWarning):
    """Something left out of a dataset that is still usable, e.g. a class folder without images."""


@dataclass(frozen=True)
class ImageDataset:
    """Image files and, where the source has them, their labels.

    Attributes
    ----------
    paths : list of str
        Absolute paths of the images, in a deterministic order.
    labels : list of str or None
        One label per path, or ``None`` for an unlabelled source.
    root : str
        The folder the paths were found in or resolved against (absolute).
    kind : {"folder", "manifest", "files"}
        Which kind of source it came from.

    Examples
    --------
    >>> ds = ImageDataset(["/d/a/1.png", "/d/b/2.png"], ["a", "b"], "/d", "folder")
    >>> ds.classes, ds.counts(), len(ds)
    (['a', 'b'], {'a': 1, 'b': 1}, 2)
    """

    paths: list
    labels: list | None
    root: str
    kind: str

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise UsageError(f"kind={self.kind!r}: expected one of {', '.join(_KINDS)}")
        if self.labels is not None and len(self.labels) != len(self.paths):
            raise UsageError(f"{len(self.labels)} labels for {len(self.paths)} paths")

    def __len__(self):
        return len(self.paths)

    @property
    def classes(self):
        """Sorted distinct labels (empty for an unlabelled dataset)."""
        return sorted(set(self.labels)) if self.labels is not None else []

    def counts(self):
        """``{label: number of images}`` in label order (empty for an unlabelled dataset)."""
        if self.labels is None:
            return {}
        counts = Counter(self.labels)
        return {label: counts[label] for label in sorted(counts)}


def _is_image_name(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _inside(real, real_root):
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _no_images_error(where):
    return DatasetError(
        f"no images found in {display(where)}: looked recursively for files ending in "
        f"{', '.join(IMAGE_EXTENSIONS)} (case-insensitive; hidden files and folders are skipped)"
    )


def load_dataset(source, *, allow_outside_root=False):
    """Read a dataset from a class-folder tree or a CSV manifest.

    Parameters
    ----------
    source : str or os.PathLike
        A folder (its first-level sub-folders name the classes) or a ``.csv`` manifest with a
        ``path`` column and an optional ``label`` column.
    allow_outside_root : bool
        Accept images that resolve outside the folder (or the manifest's folder): ``../``
        components and symbolic links leading elsewhere. Off by default. A manifest's absolute
        paths are always accepted.

    Returns
    -------
    ImageDataset

    Raises
    ------
    DatasetError
        The source does not exist, holds no images, is malformed (the message names the file
        and, for a manifest, the line), lists files that do not exist, or points outside its root.

    Warns
    -----
    DatasetWarning
        A class folder holds no images (it is left out), or the same image content (by SHA-256,
        whatever the file name) is in two class folders or listed by a manifest under different
        labels (both are kept; the warning names both files).

    Examples
    --------
    >>> ds = load_dataset("photos/")  # doctest: +SKIP
    >>> ds.classes, ds.counts()  # doctest: +SKIP
    (['ants', 'bees'], {'ants': 124, 'bees': 121})
    """
    if not isinstance(source, (str, os.PathLike)):
        raise InputTypeError(f"source={source!r}: expected a folder or a CSV manifest path")
    source = os.fspath(source)
    if os.path.isdir(source):
        return _load_folder(source, allow_outside_root)
    if os.path.isfile(source):
        if source.lower().endswith(".csv"):
            return _load_manifest(source, allow_outside_root)
        raise DatasetError(
            f"{display(source)}: expected a folder of images or a CSV manifest (*.csv) with a "
            "'path' column"
        )
    if os.path.lexists(source):
        raise DatasetError(f"{display(source)}: not a folder or a regular file")
    raise DatasetError(f"{display(source)}: no such folder or file")


# ----------------------------------------------------------------------------- folders


def _load_folder(source, allow_outside_root):
    root = os.path.abspath(source)
    real_root = os.path.realpath(root)
    found = []  # (path, first-level sub-folder name or None)
    folders = []  # first-level sub-folders read
    _walk(root, None, real_root, {real_root}, allow_outside_root, found, folders)
    if not found:
        raise _no_images_error(root)
    loose = [path for path, label in found if label is None]
    if loose and len(loose) < len(found):
        classes = sorted({label for _, label in found if label is not None})
        raise DatasetError(
            f"{display(root)}: holds images both directly inside it (e.g. "
            f"{display(os.path.basename(loose[0]))!r}) and in class sub-folders "
            f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}); move each loose "
            "image into its class folder, or remove it"
        )
    paths = [path for path, _ in found]
    labels = None if loose else [label for _, label in found]
    if labels is not None:
        for name in sorted(set(folders) - set(labels)):
            warnings.warn(
                f"{display(root)}: class folder {display(name)!r} holds no images: left out "
                "(no file in it has an image extension; hidden files are skipped)",
                DatasetWarning,
                stacklevel=3,
            )
        _warn_label_conflicts(display(root), paths, labels)
    return ImageDataset(paths, labels, root, "folder")


def _walk(folder, label, real_root, visited, allow_outside_root, found, folders):
    """Depth-first, sorted; follows symbolic links that stay inside the root (or any, if allowed)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise DatasetError(
            f"{display(folder)}: cannot list folder ({exc.strerror or exc})"
        ) from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = entry.path
        if entry.is_symlink():
            real = os.path.realpath(path)
            if not allow_outside_root and not _inside(real, real_root):
                raise DatasetError(
                    f"{display(path)}: symbolic link resolves to {display(real)}, outside "
                    f"{display(real_root)}; refusing to follow it (allow_outside_root=True, or "
                    "--allow-outside-root, accepts it)"
                )
        try:
            is_dir = entry.is_dir()  # follows links
        except OSError:
            is_dir = False
        if is_dir:
            real = os.path.realpath(path)
            if real in visited:  # a link back to a folder already read: a cycle or a duplicate
                continue
            if label is None:
                folders.append(entry.name)
            _walk(
                path,
                entry.name if label is None else label,
                real_root,
                visited | {real},
                allow_outside_root,
                found,
                folders,
            )
        elif _is_image_name(entry.name):
            found.append((path, label))


# ----------------------------------------------------------------------------- manifests


def _load_manifest(source, allow_outside_root):
    manifest = os.path.abspath(source)
    root = os.path.dirname(manifest)
    real_root = os.path.realpath(root)
    name = display(manifest)
    paths, labels, lines = [], [], []
    missing = []  # (line, cell, path): reported together, after the rest of the manifest is checked
    try:
        with open(manifest, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DatasetError(f"{name}: empty manifest; expected a header row with 'path'")
            columns = [c.strip().lower() for c in header]
            if "path" not in columns:
                raise DatasetError(
                    f"{name}, line 1: no 'path' column (columns: "
                    f"{', '.join(repr(c) for c in header)}); expected 'path' and optionally 'label'"
                )
            path_col = columns.index("path")
            label_col = columns.index("label") if "label" in columns else None
            end = reader.line_num
            for row in reader:
                line, end = end + 1, reader.line_num  # first line (a quoted value may span more)
                if not row or all(not cell.strip() for cell in row):
                    continue  # blank line
                _check_width(row, header, name, line)
                cell = row[path_col].strip()
                if not cell:
                    raise DatasetError(f"{name}, line {line}: empty 'path'")
                path = _resolve_manifest_path(cell, root, real_root, allow_outside_root, name, line)
                if os.path.isdir(path):
                    raise DatasetError(
                        f"{name}, line {line}: path {cell!r} is a folder; list image files"
                    )
                if not os.path.exists(path):
                    missing.append((line, cell, path))
                paths.append(path)
                lines.append(line)
                if label_col is not None:
                    label = row[label_col].strip()
                    if not label:
                        raise DatasetError(f"{name}, line {line}: empty 'label' for {cell!r}")
                    labels.append(label)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DatasetError(f"{name}: malformed CSV ({exc})") from None
    except OSError as exc:
        raise DatasetError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if missing:
        raise _missing_error(name, missing, len(paths))
    if not paths:
        raise DatasetError(f"{name}: the manifest lists no images (only a header row)")
    if label_col is None:
        return ImageDataset(paths, None, root, "manifest")
    _warn_label_conflicts(name, paths, labels, lines)
    return ImageDataset(paths, labels, root, "manifest")


def _warn_label_conflicts(name, paths, labels, lines=None):
    """Warn when one image content is listed under different labels (one of them is wrong):
    by a manifest (``lines``: each path's line) or in several class folders (``lines`` None)."""
    from .load import file_digests  # the digests are memoised: extraction reuses them

    first = {}  # content hash -> index of its first listing
    conflicts = []
    for i, digest in enumerate(file_digests(paths)):
        if not isinstance(digest, str):
            continue  # an unreadable file is reported when it is decoded
        j = first.setdefault(digest, i)
        if labels[j] != labels[i]:
            conflicts.append((j, i))
    if not conflicts:
        return
    j, i = conflicts[0]
    rest = ""
    if len(conflicts) > 1:
        others = ", ".join(
            display(paths[k]) if lines is None else str(lines[k]) for _, k in conflicts[1:6]
        )
        rest = f"; also {'' if lines is None else 'line(s) '}{others}"
        rest += ", ..." if len(conflicts) > 6 else ""
    files = (
        f"{display(paths[j])} (the same file)"
        if paths[j] == paths[i]
        else f"{display(paths[j])} and {display(paths[i])}"
    )
    if lines is None:
        problem = f"class folders {labels[j]!r} and {labels[i]!r} hold the same image content"
        fix = "remove the copy from the wrong class folder"
    else:
        problem = (
            f"lines {lines[j]} and {lines[i]} list the same image content under different "
            f"labels ({labels[j]!r}, {labels[i]!r})"
        )
        fix = "correct the label or remove one"
    warnings.warn(
        f"{name}: {problem}: {files}{rest}; both are kept: {fix}",
        DatasetWarning,
        stacklevel=4,  # _warn_label_conflicts, _load_manifest or _load_folder, load_dataset, caller
    )


def _check_width(row, header, name, line):
    """Refuse a row whose number of values differs from the header's (values would be misread)."""
    if len(row) == len(header):
        return
    n = len(row)
    fields = f"{n} field{'s' if n != 1 else ''} but the header has {len(header)}"
    if n > len(header):
        raise DatasetError(f"{name}, line {line}: {fields}; quote values that contain commas")
    raise DatasetError(f"{name}, line {line}: {fields}; give a value for every column")


def _missing_error(name, missing, total):
    """The error for manifest entries whose files do not exist: the first, and others' lines."""
    line, cell, path = missing[0]
    message = f"{name}, line {line}: file not found: {cell!r}"
    if cell != path:
        message += f" (resolved to {display(path)})"
    rest = len(missing) - 1
    if rest:
        lines = ", ".join(str(m[0]) for m in missing[1:6]) + (", ..." if rest > 5 else "")
        message += (
            f"; {rest} more of the {total} listed files {'are' if rest > 1 else 'is'} missing "
            f"(line{'s' if rest > 1 else ''} {lines})"
        )
    return DatasetError(message)


def _resolve_manifest_path(cell, root, real_root, allow_outside_root, name, line):
    path = os.path.normpath(os.path.join(root, cell))  # an absolute cell replaces root
    # An absolute path names its file outright; only a relative one can climb out unnoticed.
    if not allow_outside_root and not os.path.isabs(cell):
        real = os.path.realpath(path)
        if not _inside(real, real_root):
            raise DatasetError(
                f"{name}, line {line}: path {cell!r} resolves to {display(real)}, outside the "
                f"manifest's folder {display(real_root)}; refusing it (allow_outside_root=True, "
                "or --allow-outside-root, accepts it)"
            )
    return path


# ----------------------------------------------------------------------------- files


def load_files(paths):
    """An unlabelled dataset from an explicit list of image files, in the order given.

    Files are not opened here: a missing or unreadable one is reported when it is decoded
    (``on_error`` decides). Folders are refused: pass a folder alone to :func:`load_dataset`.

    Examples
    --------
    >>> ds = load_files(["a.jpg", "b.png"])
    >>> ds.kind, ds.labels, os.path.basename(ds.paths[1])
    ('files', None, 'b.png')
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [paths]
    out = []
    for i, p in enumerate(paths):
        if not isinstance(p, (str, os.PathLike)):
            raise InputTypeError(f"paths[{i}]={p!r}: expected an image file path")
        p = os.path.abspath(os.fspath(p))
        if os.path.isdir(p):
            raise DatasetError(
                f"{display(p)}: is a folder; give a folder (or a CSV manifest) on its own, "
                "or list image files"
            )
        out.append(p)
    if not out:
        raise DatasetError("no image files given")
    root = os.path.commonpath([os.path.dirname(p) for p in out])
    return ImageDataset(out, None, root, "files")
