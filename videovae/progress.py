"""A small progress bar for the command line: frames done / total, frames per second, ETA.

    bar = Progress(total=680, label="reconstruct")      # total None when the frame count is unknown
    for piece in pieces:
        bar.update(piece.shape[1])
    bar.close()

On a terminal the line is redrawn in place with `\\r` (at most every `min_interval` seconds); when
the stream is not a terminal (a log file, CI, a pipe) it prints a plain line now and then: every
`log_every` of the total, or every `log_seconds` when the total is unknown, and one at the end.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


def _duration(seconds: float) -> str:
    """12.3 -> '0:12', 3725 -> '1:02:05'."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Frames done out of `total` (None: unknown) on `stream` (default stderr); `enabled=False`
    makes every call a no-op. `clock` is injectable for tests."""

    def __init__(
        self,
        total: int | None,
        *,
        label: str = "",
        unit: str = "frames",
        stream: TextIO | None = None,
        enabled: bool = True,
        min_interval: float = 0.1,
        log_every: float = 0.25,
        log_seconds: float = 30.0,
        clock=time.monotonic,
        rate_unit: str = "fps",
        initial: int = 0,
    ) -> None:
        self.total = total
        self.rate_unit = rate_unit
        self.postfix = ""        # shown at the end of the line (a training loss, ...)
        self._initial = initial  # done before this run (a resumed job): counted, not in the rate
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.done = initial
        self._clock = clock
        self._start = clock()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._min_interval = min_interval
        self._log_every = log_every
        self._log_seconds = log_seconds
        self._last_draw = -float("inf")
        self._next_share = log_every          # non-tty: next share of the total to log at
        self._last_log = self._start          # non-tty, unknown total: time of the last line
        self._width = 0                       # tty: length of the last drawn line
        self._closed = False
        if self.enabled and self._tty:
            self._draw(self._start)  # show the bar before the first (slow) chunk is done

    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    @property
    def rate(self) -> float:
        """Frames (units) per second so far in this run (0 before any time has passed)."""
        elapsed = self.elapsed
        return (self.done - self._initial) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """'label  34/680 frames (5%)  12.1 fps  elapsed 0:03  ETA 0:53'."""
        parts = [self.label] if self.label else []
        if self.total:
            share = min(self.done / self.total, 1.0)
            parts.append(f"{self.done}/{self.total} {self.unit} ({share:.0%})")
        else:
            parts.append(f"{self.done} {self.unit}")
        rate = self.rate
        digits = 2 if self.rate_unit != "fps" and rate < 10 else 1
        parts.append(f"{rate:.{digits}f} {self.rate_unit}")
        parts.append(f"elapsed {_duration(self.elapsed)}")
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        return "  ".join(parts)

    def update(self, frames: int) -> None:
        """Count `frames` more frames done and redraw or log if it is time."""
        if not self.enabled or self._closed:
            return
        self.done += frames
        now = self._clock()
        if self._tty:
            if now - self._last_draw >= self._min_interval:
                self._draw(now)
            return
        if self.total:
            if self.done / self.total >= self._next_share and self.done < self.total:
                self._log()
                while self._next_share <= self.done / self.total:
                    self._next_share += self._log_every
        elif now - self._last_log >= self._log_seconds:
            self._last_log = now
            self._log()

    def write(self, text: str) -> None:
        """Print a line of its own (a log message) without breaking the bar: on a terminal the bar
        is erased, the line printed, and the bar redrawn under it."""
        if not self.enabled or not self._tty or self._closed:
            print(text, file=self.stream, flush=True)
            return
        self.stream.write("\r" + " " * self._width + "\r" + text + "\n")
        self._width = 0
        self._draw(self._clock())

    def close(self) -> None:
        """Draw the final state and end the line. Idempotent."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._tty:
            self._draw(self._clock())
            self.stream.write("\n")
            self.stream.flush()
        else:
            self._log()

    def _draw(self, now: float) -> None:
        text = self.line()
        pad = " " * max(self._width - len(text), 0)  # erase what a longer previous line left
        self.stream.write("\r" + text + pad)
        self.stream.flush()
        self._width = len(text)
        self._last_draw = now

    def _log(self) -> None:
        print(self.line(), file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        # On an error, end a tty line so the error message starts on its own line.
        if exc[0] is not None and self.enabled and self._tty and not self._closed:
            self._closed = True
            self.stream.write("\n")
            self.stream.flush()
        else:
            self.close()
