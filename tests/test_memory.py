"""flare.memory: which allocator calls cleanup() makes, that it never raises for a missing one, and when
maybe_cleanup() runs it."""

from __future__ import annotations

import gc
import json
import platform
import subprocess
import sys
import textwrap
import types

import pytest

from flare import memory

ON_GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

@pytest.fixture
def fresh_lookup():
    """The allocator calls are looked up once per process; each test looks them up again, and so does the process
    after it."""
    memory._allocator_releases.cache_clear()
    yield
    memory._allocator_releases.cache_clear()


def fake_symbols(monkeypatch, **symbols):
    """Makes the process appear to export exactly ``symbols``; returns the calls made to them."""
    calls: list[tuple[str, tuple]] = []

    def make(name, result):
        def function(*args):
            calls.append((name, args))
            if isinstance(result, Exception):
                raise result
            return result

        return function

    table = {name: make(name, result) for name, result in symbols.items()}
    monkeypatch.setattr(memory, "_process_symbol", lambda name: table.get(name))
    return calls


def test_cleanup_collects_garbage_and_trims_glibc(fresh_lookup, monkeypatch):
    collected: list[int] = []
    real_collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(1) or real_collect(*a))
    seconds = memory.cleanup()
    assert collected and isinstance(seconds, float) and seconds >= 0
    names = [name for name, _ in memory._allocator_releases()]
    assert ("malloc_trim" in names) == ON_GLIBC


@pytest.mark.skipif(not ON_GLIBC, reason="reads /proc and needs glibc's malloc_trim")
def test_cleanup_gives_freed_heap_back_to_the_os():
    """240 MB of 8 kB buffers freed below one still in use stay in the process until malloc_trim."""
    script = textwrap.dedent(
        """
        import gc, json, os
        from flare import memory

        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

        blocks = [bytearray(8000) for _ in range(30000)]
        top = bytearray(8000)  # keeps the heap from shrinking by itself when the others go
        del blocks
        gc.collect()
        freed = rss()
        memory.cleanup()
        print(json.dumps({"freed": freed, "cleaned": rss()}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    rss = json.loads(out.stdout)
    assert rss["freed"] - rss["cleaned"] > 150 << 20, rss


def test_jemalloc_is_purged_for_all_arenas_only_when_loaded(fresh_lookup, monkeypatch):
    calls = fake_symbols(monkeypatch, malloc_trim=1, mallctl=0)
    memory.cleanup()
    assert calls == [("malloc_trim", (0,)), ("mallctl", (b"arena.4096.purge", None, None, None, 0))]

    memory._allocator_releases.cache_clear()
    calls = fake_symbols(monkeypatch, je_mallctl=0)  # a prefixed jemalloc build, no glibc
    memory.cleanup()
    assert calls == [("je_mallctl", (b"arena.4096.purge", None, None, None, 0))]

    memory._allocator_releases.cache_clear()
    calls = fake_symbols(monkeypatch, malloc_trim=1)
    memory.cleanup()
    assert calls == [("malloc_trim", (0,))]


def test_missing_or_failing_allocator_calls_never_raise(fresh_lookup, monkeypatch, caplog):
    fake_symbols(monkeypatch)
    assert memory.cleanup() >= 0
    memory._allocator_releases.cache_clear()
    fake_symbols(monkeypatch, malloc_trim=OSError("trim failed"), mallctl=14)
    caplog.set_level("DEBUG", logger="flare.memory")
    assert memory.cleanup() >= 0
    assert "trim failed" in caplog.text and "returned 14" in caplog.text


def test_cuda_cache_is_emptied_only_when_asked_and_initialized(monkeypatch):
    emptied: list[int] = []
    initialized = [False]
    cuda = types.SimpleNamespace(is_initialized=lambda: initialized[0], empty_cache=lambda: emptied.append(1))
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    memory.cleanup(cuda_empty_cache=True)
    assert emptied == []  # CUDA never started in this process: nothing to empty, and it is not started
    initialized[0] = True
    memory.cleanup()
    assert emptied == []
    memory.cleanup(cuda_empty_cache=True)
    assert emptied == [1]


def test_cuda_cache_needs_torch_already_imported(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    memory.cleanup(cuda_empty_cache=True)
    assert "torch" not in sys.modules


def test_maybe_cleanup_runs_every_n(monkeypatch):
    runs: list[bool] = []
    monkeypatch.setattr(memory, "cleanup", lambda cuda_empty_cache=False: runs.append(cuda_empty_cache) or 0.25)
    assert [memory.maybe_cleanup(count, 3) for count in range(1, 7)] == [None, None, 0.25, None, None, 0.25]
    assert memory.maybe_cleanup(5, 0) is None and memory.maybe_cleanup(4, 1, cuda_empty_cache=True) == 0.25
    assert runs == [False, False, True]
