"""The Python face of cells, in one process: arguments, payloads, errors, callbacks."""

from __future__ import annotations

import os
import threading
import time

import pytest

import flare
from flare.cellnet import Cell, Message, ReturnCode
from flare.config import CommSettings
from flare.errors import ConfigError, FlareError, FlareTimeoutError, TransportError

MIB = 1024 * 1024


def test_version_and_error_tree():
    assert flare.__version__
    assert issubclass(FlareTimeoutError, TimeoutError) and issubclass(FlareTimeoutError, FlareError)
    assert issubclass(TransportError, FlareError) and issubclass(ConfigError, FlareError)


@pytest.mark.parametrize(
    "name, words",
    [("", "empty"), ("site 1", "' '"), ("site-1..job", "empty part"), ("a.b.a", "repeats")],
)
def test_invalid_names_say_what_is_wrong(name, words):
    with pytest.raises(ConfigError, match=words):
        Cell(name)


def test_bad_settings_name_the_setting():
    with pytest.raises(ConfigError, match="heartbeat_timeout"):
        Cell("site-1", settings=CommSettings(heartbeat_interval=10, heartbeat_timeout=5))
    with pytest.raises(ConfigError, match="nonsense"):
        CommSettings.from_env(nonsense=1)


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("NVFLARE_HEARTBEAT_INTERVAL", "7")
    assert CommSettings.from_env().heartbeat_interval == 7.0
    monkeypatch.setenv("FLARE_HEARTBEAT_INTERVAL", "9")
    assert CommSettings.from_env().heartbeat_interval == 9.0
    assert CommSettings.from_env(heartbeat_interval=3).heartbeat_interval == 3
    monkeypatch.setenv("NVFLARE_TCP_NO_DELAY", "maybe")
    with pytest.raises(ConfigError, match="TCP_NO_DELAY"):
        CommSettings.from_env()


def test_bad_url_is_a_config_error():
    with pytest.raises(ConfigError, match="scheme"):
        Cell("server", listen="127.0.0.1:0").start()


def test_payload_kinds_and_zero_copy_reply(pair):
    server, client = pair
    seen = []

    def handler(req: Message):
        seen.append(type(req.payload).__name__)
        view = memoryview(req.payload)
        assert view.readonly
        return req.payload  # the received buffer itself goes back out, no copy

    server.register_request_cb("t", "echo", handler)
    for payload in (b"bytes", bytearray(b"bytearray"), memoryview(b"xxmemoryview")[2:], b""):
        reply = client.request("server", "t", "echo", payload)
        assert reply.ok and bytes(reply.payload) == bytes(payload)
    assert set(seen) == {"Payload"}
    import array

    floats = array.array("f", [1.0, 2.5])
    reply = client.request("server", "t", "echo", memoryview(floats))
    assert bytes(reply.payload) == floats.tobytes()


def test_objects_travel_as_fobs_both_ways(pair):
    import numpy as np

    from flare.errors import SerializationError

    server, client = pair
    got = []

    def handler(req: Message):
        got.append(req.payload)
        return {"seen": sorted(req.payload), "echo": req.payload}

    server.register_request_cb("t", "obj", handler)
    big = np.arange(3 * MIB // 8, dtype=np.float64)  # above stream_threshold: carried as a stream
    for payload in ("a str", {"round": 2, "w": np.ones((4, 4), np.float32)}, {"w": big}, (1, 2)):
        reply = client.request("server", "t", "obj", payload)
        assert reply.ok, reply.error
        assert reply.get_header("cn__payload_encoding") == "fobs"
        echoed = reply.payload["echo"]
        if isinstance(payload, dict):
            assert all(np.array_equal(echoed[k], v) if isinstance(v, np.ndarray) else echoed[k] == v
                       for k, v in payload.items())
        else:
            assert echoed == payload
    assert isinstance(got[2]["w"], np.ndarray) and got[2]["w"].dtype == np.float64
    blobs = []
    done = threading.Event()
    server.register_blob_cb("t", "blob", lambda m: (blobs.append(m.payload), done.set()))
    client.send_blob("server", "t", "blob", {"layer": big})
    assert done.wait(10) and np.array_equal(blobs[0]["layer"], big)
    with pytest.raises(SerializationError):
        client.request("server", "t", "obj", object())


def test_handler_results_map_to_replies(pair):
    server, client = pair

    def fail(_req):
        raise RuntimeError("boom")

    server.register_request_cb("t", "none", lambda _req: None)
    server.register_request_cb("t", "fail", fail)
    server.register_request_cb("t", "custom", lambda _req: Message.reply(ReturnCode.INVALID_REQUEST, "nope"))
    server.register_request_cb("t", "*", lambda req: req.topic.encode())
    assert client.request("server", "t", "none").ok
    failed = client.request("server", "t", "fail")
    assert failed.return_code == ReturnCode.PROCESS_EXCEPTION and "boom" in failed.error
    custom = client.request("server", "t", "custom")
    assert custom.return_code == ReturnCode.INVALID_REQUEST and custom.error == "nope"
    assert bytes(client.request("server", "t", "anything").payload) == b"anything"
    missing = client.request("server", "other", "x")
    assert missing.return_code == ReturnCode.PROCESS_EXCEPTION and "no handler" in missing.error
    with pytest.raises(FlareError, match="process_exception"):
        missing.raise_for_status()


def test_timeout_reply_and_exception(pair):
    server, client = pair
    release = threading.Event()
    server.register_request_cb("t", "slow", lambda _req: release.wait(10) and None)
    started = time.monotonic()
    reply = client.request("server", "t", "slow", timeout=0.5)
    assert reply.return_code == ReturnCode.TIMEOUT
    assert 0.5 <= time.monotonic() - started < 1.5
    with pytest.raises(FlareTimeoutError):
        reply.raise_for_status()
    release.set()


def test_callbacks_run_off_the_transport_threads(pair):
    server, client = pair
    names = []
    server.register_request_cb("t", "who", lambda _req: names.append(threading.current_thread().name))
    client.request("server", "t", "who")
    assert names and not names[0].startswith("flare-transport")


def test_fire_and_forget_and_peer_events(pair):
    server, client = pair
    got = threading.Event()
    server.register_request_cb("t", "note", lambda req: got.set())
    assert client.fire_and_forget("server", "t", "note", b"hi") == {"server": ""}
    assert got.wait(5)
    events = []
    server.on_peer_event(lambda kind, name, reason: events.append((kind, name)))
    client.close()
    deadline = time.monotonic() + 5
    while ("down", "site-1") not in events and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ("down", "site-1") in events
    assert server.request("site-1", "t", "x", timeout=1).return_code == ReturnCode.TARGET_UNREACHABLE


def test_closed_cell_refuses_to_start_listening():
    cell = Cell("server")
    cell.close()
    with pytest.raises(TransportError, match="closed"):
        cell._core.listen("tcp://127.0.0.1:0")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_a_forked_child_builds_its_own_runtime(pair):
    server, _ = pair
    server.register_request_cb("t", "echo", lambda req: bytes(req.payload))
    pid = os.fork()
    if pid == 0:  # child: the inherited cell refuses clearly; a new cell works
        code = 1
        try:
            try:
                server.request("site-1", "t", "x", timeout=1)
            except TransportError as e:
                if "another process" in str(e):
                    child = Cell("site-2", parent_url=server.url).start()
                    code = 0 if child.request("server", "t", "echo", b"ok", timeout=5).ok else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
