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


def test_a_stopped_receiver_blocks_nothing_else_through_the_same_relay(peers):
    """site-2 is stopped while site-1 streams to it through relay-1: site-1's other stream and control traffic
    through the same relay carry on, and the stalled stream fails instead of hanging: on its ACK watchdog, or sooner
    when the relay's keep-alive declares site-2 dead and tells site-1 its chunks cannot be delivered."""
    import threading

    from conftest import build_tree

    driver, procs = build_tree(peers, ack_progress_timeout=4, heartbeat_timeout=60)
    try:
        procs["site-2"].signal(signal.SIGSTOP)
        stalled: dict = {}
        blocked = threading.Thread(target=lambda: stalled.update(
            call(driver, "site-1", "send_blob", {"target": "site-2", "size": 256 * MIB}, timeout=60)))
        blocked.start()
        time.sleep(1.0)  # the stream to site-2 is now stuck behind its full window
        started = time.monotonic()
        for _ in range(20):  # control traffic through the relay, both directions
            assert driver.request("site-1", "test", "echo", b"ping", timeout=5).ok
        other = call(driver, "site-1", "send_blob", {"target": "server", "size": 32 * MIB}, timeout=30)
        assert other["error"] is None, other
        wait_until(lambda: any(b["sha256"] == other["sha256"] for b in call(driver, "server", "blobs", {})), 10)
        assert time.monotonic() - started < 4, "traffic to other peers waited on the stalled stream"
        blocked.join(30)
        err = stalled["error"]
        assert err and ("site-2" in err or err.startswith("StallDetected")), stalled
    finally:
        procs["site-2"].signal(signal.SIGCONT)
        driver.close()
