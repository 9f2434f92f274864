"""Tests for cnncodes.utils.files: printable paths and the one atomic, durable way to write a file."""

from __future__ import annotations

import os
import stat

import pytest

from cnncodes.utils import files as _files
from cnncodes.utils.files import atomic_path, atomic_write_bytes, display


@pytest.fixture
def fsynced(monkeypatch):
    """The paths that went through ``os.fsync``, in order ('DIR ' before folders)."""
    seen, real = [], os.fsync

    def fsync(fd):
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        seen.append(("DIR " if is_dir else "") + os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_atomic_write_is_durable_and_leaves_no_temporary(tmp_path, fsynced):
    target = tmp_path / "out.json"
    atomic_write_bytes(target, b"{}")
    assert target.read_bytes() == b"{}" and os.listdir(tmp_path) == ["out.json"]
    # The data reached the disk under a temporary name before the rename, then the rename did.
    assert len(fsynced) == 2 and os.path.basename(fsynced[0]).startswith(".out.json.tmp-")
    assert fsynced[1] == f"DIR {tmp_path}"


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "model.skops"
    target.write_bytes(b"old")
    with (
        pytest.raises(RuntimeError, match="disk full"),
        atomic_path(target, suffix=".skops") as tmp,
    ):
        assert tmp.endswith(".skops") and os.path.dirname(tmp) == str(tmp_path)
        with open(tmp, "wb") as f:
            f.write(b"ne")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.skops"]


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path, monkeypatch):
    monkeypatch.setattr(_files, "STALE_GRACE_SECONDS", 0)
    dead = 2**22 + 12345  # above the default pid_max: no such process
    left = tmp_path / f".codes.h5.tmp-{dead}@{_files._host()}-abcd"
    left.write_bytes(b"half")
    os.utime(left, (1, 1))
    atomic_write_bytes(tmp_path / "codes.h5", b"whole")
    assert sorted(os.listdir(tmp_path)) == ["codes.h5"]


def test_display_shows_undecodable_bytes():
    assert display(os.fsdecode(b"/d/caf\xe9.png")) == "/d/caf\\xe9.png"
    assert display("/d/café.png") == "/d/café.png"


def test_any_atomic_write_sweeps_the_dead_temporaries_of_every_name_in_its_folder(tmp_path):
    host, dead, alive = _files._host(), 999_999_999, os.getpid()
    old = os.stat(tmp_path).st_mtime - 2 * _files.STALE_GRACE_SECONDS

    def left(name, age=old):
        path = tmp_path / name
        path.write_bytes(b"partial")
        if age is not None:
            os.utime(path, (age, age))
        return path

    gone = [
        left(f".codes.h5.tmp-{dead}@{host}-abcd1234.h5"),
        left(f".model.joblib.tmp-{dead}@{host}-00ff"),
        left(f".tmp-{dead}@{host}-12345678"),
    ]
    kept = [
        left(f".codes.h5.tmp-{alive}@{host}-abcd1234.h5"),  # its writer lives
        left(f".codes.h5.tmp-{dead}@{host}-abcd1235.h5", age=None),  # within the grace period
        left(f".codes.h5.tmp-{dead}@another_host-abcd1234.h5"),  # another host's writer
        left(f"codes.tmp-{dead}@{host}-abcd1234.h5"),  # not a hidden temporary: a user's
        left(".notes.txt"),
    ]
    atomic_write_bytes(tmp_path / "report.json", b"{}")
    assert not any(p.exists() for p in gone)
    assert all(p.exists() for p in kept)


def test_the_next_write_removes_the_temporary_folders_of_killed_report_writers(tmp_path):
    # A report is written into a temporary folder beside its own (.DIR.tmp-<pid>@host-...): a
    # killed run leaves it, whole folder and files; the next atomic write in the parent removes
    # it by the rule of files (writer dead on this host, all of it older than the grace period).
    host, dead, alive = _files._host(), 999_999_999, os.getpid()
    old = os.stat(tmp_path).st_mtime - 2 * _files.STALE_GRACE_SECONDS

    def left(name, age=old, fresh_file=False):
        folder = tmp_path / name
        (folder / "sub").mkdir(parents=True)
        for path in (folder / "metrics.json", folder / "sub" / "x.png"):
            path.write_text("partial")
            if not (fresh_file and path.name == "x.png"):
                os.utime(path, (age, age))
        for path in (folder / "sub", folder):
            os.utime(path, (age, age))
        return folder

    (tmp_path / "report").mkdir()  # the earlier report, in place
    gone = [
        left(f".report.tmp-{dead}@{host}-abcd1234"),
        left(f".report.old.tmp-{dead}@{host}-00ff"),  # put aside; the report is in place
    ]
    kept = [
        left(f".report.tmp-{alive}@{host}-abcd1234"),  # its writer lives
        left(f".report.tmp-{dead}@{host}-abcd1235", fresh_file=True),  # written within the grace
        left(f".report.tmp-{dead}@another_host-abcd1234"),  # another host's writer
        left(f".gone.old.tmp-{dead}@{host}-00ff"),  # the only copy of the report "gone"
        left(f"report.tmp-{dead}@{host}-abcd1234"),  # not a hidden temporary: a user's
    ]
    atomic_write_bytes(tmp_path / "metrics.csv", b"a,b")
    assert [p for p in gone if p.exists()] == []
    assert all(p.is_dir() and (p / "sub" / "x.png").exists() for p in kept)
