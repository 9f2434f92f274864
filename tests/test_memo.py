"""The one in-process memo policy (cnncodes.utils.memo) and the extraction engines' interface."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cnncodes.utils.memo import Memo, memoize


def test_memo_drops_the_least_recently_used_beyond_its_size():
    memo = Memo(2)
    memo.put("a", 1)
    memo.put("b", 2)
    assert memo.get("a") == 1  # now "b" is the least recently used
    memo.put("c", 3)
    assert "b" not in memo and memo.get("a") == 1 and memo.get("c") == 3
    assert len(memo) == 2
    assert memo.pop("a") == 1 and memo.pop("a", "gone") == "gone"
    memo.clear()
    assert len(memo) == 0


def test_memo_misses_and_drops_an_entry_with_another_stamp():
    memo = Memo(4)
    memo.put("k", "v", stamp=1)
    assert memo.get("k", stamp=1) == "v"
    assert memo.get("k") == "v"  # no stamp given: any will do
    assert memo.get("k", "miss", stamp=2) == "miss"
    assert "k" not in memo
    memo.put("none", None)
    calls = []
    assert memo.get_or_compute("none", lambda: calls.append(1)) is None  # a memoised None
    assert calls == []


def test_memo_bounded_by_weight_keeps_the_newest_entry():
    memo = Memo(100, weigh=lambda a: a.nbytes, max_weight=100)
    memo.put("a", np.zeros(10, np.float32))  # 40 bytes
    memo.put("b", np.zeros(10, np.float32))
    assert memo.weight == 80
    memo.put("c", np.zeros(10, np.float32))  # 120 > 100: "a" goes
    assert "a" not in memo and memo.weight == 80
    memo.put("big", np.zeros(100, np.float32))  # heavier than the bound alone: kept, alone
    assert list(memo._data) == ["big"] and memo.weight == 400
    memo.put("big", np.zeros(1, np.float32))  # replaced: its old weight goes
    assert memo.weight == 4


def test_memo_for_file_recomputes_a_changed_file(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("one")
    memo = Memo(8)

    def read():
        return path.read_text()

    assert memo.for_file(os.fspath(path), read) == "one"
    path.write_text("two!")  # another size (and ctime)
    assert memo.for_file(os.fspath(path), read) == "two!"
    assert len(memo) == 1


def test_memoize_is_lru_cache_shaped():
    calls = []

    @memoize(2)
    def f(x, y=0):
        calls.append((x, y))
        if x < 0:
            raise ValueError("negative")
        return x + y

    assert f(1) == 1 and f(1) == 1 and f(1, y=2) == 3
    assert calls == [(1, 0), (1, 2)]
    with pytest.raises(ValueError):
        f(-1)
    with pytest.raises(ValueError):  # exceptions are not memoised
        f(-1)
    assert len(f.memo) == 2
    f.cache_clear()
    assert len(f.memo) == 0
    assert f.__name__ == "f"


def test_engines_are_chosen_by_name_and_checked():
    from cnncodes.extraction.engines import LocalEngine, RayEngine, engine_for
    from cnncodes.params import ENGINES

    assert ENGINES == ("local", "ray")
    assert isinstance(engine_for("local"), LocalEngine)
    with pytest.raises(ValueError, match="engine='spark': choose one of 'local', 'ray'"):
        engine_for("spark")
    with pytest.raises(ValueError, match="ray_actors=0: expected an int >= 1"):
        engine_for("local", ray_actors=0)
    engine = engine_for("ray", "auto", 3)  # Ray itself is only imported when connecting
    assert isinstance(engine, RayEngine) and (engine.address, engine.actors) == ("auto", 3)
    for cls in (LocalEngine, RayEngine):
        assert {"name", "connect", "session", "file_digests", "serve"} <= set(dir(cls))
        assert cls.name in ENGINES


def test_the_local_engine_serves_through_the_cache(tiny_spec, make_images, tmp_path):
    from cnncodes.extraction.engines import LocalEngine
    from cnncodes.extraction.extract import _plan
    from cnncodes.images.load import file_digests

    images = make_images(3)
    engine = LocalEngine()
    with engine.connect("cpu", tmp_path / "c") as (device, cache_dir):
        job, cache = _plan(tiny_spec, "avgpool", "avg", device, "fp32", cache_dir)
        digests = file_digests(images)
        job.first = dict(zip(digests, images))
        served = engine.serve(job, cache, digests)
        assert (served.computed, served.hits) == (3, 0)
        again = engine.serve(job, cache, digests[:2])
    assert (again.computed, again.hits) == (0, 2)
    np.testing.assert_array_equal(again.codes["avgpool"], served.codes["avgpool"][:2])


def test_the_local_extraction_path_has_no_ray_branch():
    import ast
    import pathlib

    import cnncodes.extraction.extract as extract

    tree = ast.parse(pathlib.Path(extract.__file__).read_text())
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "ray_engine" not in imported and not any("ray" in m.split(".") for m in imported)
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert not {"ray", "run_on_ray", "ray_session", "ray_file_digests"} & names
