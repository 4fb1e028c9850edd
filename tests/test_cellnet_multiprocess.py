"""A server, a relay and two leaves as four OS processes on 127.0.0.1, driven by a fifth cell in the test process.

    server ── relay-1 ── site-1
       │            └─── site-2
       └── driver (this process)
"""

from __future__ import annotations

import json
import signal
import time

from flare.cellnet import ReturnCode

from conftest import HEARTBEAT_TIMEOUT, call, reachable, wait_until


def test_leaf_to_leaf_request_goes_through_the_relay(tree):
    driver, _ = tree
    out = call(driver, "site-1", "ask", {"target": "site-2", "payload": "hello"})
    assert out == {**out, "rc": "ok", "payload": "olleh", "answered_by": "site-2"}


def test_driver_reaches_leaves_across_server_and_relay(tree):
    driver, _ = tree
    payload = bytes(range(256)) * 4096  # 1 MiB: goes on the bulk lane
    reply = driver.request("site-2", "test", "echo", payload, timeout=10)
    assert reply.ok and reply.get_header("answered_by") == "site-2"
    assert bytes(reply.payload) == payload[::-1]


def test_broadcast_reports_each_target(tree):
    driver, _ = tree
    out = call(driver, "server", "broadcast", {"targets": ["site-1", "site-2", "relay-1", "site-9"], "timeout": 3})
    assert [out[t][0] for t in ("site-1", "site-2", "relay-1")] == ["ok", "ok", "ok"]
    assert out["site-9"][0] == "target_unreachable" and "site-9" in out["site-9"][1]


def test_unreachable_target_fails_clearly_within_its_timeout(tree):
    driver, _ = tree
    timeout = 3.0
    started = time.monotonic()
    out = call(driver, "site-1", "ask", {"target": "site-9", "timeout": timeout})
    assert time.monotonic() - started < timeout + 1.0
    assert out["rc"] == ReturnCode.TARGET_UNREACHABLE.value
    assert "site-9" in out["error"]


def test_killed_leaf_is_noticed_while_other_traffic_carries_on(tree):
    driver, procs = tree
    procs["site-2"].proc.kill()
    took = wait_until(lambda: "site-2" not in reachable(driver, "server"), HEARTBEAT_TIMEOUT + 1)
    assert took <= HEARTBEAT_TIMEOUT + 1
    assert call(driver, "site-1", "ask", {"target": "server", "topic": "echo", "payload": "still"})["rc"] == "ok"
    gone = driver.request("site-2", "test", "echo", b"x", timeout=5)
    assert gone.return_code == ReturnCode.TARGET_UNREACHABLE, gone.error


def test_stopped_leaf_is_declared_dead_by_keepalive_and_rejoins(tree):
    driver, procs = tree
    procs["site-2"].signal(signal.SIGSTOP)  # the socket stays open: only the keep-alive can tell
    took = wait_until(lambda: "site-2" not in reachable(driver, "relay-1"), HEARTBEAT_TIMEOUT + 2)
    assert took >= HEARTBEAT_TIMEOUT - 0.6, "declared dead before the heartbeat timeout"
    events = call(driver, "relay-1", "reachable", {})["events"]
    assert any(e[0] == "down" and e[1] == "site-2" and "heartbeat_timeout" in e[2] for e in events), events
    procs["site-2"].signal(signal.SIGCONT)
    wait_until(lambda: "site-2" in reachable(driver, "server"), 10)
    assert driver.request("site-2", "test", "echo", b"back", timeout=5).ok


def test_keepalive_survives_python_holding_the_gil(tree):
    driver, _ = tree
    hold = HEARTBEAT_TIMEOUT * 2
    started = time.monotonic()
    reply = driver.request("site-1", "test", "hold_gil", json.dumps({"seconds": hold}).encode(), timeout=hold + 10)
    assert reply.ok and bytes(reply.payload) == b"held"
    assert time.monotonic() - started >= hold
    events = call(driver, "relay-1", "reachable", {})["events"]
    assert not [e for e in events if e[0] == "down" and e[1] == "site-1"], events
    assert "site-1" in reachable(driver, "server")
