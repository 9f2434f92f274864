"""Progress of long work: a tqdm bar on a terminal, a plain line every few seconds elsewhere.

A run whose stderr goes to a log file would otherwise say nothing for minutes (a tqdm bar there
is a stream of carriage returns, so none is drawn): there, :class:`Progress` writes lines such as
``extracting: 1,200/5,000 images, 240 img/s, about 16 s left`` every :data:`LOG_INTERVAL`
seconds, and a final line for a run that lasted that long.
"""

from __future__ import annotations

import sys
import time

__all__ = ["LOG_INTERVAL", "Progress"]

#: Seconds between two progress lines when stderr is not a terminal.
LOG_INTERVAL = 10.0


def _duration(seconds):
    """``16 s``, ``3 min``, ``1 h 5 min``."""
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def _rate(count, seconds, unit):
    rate = count / seconds if seconds > 0 else 0.0
    return f"{rate:,.{0 if rate >= 100 else 1}f} {unit}/s"


class Progress:
    """Count work done and show it: as a tqdm bar, as periodic lines, or not at all.

    Parameters
    ----------
    total : int
        Items to do.
    desc : str
        What is being done (``"extracting"``).
    noun, unit : str
        The items, plural (``"images"``) and as a rate's unit (``"img"``).
    enabled : bool or None
        False: nothing. None (the library's default) or True: a bar when ``stream`` is a
        terminal, else lines. With None, a run shorter than ``interval`` stays silent, and one
        that lasted at least that long always gets its final line; with True every run does.
    stream : file, optional
        Where to write (default: ``sys.stderr`` at the time of the call).
    interval : float, optional
        Seconds between lines (default :data:`LOG_INTERVAL`).
    clock : callable
        Monotonic seconds (tests pass a fake one).

    Examples
    --------
    >>> import io
    >>> log, now = io.StringIO(), [0.0]
    >>> with Progress(50, "extracting", "images", "img", stream=log, clock=lambda: now[0]) as p:
    ...     now[0] = 12.0
    ...     p.update(20)
    ...     now[0] = 25.0
    ...     p.update(30)
    >>> print(log.getvalue(), end="")
    extracting: 20/50 images, 1.7 img/s, about 18 s left
    extracting: 50/50 images in 25 s, 2.0 img/s
    """

    def __init__(
        self,
        total,
        desc,
        noun,
        unit,
        enabled=None,
        *,
        stream=None,
        interval=None,
        clock=time.monotonic,
    ):
        self.total, self.desc, self.noun, self.unit = int(total), desc, noun, unit
        self.stream = sys.stderr if stream is None else stream
        self.interval = float(LOG_INTERVAL if interval is None else interval)
        self.clock = clock
        self.done, self.lines, self.closed = 0, 0, False
        self.always = enabled is True
        self.bar = None
        self.mode = "off"
        if enabled is not False:
            if _isatty(self.stream):
                from tqdm.auto import tqdm

                self.mode = "bar"
                self.bar = tqdm(
                    total=self.total, desc=desc, unit=unit, leave=False, file=self.stream
                )
            else:
                self.mode = "lines"
        self.start = self.last = clock()

    def update(self, n=1):
        """Count ``n`` more items done."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.mode == "lines":
            now = self.clock()
            if now - self.last >= self.interval and self.done < self.total:
                self.last = now
                self._write(self._running(now - self.start))

    def close(self):
        """End the report: the bar goes; a final line where lines were (or must be) written."""
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.mode == "lines":
            elapsed = self.clock() - self.start
            # A run as long as the interval leaves a trace even if its only update was the last.
            if not (self.lines or self.always or elapsed >= self.interval):
                return
            self._write(
                f"{self.desc}: {self.done:,}/{self.total:,} {self.noun} in {_duration(elapsed)}, "
                f"{_rate(self.done, elapsed, self.unit)}"
            )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _running(self, elapsed):
        text = f"{self.desc}: {self.done:,}/{self.total:,} {self.noun}, "
        text += _rate(self.done, elapsed, self.unit)
        if self.done:
            left = elapsed / self.done * (self.total - self.done)
            text += f", about {_duration(left)} left"
        return text

    def _write(self, line):
        self.lines += 1
        try:
            print(line, file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed or broken stream must not stop the work
            self.mode = "off"


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
