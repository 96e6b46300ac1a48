"""Progress on stderr for long work: a bar when stderr is a terminal, sparse lines otherwise
(so CI logs stay readable), nothing with `enabled=False`."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """A progress line on standard error: rewritten in place on a terminal, a line every 10 s
    otherwise."""
    def __init__(self, total: int | None, label: str = "", enabled: bool = True, stream: TextIO | None = None,
                 unit: str = "cases", delay: float = 0.0) -> None:
        self.total = total
        self.delay = delay  # without a terminal, nothing before the run is this many seconds long
        self.label = label
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.start = time.monotonic()
        self.last = 0.0
        self.done = 0

    def update(self, done: int, note: str = "") -> None:
        """Report `done` items (drawn at most every 0.2 s on a terminal)."""
        self.done = done
        if not self.enabled:
            return
        now = time.monotonic()
        if not self.tty and now - self.start < self.delay:
            return
        if now - self.last < (0.2 if self.tty else 10.0) and (self.total is None or done < self.total):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        if self.total:
            frac = min(done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            text = f"{self.label} [{bar:<30}] {done}/{self.total} {self.unit} ({rate:,.0f}/s) {note}"
        else:
            text = f"{self.label} {done} {self.unit} ({rate:,.0f}/s) {note}"
        if self.tty:
            self.stream.write("\r" + text[:150].ljust(150))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the progress line (a newline on a terminal)."""
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
