"""Push streams across processes: integrity of every awkward size through a relay, streamed requests, and a stalled
receiver that the sender detects (and whose connection it resets when asked to)."""

from __future__ import annotations

import signal
import time

import pytest

from flare.cellnet import Cell
from flare.config import CommSettings

from conftest import call, cell_node, reachable, wait_until

MIB = 1024 * 1024
CHUNK = CommSettings().streaming_chunk_size


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 64 * MIB])
def test_blob_integrity_leaf_to_leaf_through_the_relay(tree, size):
    driver, _ = tree
    sent = call(driver, "site-1", "send_blob", {"target": "site-2", "size": size}, timeout=60)
    assert sent["error"] is None, sent
    expected = {"origin": "site-1", "size": size, "sha256": sent["sha256"]}
    wait_until(lambda: expected in call(driver, "site-2", "blobs", {}), 30)


def test_streamed_request_and_reply_through_the_relay(tree):
    driver, _ = tree
    out = call(driver, "site-1", "ask", {"target": "site-2", "size": 24 * MIB + 5, "timeout": 60}, timeout=90)
    assert out["rc"] == "ok" and out["size"] == 24 * MIB + 5, out
    assert out["sha256"] == out["expected"]


@pytest.mark.parametrize("close_stalled", [False, True])
def test_stalled_receiver_is_detected_within_the_ack_progress_timeout(peers, close_stalled):
    ack_timeout = 2.0
    # Keep-alive slower than the stream watchdog, so that it is the stream that notices the stopped receiver.
    opts = {"ack_progress_timeout": ack_timeout, "heartbeat_timeout": 30, "close_stalled": close_stalled}
    server = peers(cell_node("server", listen="tcp://127.0.0.1:0", **opts))
    url = server.expect("ready")["url"]
    leaf = peers(cell_node("site-2", parent=url))
    leaf.expect("ready")
    driver = Cell("driver", parent_url=url).start()
    try:
        wait_until(lambda: "site-2" in reachable(driver, "server"), 10)
        leaf.signal(signal.SIGSTOP)
        started = time.monotonic()
        sent = call(driver, "server", "send_blob", {"target": "site-2", "size": 256 * MIB}, timeout=60)
        took = time.monotonic() - started
        assert sent["error"] and sent["error"].startswith("StallDetected"), sent
        assert "streaming_ack_progress_timeout" in sent["error"]
        assert ack_timeout <= took < ack_timeout + 4, took
        gone = "site-2" not in reachable(driver, "server")
        assert gone == close_stalled, "the stalled connection is closed exactly when sfm_close_stalled_connection"
        leaf.signal(signal.SIGCONT)
        # Woken up, the child finds its link silent for longer than its heartbeat timeout (or reset) and reconnects;
        # keep-alives and traffic resume. A request caught in that switch may be lost, hence the retries.
        wait_until(lambda: driver.request("site-2", "test", "echo", b"back", timeout=2).ok, 20)
    finally:
        driver.close()
