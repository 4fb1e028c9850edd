"""Shared fixtures: peer processes that are always cleaned up, and the NVFlare interpreter."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flare.cellnet import Cell
from flare.config import CommSettings

ROOT = Path(__file__).resolve().parent.parent
NVFLARE_PYTHON = Path(os.environ.get("FLARE_NVFLARE_PYTHON", ROOT / ".venv-nvflare" / "bin" / "python"))


class Peer:
    """A child process that speaks JSON lines on stdout and stops when its stdin closes."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None):
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()

    @staticmethod
    def _pump(stream, sink) -> None:
        for line in stream:
            sink(line)

    def expect(self, event: str, timeout: float = 30.0) -> dict:
        """Waits for the next JSON line whose ``event`` is ``event``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.argv[1:3]}: no {event!r} event in {timeout}s; stderr:\n{self.tail()}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event:
                return record
            if record.get("event") == "error":
                raise AssertionError(f"peer error: {record}; stderr:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        return "".join(self.stderr[-n:])

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGCONT)
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (subprocess.TimeoutExpired, OSError):
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def peers():
    """Starts peers with ``peers(argv)``; every one is stopped when the test ends, whatever happened."""
    started: list[Peer] = []

    def start(argv: list[str], env: dict[str, str] | None = None) -> Peer:
        peer = Peer(argv, env)
        started.append(peer)
        return peer

    yield start
    for peer in reversed(started):
        peer.stop()


@pytest.fixture
def pair():
    """A listening "server" cell and a "site-1" connected to it, each able to reach the other."""
    server = Cell("server", listen="tcp://127.0.0.1:0").start()
    client = Cell("site-1", parent_url=server.url).start()
    assert client.wait_for_peer("server", 10) and server.wait_for_peer("site-1", 10)
    yield server, client
    client.close()
    server.close()


def cell_node(fqcn: str, *, listen: str | None = None, parent: str | None = None, **opts) -> list[str]:
    argv = [sys.executable, str(ROOT / "tests" / "peers" / "cell_node.py"), "--fqcn", fqcn]
    if listen:
        argv += ["--listen", listen]
    if parent:
        argv += ["--parent", parent]
    for k, v in opts.items():
        flag = f"--{k.replace('_', '-')}"
        if v is True:
            argv.append(flag)
        elif v is not False:
            argv += [flag, str(v)]
    return argv


@pytest.fixture(scope="session")
def nvflare_python() -> Path:
    """The interpreter of the test-only NVFlare install (made by ``make test``)."""
    if not NVFLARE_PYTHON.exists():
        pytest.fail(f"{NVFLARE_PYTHON} is missing: run `make test`, which installs the test-only nvflare package")
    return NVFLARE_PYTHON


HEARTBEAT_TIMEOUT = 2.0


@pytest.fixture
def tree(peers):
    """server ── relay-1 ── site-1, site-2 as four processes, plus a driver cell in this process."""
    driver, procs = build_tree(peers)
    yield driver, procs
    driver.close()


def build_tree(peers, **leaf_opts):
    """Starts the four processes of ``tree`` (leaves with ``leaf_opts``) and a driver cell; returns both."""
    server = peers(cell_node("server", listen="tcp://127.0.0.1:0"))
    server_url = server.expect("ready")["url"]
    relay = peers(cell_node("relay-1", listen="tcp://127.0.0.1:0", parent=server_url))
    relay_url = relay.expect("ready")["url"]
    leaves = {name: peers(cell_node(name, parent=relay_url, **leaf_opts)) for name in ("site-1", "site-2")}
    for leaf in leaves.values():
        leaf.expect("ready")
    settings = CommSettings.from_env(heartbeat_interval=0.5, heartbeat_timeout=HEARTBEAT_TIMEOUT)
    driver = Cell("driver", parent_url=server_url, settings=settings).start()
    assert driver.wait_for_peer("server", 10)
    # Leaves are learned by the server through the relay's route advertisements.
    wait_until(lambda: {"site-1", "site-2"} <= set(reachable(driver, "server")), 10)
    return driver, {"server": server, "relay-1": relay, **leaves}


def wait_until(condition, timeout: float, step: float = 0.05) -> float:
    """Polls ``condition`` until true; returns the seconds it took. Fails the test on timeout."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)
    return time.monotonic() - started


def call(driver: Cell, cell: str, topic: str, order: dict, timeout: float = 10.0) -> dict:
    reply = driver.request(cell, "test", topic, json.dumps(order).encode(), timeout=timeout)
    assert reply.ok, (reply.return_code, reply.error)
    return json.loads(bytes(reply.payload))


def reachable(driver: Cell, cell: str) -> list[str]:
    return call(driver, cell, "reachable", {})["reachable"]
