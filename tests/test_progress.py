"""Tests for cnncodes.utils.progress: a bar on a terminal, periodic lines in a log, a fake clock."""

from __future__ import annotations

import io

import pytest

from cnncodes.utils.progress import Progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _lines(stream):
    return stream.getvalue().splitlines()


def test_a_log_gets_a_line_every_interval_and_a_final_line():
    log, clock = io.StringIO(), Clock()
    with Progress(5000, "extracting", "images", "img", stream=log, clock=clock) as progress:
        for _ in range(50):  # 100 images every 2 s
            clock.now += 2.0
            progress.update(100)
    lines = _lines(log)
    assert lines[0] == "extracting: 500/5,000 images, 50.0 img/s, about 2 min left"
    assert len(lines) == 100 // 10 - 1 + 1  # every 10 s but at the end, then the final line
    assert lines[-1] == "extracting: 5,000/5,000 images in 2 min, 50.0 img/s"


@pytest.mark.parametrize(
    "enabled, expected", [(None, []), (True, ["fits: 3/3 fits in 2 s, 1.5 fit/s"]), (False, [])]
)
def test_a_short_run_is_silent_unless_asked_for(enabled, expected):
    log, clock = io.StringIO(), Clock()
    with Progress(3, "fits", "fits", "fit", enabled, stream=log, clock=clock) as progress:
        clock.now = 2.0
        progress.update(3)
    assert _lines(log) == expected


def test_disabled_progress_writes_nothing_however_long():
    log, clock = io.StringIO(), Clock()
    with Progress(10, "extracting", "images", "img", False, stream=log, clock=clock) as progress:
        for _ in range(10):
            clock.now += 60
            progress.update()
    assert log.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar_that_goes_away():
    term = Terminal()
    with Progress(4, "extracting", "images", "img", stream=term) as progress:
        assert progress.mode == "bar"
        progress.update(4)
    assert "extracting:" in term.getvalue() and "/4 [" in term.getvalue()
    assert "img/s, about" not in term.getvalue()  # no log lines on a terminal


def test_a_broken_stream_does_not_stop_the_work():
    log, clock = io.StringIO(), Clock()
    progress = Progress(10, "extracting", "images", "img", stream=log, clock=clock, interval=1)
    log.close()
    clock.now = 5
    progress.update(5)  # the write fails: reporting stops, counting goes on
    progress.close()
    assert progress.done == 5 and progress.mode == "off"


def test_a_run_longer_than_the_interval_gets_its_final_line_even_without_running_lines():
    # One update at the very end (a single batch of 13 s): no running line, but a trace stays.
    log, clock = io.StringIO(), Clock()
    with Progress(60, "extracting", "images", "img", stream=log, clock=clock) as progress:
        clock.now = 13.0
        progress.update(60)
    assert _lines(log) == ["extracting: 60/60 images in 13 s, 4.6 img/s"]
