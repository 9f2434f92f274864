"""Tests for cnncodes.datasets: class folders, CSV manifests, file lists, and escapes from the root."""

from __future__ import annotations

import os
import warnings

import pytest
from cnncodes.datasets import DatasetError, DatasetWarning, ImageDataset, load_dataset, load_files


def touch(path, data=None):
    """Create ``path`` (and its folders); the loader never decodes images, so any bytes do, but
    it hashes them: by default each file's own (one content in two classes is warned about)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.fsencode(path) if data is None else data)
    return str(path)


def write_csv(path, text, bom=False):
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return str(path)


# ----------------------------------------------------------------------------- folders


def test_class_folders_are_read_recursively_in_sorted_order(tmp_path):
    root = tmp_path / "data"
    expected = [
        touch(root / "ants" / "a2.png"),
        touch(root / "ants" / "deep" / "er" / "a1.JPG"),  # nested; extension case-insensitive
        touch(root / "bees" / "b1.jpeg"),
        touch(root / "bees" / "b2.TIFF"),
    ]
    touch(root / "bees" / "notes.txt")  # not an image
    touch(root / "ants" / "a3.png.bak")

    ds = load_dataset(root)

    assert ds.kind == "folder"
    assert ds.root == str(root)
    assert sorted(ds.paths) == sorted(expected)
    assert ds.paths == [  # per folder by name: 'a2.png' < 'deep'
        str(root / "ants" / "a2.png"),
        str(root / "ants" / "deep" / "er" / "a1.JPG"),
        str(root / "bees" / "b1.jpeg"),
        str(root / "bees" / "b2.TIFF"),
    ]
    assert ds.labels == ["ants", "ants", "bees", "bees"]
    assert ds.classes == ["ants", "bees"]
    assert ds.counts() == {"ants": 2, "bees": 2}
    assert len(ds) == 4
    assert all(os.path.isabs(p) for p in ds.paths)
    assert load_dataset(str(root)) == ds  # str or Path, same result


def test_relative_folder_gives_absolute_paths(tmp_path, monkeypatch):
    touch(tmp_path / "data" / "c" / "x.png")
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("data")
    assert ds.paths == [str(tmp_path / "data" / "c" / "x.png")]
    assert ds.root == str(tmp_path / "data")


def test_folder_of_loose_images_is_unlabelled(tmp_path):
    touch(tmp_path / "b.png")
    touch(tmp_path / "a.webp")
    (tmp_path / "empty").mkdir()  # a sub-folder without images does not make classes
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)  # and is no class left out
        ds = load_dataset(tmp_path)
    assert ds.labels is None
    assert [os.path.basename(p) for p in ds.paths] == ["a.webp", "b.png"]
    assert ds.classes == [] and ds.counts() == {}


def test_loose_images_beside_class_folders_are_an_error_naming_one(tmp_path):
    touch(tmp_path / "cats" / "c.png")
    touch(tmp_path / "stray.jpg")
    with pytest.raises(
        DatasetError, match=r"both directly inside it \(e\.g\. 'stray\.jpg'\).*cats"
    ):
        load_dataset(tmp_path)


def test_class_folder_without_images_is_left_out_with_a_warning(tmp_path):
    touch(tmp_path / "ants" / "a.png")
    touch(tmp_path / "bees" / "b.png")
    (tmp_path / "wasps").mkdir()
    touch(tmp_path / "moths" / "notes.txt")
    touch(tmp_path / "flies" / ".hidden.png")
    with pytest.warns(DatasetWarning) as record:
        ds = load_dataset(tmp_path)
    assert ds.classes == ["ants", "bees"]
    messages = [str(w.message) for w in record]
    assert len(messages) == 3
    for name, message in zip(["flies", "moths", "wasps"], messages, strict=True):
        assert message.startswith(f"{tmp_path}: class folder '{name}' holds no images: left out")
    assert record[0].filename == __file__  # points at the caller of load_dataset


def test_class_folders_with_images_warn_nothing(tmp_path):
    touch(tmp_path / "ants" / "deep" / "a.png")
    touch(tmp_path / "bees" / "b.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)
        assert load_dataset(tmp_path).classes == ["ants", "bees"]


def test_hidden_files_and_folders_are_skipped(tmp_path):
    keep = touch(tmp_path / "a" / "x.png")
    touch(tmp_path / "a" / ".x.png")
    touch(tmp_path / ".cache" / "y.png")
    touch(tmp_path / "a" / ".ipynb_checkpoints" / "z.png")
    ds = load_dataset(tmp_path)
    assert ds.paths == [keep]
    assert ds.labels == ["a"]


@pytest.mark.parametrize("content", ["nothing", "no images"])
def test_folder_without_images_is_an_error(tmp_path, content):
    if content == "no images":
        touch(tmp_path / "a" / "readme.txt")
    with pytest.raises(DatasetError, match=r"no images found in .*looked recursively.*\.png"):
        load_dataset(tmp_path)


def test_missing_source_and_wrong_file_kind(tmp_path):
    with pytest.raises(DatasetError, match=r"nope: no such folder or file"):
        load_dataset(tmp_path / "nope")
    other = touch(tmp_path / "list.txt")
    with pytest.raises(DatasetError, match=r"list\.txt: expected a folder of images or a CSV"):
        load_dataset(other)
    with pytest.raises(TypeError, match="source=3"):
        load_dataset(3)


def test_symlink_escaping_the_folder_is_refused_unless_allowed(tmp_path):
    outside = touch(tmp_path / "secret" / "s.png")
    root = tmp_path / "data"
    touch(root / "a" / "x.png")
    (root / "a" / "link.png").symlink_to(outside)

    with pytest.raises(
        DatasetError, match=r"link\.png: symbolic link resolves to .*secret.*outside"
    ):
        load_dataset(root)

    ds = load_dataset(root, allow_outside_root=True)
    assert ds.paths == [str(root / "a" / "link.png"), str(root / "a" / "x.png")]


def test_symlinked_folder_escaping_the_root_is_refused(tmp_path):
    touch(tmp_path / "elsewhere" / "e.png")
    root = tmp_path / "data"
    touch(root / "a" / "x.png")
    (root / "b").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(DatasetError, match=r"data/b: symbolic link"):
        load_dataset(root)
    ds = load_dataset(root, allow_outside_root=True)
    assert ds.labels == ["a", "b"]


def test_symlinks_inside_the_root_are_followed_and_cycles_end(tmp_path):
    root = tmp_path / "data"
    target = touch(root / "a" / "x.png")
    (root / "b").mkdir()
    (root / "b" / "same.png").symlink_to(target)
    (root / "b" / "loop").symlink_to(root, target_is_directory=True)  # a cycle back to the root
    with pytest.warns(DatasetWarning, match="class folders 'a' and 'b' hold the same image"):
        ds = load_dataset(root)  # one image under two labels, through the link
    assert ds.paths == [target, str(root / "b" / "same.png")]
    assert ds.labels == ["a", "b"]


def test_root_given_through_a_symlink(tmp_path):
    real = tmp_path / "real"
    touch(real / "a" / "x.png")
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    ds = load_dataset(tmp_path / "alias")
    assert ds.paths == [str(tmp_path / "alias" / "a" / "x.png")]


# ----------------------------------------------------------------------------- manifests


def test_manifest_with_labels_resolves_relative_paths(tmp_path):
    touch(tmp_path / "img" / "1.png", b"1")
    touch(tmp_path / "img" / "2.png", b"2")
    manifest = write_csv(tmp_path / "train.csv", "path,label\nimg/2.png,dog\n\nimg/1.png,cat\n")
    ds = load_dataset(manifest)
    assert ds.kind == "manifest"
    assert ds.root == str(tmp_path)
    assert ds.paths == [str(tmp_path / "img" / "2.png"), str(tmp_path / "img" / "1.png")]
    assert ds.labels == ["dog", "cat"]  # manifest order is kept
    assert ds.classes == ["cat", "dog"]


def test_manifest_without_label_column_and_extra_columns(tmp_path):
    touch(tmp_path / "a b.png")
    touch(tmp_path / "c,d.png")
    manifest = write_csv(tmp_path / "m.CSV", 'id,Path \n7,a b.png\n8,"c,d.png"\n')
    ds = load_dataset(manifest)
    assert ds.labels is None
    assert ds.paths == [str(tmp_path / "a b.png"), str(tmp_path / "c,d.png")]


def test_manifest_with_utf8_bom_and_crlf(tmp_path):
    touch(tmp_path / "x.png")
    manifest = write_csv(tmp_path / "m.csv", "path,label\r\nx.png,é\r\n", bom=True)
    ds = load_dataset(manifest)
    assert ds.paths == [str(tmp_path / "x.png")]
    assert ds.labels == ["é"]


def test_manifest_parent_escape_is_refused_with_line_number(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    touch(tmp_path / "outside.png", b"outside")
    touch(folder / "ok.png", b"ok")
    manifest = write_csv(folder / "m.csv", "path,label\nok.png,a\n../outside.png,b\n")
    with pytest.raises(DatasetError, match=r"m\.csv, line 3: path '\.\./outside\.png' resolves to"):
        load_dataset(manifest)
    ds = load_dataset(manifest, allow_outside_root=True)
    assert ds.paths[1] == str(tmp_path / "outside.png")


def test_manifest_absolute_paths_are_accepted_anywhere(tmp_path):
    # Absolute paths are the usual manifest (written by a script, kept beside the data or not):
    # the user named the file, so nothing climbs out by surprise.
    folder = tmp_path / "m"
    folder.mkdir()
    outside = touch(tmp_path / "o.png")
    inside = touch(folder / "i.png")
    (folder / "link.png").symlink_to(outside)
    manifest = write_csv(folder / "m.csv", f"path\n{inside}\n{outside}\n{folder / 'link.png'}\n")
    assert load_dataset(manifest).paths == [inside, outside, str(folder / "link.png")]


def test_manifest_relative_path_climbing_out_after_an_absolute_one_is_still_refused(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    outside = touch(tmp_path / "o.png")
    manifest = write_csv(folder / "m.csv", f"path\n{outside}\n../o.png\n")
    with pytest.raises(DatasetError, match=r"line 3: path '\.\./o\.png' resolves to .*outside"):
        load_dataset(manifest)


def test_manifest_symlink_escape_is_refused(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    outside = touch(tmp_path / "o.png")
    (folder / "link.png").symlink_to(outside)
    manifest = write_csv(folder / "m.csv", "path\nlink.png\n")
    with pytest.raises(DatasetError, match=r"line 2: path 'link\.png' resolves to .*o\.png"):
        load_dataset(manifest)
    assert load_dataset(manifest, allow_outside_root=True).paths == [str(folder / "link.png")]


def test_manifest_dotdot_that_stays_inside_is_fine(tmp_path):
    touch(tmp_path / "b.png")
    manifest = write_csv(tmp_path / "m.csv", "path\na/../b.png\n")
    assert load_dataset(manifest).paths == [str(tmp_path / "b.png")]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"m\.csv: empty manifest"),
        ("file,label\nx.png,a\n", r"m\.csv, line 1: no 'path' column \(columns: 'file', 'label'\)"),
        ("path,label\n", r"m\.csv: the manifest lists no images"),
        ("path,label\nx.png,a\n,b\n", r"m\.csv, line 3: empty 'path'"),
        ("label,path\na,x.png\nb\n", r"m\.csv, line 3: 1 field but the header has 2; give a"),
        (
            "path,label\nimg/x.jpg,ant, red\n",
            r"m\.csv, line 2: 3 fields but the header has 2; quote values that contain commas",
        ),
        ("path\nx.png\n\ny.png,z\n", r"m\.csv, line 4: 2 fields but the header has 1; quote"),
        ('path,label\n"a\nb.png",x\nc.png\n', r"m\.csv, line 4: 1 field but"),  # line 2 spans 2
        ("path,label\nx.png,a,\n", r"m\.csv, line 2: 3 fields but the header has 2"),
        ("id,path,label\n1,x.png\n", r"m\.csv, line 2: 2 fields but the header has 3"),
        ("path,label\nx.png,a\ny.png,\n", r"m\.csv, line 3: empty 'label' for 'y\.png'"),
    ],
)
def test_malformed_manifests_name_file_and_line(tmp_path, text, message):
    manifest = write_csv(tmp_path / "m.csv", text)
    with pytest.raises(DatasetError, match=message):
        load_dataset(manifest)


def test_manifest_quoted_commas_are_one_value(tmp_path):
    touch(tmp_path / "img" / "x.jpg")
    manifest = write_csv(tmp_path / "m.csv", 'path,label\nimg/x.jpg,"ant, red"\n')
    assert load_dataset(manifest).labels == ["ant, red"]


def test_manifest_files_must_exist_and_missing_ones_are_named_with_lines(tmp_path):
    touch(tmp_path / "img" / "here.png")
    manifest = write_csv(
        tmp_path / "m.csv", "path,label\nimg/here.png,a\n\nimg/gone.png,b\nimg/lost.png,a\n"
    )
    with pytest.raises(
        DatasetError,
        match=r"m\.csv, line 4: file not found: 'img/gone\.png' \(resolved to .*img/gone\.png\); "
        r"1 more of the 3 listed files is missing \(line 5\)$",
    ):
        load_dataset(manifest)
    many = "".join(f"n{i}.png\n" for i in range(8))
    with pytest.raises(
        DatasetError,
        match=r"line 2: .*'n0\.png' .*; 7 more of the 8 .* \(lines 3, 4, 5, 6, 7, \.\.\.\)$",
    ):
        load_dataset(write_csv(tmp_path / "many.csv", "path\n" + many))


def test_manifest_with_one_image_under_two_labels_warns_naming_both_lines(tmp_path):
    touch(tmp_path / "a.png", b"same")
    touch(tmp_path / "copy.png", b"same")
    touch(tmp_path / "b.png", b"other")
    text = "path,label\na.png,cat\nb.png,cat\na.png,cat\ncopy.png,dog\n"
    manifest = write_csv(tmp_path / "m.csv", text)
    with pytest.warns(DatasetWarning) as caught:
        ds = load_dataset(manifest)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "m.csv" in message and "lines 2 and 5" in message
    assert (
        "a.png" in message and "copy.png" in message and "'cat'" in message and "'dog'" in message
    )
    assert ds.labels == ["cat", "cat", "cat", "dog"]  # kept: the user decides
    # One file listed twice.
    twice = write_csv(tmp_path / "t.csv", "path,label\nb.png,cat\nb.png,dog\n")
    with pytest.warns(DatasetWarning, match=r"lines 2 and 3 .*b\.png \(the same file\)"):
        load_dataset(twice)


def test_class_folders_holding_one_image_content_warn_naming_both_files(tmp_path):
    touch(tmp_path / "a" / "0488.png", b"same")
    touch(tmp_path / "a" / "0489.png", b"other")
    touch(tmp_path / "b" / "copy.png", b"same")
    touch(tmp_path / "b" / "nested" / "again.png", b"same")
    with pytest.warns(DatasetWarning) as caught:
        ds = load_dataset(tmp_path)
    assert len(caught) == 1
    message = str(caught[0].message)
    first, copy, again = (
        os.path.join(tmp_path, *parts)
        for parts in (("a", "0488.png"), ("b", "copy.png"), ("b", "nested", "again.png"))
    )
    assert message.startswith(
        f"{tmp_path}: class folders 'a' and 'b' hold the same image content: {first} and {copy}; "
        f"also {again}; both are kept"
    ), message
    assert caught[0].filename == __file__  # points at the caller of load_dataset
    assert ds.labels == ["a", "a", "b", "b"]  # kept: the user decides
    # The same content twice in one class folder is no label conflict.
    touch(tmp_path / "b" / "copy.png", b"third")
    touch(tmp_path / "b" / "nested" / "again.png", b"third")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)
        load_dataset(tmp_path)


def test_manifest_duplicates_with_one_label_or_no_labels_warn_nothing(tmp_path):
    touch(tmp_path / "a.png", b"same")
    touch(tmp_path / "copy.png", b"same")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(write_csv(tmp_path / "m.csv", "path,label\na.png,cat\ncopy.png,cat\n"))
        load_dataset(write_csv(tmp_path / "u.csv", "path\na.png\ncopy.png\n"))


def test_manifest_entry_that_is_a_folder_is_refused(tmp_path):
    (tmp_path / "img").mkdir()
    manifest = write_csv(tmp_path / "m.csv", "path\nimg\n")
    with pytest.raises(DatasetError, match=r"m\.csv, line 2: path 'img' is a folder"):
        load_dataset(manifest)


def test_manifest_that_is_not_utf8(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(b"path\n\xff\xfe.png\n")
    with pytest.raises(DatasetError, match=r"m\.csv: not UTF-8 text"):
        load_dataset(manifest)


# ----------------------------------------------------------------------------- files


def test_load_files_keeps_order_and_makes_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = load_files(["b.png", "sub/a.jpg", tmp_path / "c.gif"])
    assert ds.kind == "files" and ds.labels is None
    assert ds.paths == [
        str(tmp_path / "b.png"),
        str(tmp_path / "sub" / "a.jpg"),
        str(tmp_path / "c.gif"),
    ]
    assert ds.root == str(tmp_path)
    assert load_files("one.png").paths == [str(tmp_path / "one.png")]


def test_load_files_refuses_folders_and_empty_lists(tmp_path):
    with pytest.raises(DatasetError, match=r"is a folder; give a folder .* on its own"):
        load_files([tmp_path])
    with pytest.raises(DatasetError, match="no image files given"):
        load_files([])
    with pytest.raises(TypeError, match=r"paths\[1\]=None"):
        load_files(["a.png", None])


def test_image_dataset_checks_its_fields():
    with pytest.raises(ValueError, match="kind='zip'"):
        ImageDataset(["/a.png"], None, "/", "zip")
    with pytest.raises(ValueError, match="2 labels for 1 paths"):
        ImageDataset(["/a.png"], ["x", "y"], "/", "files")
