"""A TCP forwarding proxy for fault tests: put it between a child cell and its parent, then ``cut()`` the link.

The faults are made outside the code under test, on the wire, so no production code needs a hook for them.
"""

from __future__ import annotations

import socket
import threading
import time

BUFFER_SIZE = 1 << 20


class TcpProxy:
    """Forwards every connection made to ``url`` to ``target_port`` on loopback, bytes both ways, until cut.

    ``cut(seconds)`` drops every current connection (both ends see it closed) and refuses new ones for ``seconds``
    (the port stops listening, so connecting fails as if the peer were down); then it accepts again, on the same
    port. ``cuts`` counts the connections dropped so far."""

    def __init__(self, target_port: int, host: str = "127.0.0.1"):
        self.host = host
        self.target_port = target_port
        self._lock = threading.Lock()
        self._links: list[tuple[socket.socket, socket.socket]] = []
        self._refuse_until = 0.0
        self._stopped = threading.Event()
        self._listener: socket.socket | None = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self.url = f"tcp://{host}:{self.port}"
        self.cuts = 0
        self._acceptor = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)

    def start(self) -> TcpProxy:
        self._acceptor.start()
        return self

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, port))
        listener.listen(64)
        listener.settimeout(0.05)  # the accept loop must notice cuts and close() promptly
        return listener

    def _refusing(self) -> bool:
        return time.monotonic() < self._refuse_until

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            if self._refusing():
                if self._listener is not None:
                    self._listener.close()
                    self._listener = None
                time.sleep(0.02)
                continue
            if self._listener is None:
                self._listener = self._listen(self.port)
            try:
                downstream, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            if self._refusing():  # accepted in the moment between cut() and the listener closing
                _drop(downstream)
                continue
            try:
                upstream = socket.create_connection((self.host, self.target_port), timeout=5.0)
            except OSError:
                _drop(downstream)
                continue
            downstream.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._links.append((downstream, upstream))
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=_pump, args=(source, sink), name="tcp-proxy-pump", daemon=True).start()
        if self._listener is not None:
            self._listener.close()

    def cut(self, seconds: float) -> None:
        """Drops every connection now and refuses new ones for ``seconds``; returns at once."""
        self._refuse_until = time.monotonic() + seconds
        with self._lock:
            links, self._links = self._links, []
            self.cuts += len(links)
        for downstream, upstream in links:
            _drop(downstream)
            _drop(upstream)

    def close(self) -> None:
        self._stopped.set()
        self.cut(0.0)
        self._acceptor.join(5.0)


def _drop(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # the other side closed it first
    sock.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while True:
            data = source.recv(BUFFER_SIZE)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass  # cut, or closed by either end: the other pump sees it too
    finally:
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


__all__ = ["TcpProxy"]
