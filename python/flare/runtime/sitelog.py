"""Per-site job logs. In a simulation several sites share one process, so a site's log file takes the records of
the threads working for that site (and, when the process runs one site only, every record)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_current = threading.local()
_active: dict[str, int] = {}
_active_lock = threading.Lock()
FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


def current_site() -> str | None:
    return getattr(_current, "site", None)


class _SiteFilter(logging.Filter):
    def __init__(self, site: str):
        super().__init__()
        self.site = site

    def filter(self, record: logging.LogRecord) -> bool:
        site = current_site()
        if site is not None:
            return site == self.site
        with _active_lock:
            return len(_active) == 1


@contextmanager
def site_log(site: str, path: Path) -> Iterator[None]:
    """While active, this thread works for ``site`` and its records (and those of threads started with
    ``start_thread``) also go to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_SiteFilter(site))
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    previous = current_site()
    _current.site = site
    with _active_lock:
        _active[site] = _active.get(site, 0) + 1
    try:
        yield
    finally:
        _current.site = previous
        with _active_lock:
            _active[site] -= 1
            if not _active[site]:
                del _active[site]
        root.removeHandler(handler)
        handler.close()


def start_thread(target: Callable[..., Any], name: str, *args: Any) -> threading.Thread:
    """A daemon thread that works for the current thread's site."""
    site = current_site()

    def run() -> None:
        _current.site = site
        target(*args)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


__all__ = ["current_site", "site_log", "start_thread"]
