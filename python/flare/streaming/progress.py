"""Progress of long transfers: a text bar, a callback that logs it, and one that redraws it on a terminal."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

ProgressCallback = Callable[[int, "int | None"], None]

_MIB = 1024 * 1024


def render_bar(done: int, total: int | None, elapsed: float, width: int = 30) -> str:
    """``[#########.....]  45%  120.0/256.0 MiB  310.2 MB/s``; without a known total, just bytes and rate."""
    rate = done / elapsed / 1e6 if elapsed > 0 else 0.0
    if not total:
        return f"{done / _MIB:.1f} MiB  {rate:.1f} MB/s"
    frac = min(done / total, 1.0)
    filled = int(frac * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {frac:4.0%}  {done / _MIB:.1f}/{total / _MIB:.1f} MiB  {rate:.1f} MB/s"


class ProgressLog:
    """Logs a transfer's progress bar at INFO; a transfer that ends within ``quiet_below`` seconds logs nothing."""

    def __init__(self, label: str, logger: logging.Logger, quiet_below: float = 2.0):
        self.label = label
        self.logger = logger
        self.quiet_below = quiet_below
        self.started = time.monotonic()

    def __call__(self, done: int, total: int | None) -> None:
        elapsed = time.monotonic() - self.started
        if elapsed < self.quiet_below:
            return
        self.logger.info("%s: %s", self.label, render_bar(done, total, elapsed))


class TerminalProgress:
    """Redraws a progress bar in place on a terminal (``stream``, default stderr); ends the line when complete."""

    def __init__(self, label: str, stream: TextIO | None = None):
        self.label = label
        self.stream = stream or sys.stderr
        self.started = time.monotonic()

    def __call__(self, done: int, total: int | None) -> None:
        bar = render_bar(done, total, time.monotonic() - self.started)
        end = "\n" if total is not None and done >= total else ""
        self.stream.write(f"\r{self.label} {bar}{end}")
        self.stream.flush()


__all__ = ["ProgressCallback", "ProgressLog", "TerminalProgress", "render_bar"]
