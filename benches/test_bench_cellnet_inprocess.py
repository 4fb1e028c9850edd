"""In-process cellnet timings with pytest-benchmark: two cells in one process, talking over TCP loopback.

    .venv/bin/python -m pytest benches/test_bench_cellnet_inprocess.py -p no:cacheprovider --benchmark-only

Not part of ``make test`` (pytest's testpaths is ``tests/``); ``benches/run_all.py`` runs it. One process hosts both
cells, so these figures leave out nothing of flare's own path but share one GIL and one transport runtime between
the two sides: compare them with each other and with earlier runs, and use ``bench_cellnet.py`` (two processes, raw
TCP next to it) for what a deployment sees. ``extra_info`` carries MiB/s (2**20 bytes per second) and the process's
peak RSS above its baseline (see ``harness.PeakMemory``).
"""

from __future__ import annotations

import pytest

import harness
from harness import MIB

pytest.importorskip("pytest_benchmark")

from flare.cellnet import Cell, Message  # noqa: E402
from flare.config import CommSettings  # noqa: E402

BULK = 64 * MIB


@pytest.fixture(scope="module")
def cells():
    settings = CommSettings.from_env()
    server = Cell("server", listen="tcp://127.0.0.1:0", settings=settings).start()
    client = Cell("site-1", parent_url=server.url, settings=settings).start()

    def sink(request: Message):
        if len(request.payload) != BULK:
            raise ValueError(f"expected {BULK} bytes, got {len(request.payload)}")

    server.register_request_cb("bench", "echo", lambda request: request.payload)
    server.register_request_cb("bench", "sink", sink)
    if not client.wait_for_peer("server", 10) or not server.wait_for_peer("site-1", 10):
        pytest.fail("cells did not connect within 10 s")
    yield server, client
    client.close()
    server.close()


def _request(client: Cell, topic: str, payload, expected_len: int) -> None:
    reply = client.request("server", "bench", topic, payload, timeout=60).raise_for_status()
    if len(reply.payload) != expected_len:
        raise RuntimeError(f"reply of {len(reply.payload)} bytes, expected {expected_len}")


def test_small_round_trip(benchmark, cells):
    """16-byte request, echoed back: round trips per second in one process."""
    _, client = cells
    payload = b"x" * 16
    _request(client, "echo", payload, 16)
    mem = harness.PeakMemory()
    mem.baseline()
    benchmark(_request, client, "echo", payload, 16)
    benchmark.extra_info["round_trips_per_s"] = 1.0 / benchmark.stats.stats.median
    benchmark.extra_info["peak_rss_above_baseline_mib"] = mem.report()["peak_above_baseline_mib"]


@pytest.mark.parametrize("topic", ["sink", "echo"], ids=["upload_64MiB", "echo_64MiB"])
def test_bulk(benchmark, cells, topic):
    """64 MiB request with an empty reply (upload) or echoed back (echo; MiB/s counts both ways)."""
    _, client = cells
    payload = bytes(range(256)) * (BULK // 256)  # allocated and touched before the baseline
    expected = BULK if topic == "echo" else 0
    mem = harness.PeakMemory()
    mem.baseline()
    benchmark.pedantic(_request, args=(client, topic, payload, expected), rounds=8, iterations=1, warmup_rounds=1)
    moved = BULK * (2 if topic == "echo" else 1)
    benchmark.extra_info["mib_per_s"] = harness.mib_per_s(moved, benchmark.stats.stats.median)
    benchmark.extra_info["peak_rss_above_baseline_mib"] = mem.report()["peak_above_baseline_mib"]
