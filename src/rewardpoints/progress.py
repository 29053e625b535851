"""Progress of a long command (import, export) on stderr: a bar with rate and ETA redrawn in
place on a terminal, a plain line every few seconds elsewhere (a log file, a CI job)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

# How often the line is redrawn on a terminal, and written elsewhere.
_TERMINAL_SECONDS = 0.2
_PLAIN_SECONDS = 5.0
_BAR_WIDTH = 24


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02}:{seconds:02}" if hours else f"{minutes}:{seconds:02}"


@dataclass
class Progress:
    """``done`` of ``total`` (None: unknown, so no bar and no ETA), counted in ``unit``, with
    what else the command counts (``counts``) shown after it."""

    label: str
    unit: str
    total: int | None = None
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    done: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    _started: float = field(default_factory=time.monotonic)
    _shown: float = 0.0
    _terminal: bool = False

    def __post_init__(self) -> None:
        self._terminal = self.stream.isatty()
        self._shown = self._started

    def advance(self, done: int | None = None, **counts: int) -> None:
        """Count ``done`` (the position reached, when given) and add ``counts``."""
        if done is not None:
            self.done = done
        for name, value in counts.items():
            self.counts[name] = self.counts.get(name, 0) + value
        now = time.monotonic()
        if now - self._shown >= (_TERMINAL_SECONDS if self._terminal else _PLAIN_SECONDS):
            self._shown = now
            self._show(now)

    def finish(self) -> None:
        """The final line, on a line of its own."""
        self._show(time.monotonic())
        if self._terminal:
            self.stream.write("\n")
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self._started, 1e-9)
        rate = self.done / elapsed
        parts = [self.label]
        if self.total:
            share = min(self.done / self.total, 1.0)
            if self._terminal:
                filled = round(share * _BAR_WIDTH)
                parts.append("[" + "#" * filled + "." * (_BAR_WIDTH - filled) + "]")
            parts.append(f"{share:6.1%}")
        parts.append(f"{_amount(self.done)} {self.unit}")
        parts.append(f"{_amount(rate)} {self.unit}/s")
        parts.extend(f"{_amount(value)} {name}" for name, value in self.counts.items())
        parts.append(f"elapsed {_duration(elapsed)}")
        if self.total and 0 < self.done < self.total and rate > 0:
            parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        return "  ".join(parts)

    def _show(self, now: float) -> None:
        if self._terminal:
            self.stream.write("\r\x1b[2K" + self.line(now))
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()


def _amount(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.1f}{suffix}"
    return f"{value:.0f}"
