"""NVFlare 2.7.2 itself as the peer: its CoreCell against our cells over TCP, request/reply both ways.

The NVFlare side runs in its own interpreter (``.venv-nvflare``, test-only) through ``tests/interop/nvflare_peer.py``;
channel ``task`` is one NVFlare's Cell does not stream, so its messages are plain DATA frames with ``cn__*`` headers.
"""

from __future__ import annotations

import os

import pytest

from flare.cellnet import Cell, Message
from conftest import ROOT

PEER = str(ROOT / "tests" / "interop" / "nvflare_peer.py")
MIB = 1024 * 1024


def reverse_echo(cell: Cell):
    return lambda req: Message({"answered_by": cell.fqcn}, bytes(req.payload)[::-1])


@pytest.fixture
def flare_server():
    server = Cell("server", listen="tcp://127.0.0.1:0").start()
    server.register_request_cb("task", "echo", reverse_echo(server))
    yield server
    server.close()


def test_nvflare_client_and_flare_server_request_each_other(flare_server, peers, nvflare_python):
    nv = peers([str(nvflare_python), PEER, "--fqcn", "site-1", "--parent", flare_server.url, "--request-to", "server",
                "--count", "3", "--size", str(MIB), "--linger", "30"])
    nv.expect("ready")
    replies = [nv.expect("reply") for _ in range(3)]
    assert all(r["ok"] and r["rc"] == "ok" and r["size"] == MIB for r in replies), replies
    assert nv.expect("done")["failures"] == 0
    # And the other way: our server asks the NVFlare cell.
    assert flare_server.wait_for_peer("site-1", 10)
    payload = os.urandom(MIB)
    reply = flare_server.request("site-1", "task", "echo", payload, timeout=30)
    assert reply.ok, reply.error
    assert bytes(reply.payload) == payload[::-1]
    assert reply.get_header("answered_by") == "site-1"


def test_flare_client_and_nvflare_server_request_each_other(peers, nvflare_python):
    nv = peers([str(nvflare_python), PEER, "--fqcn", "server", "--listen", "tcp://127.0.0.1:0",
                "--request-to", "site-1", "--count", "3", "--size", str(MIB), "--linger", "30"])
    url = nv.expect("ready")["url"]
    client = Cell("site-1", parent_url=url).start()
    client.register_request_cb("task", "echo", reverse_echo(client))
    try:
        assert client.wait_for_peer("server", 10)
        payload = os.urandom(MIB)
        reply = client.request("server", "task", "echo", payload, timeout=30)
        assert reply.ok, reply.error
        assert bytes(reply.payload) == payload[::-1]
        assert reply.get_header("answered_by") == "server"
        replies = [nv.expect("reply") for _ in range(3)]
        assert all(r["ok"] and r["answered_by"] == "site-1" for r in replies), replies
        assert nv.expect("done")["failures"] == 0
    finally:
        client.close()


def test_nvflare_gets_a_clear_error_for_an_unknown_target(flare_server, peers, nvflare_python):
    nv = peers([str(nvflare_python), PEER, "--fqcn", "site-1", "--parent", flare_server.url, "--request-to",
                "site-9", "--wait-for", "server", "--count", "1", "--size", "16", "--timeout", "10", "--linger", "30"])
    reply = nv.expect("reply", timeout=30)
    assert reply["rc"] == "target_unreachable" and "site-9" in reply["error"], reply


# --- streams: NVFlare's chunk protocol (sm__STREAM), 64 MiB each way ---

STREAMED = "aux_communication"  # a channel NVFlare's Cell streams
BIG = 64 * MIB


def test_nvflare_blob_arrives_whole_in_our_cell(flare_server, peers, nvflare_python):
    import hashlib
    import threading

    got: dict = {}
    done = threading.Event()
    flare_server.register_blob_cb(STREAMED, "blob", lambda m: (got.update(
        size=len(m.payload), sha=hashlib.sha256(m.payload).hexdigest(), origin=m.origin), done.set()))
    nv = peers([str(nvflare_python), PEER, "--fqcn", "site-1", "--parent", flare_server.url, "--blob-to", "server",
                "--size", str(BIG), "--count", "1", "--linger", "30"])
    sent = nv.expect("blob_sent", timeout=60)
    assert sent["error"] in (None, ""), sent
    assert done.wait(30)
    assert got == {"size": BIG, "sha": sent["sha256"], "origin": "site-1"}


def test_our_blob_arrives_whole_in_nvflare(peers, nvflare_python):
    import hashlib

    nv = peers([str(nvflare_python), PEER, "--fqcn", "server", "--listen", "tcp://127.0.0.1:0", "--streamed",
                "--linger", "60"])
    url = nv.expect("ready")["url"]
    client = Cell("site-1", parent_url=url).start()
    try:
        assert client.wait_for_peer("server", 10)
        payload = os.urandom(BIG)
        client.send_blob("server", STREAMED, "blob", payload, headers={"note": "from flare"})
        blob = nv.expect("blob", timeout=60)
        assert blob.get("error") is None, blob
        assert blob["size"] == BIG and blob["sha256"] == hashlib.sha256(payload).hexdigest()
        assert blob["headers"].get("note") == "from flare"
    finally:
        client.close()


def test_streamed_requests_both_ways_at_64_mib(flare_server, peers, nvflare_python):
    flare_server.register_request_cb(STREAMED, "echo", reverse_echo(flare_server))
    nv = peers([str(nvflare_python), PEER, "--fqcn", "site-1", "--parent", flare_server.url, "--streamed",
                "--request-to", "server", "--count", "1", "--size", str(BIG), "--timeout", "60", "--linger", "60"])
    reply = nv.expect("reply", timeout=90)
    assert reply["ok"] and reply["size"] == BIG and reply["answered_by"] == "server", reply
    # Ours to NVFlare's streaming Cell: above stream_threshold, so the request is streamed and the reply comes back
    # as a stream on return_only, matched by sm__ri.
    assert flare_server.wait_for_peer("site-1", 10)
    payload = os.urandom(BIG)
    back = flare_server.request("site-1", STREAMED, "echo", payload, timeout=60)
    assert back.ok, back.error
    assert back.get_header("answered_by") == "site-1"
    assert bytes(back.payload) == payload[::-1]
