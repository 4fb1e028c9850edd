"""Giving freed memory back to the operating system between rounds.

A federated job frees and allocates a model's worth of memory every round. Python's ``gc`` frees what reference
cycles hold; the C allocator then often keeps the freed pages for itself, so the process's RSS stays at its peak.
``cleanup()`` asks every allocator it finds in the process to give such pages back:

- glibc: ``malloc_trim(0)`` releases the free memory at the top of every arena and returns unused pages inside them;
- jemalloc (when loaded, e.g. with ``LD_PRELOAD``): ``mallctl("arena.<MALLCTL_ARENAS_ALL>.purge")`` purges the dirty
  pages of all arenas;
- CUDA: ``torch.cuda.empty_cache()`` returns the blocks torch's caching allocator keeps, when asked for and only if
  the process already uses CUDA (this module never imports torch nor initializes CUDA).

A call missing on this platform is skipped (logged at debug level); ``cleanup()`` never raises for it.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# jemalloc's MALLCTL_ARENAS_ALL: the arena index that stands for all arenas (jemalloc >= 4.5)
MALLCTL_ARENAS_ALL = 4096
_JEMALLOC_PURGE = f"arena.{MALLCTL_ARENAS_ALL}.purge".encode()


def cleanup(cuda_empty_cache: bool = False) -> float:
    """Collects garbage and returns free memory to the operating system; returns the seconds it took.

    Parameters
    ----------
    cuda_empty_cache
        Also empty torch's CUDA cache, when torch is imported and CUDA initialized in this process.
    """
    started = time.perf_counter()
    gc.collect()
    for name, release in _allocator_releases():
        try:
            release()
        except OSError as e:
            logger.debug("%s failed: %s", name, e)
    if cuda_empty_cache:
        _empty_cuda_cache()
    return time.perf_counter() - started


def maybe_cleanup(count: int, every_n: int, cuda_empty_cache: bool = False) -> float | None:
    """Runs ``cleanup()`` when ``every_n`` > 0 and ``count`` (1-based: rounds done, results sent) is a multiple of
    it; returns the seconds it took, or None when it did not run."""
    if every_n <= 0 or count % every_n != 0:
        return None
    return cleanup(cuda_empty_cache)


@functools.cache
def _allocator_releases() -> tuple[tuple[str, Callable[[], None]], ...]:
    """The release calls this process's allocators offer, looked up once."""
    releases: list[tuple[str, Callable[[], None]]] = []
    malloc_trim = _process_symbol("malloc_trim")
    if malloc_trim is not None:
        malloc_trim.argtypes = [ctypes.c_size_t]
        malloc_trim.restype = ctypes.c_int
        releases.append(("malloc_trim", lambda: malloc_trim(0)))
    else:
        logger.debug("no malloc_trim in this process (not glibc): skipped")
    # jemalloc built with a prefix exports je_mallctl; unprefixed builds replace malloc and export mallctl
    mallctl = _process_symbol("mallctl") or _process_symbol("je_mallctl")
    if mallctl is not None:
        mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        mallctl.restype = ctypes.c_int

        def purge_jemalloc() -> None:
            code = mallctl(_JEMALLOC_PURGE, None, None, None, 0)
            if code != 0:
                raise OSError(code, f"mallctl({_JEMALLOC_PURGE.decode()}) returned {code}")

        releases.append(("jemalloc purge", purge_jemalloc))
    else:
        logger.debug("jemalloc is not loaded in this process: no purge")
    return tuple(releases)


def _process_symbol(name: str) -> Any:
    """A C function already loaded in this process (the executable and the libraries it linked or preloaded)."""
    try:
        process = ctypes.CDLL(None)
    except (OSError, TypeError):  # Windows has no handle for the process's own symbols
        return None
    return getattr(process, name, None)


def _empty_cuda_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is None:
        logger.debug("torch is not imported: no CUDA cache to empty")
        return
    try:
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
        else:
            logger.debug("CUDA is not initialized in this process: no cache to empty")
    except (AttributeError, RuntimeError) as e:
        logger.debug("torch.cuda.empty_cache failed: %s", e)


__all__ = ["MALLCTL_ARENAS_ALL", "cleanup", "maybe_cleanup"]
